"""Incremental migration: re-embed a gallery into a new space in waves, resumable after any crash.

The SQL ledger (``backfill_task``) is the source of truth. A wave re-embeds the next pending items in
priority order, adds them to the target index, writes a new snapshot, and then, in one transaction,
marks the tasks done, moves the items' authority from the source space to the target space and
points the target space at the new snapshot (the commit protocol of index/galleries.py). A crash at
any instant either keeps the whole wave or none of it; resuming redoes an uncommitted wave, and the
index's insert-or-replace makes the redo duplicate nothing. Queries run on snapshots throughout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from compat.vectors import check_vectors
from index.catalog import BackfillTask, EmbeddingSpace, ItemEmbedding, MigrationRun
from index.context import Context
from index.galleries import (
    SQL_CHUNK,
    chunked,
    discard,
    get_space,
    load_store,
    point_space_at,
    staged_for,
)
from kernels.errors import ConflictError, NotFoundError
from models.registry import Registry

Reembed = Callable[[np.ndarray], torch.Tensor]  # item ids (n,) -> new-model vectors (n, d_new)
Ordering = Callable[[np.ndarray, int], np.ndarray]  # (item ids, seed) -> priority, lower = sooner
ORDERINGS: Registry[Ordering] = Registry("migration ordering")


@ORDERINGS.register("random")
def random_order(ids: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(len(ids)).astype(np.float64)


@ORDERINGS.register("insertion")
def insertion_order(ids: np.ndarray, seed: int) -> np.ndarray:
    return ids.astype(np.float64)


@dataclasses.dataclass(frozen=True)
class WaveReport:
    run_id: int
    wave: int
    migrated: int  # items in this wave
    done: int  # items migrated so far
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def plan(
    ctx: Context,
    source: str,
    target: str,
    *,
    ordering: str = "random",
    seed: int = 0,
    wave_size: int | None = None,
) -> int:
    """Create a run and its task ledger: every item authoritative in ``source``, in ``ordering``."""
    order = ORDERINGS.get(ordering)
    with ctx.transaction() as session:
        src, dst = get_space(session, source), get_space(session, target)
        _refuse_active_run(session, src)
        ids = _authoritative_ids(session, src)
        run = MigrationRun(
            source_space_id=src.id,
            target_space_id=dst.id,
            ordering=ordering,
            wave_size=wave_size,
            state="planned",
            total_items=len(ids),
        )
        session.add(run)
        session.flush()
        priority = order(ids, seed)
        session.execute(
            insert(BackfillTask),
            [
                {"run_id": run.id, "item_id": int(i), "priority": float(p), "state": "pending"}
                for i, p in zip(ids, priority, strict=True)
            ],
        )
        return run.id


def run(
    ctx: Context,
    run_id: int,
    reembed: Reembed,
    *,
    wave_size: int,
    max_waves: int | None = None,
    on_wave: Callable[[WaveReport], None] | None = None,
) -> WaveReport:
    """Run waves until the ledger is empty, ``max_waves`` ran, or someone paused the run."""
    report = _start(ctx, run_id)
    with ctx.transaction() as session:
        store = load_store(ctx, _target(session, _run(session, run_id)))
    waves = 0
    while report.done < report.total and (max_waves is None or waves < max_waves):
        if _state(ctx, run_id) == "paused":
            return report
        report = _wave(ctx, run_id, store, reembed, wave_size)
        waves += 1
        if on_wave:
            on_wave(report)
    if report.done >= report.total:
        _set_state(ctx, run_id, "completed")
    return report


def _wave(ctx: Context, run_id: int, store, reembed: Reembed, wave_size: int) -> WaveReport:
    with ctx.transaction() as session:
        run_row = _run(session, run_id)
        target = _target(session, run_row)
        tasks = session.scalars(
            select(BackfillTask)
            .where(BackfillTask.run_id == run_id, BackfillTask.state == "pending")
            .order_by(BackfillTask.priority, BackfillTask.item_id)
            .limit(wave_size)
        ).all()
        ids = np.array([t.item_id for t in tasks], dtype=np.int64)
        vectors = check_vectors(reembed(ids), target.model_version.dim, "re-embedded vectors")
        store.add(ids, torch.nn.functional.normalize(vectors, dim=1).numpy())
        wave = _next_wave_number(session, run_id)
        with staged_for(ctx, target, store) as staged:
            _move_authority(session, run_row, ids)
            for task in tasks:
                task.state, task.wave = "done", wave
            run_row.done_items += len(ids)
            superseded = point_space_at(ctx, target, staged)
            session.flush()
        report = WaveReport(run_id, wave, len(ids), run_row.done_items, run_row.total_items)
    discard(superseded)
    return report


def _move_authority(session: Session, run_row: MigrationRun, ids: np.ndarray) -> None:
    id_list = [int(i) for i in ids]
    for chunk in chunked(id_list, SQL_CHUNK):
        session.execute(
            update(ItemEmbedding)
            .where(
                ItemEmbedding.space_id == run_row.source_space_id, ItemEmbedding.item_id.in_(chunk)
            )
            .values(authoritative=False)
        )
    session.execute(  # a replayed wave left no row behind: its transaction never committed
        insert(ItemEmbedding),
        [
            {
                "item_id": i,
                "space_id": run_row.target_space_id,
                "produced_by": "native",
                "migration_run_id": run_row.id,
                "authoritative": True,
            }
            for i in id_list
        ],
    )


def status(ctx: Context, run_id: int) -> dict[str, object]:
    with ctx.transaction() as session:
        r = _run(session, run_id)
        return {
            "run": r.id,
            "state": r.state,
            "ordering": r.ordering,
            "done": r.done_items,
            "total": r.total_items,
            "fraction": r.done_items / r.total_items if r.total_items else 1.0,
        }


def pause(ctx: Context, run_id: int) -> None:
    """Ask a running migration to stop after its current wave (resume with :func:`run`)."""
    _set_state(ctx, run_id, "paused")


def _start(ctx: Context, run_id: int) -> WaveReport:
    with ctx.transaction() as session:
        r = _run(session, run_id)
        if r.state not in ("planned", "running", "paused"):
            raise ConflictError(f"migration run {run_id} is {r.state}; it cannot run")
        r.state = "running"
        return WaveReport(run_id, 0, 0, r.done_items, r.total_items)


def _state(ctx: Context, run_id: int) -> str:
    with ctx.transaction() as session:
        return _run(session, run_id).state


def _set_state(ctx: Context, run_id: int, state: str) -> None:
    with ctx.transaction() as session:
        _run(session, run_id).state = state


def _run(session: Session, run_id: int) -> MigrationRun:
    found = session.get(MigrationRun, run_id)
    if found is None:
        raise NotFoundError(
            f"no migration run {run_id}", fix="list runs with: hotswap migrate status"
        )
    return found


def _target(session: Session, run_row: MigrationRun) -> EmbeddingSpace:
    return session.get_one(EmbeddingSpace, run_row.target_space_id)  # a foreign key: it exists


def _next_wave_number(session: Session, run_id: int) -> int:
    latest = session.scalar(
        select(func.max(BackfillTask.wave)).where(BackfillTask.run_id == run_id)
    )
    return (latest or 0) + 1


def _authoritative_ids(session: Session, space: EmbeddingSpace) -> np.ndarray:
    rows = session.scalars(
        select(ItemEmbedding.item_id)
        .where(ItemEmbedding.space_id == space.id, ItemEmbedding.authoritative.is_(True))
        .order_by(ItemEmbedding.item_id)
    ).all()
    return np.array(rows, dtype=np.int64)


def _refuse_active_run(session: Session, source: EmbeddingSpace) -> None:
    active = session.scalar(
        select(MigrationRun).where(
            MigrationRun.source_space_id == source.id,
            MigrationRun.state.in_(["planned", "running", "paused"]),
        )
    )
    if active is not None:
        raise ConflictError(
            f"space {source.name!r} already has migration run {active.id} ({active.state})",
            fix=f"finish or roll it back first (hotswap migrate status {active.id})",
        )
