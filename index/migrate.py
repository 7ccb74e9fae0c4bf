"""Incremental migration: re-embed a gallery into a new space in waves, resumable after any crash.

Lifecycle of a run: ``planned -> running <-> paused -> completed -> cutover``, and ``rolled_back``
from any of them. The SQL ledger (``backfill_task``) is the source of truth. A wave picks the next
pending items in priority order and re-embeds them *outside* any transaction (the encoder is the
slow part; holding the catalog's write lock through it would stall every other writer); then, in
one transaction that first locks the run and the target space, it keeps the items still pending,
adds their vectors to the target index, writes them as a delta file (or, when a fold is due, a
new full snapshot), marks the tasks done, moves the items' authority from the source space to the
target space and appends the delta to the target space (the commit protocol of
index/galleries.py); completing the run folds the deltas into one snapshot. A crash at any
instant keeps the whole wave or none of it; resuming (:func:`run` again) redoes an uncommitted
wave, and the index's insert-or-replace makes the redo duplicate nothing. Queries run on
snapshots throughout.

Orderings live in index/orderings.py, the lifecycle after the waves (status, pause, cutover,
rollback) in index/lifecycle.py; both are re-exported here, the module callers use.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy import func, insert, literal, select, true, update
from sqlalchemy.orm import Session

from compat.vectors import check_vectors
from index.catalog import (
    BackfillTask,
    EmbeddingSpace,
    ItemEmbedding,
    MigrationRun,
    UTCDateTime,
    utcnow,
)
from index.context import Context
from index.galleries import (
    SQL_CHUNK,
    chunked,
    discard,
    get_space,
    load_store,
    point_space_at,
    space_deltas,
    staged_for,
)
from index.ledger import pending_tasks
from index.lifecycle import cutover as cutover
from index.lifecycle import hand_back as hand_back
from index.lifecycle import pause as pause
from index.lifecycle import rollback as rollback
from index.lifecycle import status as status
from index.orderings import ORDERINGS as ORDERINGS
from index.orderings import OrderingInputs as OrderingInputs
from index.orderings import Score as Score
from index.orderings import check_priorities
from index.orderings import stored_vectors as stored_vectors
from index.runs import ACTIVE as ACTIVE
from index.runs import authoritative_ids, get_run, lock_run, lock_space, space_by_id
from index.search import read_only
from index.store import GalleryStore
from kernels.errors import ConflictError, InvalidInputError

Reembed = Callable[[np.ndarray], torch.Tensor]  # item ids (n,) -> new-model vectors (n, d_new)
Waves = Generator[tuple[np.ndarray, torch.Tensor], None, None]  # (ids (n,), vectors (n, d_new))


# ---- plan and estimate -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimate:
    """How long re-embedding the rest of a source space should take, before starting."""

    items: int  # authoritative in the source, i.e. still to migrate
    throughput: float  # encoder items/s (given, or measured by the probe)
    seconds: float  # items / throughput: encoder time only (snapshot commits come on top)
    probed: int  # items the timing probe re-embedded; 0 when throughput was given


def plan(
    ctx: Context,
    source: str,
    target: str,
    *,
    ordering: str = "random",
    seed: int = 0,
    wave_size: int | None = None,
    score: Score | None = None,
    labels: Mapping[int, int] | None = None,
    clusters: int | None = None,
) -> int:
    """Create a run and its task ledger (every item authoritative in ``source``); return its id.

    ``score`` feeds the ``uncertainty`` ordering, ``labels``/``clusters`` ``distance_to_mean``.
    Use :func:`estimate` for the cost beforehand.
    """
    order = ORDERINGS.get(ordering)
    if wave_size is not None and wave_size < 1:
        raise InvalidInputError(f"wave_size must be >= 1, got {wave_size}")
    with ctx.transaction() as session:
        src, dst = lock_space(session, source), get_space(session, target)
        if src.id == dst.id:
            raise InvalidInputError(f"source and target are the same space {source!r}")
        _refuse_active_run(session, src)
        ids = authoritative_ids(session, src)
        inputs = OrderingInputs(ctx, session, src, ids, seed, score, labels, clusters)
        priority = check_priorities(order(inputs), len(ids), f"ordering {ordering!r}")
        run_row = MigrationRun(
            source_space_id=src.id,
            target_space_id=dst.id,
            ordering=ordering,
            wave_size=wave_size,
            state="planned",
            total_items=len(ids),
        )
        session.add(run_row)
        session.flush()
        rows = [
            {"run_id": run_row.id, "item_id": int(i), "priority": float(p), "state": "pending"}
            for i, p in zip(ids, priority, strict=True)
        ]
        if rows:
            session.execute(insert(BackfillTask), rows)
        return run_row.id


def estimate(
    ctx: Context,
    source: str,
    target: str,
    *,
    throughput: float | None = None,
    reembed: Reembed | None = None,
    sample: int = 256,
    repeats: int = 3,
    seed: int = 0,
) -> Estimate:
    """Items left in ``source`` and the encoder time they need: from a known ``throughput``
    (items/s) or by timing ``reembed`` on a seeded sample (one small warm-up call, then the
    fastest of ``repeats`` timed calls).

    The probe also checks the encoder's output against ``target``'s width, so a wrong encoder is
    caught before a run starts. Changes nothing.
    """
    if (throughput is None) == (reembed is None):
        raise InvalidInputError("pass exactly one of throughput= (items/s) or reembed=")
    with read_only(ctx) as session:
        src, dst = get_space(session, source), get_space(session, target)
        ids, dim = authoritative_ids(session, src), dst.model_version.dim
    probed = 0
    if reembed is not None:
        if len(ids) == 0:
            return Estimate(0, math.inf, 0.0, 0)
        probe = np.sort(np.random.default_rng(seed).choice(ids, min(sample, len(ids)), False))
        reembed(probe[: min(8, len(probe))])  # first calls pay one-off costs (allocations, JIT)
        fastest = math.inf
        for _ in range(repeats):  # the fastest repeat: other load on the machine only slows
            start = time.perf_counter()
            check_vectors(torch.as_tensor(reembed(probe)), dim, "re-embedded vectors")
            fastest = min(fastest, time.perf_counter() - start)
        throughput, probed = len(probe) / max(fastest, 1e-9), len(probe)
    if throughput is None or not throughput > 0 or not math.isfinite(throughput):
        raise InvalidInputError(
            f"throughput must be a positive number of items/s, got {throughput}"
        )
    return Estimate(len(ids), float(throughput), len(ids) / throughput, probed)


# ---- waves -------------------------------------------------------------------------------------


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


@dataclasses.dataclass
class _TargetCache:
    """The target index as of ``seq``; reloaded when the catalog's snapshot is newer (another
    process committed), dropped when a commit fails (it may hold vectors that never committed)."""

    store: GalleryStore | None = None
    seq: int = -1

    def get(self, ctx: Context, space: EmbeddingSpace) -> GalleryStore:
        if self.store is None or self.seq != space.snapshot_seq:
            self.store, self.seq = load_store(ctx, space), space.snapshot_seq
        return self.store


@runtime_checkable
class Engine(Protocol):
    """Where a run's new-model vectors come from: waves of pending items in ledger order.

    ``waves`` yields ``(ids (n,) int64, vectors (n, d_new))`` for the next pending items in
    priority order, at most ``size`` per wave and ``limit`` waves, re-reading the ledger as it
    goes. :func:`run` commits each wave before asking for the next and closes the iterator when
    the run stops (pause, rollback, limit): an engine never touches the index or the ledger, so
    every engine shares one commit path and its crash safety.
    """

    def waves(self, ctx: Context, run_id: int, size: int, limit: int | None) -> Waves: ...


def run(
    ctx: Context,
    run_id: int,
    reembed: Reembed | Engine,
    *,
    wave_size: int | None = None,
    max_waves: int | None = None,
    on_wave: Callable[[WaveReport], None] | None = None,
    prefetch: bool = True,
) -> WaveReport:
    """Run (or resume) waves until the ledger is empty, ``max_waves`` ran, or the run was paused
    or rolled back. A run left ``running`` by a crash, or ``paused``, continues where it stopped;
    running a completed run again changes nothing.

    ``reembed`` is a callable (item ids -> vectors, run by :class:`LocalEngine`) or an
    :class:`Engine` (e.g. index.ray_engine.RayEngine); ``prefetch`` applies to a callable.
    """
    started = _start(ctx, run_id)
    if started is None:
        return _final_report(ctx, run_id)
    size = wave_size or _run_wave_size(ctx, run_id)
    engine = reembed if isinstance(reembed, Engine) else LocalEngine(reembed, prefetch=prefetch)
    dim, cache, report = _target_dim(ctx, run_id), _TargetCache(), started
    with closing(engine.waves(ctx, run_id, size, max_waves)) as waves:
        for ids, vectors in waves:
            committed = _commit_wave(ctx, run_id, ids, _checked(vectors, ids, dim), cache)
            if committed is None:  # paused or rolled back meanwhile
                break
            report = committed
            if on_wave:
                on_wave(report)
    _complete_if_done(ctx, run_id, cache)
    return report


Encoding = Callable[[], torch.Tensor]  # waits for (or computes) one wave's vectors


@dataclasses.dataclass(frozen=True)
class LocalEngine:
    """Re-embed in this process. With ``prefetch`` the next wave is re-embedded while the current
    one commits (SQL, snapshot write, fsync), in one worker thread: ``reembed`` is called from that
    thread, never twice at once. A pause or rollback drops the wave being encoded."""

    reembed: Reembed
    prefetch: bool = True

    def waves(self, ctx: Context, run_id: int, size: int, limit: int | None) -> Waves:
        if not self.prefetch:
            yield from self._waves(ctx, run_id, size, limit, lambda ids: lambda: self.reembed(ids))
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hotswap-reembed") as pool:
            encode = lambda ids: pool.submit(self.reembed, ids).result  # noqa: E731
            yield from self._waves(ctx, run_id, size, limit, encode)

    @staticmethod
    def _waves(
        ctx: Context,
        run_id: int,
        size: int,
        limit: int | None,
        encode: Callable[[np.ndarray], Encoding],
    ) -> Waves:
        picked, waves = _next_ids(ctx, run_id, size), 0
        pending = encode(picked) if picked is not None and len(picked) else None
        while picked is not None and pending is not None:
            ids, vectors, waves = picked, pending(), waves + 1
            more = limit is None or waves < limit
            picked = _next_ids(ctx, run_id, size, exclude=ids) if more else None
            pending = encode(picked) if picked is not None and len(picked) else None
            yield ids, vectors  # committed by run() while the next wave encodes


def _checked(vectors: torch.Tensor, ids: np.ndarray, dim: int) -> torch.Tensor:
    x = check_vectors(torch.as_tensor(vectors), dim, "re-embedded vectors")
    if len(x) != len(ids):
        raise InvalidInputError(f"re-embedding {len(ids)} items returned {len(x)} vectors")
    return x


def _next_ids(
    ctx: Context, run_id: int, size: int, exclude: np.ndarray | None = None
) -> np.ndarray | None:
    """The next ``size`` pending items in priority order (skipping ``exclude``, a wave not yet
    committed); None once the run is no longer running."""
    skip = set() if exclude is None else set(exclude.tolist())
    with read_only(ctx) as session:
        if get_run(session, run_id).state != "running":
            return None
        ids = session.scalars(pending_tasks(run_id).limit(size + len(skip))).all()
    return np.array([i for i in ids if i not in skip][:size], dtype=np.int64)


def _target_dim(ctx: Context, run_id: int) -> int:
    with read_only(ctx) as session:
        return space_by_id(session, get_run(session, run_id).target_space_id).model_version.dim


def _commit_wave(
    ctx: Context, run_id: int, ids: np.ndarray, vectors: torch.Tensor, cache: _TargetCache
) -> WaveReport | None:
    """One wave's transaction; None when the run stopped meanwhile (its vectors are dropped)."""
    try:
        with ctx.transaction() as session:
            run_row = lock_run(session, run_id)
            if run_row.state != "running":
                return None
            target = lock_space(session, run_row.target_space_id)
            wave = _next_wave_number(session, run_id)
            taken = _take_tasks(session, run_id, ids, wave)  # a concurrent runner took the rest
            if not len(taken):
                return WaveReport(run_id, 0, 0, run_row.done_items, run_row.total_items)
            keep = torch.from_numpy(np.isin(ids, taken))
            ids, x = ids[keep.numpy()], F.normalize(vectors[keep], dim=1)
            store = cache.get(ctx, target)
            store.add(ids, x.numpy())
            # Only added rows: usually staged as a delta file, not a rewrite of the whole index.
            with staged_for(ctx, target, store, added=(ids, x.numpy())) as staged:
                _move_authority(session, run_row, wave)
                run_row.done_items += len(ids)
                superseded = point_space_at(ctx, target, staged)
                session.flush()
            report = WaveReport(run_id, wave, len(ids), run_row.done_items, run_row.total_items)
    except BaseException:
        cache.store = None  # it may hold vectors whose wave never committed
        raise
    cache.seq = staged.seq
    discard(superseded)
    return report


# Set-based statements: one IN list per chunk and no ORM bookkeeping per row, so a wave costs a
# few statements, not one per item (see docs/results/migration.md).
_BULK = {"synchronize_session": False}


def _take_tasks(session: Session, run_id: int, ids: np.ndarray, wave: int) -> np.ndarray:
    """Mark the still-pending tasks of ``ids`` done in ``wave``; return their item ids."""
    taken: list[int] = []
    for chunk in chunked(ids.tolist(), SQL_CHUNK):
        taken += session.scalars(
            update(BackfillTask)
            .where(
                BackfillTask.run_id == run_id,
                BackfillTask.item_id.in_(chunk),
                BackfillTask.state == "pending",
            )
            .values(state="done", wave=wave)
            .returning(BackfillTask.item_id),
            execution_options=_BULK,
        ).all()
    return np.array(taken, dtype=np.int64)


def _move_authority(session: Session, run_row: MigrationRun, wave: int) -> None:
    """The items of ``wave`` (their tasks just marked done) become the target's: two set-based
    statements keyed by (run, wave) on the ledger's index, no id lists to bind."""
    in_wave = (BackfillTask.run_id == run_row.id, BackfillTask.wave == wave)
    session.execute(
        update(ItemEmbedding)
        .where(
            ItemEmbedding.space_id == run_row.source_space_id,
            ItemEmbedding.item_id.in_(select(BackfillTask.item_id).where(*in_wave)),
        )
        .values(authoritative=False),
        execution_options=_BULK,
    )
    rows = select(  # a replayed wave left no row behind: its transaction never committed
        BackfillTask.item_id,
        literal(run_row.target_space_id),
        literal("native"),
        literal(run_row.id),
        true(),
        literal(utcnow(), UTCDateTime()),
    ).where(*in_wave)
    session.execute(
        insert(ItemEmbedding).from_select(
            [
                "item_id",
                "space_id",
                "produced_by",
                "migration_run_id",
                "authoritative",
                "created_at",
            ],
            rows,
        )
    )


def _complete_if_done(ctx: Context, run_id: int, cache: _TargetCache) -> None:
    """Mark the run completed once no task is left, folding the target's deltas into one
    snapshot in the same transaction (a crash leaves the run running, resume completes it)."""
    superseded: list[Path] = []
    with ctx.transaction() as session:
        run_row = lock_run(session, run_id)
        pending = session.scalar(
            select(func.count()).where(
                BackfillTask.run_id == run_id, BackfillTask.state.in_(["pending", "leased"])
            )
        )
        if run_row.state == "running" and pending == 0:
            run_row.state = "completed"
            target = lock_space(session, run_row.target_space_id)
            if space_deltas(target):
                with staged_for(ctx, target, cache.get(ctx, target)) as staged:
                    superseded = point_space_at(ctx, target, staged)
                    session.flush()
    discard(superseded)


# ---- small helpers -----------------------------------------------------------------------------


def _start(ctx: Context, run_id: int) -> WaveReport | None:
    """Mark the run running; None when it already completed (resuming it again is a no-op)."""
    with ctx.transaction() as session:
        r = lock_run(session, run_id)
        if r.state == "completed":
            return None
        if r.state not in ACTIVE:
            raise ConflictError(
                f"migration run {run_id} is {r.state}; it cannot run",
                fix="plan a new run (hotswap migrate plan)",
            )
        r.state = "running"
        return WaveReport(run_id, 0, 0, r.done_items, r.total_items)


def _final_report(ctx: Context, run_id: int) -> WaveReport:
    with read_only(ctx) as session:
        r = get_run(session, run_id)
        return WaveReport(run_id, 0, 0, r.done_items, r.total_items)


def _run_wave_size(ctx: Context, run_id: int) -> int:
    with read_only(ctx) as session:
        size = get_run(session, run_id).wave_size
    if size is None:
        raise InvalidInputError(
            f"migration run {run_id} was planned without a wave size", fix="pass wave_size="
        )
    return size


def _next_wave_number(session: Session, run_id: int) -> int:
    latest = session.scalar(
        select(func.max(BackfillTask.wave)).where(BackfillTask.run_id == run_id)
    )
    return (latest or 0) + 1


def _refuse_active_run(session: Session, source: EmbeddingSpace) -> None:
    active = session.scalar(
        select(MigrationRun).where(
            MigrationRun.source_space_id == source.id, MigrationRun.state.in_(ACTIVE)
        )
    )
    if active is not None:
        raise ConflictError(
            f"space {source.name!r} already has migration run {active.id} ({active.state})",
            fix=f"finish or roll it back first (hotswap migrate status {active.id})",
        )
