"""The catalog on real databases: a SQLite file under tmp_path and a fresh PostgreSQL database."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from index import db
from index.catalog import (
    Adapter,
    BackfillTask,
    EmbeddingSpace,
    EvalResult,
    Item,
    ItemEmbedding,
    MigrationRun,
    ModelVersion,
    ServingAlias,
)
from kernels.errors import HotswapError, InvalidInputError
from tests.pg import BACKENDS, database_url

NASTY_IDS = [
    "x'); DROP TABLE item;--",
    'a"b\\c%d_e',
    "%(name)s :param ? $1 {0}",
    "ünïcödé / 日本語 / emoji 🙂",
]


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database_url(request.param, tmp_path) as url:
        engine = db.connect(url)
        db.upgrade(engine)
        yield engine
        engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = db.connect(db.sqlite_url(tmp_path / "catalog.db"))
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.session_factory(engine)


def _version(name: str, dim: int = 8) -> ModelVersion:
    return ModelVersion(name=name, encoder_key="mlp", config_json="{}", dim=dim)


def _two_spaces(session: Session) -> tuple[EmbeddingSpace, EmbeddingSpace]:
    old, new = _version("old"), _version("new", dim=16)
    spaces = (
        EmbeddingSpace(name="old", model_version=old),
        EmbeddingSpace(name="new", model_version=new),
    )
    session.add_all(spaces)
    session.flush()
    return spaces


def test_round_trip_of_every_table(sessions: sessionmaker[Session]) -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    with sessions.begin() as s:
        old, new = _two_spaces(s)
        adapter = Adapter(
            name="o",
            key="orthogonal",
            config_json='{"d": 8}',
            direction="backward",
            source_version=new.model_version,
            target_version=old.model_version,
            artifact_path="adapters/o.safetensors",
            artifact_sha256="a" * 64,
            fit_size=100,
        )
        item = Item(external_id="doc-1", content_hash="c" * 64, source_uri="s3://b/doc-1")
        run = MigrationRun(source_space=old, target_space=new, wave_size=10, total_items=1)
        s.add_all([adapter, item, run])
        s.flush()
        s.add_all(
            [
                ItemEmbedding(item=item, space=old, produced_by="native", authoritative=True),
                ItemEmbedding(item=item, space=new, produced_by="adapter", migration_run_id=run.id),
                BackfillTask(
                    run=run, item=item, priority=0.5, lease_owner="w1", lease_expires_at=expires
                ),
                ServingAlias(name="prod", query_version=new.model_version, spaces_json='["new"]'),
                EvalResult(
                    run=run, fraction=0.25, ordering="random", metric="recall@10", value=0.9
                ),
            ]
        )

    with sessions() as s:
        mv = s.scalars(select(ModelVersion).where(ModelVersion.name == "old")).one()
        assert (mv.metric, mv.normalized, mv.status, mv.dim) == ("ip", True, "active", 8)
        assert mv.created_at.tzinfo is not None
        assert abs(mv.created_at - datetime.now(UTC)) < timedelta(minutes=5)
        space = s.scalars(select(EmbeddingSpace).where(EmbeddingSpace.name == "new")).one()
        assert (space.model_version.dim, space.index_factory, space.ntotal) == (16, "Flat", 0)
        assert space.index_params == "{}"
        adapter = s.scalars(select(Adapter)).one()
        assert (adapter.source_version.name, adapter.target_version.name) == ("new", "old")
        assert (adapter.direction, adapter.fit_size, adapter.metrics_json) == (
            "backward",
            100,
            None,
        )
        item = s.scalars(select(Item)).one()
        assert (item.external_id, item.source_uri) == ("doc-1", "s3://b/doc-1")
        embeddings = {e.space.name: e for e in s.scalars(select(ItemEmbedding))}
        assert embeddings["old"].authoritative and not embeddings["new"].authoritative
        assert embeddings["new"].migration_run_id is not None
        run = s.scalars(select(MigrationRun)).one()
        assert (run.state, run.ordering, run.done_items) == ("planned", "random", 0)
        task = s.scalars(select(BackfillTask)).one()
        assert (task.state, task.attempts, task.priority, task.item.id) == (
            "pending",
            0,
            0.5,
            item.id,
        )
        assert task.lease_expires_at == expires and task.lease_expires_at.tzinfo is not None
        alias = s.get(ServingAlias, "prod")
        assert alias is not None and alias.query_version.name == "new"
        assert alias.merge_policy == "score"
        result = s.scalars(select(EvalResult)).one()
        assert (result.run_id, result.fraction, result.value) == (run.id, 0.25, 0.9)


def test_server_defaults_serve_raw_sql(engine: Engine) -> None:
    """Rows written without the ORM (psql, other tools) still get the documented defaults."""
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO model_version (name, encoder_key, config_json, dim) "
                "VALUES ('raw', 'mlp', '{}', 4)"
            )
        )
        row = c.execute(text("SELECT metric, normalized, status, created_at FROM model_version"))
        metric, normalized, status, created_at = row.one()
        c.execute(text("INSERT INTO embedding_space (name, model_version_id) VALUES ('s', 1)"))
        kind = c.execute(text("SELECT index_factory, index_params FROM embedding_space")).one()
    assert (metric, bool(normalized), status) == ("ip", True, "active")
    assert created_at is not None
    assert tuple(kind) == ("Flat", "{}")


def test_duplicate_external_id_is_rejected(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        s.add(Item(external_id="dup"))
    with pytest.raises(IntegrityError), sessions.begin() as s:
        s.add(Item(external_id="dup"))


def test_at_most_one_authoritative_space_per_item(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        old, new = _two_spaces(s)
        third = EmbeddingSpace(name="third", model_version=new.model_version)
        item, other = Item(external_id="i"), Item(external_id="j")
        s.add_all([third, item, other])
        s.flush()
        ids = item.id, other.id, old.id, new.id, third.id
        s.add_all(
            [  # non-authoritative copies are unlimited; other items are independent
                ItemEmbedding(
                    item_id=ids[0], space_id=ids[2], produced_by="native", authoritative=True
                ),
                ItemEmbedding(item_id=ids[0], space_id=ids[3], produced_by="adapter"),
                ItemEmbedding(item_id=ids[0], space_id=ids[4], produced_by="adapter"),
                ItemEmbedding(
                    item_id=ids[1], space_id=ids[3], produced_by="native", authoritative=True
                ),
            ]
        )
    with pytest.raises(IntegrityError), sessions.begin() as s:
        s.get_one(ItemEmbedding, (ids[0], ids[3])).authoritative = True


def test_check_constraints_reject_unknown_values(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        old, new = _two_spaces(s)
    sideways = Adapter(
        name="a",
        key="orthogonal",
        config_json="{}",
        direction="sideways",
        source_version_id=new.model_version_id,
        target_version_id=old.model_version_id,
        artifact_path="a",
        artifact_sha256="0" * 64,
    )
    exploded = MigrationRun(source_space_id=old.id, target_space_id=new.id, state="exploded")
    for row, constraint in [
        (sideways, "ck_adapter_direction"),
        (exploded, "ck_migration_run_state"),
    ]:
        with pytest.raises(IntegrityError, match=constraint), sessions.begin() as s:
            s.add(row)


def test_sql_metacharacters_are_stored_verbatim(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        s.add_all(Item(external_id=x, source_uri=x) for x in NASTY_IDS)
    with sessions() as s:
        for external_id in NASTY_IDS:
            found = s.scalars(select(Item).where(Item.external_id == external_id)).one()
            assert found.external_id == found.source_uri == external_id
        assert s.scalar(select(func.count()).select_from(Item)) == len(NASTY_IDS)
        raw = s.execute(text("SELECT external_id FROM item ORDER BY id")).scalars().all()
    assert raw == NASTY_IDS


def test_item_ids_are_never_reused_and_deletes_cascade(sessions: sessionmaker[Session]) -> None:
    """A deleted item's id may still sit in some FAISS file; handing it out again would alias."""
    with sessions.begin() as s:
        space, _ = _two_spaces(s)
        items = [Item(external_id=f"i{k}") for k in range(3)]
        s.add_all(items)
        s.flush()
        s.add(ItemEmbedding(item=items[-1], space=space, produced_by="native"))
    with sessions.begin() as s:
        s.delete(s.get_one(Item, items[-1].id))
    with sessions.begin() as s:
        again = Item(external_id="again")
        s.add(again)
        s.flush()
        assert again.id > items[-1].id
        assert s.scalar(select(func.count()).select_from(ItemEmbedding)) == 0


def test_sqlite_pragmas_are_set(sqlite_engine: Engine) -> None:
    with db.session_factory(sqlite_engine)() as s:
        pragma = {
            p: s.execute(text(f"PRAGMA {p}")).scalar()
            for p in ("journal_mode", "foreign_keys", "busy_timeout")
        }
        assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000}
        s.add(ItemEmbedding(item_id=12345, space_id=678, produced_by="native"))
        with pytest.raises(IntegrityError, match="FOREIGN KEY"):
            s.flush()


def test_deferred_transactions_are_the_hazard(sqlite_engine: Engine) -> None:
    """Control: without BEGIN IMMEDIATE, a writer with a stale snapshot fails at once."""
    path = str(sqlite_engine.url.database)
    a, b = (sqlite3.connect(path, isolation_level=None, timeout=5) for _ in range(2))
    try:
        for conn in (a, b):
            conn.execute("BEGIN")  # deferred: no lock until the first write
            conn.execute("SELECT count(*) FROM item").fetchone()
        a.execute("INSERT INTO item (external_id, created_at) VALUES ('a', '2020-01-01')")
        a.execute("COMMIT")
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            b.execute("INSERT INTO item (external_id, created_at) VALUES ('b', '2020-01-01')")
    finally:
        a.close()
        b.close()


def test_concurrent_sqlite_writers_queue_instead_of_failing(sqlite_engine: Engine) -> None:
    threads, rounds = 4, 15
    sessions = db.session_factory(sqlite_engine)
    with sessions.begin() as s:
        s.add(_version("counter", dim=0))
    start, errors = threading.Barrier(threads), []

    def work() -> None:
        start.wait()
        try:
            for _ in range(rounds):  # read-modify-write: the pattern deferred BEGIN breaks
                with sessions.begin() as s:
                    counter = s.scalars(select(ModelVersion)).one()
                    time.sleep(0.001)
                    counter.dim += 1
        except Exception as e:  # collected, so the assertion shows what went wrong
            errors.append(e)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert errors == []
    with sessions() as s:
        assert s.scalars(select(ModelVersion.dim)).one() == threads * rounds  # no lost update


def test_require_current(tmp_path: Path) -> None:
    engine = db.connect(db.sqlite_url(tmp_path / "fresh.db"))
    with pytest.raises(
        HotswapError, match=f"catalog schema is at nothing .*needs {db.head()}"
    ) as e:
        db.require_current(engine)
    assert e.value.fix == "run: hotswap db upgrade"
    db.upgrade(engine)
    db.require_current(engine)
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(HotswapError, match="at 9999, which this hotswap does not know"):
        db.require_current(engine)
    engine.dispose()


def test_connect_urls() -> None:
    assert db.connect("postgresql://u@h/d").dialect.driver == "psycopg"  # not psycopg2
    assert db.sqlite_url(Path("/tmp/a b/c.db")) == "sqlite:////tmp/a b/c.db"
    with pytest.raises(InvalidInputError, match="not a database URL"):
        db.connect("not a url")
