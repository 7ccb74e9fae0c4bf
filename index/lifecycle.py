"""A migration run's lifecycle after (or instead of) its waves: status, pause, cutover, rollback.

Migration only flips authority: the source index keeps every old vector, so :func:`rollback`
hands items back without re-embedding anything, in one transaction through the commit protocol
of index/galleries.py. All of these are re-exported by index.migrate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from index.catalog import BackfillTask, EmbeddingSpace, ItemEmbedding, MigrationRun, ServingAlias
from index.context import Context
from index.galleries import (
    SQL_CHUNK,
    StagedSnapshot,
    chunked,
    discard,
    empty_store,
    load_store,
    point_space_at,
    staged_for,
)
from index.runs import ACTIVE, authoritative_ids, get_run, lock_run, lock_space, space_by_id
from index.search import read_only
from kernels.errors import ConflictError


def status(ctx: Context, run_id: int) -> dict[str, object]:
    with read_only(ctx) as session:
        r = get_run(session, run_id)
        return {
            "run": r.id,
            "state": r.state,
            "ordering": r.ordering,
            "source": space_by_id(session, r.source_space_id).name,
            "target": space_by_id(session, r.target_space_id).name,
            "done": r.done_items,
            "total": r.total_items,
            "fraction": r.done_items / r.total_items if r.total_items else 1.0,
        }


def pause(ctx: Context, run_id: int) -> None:
    """Stop a migration at its next wave boundary (resume with :func:`run`): a wave committing
    now still commits, one being re-embedded is dropped."""
    with ctx.transaction() as session:
        r = lock_run(session, run_id)
        if r.state not in ACTIVE:
            raise ConflictError(f"migration run {run_id} is {r.state}; only an active run pauses")
        r.state = "paused"


def cutover(ctx: Context, run_id: int, *, alias: str | None = None) -> list[str]:
    """Declare a completed run's target space the one that serves; return the aliases switched.

    Every serving alias that queried with the source's version or listed the source space (and
    ``alias``, created if new) now queries with the target's version and lists only the target
    space. Refused while items are still authoritative in the source (ingested after planning).
    Idempotent: cutting over again changes nothing. The source index is kept, for rollback.
    """
    with ctx.transaction() as session:
        r = lock_run(session, run_id)
        src, dst = space_by_id(session, r.source_space_id), space_by_id(session, r.target_space_id)
        if r.state == "cutover":
            return sorted(a.name for a in _aliases_serving(session, dst))
        if r.state != "completed":
            raise ConflictError(
                f"migration run {run_id} is {r.state}; only a completed run can be cut over",
                fix=f"finish it first: hotswap migrate resume {run_id}",
            )
        left = len(authoritative_ids(session, src))
        if left:
            raise ConflictError(
                f"{left} items are still authoritative in {src.name!r} (added after run {run_id} "
                "was planned)",
                fix=f"plan and finish another run from {src.name} to {dst.name}, then cut over",
            )
        switched = [a for a in session.scalars(select(ServingAlias)) if _serves(a, src)]
        if alias is not None and alias not in {a.name for a in switched}:
            switched.append(session.get(ServingAlias, alias) or ServingAlias(name=alias))
            session.add(switched[-1])
        for a in switched:
            a.query_version_id, a.spaces_json = dst.model_version_id, json.dumps([dst.name])
        r.state = "cutover"
        return sorted(a.name for a in switched)


def rollback(ctx: Context, run_id: int) -> int:
    """Hand every item the run migrated back to the source space; return how many.

    The items' source rows become authoritative again (their old vectors never left the source
    index), their target rows are deleted and their vectors removed from the target index through
    the commit protocol, aliases a cutover switched return to the source, and the run becomes
    ``rolled_back`` -- all in one transaction, so a crash leaves the run either untouched or fully
    rolled back. Rolling back a rolled-back run does nothing. A running :func:`run` stops at its
    next commit.
    """
    with ctx.transaction() as session:
        r = lock_run(session, run_id)
        if r.state == "rolled_back":
            return 0
        _refuse_later_runs(session, r)
        src, dst = space_by_id(session, r.source_space_id), lock_space(session, r.target_space_id)
        moved = _run_rows(session, r)
        superseded = None
        if len(moved):
            with _target_without(ctx, session, dst, moved) as staged:
                _hand_back(session, r, moved)
                superseded = point_space_at(ctx, dst, staged)
                session.flush()
        if r.state == "cutover":
            for a in _aliases_serving(session, dst):
                a.query_version_id, a.spaces_json = src.model_version_id, json.dumps([src.name])
        r.state = "rolled_back"
    discard(superseded)
    return len(moved)


def hand_back(session: Session, run_row: MigrationRun, ids: np.ndarray) -> None:
    """Inside the caller's transaction: ``ids`` (migrated by ``run_row``) are the source's again
    and pending in the ledger. The caller removes their vectors from the target index."""
    _hand_back(session, run_row, ids)
    for chunk in chunked(ids.tolist(), SQL_CHUNK):
        session.execute(
            update(BackfillTask)
            .where(BackfillTask.run_id == run_row.id, BackfillTask.item_id.in_(chunk))
            .values(state="pending", wave=None, lease_owner=None, lease_expires_at=None)
        )
    run_row.done_items = max(0, run_row.done_items - len(ids))


def _hand_back(session: Session, run_row: MigrationRun, ids: np.ndarray) -> None:
    restored = 0
    for chunk in chunked(ids.tolist(), SQL_CHUNK):
        session.execute(  # first: the one-authoritative-space index is checked per statement
            delete(ItemEmbedding).where(
                ItemEmbedding.space_id == run_row.target_space_id, ItemEmbedding.item_id.in_(chunk)
            )
        )
        source_rows = (
            ItemEmbedding.space_id == run_row.source_space_id,
            ItemEmbedding.item_id.in_(chunk),
        )
        restored += session.scalar(select(func.count()).where(*source_rows)) or 0
        session.execute(update(ItemEmbedding).where(*source_rows).values(authoritative=True))
    if restored != len(ids):  # the transaction is rolled back: nothing changes
        raise ConflictError(
            f"{len(ids) - restored} of the {len(ids)} items of run {run_row.id} have no row in "
            "the source space to return to",
            fix="run: hotswap doctor",
        )


@contextmanager
def _target_without(
    ctx: Context, session: Session, space: EmbeddingSpace, ids: np.ndarray
) -> Iterator[StagedSnapshot]:
    """Stage the target's snapshot minus ``ids``. When the run put every vector the target holds,
    the result is empty and the (possibly damaged) file is not even read."""
    held = session.scalar(select(func.count()).where(ItemEmbedding.space_id == space.id))
    if held == len(ids):
        store = empty_store(space)  # of the space's own kind and parameters (IVF, HNSW)
    else:
        store = load_store(ctx, space)
        store.remove(ids)
    with staged_for(ctx, space, store) as staged:
        yield staged


def _run_rows(session: Session, run_row: MigrationRun) -> np.ndarray:
    """Items whose target row this run wrote (those it migrated and still holds)."""
    rows = session.scalars(
        select(ItemEmbedding.item_id).where(
            ItemEmbedding.space_id == run_row.target_space_id,
            ItemEmbedding.migration_run_id == run_row.id,
        )
    ).all()
    return np.array(sorted(rows), dtype=np.int64)


def _serves(alias: ServingAlias, space: EmbeddingSpace) -> bool:
    return alias.query_version_id == space.model_version_id or space.name in json.loads(
        alias.spaces_json or "[]"
    )


def _aliases_serving(session: Session, space: EmbeddingSpace) -> list[ServingAlias]:
    return [
        a
        for a in session.scalars(select(ServingAlias))
        if a.query_version_id == space.model_version_id
        and json.loads(a.spaces_json or "[]") == [space.name]
    ]


def _refuse_later_runs(session: Session, run_row: MigrationRun) -> None:
    later = session.scalar(
        select(MigrationRun).where(
            MigrationRun.source_space_id == run_row.target_space_id,
            MigrationRun.id > run_row.id,
            MigrationRun.state != "rolled_back",
        )
    )
    if later is not None:
        raise ConflictError(
            f"run {later.id} migrates onwards from this run's target space",
            fix=f"roll back run {later.id} first",
        )
