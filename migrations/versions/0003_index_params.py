"""Per-space index parameters: the store kind's config (IVF nprobe, HNSW M, ...) as JSON.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

``embedding_space.index_factory`` already names the kind (Flat, IVF, HNSW); this adds the kind's
parameters beside it. Only ADD COLUMN / DROP COLUMN, never a table rebuild: on SQLite a rebuild
drops and recreates ``embedding_space``, and with foreign keys on, that DROP cascades into
``item_embedding``. Existing spaces get ``{}`` (the kind's defaults), so no data is rewritten.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "embedding_space",
        sa.Column("index_params", sa.Text(), server_default="{}", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("embedding_space", "index_params")
