"""The version catalog: which model made which vectors, and how far a gallery migration has got.

SQL holds the facts that must survive a crash and be shared between workers; the vectors live in
one FAISS file per embedding space. Table and column names are a contract: the index layer, the
migration engine and the hand-written Alembic revisions in ``migrations/versions`` all spell them
out, and ``tests/test_alembic.py`` fails when this module and the revisions drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Fixed before the first revision: Alembic can only drop or alter a constraint it can name, and
# SQLite's batch mode recreates tables from these names.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DIRECTIONS = ("backward", "forward")
PRODUCED_BY = ("native", "adapter")
RUN_STATES = ("planned", "running", "paused", "completed", "cutover", "rolled_back", "failed")
TASK_STATES = ("pending", "leased", "done", "failed")

# Item ids are FAISS ids (int64). SQLite only autoincrements a column spelled INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend; naive values are taken to be UTC.

    PostgreSQL's timestamptz comes back aware but SQLite's text comes back naive, and comparing a
    naive lease expiry with ``datetime.now(UTC)`` raises TypeError.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # Explicit UTC: PostgreSQL would read a naive value in the session's time zone.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Python defaults fill new ORM objects at flush (no reload needed after commit); server defaults
# serve raw SQL and keep the schema self-describing.
intpk = Annotated[int, mapped_column(primary_key=True)]
count = Annotated[int, mapped_column(BigInteger, default=0, server_default=text("0"))]
sha256 = Annotated[str | None, mapped_column(String(64))]
created = Annotated[datetime, mapped_column(default=utcnow, server_default=func.now())]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class ModelVersion(Base):
    """One encoder, frozen: a registry key plus its config and weights, never a class path."""

    __tablename__ = "model_version"
    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(200), unique=True)
    encoder_key: Mapped[str]
    config_json: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[sha256]
    dim: Mapped[int]
    metric: Mapped[str] = mapped_column(default="ip", server_default="ip")
    normalized: Mapped[bool] = mapped_column(default=True, server_default=true())
    status: Mapped[str] = mapped_column(default="active", server_default="active")
    created_at: Mapped[created]


class EmbeddingSpace(Base):
    """One FAISS index: vectors that are comparable because one model version defines them."""

    __tablename__ = "embedding_space"
    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(unique=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    # The store kind (a key of index.store.STORE_KINDS) and its config as JSON, e.g. IVF nprobe.
    index_factory: Mapped[str] = mapped_column(default="Flat", server_default="Flat")
    index_params: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    index_path: Mapped[str | None]  # relative to the data directory, so the directory can move
    checksum: Mapped[sha256]
    # Waves appended since that snapshot (index/deltas.py): a JSON list of {path, sha256, rows}.
    index_deltas: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    ntotal: Mapped[count]  # vectors in the snapshot plus its deltas
    snapshot_seq: Mapped[count]
    created_at: Mapped[created]

    model_version: Mapped[ModelVersion] = relationship()


class Adapter(Base):
    """A fitted map between two model versions; ``direction`` says which way it may be used."""

    __tablename__ = "adapter"
    __table_args__ = (CheckConstraint(_in("direction", DIRECTIONS), name="direction"),)
    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(unique=True)
    key: Mapped[str]
    config_json: Mapped[str] = mapped_column(Text)
    source_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    target_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    direction: Mapped[str]  # backward: new-model vectors into the old space; forward: old -> new
    artifact_path: Mapped[str]
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    fit_size: Mapped[int | None]
    metrics_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[created]

    source_version: Mapped[ModelVersion] = relationship(foreign_keys=[source_version_id])
    target_version: Mapped[ModelVersion] = relationship(foreign_keys=[target_version_id])


class Item(Base):
    """A gallery item. Its id is its FAISS id in every space, so ids are never reused."""

    __tablename__ = "item"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(512), unique=True)
    content_hash: Mapped[sha256]
    source_uri: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[created]


class ItemEmbedding(Base):
    """That an item has a vector in a space, how it got there, and whether search trusts it."""

    __tablename__ = "item_embedding"
    __table_args__ = (
        CheckConstraint(_in("produced_by", PRODUCED_BY), name="produced_by"),
        # At most one authoritative space per item, or mixed-version search returns it twice.
        Index(
            "ix_item_embedding_one_authoritative",
            "item_id",
            unique=True,
            sqlite_where=text("authoritative"),
            postgresql_where=text("authoritative"),
        ),
    )
    item_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("item.id", ondelete="CASCADE"), primary_key=True
    )
    space_id: Mapped[int] = mapped_column(
        ForeignKey("embedding_space.id", ondelete="CASCADE"), primary_key=True
    )
    produced_by: Mapped[str]
    migration_run_id: Mapped[int | None] = mapped_column(ForeignKey("migration_run.id"))
    authoritative: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[created]

    item: Mapped[Item] = relationship()
    space: Mapped[EmbeddingSpace] = relationship()
    migration_run: Mapped[MigrationRun | None] = relationship()


class MigrationRun(Base):
    """Moving a gallery from one space to another, in waves, resumable after a crash."""

    __tablename__ = "migration_run"
    __table_args__ = (CheckConstraint(_in("state", RUN_STATES), name="state"),)
    id: Mapped[intpk]
    source_space_id: Mapped[int] = mapped_column(ForeignKey("embedding_space.id"))
    target_space_id: Mapped[int] = mapped_column(ForeignKey("embedding_space.id"))
    ordering: Mapped[str] = mapped_column(default="random", server_default="random")
    wave_size: Mapped[int | None]
    state: Mapped[str] = mapped_column(default="planned", server_default="planned")
    total_items: Mapped[count]
    done_items: Mapped[count]
    created_at: Mapped[created]
    updated_at: Mapped[datetime] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=func.now()
    )

    source_space: Mapped[EmbeddingSpace] = relationship(foreign_keys=[source_space_id])
    target_space: Mapped[EmbeddingSpace] = relationship(foreign_keys=[target_space_id])


class BackfillTask(Base):
    """Re-embedding one item for one run; workers lease the lowest ``priority`` first."""

    __tablename__ = "backfill_task"
    __table_args__ = (
        CheckConstraint(_in("state", TASK_STATES), name="state"),
        UniqueConstraint("run_id", "item_id"),
        Index("ix_backfill_task_run_id_state_priority", "run_id", "state", "priority"),
        # A wave's items and the next wave number (max) without scanning the run's ledger.
        Index("ix_backfill_task_run_id_wave", "run_id", "wave"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("migration_run.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("item.id", ondelete="CASCADE"))
    priority: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    state: Mapped[str] = mapped_column(default="pending", server_default="pending")
    wave: Mapped[int | None]
    lease_owner: Mapped[str | None]
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)

    run: Mapped[MigrationRun] = relationship()
    item: Mapped[Item] = relationship()


class ItemAccess(Base):
    """How often search returned an item: the ``access_frequency`` ordering migrates hot items first.

    Searchers count in memory and add their counts in one upsert per flush (index/search.py), so
    the query path never writes a row per query.
    """

    __tablename__ = "item_access"
    item_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("item.id", ondelete="CASCADE"), primary_key=True
    )
    hits: Mapped[count]
    last_access_at: Mapped[datetime | None]


class ServingAlias(Base):
    """A stable name clients query: which model encodes queries, which spaces answer them."""

    __tablename__ = "serving_alias"
    name: Mapped[str] = mapped_column(primary_key=True)
    query_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    merge_policy: Mapped[str] = mapped_column(default="score", server_default="score")
    spaces_json: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")

    query_version: Mapped[ModelVersion] = relationship()


class EvalResult(Base):
    """One point of a quality curve: ``metric`` with ``fraction`` of the gallery migrated."""

    __tablename__ = "eval_result"
    id: Mapped[intpk]
    run_id: Mapped[int | None] = mapped_column(ForeignKey("migration_run.id"))
    fraction: Mapped[float] = mapped_column(Float)
    ordering: Mapped[str | None]  # None for baselines measured outside a run
    metric: Mapped[str]
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[created]

    run: Mapped[MigrationRun | None] = relationship()


metadata = Base.metadata
