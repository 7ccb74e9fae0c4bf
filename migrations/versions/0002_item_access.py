"""Access counts per item, for the ``access_frequency`` migration ordering.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

A new table only: existing tables are untouched, so neither direction rewrites data.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "item_access",
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("hits", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_access_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["item_id"], ["item.id"], name=op.f("fk_item_access_item_id_item"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_item_access")),
    )


def downgrade() -> None:
    op.drop_table("item_access")
