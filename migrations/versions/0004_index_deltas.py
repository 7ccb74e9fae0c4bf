"""Per-space delta files: migration waves appended to a snapshot instead of rewriting it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

``embedding_space.index_deltas`` lists, as JSON, the delta files (path, sha256, rows) that follow
the space's snapshot (index/deltas.py). As in 0003, only ADD COLUMN / DROP COLUMN: a table rebuild
on SQLite would cascade into ``item_embedding``. Existing spaces get ``[]`` (no deltas). A
downgrade drops the list, so it first needs every space folded into a single snapshot: a space
with deltas is refused rather than silently losing vectors.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "embedding_space",
        sa.Column("index_deltas", sa.Text(), server_default="[]", nullable=False),
    )


def downgrade() -> None:
    if not context.is_offline_mode() and (
        with_deltas := op.get_bind().scalar(
            sa.text("SELECT count(*) FROM embedding_space WHERE index_deltas <> '[]'")
        )
    ):
        raise RuntimeError(
            f"{with_deltas} embedding spaces still have delta files: fold each into a single "
            "snapshot first (index.galleries.rebuild_space), then downgrade"
        )
    op.drop_column("embedding_space", "index_deltas")
