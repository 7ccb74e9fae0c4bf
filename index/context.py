"""Where a hotswap deployment lives: a data directory (indexes, artifacts) and a catalog database."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from index import db
from kernels.errors import HotswapError, InvalidInputError

CATALOG_FILE = "catalog.sqlite"


@dataclasses.dataclass
class Context:
    """An open deployment. All file paths in the catalog are relative to ``data_dir``."""

    data_dir: Path
    engine: Engine
    sessions: sessionmaker[Session]

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed on success, rolled back on any exception."""
        with self.sessions.begin() as session:
            yield session

    def path(self, relative: str) -> Path:
        """Resolve a catalog path, refusing anything that escapes the data directory."""
        root = self.data_dir.resolve()
        resolved = (root / relative).resolve()
        if not resolved.is_relative_to(root):
            raise InvalidInputError(f"path {relative!r} points outside the data directory {root}")
        return resolved

    def relative(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.data_dir.resolve()))


def catalog_url(data_dir: Path, url: str | None = None) -> str:
    """The catalog's URL: ``url`` if given, else the SQLite file inside an existing data directory."""
    if url:
        return url
    if not data_dir.is_dir():
        raise InvalidInputError(
            f"no hotswap data directory at {data_dir}", fix=f"run: hotswap init --dir {data_dir}"
        )
    return db.sqlite_url(data_dir / CATALOG_FILE)


def open_context(data_dir: Path, url: str | None = None, *, create: bool = False) -> Context:
    """Open a deployment; with ``create`` make the directory and bring the schema to head first."""
    if create:
        data_dir.mkdir(parents=True, exist_ok=True)
    engine = db.connect(catalog_url(data_dir, url))
    try:
        if create:
            db.upgrade(engine)
        db.require_current(engine)
    except OperationalError as e:
        raise HotswapError(
            f"cannot open the catalog database: {e.orig}",
            fix="check --database / HOTSWAP_DATABASE and that the server is running",
        ) from e
    return Context(data_dir=data_dir, engine=engine, sessions=db.session_factory(engine))
