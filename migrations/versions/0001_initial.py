"""The initial catalog: model versions, spaces, adapters, items, migration runs and their tasks.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Hand-written and frozen: later schema changes are new revisions, never edits here. Constraint
names are spelled out with ``op.f`` so they do not depend on the naming convention in force.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Item ids are FAISS ids (int64); SQLite only autoincrements a column spelled INTEGER.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_DATETIME = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), nullable=False)


def _created_at() -> sa.Column:
    return sa.Column("created_at", UTC_DATETIME, server_default=sa.func.now(), nullable=False)


def _count(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), server_default=sa.text("0"), nullable=False)


def _fk(table: str, column: str, target: str, **kw: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), **kw
    )


def upgrade() -> None:
    op.create_table(
        "model_version",
        _id(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("encoder_key", sa.String(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=True),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(), server_default="ip", nullable=False),
        sa.Column("normalized", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("status", sa.String(), server_default="active", nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_version")),
        sa.UniqueConstraint("name", name=op.f("uq_model_version_name")),
    )
    op.create_table(
        "embedding_space",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("index_factory", sa.String(), server_default="Flat", nullable=False),
        sa.Column("index_path", sa.String(), nullable=True),
        sa.Column("checksum", sa.String(64), nullable=True),
        _count("ntotal"),
        _count("snapshot_seq"),
        _created_at(),
        _fk("embedding_space", "model_version_id", "model_version"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embedding_space")),
        sa.UniqueConstraint("name", name=op.f("uq_embedding_space_name")),
    )
    op.create_table(
        "adapter",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("source_version_id", sa.Integer(), nullable=False),
        sa.Column("target_version_id", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(), nullable=False),
        sa.Column("artifact_path", sa.String(), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("fit_size", sa.Integer(), nullable=True),
        sa.Column("metrics_json", sa.Text(), nullable=True),
        _created_at(),
        sa.CheckConstraint(
            "direction IN ('backward', 'forward')", name=op.f("ck_adapter_direction")
        ),
        _fk("adapter", "source_version_id", "model_version"),
        _fk("adapter", "target_version_id", "model_version"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapter")),
        sa.UniqueConstraint("name", name=op.f("uq_adapter_name")),
    )
    op.create_table(
        "item",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("external_id", sa.String(512), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("source_uri", sa.Text(), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_item")),
        sa.UniqueConstraint("external_id", name=op.f("uq_item_external_id")),
        sqlite_autoincrement=True,  # a deleted item's FAISS id must never come back
    )
    op.create_table(
        "migration_run",
        _id(),
        sa.Column("source_space_id", sa.Integer(), nullable=False),
        sa.Column("target_space_id", sa.Integer(), nullable=False),
        sa.Column("ordering", sa.String(), server_default="random", nullable=False),
        sa.Column("wave_size", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(), server_default="planned", nullable=False),
        _count("total_items"),
        _count("done_items"),
        _created_at(),
        sa.Column("updated_at", UTC_DATETIME, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "state IN ('planned', 'running', 'paused', 'completed', 'cutover', 'rolled_back', "
            "'failed')",
            name=op.f("ck_migration_run_state"),
        ),
        _fk("migration_run", "source_space_id", "embedding_space"),
        _fk("migration_run", "target_space_id", "embedding_space"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migration_run")),
    )
    op.create_table(
        "item_embedding",
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("space_id", sa.Integer(), nullable=False),
        sa.Column("produced_by", sa.String(), nullable=False),
        sa.Column("migration_run_id", sa.Integer(), nullable=True),
        sa.Column("authoritative", sa.Boolean(), server_default=sa.false(), nullable=False),
        _created_at(),
        sa.CheckConstraint(
            "produced_by IN ('native', 'adapter')", name=op.f("ck_item_embedding_produced_by")
        ),
        _fk("item_embedding", "item_id", "item", ondelete="CASCADE"),
        _fk("item_embedding", "space_id", "embedding_space", ondelete="CASCADE"),
        _fk("item_embedding", "migration_run_id", "migration_run"),
        sa.PrimaryKeyConstraint("item_id", "space_id", name=op.f("pk_item_embedding")),
    )
    op.create_index(
        "ix_item_embedding_one_authoritative",
        "item_embedding",
        ["item_id"],
        unique=True,
        sqlite_where=sa.text("authoritative"),
        postgresql_where=sa.text("authoritative"),
    )
    op.create_table(
        "backfill_task",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("state", sa.String(), server_default="pending", nullable=False),
        sa.Column("wave", sa.Integer(), nullable=True),
        sa.Column("lease_owner", sa.String(), nullable=True),
        sa.Column("lease_expires_at", UTC_DATETIME, nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'leased', 'done', 'failed')", name=op.f("ck_backfill_task_state")
        ),
        _fk("backfill_task", "run_id", "migration_run", ondelete="CASCADE"),
        _fk("backfill_task", "item_id", "item", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfill_task")),
        sa.UniqueConstraint("run_id", "item_id", name=op.f("uq_backfill_task_run_id_item_id")),
    )
    op.create_index(
        "ix_backfill_task_run_id_state_priority",
        "backfill_task",
        ["run_id", "state", "priority"],
    )
    op.create_table(
        "serving_alias",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("query_version_id", sa.Integer(), nullable=False),
        sa.Column("merge_policy", sa.String(), server_default="score", nullable=False),
        sa.Column("spaces_json", sa.Text(), server_default="[]", nullable=False),
        _fk("serving_alias", "query_version_id", "model_version"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_serving_alias")),
    )
    op.create_table(
        "eval_result",
        _id(),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("fraction", sa.Float(), nullable=False),
        sa.Column("ordering", sa.String(), nullable=True),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        _created_at(),
        _fk("eval_result", "run_id", "migration_run"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_result")),
    )


def downgrade() -> None:
    # Children before parents, so foreign keys never point at a dropped table.
    op.drop_table("eval_result")
    op.drop_table("serving_alias")
    op.drop_index("ix_backfill_task_run_id_state_priority", table_name="backfill_task")
    op.drop_table("backfill_task")
    op.drop_index("ix_item_embedding_one_authoritative", table_name="item_embedding")
    op.drop_table("item_embedding")
    op.drop_table("migration_run")
    op.drop_table("item")
    op.drop_table("adapter")
    op.drop_table("embedding_space")
    op.drop_table("model_version")
