"""Incremental migration: re-embed a gallery into a new space in waves, resumable after any crash.

Lifecycle of a run: ``planned -> running <-> paused -> completed -> cutover``, and ``rolled_back``
from any of them. The SQL ledger (``backfill_task``) is the source of truth. A wave picks the next
pending items in priority order and re-embeds them *outside* any transaction (the encoder is the
slow part; holding the catalog's write lock through it would stall every other writer); then, in
one transaction that first locks the run and the target space, it keeps the items still pending,
adds their vectors to the target index, writes a new snapshot, marks the tasks done, moves the
items' authority from the source space to the target space and points the target space at the new
snapshot (the commit protocol of index/galleries.py). A crash at any instant keeps the whole wave or
none of it; resuming (:func:`run` again) redoes an uncommitted wave, and the index's
insert-or-replace makes the redo duplicate nothing. Queries run on snapshots throughout.

Migration only flips authority: the source index keeps every old vector, so :func:`rollback` hands
items back without re-embedding anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from typing import Protocol, runtime_checkable

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy import delete, func, insert, literal, select, true, update
from sqlalchemy.orm import Session

from compat.vectors import check_vectors
from index.catalog import (
    BackfillTask,
    EmbeddingSpace,
    ItemAccess,
    ItemEmbedding,
    MigrationRun,
    ServingAlias,
    UTCDateTime,
    utcnow,
)
from index.context import Context
from index.galleries import (
    SQL_CHUNK,
    StagedSnapshot,
    chunked,
    discard,
    get_space,
    load_store,
    point_space_at,
    staged_for,
)
from index.ledger import pending_tasks
from index.search import read_only
from index.store import GalleryStore
from kernels.errors import ConflictError, CorruptArtifactError, InvalidInputError, NotFoundError
from models.registry import Registry

Reembed = Callable[[np.ndarray], torch.Tensor]  # item ids (n,) -> new-model vectors (n, d_new)
Score = Callable[[np.ndarray], np.ndarray | torch.Tensor]  # item ids (n,) -> uncertainty (n,)
Waves = Generator[tuple[np.ndarray, torch.Tensor], None, None]  # (ids (n,), vectors (n, d_new))
ACTIVE = ("planned", "running", "paused")
KMEANS_MIN_POINTS = 39  # faiss warns below 39 training points per centroid


# ---- orderings ---------------------------------------------------------------------------------


@dataclasses.dataclass
class OrderingInputs:
    """What an ordering may look at; the stored vectors are read only by orderings that ask."""

    ctx: Context
    session: Session
    source: EmbeddingSpace
    ids: np.ndarray  # (n,) int64 items authoritative in the source, ascending
    seed: int = 0
    score: Score | None = None  # for "uncertainty": higher = more uncertain = sooner
    labels: Mapping[int, int] | None = None  # item id -> class, for "distance_to_mean"
    clusters: int | None = None  # k-means clusters for "distance_to_mean" without labels

    def source_vectors(self) -> np.ndarray:
        """(n, d_old) float32: the vectors the source index holds for ``ids``, row for row."""
        return stored_vectors(load_store(self.ctx, self.source), self.ids)


Ordering = Callable[[OrderingInputs], np.ndarray]  # -> priority (n,), lower migrates sooner
ORDERINGS: Registry[Ordering] = Registry("migration ordering")


@ORDERINGS.register("random")
def random_order(inputs: OrderingInputs) -> np.ndarray:
    return np.random.default_rng(inputs.seed).permutation(len(inputs.ids)).astype(np.float64)


@ORDERINGS.register("insertion")
def insertion_order(inputs: OrderingInputs) -> np.ndarray:
    return inputs.ids.astype(np.float64)


@ORDERINGS.register("uncertainty")
def uncertainty_order(inputs: OrderingInputs) -> np.ndarray:
    """Most uncertain first, by a per-item score the caller computes (e.g. the old model's entropy)."""
    if inputs.score is None:
        raise InvalidInputError(
            "ordering 'uncertainty' needs a per-item score",
            fix="pass score=<callable: item ids (n,) -> uncertainty (n,), higher goes sooner>",
        )
    scores = torch.as_tensor(inputs.score(inputs.ids)).detach().cpu().double().numpy()
    return -_check_priorities(scores, len(inputs.ids), "uncertainty scores")


@ORDERINGS.register("distance_to_mean")
def distance_to_mean_order(inputs: OrderingInputs) -> np.ndarray:
    """Farthest from its class mean first: the items the old model places least confidently.

    Classes come from ``labels`` when given, else from k-means on the stored old vectors.
    """
    if len(inputs.ids) == 0:
        return np.empty(0)
    x = inputs.source_vectors()  # (n, d_old)
    groups = _groups(inputs, x)  # (n,) in [0, g)
    sums = np.zeros((int(groups.max()) + 1, x.shape[1]))
    np.add.at(sums, groups, x)
    means = sums / np.bincount(groups)[:, None]  # (g, d_old)
    return -np.linalg.norm(x - means[groups], axis=1)


@ORDERINGS.register("access_frequency")
def access_frequency_order(inputs: OrderingInputs) -> np.ndarray:
    """Most often returned by search first (counts from ``item_access``; unseen items last)."""
    rows = inputs.session.execute(select(ItemAccess.item_id, ItemAccess.hits))
    hits = {int(item): int(n) for item, n in rows}
    return -np.array([hits.get(int(i), 0) for i in inputs.ids], dtype=np.float64)


def _groups(inputs: OrderingInputs, x: np.ndarray) -> np.ndarray:
    if inputs.labels is not None:
        missing = [int(i) for i in inputs.ids if int(i) not in inputs.labels]
        if missing:
            raise InvalidInputError(f"no label for {len(missing)} items, e.g. {missing[:5]}")
        labels = np.array([inputs.labels[int(i)] for i in inputs.ids])
        return np.unique(labels, return_inverse=True)[1].astype(np.int64)
    n = len(x)
    k = inputs.clusters or max(1, min(math.isqrt(n), n // KMEANS_MIN_POINTS))
    if not 1 <= k <= n:
        raise InvalidInputError(f"clusters must be in [1, {n}] for {n} items, got {k}")
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    kmeans = faiss.Kmeans(x.shape[1], k, niter=20, seed=inputs.seed, verbose=False)
    kmeans.train(np.ascontiguousarray(x, dtype=np.float32))
    _, assigned = kmeans.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return assigned[:, 0].astype(np.int64)


def _check_priorities(values: np.ndarray, n: int, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (n,):
        raise InvalidInputError(f"{what}: expected shape ({n},), got {values.shape}")
    if not np.isfinite(values).all():
        raise InvalidInputError(
            f"{what}: NaN or Inf for items at rows {np.flatnonzero(~np.isfinite(values))[:5].tolist()}"
        )
    return values


def stored_vectors(store: GalleryStore, ids: np.ndarray) -> np.ndarray:
    """ids (n,) -> (n, d) float32 vectors as stored; every id must be in the store."""
    missing = np.setdiff1d(ids, store.ids())
    if len(missing):
        raise CorruptArtifactError(
            f"the index lacks {len(missing)} of the requested items, e.g. {missing[:5].tolist()}",
            fix="run: hotswap doctor",
        )
    if len(ids) == 0:
        return np.empty((0, store.dim), dtype=np.float32)
    return store.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))


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
        src, dst = _lock_space(session, source), get_space(session, target)
        if src.id == dst.id:
            raise InvalidInputError(f"source and target are the same space {source!r}")
        _refuse_active_run(session, src)
        ids = _authoritative_ids(session, src)
        inputs = OrderingInputs(ctx, session, src, ids, seed, score, labels, clusters)
        priority = _check_priorities(order(inputs), len(ids), f"ordering {ordering!r}")
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
        ids, dim = _authoritative_ids(session, src), dst.model_version.dim
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
    _complete_if_done(ctx, run_id)
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
        if _run(session, run_id).state != "running":
            return None
        ids = session.scalars(pending_tasks(run_id).limit(size + len(skip))).all()
    return np.array([i for i in ids if i not in skip][:size], dtype=np.int64)


def _target_dim(ctx: Context, run_id: int) -> int:
    with read_only(ctx) as session:
        return _space(session, _run(session, run_id).target_space_id).model_version.dim


def _commit_wave(
    ctx: Context, run_id: int, ids: np.ndarray, vectors: torch.Tensor, cache: _TargetCache
) -> WaveReport | None:
    """One wave's transaction; None when the run stopped meanwhile (its vectors are dropped)."""
    try:
        with ctx.transaction() as session:
            run_row = _lock_run(session, run_id)
            if run_row.state != "running":
                return None
            target = _lock_space(session, run_row.target_space_id)
            wave = _next_wave_number(session, run_id)
            taken = _take_tasks(session, run_id, ids, wave)  # a concurrent runner took the rest
            if not len(taken):
                return WaveReport(run_id, 0, 0, run_row.done_items, run_row.total_items)
            keep = torch.from_numpy(np.isin(ids, taken))
            ids, x = ids[keep.numpy()], F.normalize(vectors[keep], dim=1)
            store = cache.get(ctx, target)
            store.add(ids, x.numpy())
            with staged_for(ctx, target, store) as staged:
                _move_authority(session, run_row, ids)
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


def _move_authority(session: Session, run_row: MigrationRun, ids: np.ndarray) -> None:
    now = utcnow()
    for chunk in chunked(ids.tolist(), SQL_CHUNK):
        session.execute(
            update(ItemEmbedding)
            .where(
                ItemEmbedding.space_id == run_row.source_space_id, ItemEmbedding.item_id.in_(chunk)
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
            literal(now, UTCDateTime()),
        ).where(BackfillTask.run_id == run_row.id, BackfillTask.item_id.in_(chunk))
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


def _complete_if_done(ctx: Context, run_id: int) -> None:
    with ctx.transaction() as session:
        run_row = _lock_run(session, run_id)
        pending = session.scalar(
            select(func.count()).where(
                BackfillTask.run_id == run_id, BackfillTask.state.in_(["pending", "leased"])
            )
        )
        if run_row.state == "running" and pending == 0:
            run_row.state = "completed"


# ---- lifecycle ---------------------------------------------------------------------------------


def status(ctx: Context, run_id: int) -> dict[str, object]:
    with read_only(ctx) as session:
        r = _run(session, run_id)
        return {
            "run": r.id,
            "state": r.state,
            "ordering": r.ordering,
            "source": _space(session, r.source_space_id).name,
            "target": _space(session, r.target_space_id).name,
            "done": r.done_items,
            "total": r.total_items,
            "fraction": r.done_items / r.total_items if r.total_items else 1.0,
        }


def pause(ctx: Context, run_id: int) -> None:
    """Stop a migration at its next wave boundary (resume with :func:`run`): a wave committing
    now still commits, one being re-embedded is dropped."""
    with ctx.transaction() as session:
        r = _lock_run(session, run_id)
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
        r = _lock_run(session, run_id)
        src, dst = _space(session, r.source_space_id), _space(session, r.target_space_id)
        if r.state == "cutover":
            return sorted(a.name for a in _aliases_serving(session, dst))
        if r.state != "completed":
            raise ConflictError(
                f"migration run {run_id} is {r.state}; only a completed run can be cut over",
                fix=f"finish it first: hotswap migrate resume {run_id}",
            )
        left = len(_authoritative_ids(session, src))
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
        r = _lock_run(session, run_id)
        if r.state == "rolled_back":
            return 0
        _refuse_later_runs(session, r)
        src, dst = _space(session, r.source_space_id), _lock_space(session, r.target_space_id)
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
        store = GalleryStore.create(space.model_version.dim, space.index_factory)
    else:
        store = load_store(ctx, space)
        store.remove(ids)
    with staged_for(ctx, space, store) as staged:
        yield staged


# ---- small helpers -----------------------------------------------------------------------------


def _start(ctx: Context, run_id: int) -> WaveReport | None:
    """Mark the run running; None when it already completed (resuming it again is a no-op)."""
    with ctx.transaction() as session:
        r = _lock_run(session, run_id)
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
        r = _run(session, run_id)
        return WaveReport(run_id, 0, 0, r.done_items, r.total_items)


def _run_wave_size(ctx: Context, run_id: int) -> int:
    with read_only(ctx) as session:
        size = _run(session, run_id).wave_size
    if size is None:
        raise InvalidInputError(
            f"migration run {run_id} was planned without a wave size", fix="pass wave_size="
        )
    return size


def _run(session: Session, run_id: int) -> MigrationRun:
    found = session.get(MigrationRun, run_id)
    if found is None:
        raise NotFoundError(
            f"no migration run {run_id}", fix="list runs with: hotswap migrate status"
        )
    return found


def _lock_run(session: Session, run_id: int) -> MigrationRun:
    """The run row, locked until commit on PostgreSQL (SQLite's BEGIN IMMEDIATE already is).

    ``populate_existing``: a row this session loaded before the lock was granted must be read
    again, or a state another transaction committed meanwhile (a rollback) would go unseen."""
    found = session.scalars(
        select(MigrationRun)
        .where(MigrationRun.id == run_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    return found if found is not None else _run(session, run_id)  # _run raises NotFoundError


def _space(session: Session, space_id: int) -> EmbeddingSpace:
    return session.get_one(EmbeddingSpace, space_id)  # foreign keys: it exists


def _lock_space(session: Session, space: int | str) -> EmbeddingSpace:
    """A space, locked so that no other writer stages a snapshot of it until we commit (and read
    again once locked, see :func:`_lock_run`)."""
    space_id = get_space(session, space).id if isinstance(space, str) else space
    return session.scalars(
        select(EmbeddingSpace)
        .where(EmbeddingSpace.id == space_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


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
