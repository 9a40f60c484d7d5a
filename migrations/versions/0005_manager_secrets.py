"""manager_secrets: the dashboard's session-signing key in the database, shared by every
manager process whatever its data dir (it was a file in one data dir); events(received_at)
index: retention prunes old events without scanning them all

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An existing key file is copied in by the first manager that starts on this revision
    # (manager/web/secret.py), so nobody is logged out by the upgrade.
    op.create_table(
        "manager_secrets",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_received_at", ["received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_received_at")
    op.drop_table("manager_secrets")
