"""Per-space delta files (migration waves appended to a snapshot instead of rewriting it), and
an index on the ledger's (run, wave).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

``embedding_space.index_deltas`` lists, as JSON, the delta files (path, sha256, rows) that follow
the space's snapshot (index/deltas.py). As in 0003, only ADD COLUMN / DROP COLUMN: a table rebuild
on SQLite would cascade into ``item_embedding``. Existing spaces get ``[]`` (no deltas). A
downgrade drops the list, so it first needs every space folded into a single snapshot: a space
with deltas is refused rather than silently losing vectors. The index on
``backfill_task (run_id, wave)`` lets a wave's commit find its items and the next wave number
without scanning the run's whole ledger (that scan made every wave O(N)).
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
    op.create_index("ix_backfill_task_run_id_wave", "backfill_task", ["run_id", "wave"])


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
    op.drop_index("ix_backfill_task_run_id_wave", table_name="backfill_task")
    op.drop_column("embedding_space", "index_deltas")
