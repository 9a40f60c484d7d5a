"""devices.state_digest: recognise an unchanged check-in without reading the device's status

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for every existing device: its next check-in takes the full path and fills it in
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("state_digest")
