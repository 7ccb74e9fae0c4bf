"""Engines, sessions and schema migrations for the catalog.

SQLite is the embedded default and PostgreSQL the production backend. SQLite needs three things
that its defaults do not give: WAL (readers never block the writer), a busy timeout (a second
writer waits instead of failing), and ``BEGIN IMMEDIATE`` (a writer takes the write lock when its
transaction starts, not at its first write, where SQLite could only fail it with "database is
locked" because its snapshot is already stale). Migrations run programmatically from the
``migrations`` package, so an installed hotswap needs no alembic.ini.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from kernels.errors import HotswapError, InvalidInputError
from kernels.optional import require

BUSY_TIMEOUT_MS = 5000
BEGIN_MODES = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")
UPGRADE_FIX = "run: hotswap db upgrade"


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite file at ``path`` (made absolute, so cwd does not matter)."""
    return URL.create("sqlite", database=str(Path(path).expanduser().resolve())).render_as_string()


def connect(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url`` (``sqlite:///...`` or ``postgresql+psycopg://...``)."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise InvalidInputError(
            f"not a database URL: {url!r}",
            fix="use sqlite:////abs/path/catalog.db or postgresql+psycopg://user@host:5432/db",
        ) from e
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":  # SQLAlchemy would pick psycopg2, not a dependency
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.get_driver_name() == "psycopg":
            require("psycopg", "postgres")
    engine = create_engine(parsed, echo=echo)
    if parsed.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    # The documented pysqlite recipe: take transaction control away from the sqlite3 module
    # (which would otherwise emit a deferred BEGIN itself) and begin every transaction ourselves.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")  # stays "memory" for :memory: databases
        cursor.execute("PRAGMA foreign_keys = ON")  # a no-op inside a transaction, so here
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Readers may opt out with engine.execution_options(sqlite_begin="DEFERRED").
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        if mode not in BEGIN_MODES:
            raise InvalidInputError(f"sqlite_begin={mode!r}", fix=f"use one of {BEGIN_MODES}")
        connection.exec_driver_sql(f"BEGIN {mode}")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (callers often return them)."""
    return sessionmaker(engine, expire_on_commit=False)


# ---- Alembic, programmatic ---------------------------------------------------------------------


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    return config


@contextmanager
def _engine(target: str | Engine) -> Iterator[Engine]:
    """The caller's engine as is, or a short-lived one for a URL."""
    if not isinstance(target, str):
        yield target
        return
    engine = connect(target)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _migration_connection(target: str | Engine) -> Iterator[tuple[Config, Connection]]:
    """One transaction for the whole migration: env.py reuses it via ``config.attributes``.

    Passing our own connection keeps the SQLite pragmas and lets an in-memory database (which
    exists only inside its engine) be migrated.
    """
    with _engine(target) as engine, engine.begin() as connection:
        config = _alembic_config()
        config.attributes["connection"] = connection
        yield config, connection


def upgrade(target: str | Engine, revision: str = "head") -> None:
    """Migrate the catalog at ``target`` (a URL or an engine) up to ``revision``."""
    with _migration_connection(target) as (config, _):
        command.upgrade(config, revision)


def downgrade(target: str | Engine, revision: str) -> None:
    """Migrate the catalog at ``target`` down to ``revision`` (``"base"`` drops every table)."""
    with _migration_connection(target) as (config, _):
        command.downgrade(config, revision)


def current(target: str | Engine) -> str | None:
    """The revision the catalog at ``target`` is at; None for a database never migrated."""
    with _engine(target) as engine, engine.connect() as connection:
        connection.execution_options(sqlite_begin="DEFERRED")  # a read: take no write lock
        return MigrationContext.configure(connection).get_current_revision()


def head() -> str:
    """The newest revision this hotswap ships."""
    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    if len(heads) != 1:  # a packaging bug, not a user error; say so plainly
        raise RuntimeError(f"migrations must have exactly one head, found {heads}")
    return heads[0]


def require_current(engine: Engine) -> None:
    """Refuse to work on a catalog whose schema is not the one this hotswap was written for."""
    at, needed = current(engine), head()
    if at == needed:
        return
    known = {
        rev.revision for rev in ScriptDirectory.from_config(_alembic_config()).walk_revisions()
    }
    if at is not None and at not in known:
        raise HotswapError(
            f"catalog schema is at {at}, which this hotswap does not know (needs {needed}); "
            "it was probably written by a newer hotswap",
            fix="upgrade hotswap, or point it at another catalog",
        )
    shown = at if at is not None else "nothing (no tables yet)"
    raise HotswapError(f"catalog schema is at {shown}, hotswap needs {needed}", fix=UPGRADE_FIX)
