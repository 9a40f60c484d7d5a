"""bundle_deltas: delta bundles (issue 19), each linked to its full bundle and offered to
devices that keep its base release

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bundle_deltas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("bundle_id", sa.Integer(), nullable=False),
        sa.Column("base_version", sa.String(length=64), nullable=False),
        sa.Column("base_sequence", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["bundle_id"], ["bundles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bundle_id", "base_sequence", name="uq_bundle_deltas_base"),
        sa.UniqueConstraint("sha256"),
    )
    with op.batch_alter_table("bundle_deltas", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bundle_deltas_bundle_id"), ["bundle_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("bundle_deltas", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bundle_deltas_bundle_id"))
    op.drop_table("bundle_deltas")
