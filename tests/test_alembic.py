"""The hand-written revisions and the ORM must describe the same schema, on both backends."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, Engine, inspect

from index import db
from index.catalog import metadata
from tests.pg import BACKENDS, database_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database_url(request.param, tmp_path) as url:
        engine = db.connect(url)
        yield engine
        engine.dispose()


def _schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return compare_metadata(context, metadata)


def _where(options: Any, dialect: str) -> str | None:
    where = options.get(f"{dialect}_where")
    return None if where is None else str(where)


def _details(engine: Engine) -> dict[str, Any]:
    """What compare_metadata does not look at: CHECK names, FK options, partial-index predicates."""
    found = inspect(engine)
    name = engine.dialect.name
    return {
        table: (
            sorted(str(c["name"]) for c in found.get_check_constraints(table)),
            sorted(
                (
                    fk["name"],
                    tuple(fk["constrained_columns"]),
                    fk["referred_table"],
                    fk["options"].get("ondelete"),
                )
                for fk in found.get_foreign_keys(table)
            ),
            sorted(
                (
                    ix["name"],
                    tuple(ix["column_names"]),
                    bool(ix["unique"]),
                    _where(ix["dialect_options"], name),
                )
                for ix in found.get_indexes(table)
                if not ix.get("duplicates_constraint")  # PostgreSQL lists UNIQUEs as indexes too
            ),
        )
        for table in metadata.tables
    }


def _expected_details(dialect: str) -> dict[str, Any]:
    return {
        table.name: (
            sorted(str(c.name) for c in table.constraints if isinstance(c, CheckConstraint)),
            sorted(
                (fk.name, tuple(fk.column_keys), fk.referred_table.name, fk.ondelete)
                for fk in table.foreign_key_constraints
            ),
            sorted(
                (
                    ix.name,
                    tuple(c.name for c in ix.columns),
                    ix.unique,
                    _where(ix.dialect_kwargs, dialect),
                )
                for ix in table.indexes
            ),
        )
        for table in metadata.sorted_tables
    }


def test_upgrade_downgrade_upgrade_matches_the_orm(engine: Engine) -> None:
    assert db.current(engine) is None
    db.upgrade(engine)
    assert db.current(engine) == db.head()
    assert _schema_diff(engine) == []
    assert _details(engine) == _expected_details(engine.dialect.name)

    db.downgrade(engine, "base")
    assert db.current(engine) is None
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}

    db.upgrade(engine)
    assert db.current(engine) == db.head()
    assert _schema_diff(engine) == []


def test_compare_metadata_notices_drift(engine: Engine) -> None:
    """The no-drift assertion above is only worth something if drift would be reported."""
    db.upgrade(engine)
    db.downgrade(engine, "base")
    db.upgrade(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP INDEX ix_backfill_task_run_id_state_priority")
    assert [d[0] for d in _schema_diff(engine)] == ["add_index"]


def test_upgrade_by_url_and_sqlite_item_ids_never_reused(tmp_path: Path) -> None:
    url = db.sqlite_url(tmp_path / "by url.db")
    db.upgrade(url)
    assert db.current(url) == db.head()
    engine = db.connect(url)
    with engine.connect() as connection:
        sql = connection.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE name = 'item'"
        ).scalar_one()
    engine.dispose()
    assert "AUTOINCREMENT" in sql  # plain INTEGER PRIMARY KEY hands a deleted max id out again


def test_in_memory_sqlite_can_be_migrated() -> None:
    engine = db.connect("sqlite://")
    db.upgrade(engine)
    assert db.current(engine) == db.head()
    assert "item" in inspect(engine).get_table_names()
    engine.dispose()


def test_alembic_cli_with_the_ini_file(tmp_path: Path) -> None:
    """The path of a user of the alembic CLI: alembic.ini, -x url=..., no connection handed in."""
    url = db.sqlite_url(tmp_path / "cli.db")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            "alembic.ini",
            "-x",
            f"url={url}",
            "upgrade",
            "head",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert db.current(url) == db.head()


def test_offline_mode_renders_postgresql_sql(capsys: pytest.CaptureFixture[str]) -> None:
    config = Config()  # no ini file, so env.py leaves the test session's logging alone
    config.set_main_option("script_location", str(files("migrations")))
    config.set_main_option("sqlalchemy.url", "postgresql+psycopg://u@h/d")
    command.upgrade(config, "head", sql=True)
    sql = capsys.readouterr().out
    assert "CREATE UNIQUE INDEX ix_item_embedding_one_authoritative" in sql
    assert "WHERE authoritative" in sql
    assert "DROP TABLE" not in sql


def test_0003_keeps_existing_spaces_and_their_rows(engine: Engine) -> None:
    """Adding index_params must not rebuild embedding_space: on SQLite that DROP would cascade
    into item_embedding."""
    db.upgrade(engine, "0002")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO model_version (id, name, encoder_key, config_json, dim) "
            "VALUES (1, 'v1', 'mlp', '{}', 4)"
        )
        connection.exec_driver_sql(
            "INSERT INTO embedding_space (id, name, model_version_id) VALUES (1, 'v1', 1)"
        )
        connection.exec_driver_sql("INSERT INTO item (id, external_id) VALUES (7, 'a')")
        connection.exec_driver_sql(
            "INSERT INTO item_embedding (item_id, space_id, produced_by, authoritative) "
            "VALUES (7, 1, 'native', true)"
        )
    db.upgrade(engine)
    with engine.connect() as connection:
        row = connection.exec_driver_sql(
            "SELECT index_factory, index_params FROM embedding_space"
        ).one()
        kept = connection.exec_driver_sql("SELECT count(*) FROM item_embedding").scalar_one()
    assert tuple(row) == ("Flat", "{}") and kept == 1
    db.downgrade(engine, "0002")
    assert "index_params" not in {c["name"] for c in inspect(engine).get_columns("embedding_space")}
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM item_embedding").scalar_one() == 1


def test_0004_adds_an_empty_delta_list_and_refuses_to_drop_a_used_one(engine: Engine) -> None:
    db.upgrade(engine, "0003")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO model_version (id, name, encoder_key, config_json, dim) "
            "VALUES (1, 'v1', 'mlp', '{}', 4)"
        )
        connection.exec_driver_sql(
            "INSERT INTO embedding_space (id, name, model_version_id) VALUES (1, 'v1', 1)"
        )
    db.upgrade(engine)
    with engine.begin() as connection:
        deltas = connection.exec_driver_sql("SELECT index_deltas FROM embedding_space")
        assert deltas.scalar_one() == "[]"
        connection.exec_driver_sql(
            """UPDATE embedding_space SET index_deltas = '[{"path": "indexes/v1.2.delta"}]'"""
        )
    with pytest.raises(RuntimeError, match="1 embedding spaces still have delta files"):
        db.downgrade(engine, "0003")
    assert db.current(engine) == db.head()
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE embedding_space SET index_deltas = '[]'")
    db.downgrade(engine, "0003")
    assert "index_deltas" not in {c["name"] for c in inspect(engine).get_columns("embedding_space")}
