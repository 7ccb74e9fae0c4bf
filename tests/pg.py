"""Test catalogs on both backends: a SQLite file under tmp_path or a fresh PostgreSQL database.

Each PostgreSQL test gets its own uniquely named database (created in autocommit, dropped with
FORCE afterwards), so tests cannot see each other's rows and a crashed test leaves nothing that
the next run trips over. Test modules wrap :func:`database_url` in a fixture parametrized over
:data:`BACKENDS`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from index.db import sqlite_url

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def postgres_base_url() -> str:
    return os.environ.get("HOTSWAP_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database; skips the test where no server answers."""
    base = postgres_base_url()
    pytest.importorskip("psycopg", reason="PostgreSQL tests need: pip install 'hotswap[postgres]'")
    admin = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"hotswap_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError:
        admin.dispose()
        pytest.skip(
            f"no PostgreSQL at {base}: start one or set "
            "HOTSWAP_TEST_POSTGRES_URL=postgresql+psycopg://user@host:port/db"
        )
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:  # FORCE: a leaked pooled connection must not block
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty catalog database on ``backend`` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        yield sqlite_url(tmp_path / "catalog.db")
        return
    with fresh_postgres_database() as url:
        yield url
