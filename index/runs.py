"""Migration runs and spaces as the migration modules read and lock them (one place, one way)."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from index.catalog import EmbeddingSpace, ItemEmbedding, MigrationRun
from index.galleries import get_space
from kernels.errors import NotFoundError

ACTIVE = ("planned", "running", "paused")


def get_run(session: Session, run_id: int) -> MigrationRun:
    found = session.get(MigrationRun, run_id)
    if found is None:
        raise NotFoundError(
            f"no migration run {run_id}", fix="list runs with: hotswap migrate status"
        )
    return found


def lock_run(session: Session, run_id: int) -> MigrationRun:
    """The run row, locked until commit on PostgreSQL (SQLite's BEGIN IMMEDIATE already is).

    ``populate_existing``: a row this session loaded before the lock was granted must be read
    again, or a state another transaction committed meanwhile (a rollback) would go unseen."""
    found = session.scalars(
        select(MigrationRun)
        .where(MigrationRun.id == run_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    return found if found is not None else get_run(session, run_id)  # get_run raises NotFoundError


def space_by_id(session: Session, space_id: int) -> EmbeddingSpace:
    return session.get_one(EmbeddingSpace, space_id)  # foreign keys: it exists


def lock_space(session: Session, space: int | str) -> EmbeddingSpace:
    """A space, locked so that no other writer stages a snapshot of it until we commit (and read
    again once locked, see :func:`lock_run`)."""
    space_id = get_space(session, space).id if isinstance(space, str) else space
    return session.scalars(
        select(EmbeddingSpace)
        .where(EmbeddingSpace.id == space_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def authoritative_ids(session: Session, space: EmbeddingSpace) -> np.ndarray:
    rows = session.scalars(
        select(ItemEmbedding.item_id)
        .where(ItemEmbedding.space_id == space.id, ItemEmbedding.authoritative.is_(True))
        .order_by(ItemEmbedding.item_id)
    ).all()
    return np.array(rows, dtype=np.int64)
