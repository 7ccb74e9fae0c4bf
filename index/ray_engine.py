"""A migration engine on Ray Data: an actor pool re-embeds, this process commits.

The pipeline (one per :meth:`RayEngine.waves` call, i.e. per ``migrate.run``)::

    ledger pages (Ray tasks: SQL reads of pending tasks, in migration order)
      -> map_batches(Embedder), an actor pool: each actor builds its encoder ONCE
         (``EncoderFactory``; on a GPU when the cluster has them) and embeds batches
      -> iter_batches(wave_size) in the driver -> migrate.run commits each wave

Order is preserved end to end (``preserve_order``), so waves are exactly the local engine's:
the next ``wave_size`` pending items by priority. The driver is the single committer and uses the
local engine's commit path (``migrate._commit_wave``): the FAISS snapshot is written and the
ledger marked in one transaction, so a crash anywhere -- driver, actor, or the whole cluster --
loses or duplicates nothing, and resume (``migrate.run`` again, with either engine) re-reads the
ledger. The ledger is read in pages keyed by ``(priority, task id)``, so the gallery never has to
fit in the driver's memory.

Throughput (docs/results/scale.md): encoder calls are large (a text encoder pads less when it
length-sorts more items), one call is in flight per actor, and the actor pool's start-up is paid
once per run, so a migration is best run as one long run (docs/scale.md).

Ray is the ``scale`` extra, imported lazily: without it, building an engine raises
:class:`~kernels.errors.MissingExtraError` with the install command.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.context import Context
from index.ledger import page_bounds
from index.migrate import Reembed, Waves
from index.ray_workers import Embedder, EncoderFactory, ItemVectors, read_pages
from index.search import read_only
from index.sources import _rows_by_item_id, precomputed_source
from kernels.errors import HotswapError, InvalidInputError, did_you_mean
from kernels.optional import require
from models.vector_files import load_ids, load_vectors


@dataclasses.dataclass(frozen=True, kw_only=True)
class RayEngineConfig:
    """How the actor pool runs; ``address`` None joins the cluster of ``RAY_ADDRESS`` or starts a
    local one (``ray.init()``, without the dashboard)."""

    workers: int = 2  # encoder actors, each holding ``cpus_per_worker`` CPUs (and its GPU share)
    # Items per encoder call inside an actor. Large on purpose: a text encoder sorts a call's
    # items by length before padding, so calls of 64 items cost about twice the CPU of calls of
    # 1,000 (all-MiniLM-L6-v2, docs/results/scale.md). It is independent of the wave size.
    batch_size: int = 1024
    # Ledger rows per read task. A page is one block, and Ray Data hands an actor whole blocks:
    # pages are the unit of load balance, so keep several per actor (page_size = batch_size:
    # one block per encoder call, no re-bundling).
    page_size: int = 1024
    cpus_per_worker: int = 1  # torch threads per actor follow it (Ray sets OMP_NUM_THREADS)
    gpus_per_worker: float | None = None  # None: one GPU each when the cluster has enough, else 0
    address: str | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "batch_size", "page_size", "cpus_per_worker"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise InvalidInputError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")


class RayEngine:
    """A :class:`index.migrate.Engine`: ``migrate.run(ctx, run_id, RayEngine(factory))``."""

    def __init__(self, encoder: EncoderFactory, config: RayEngineConfig | None = None) -> None:
        self.ray: Any = require("ray", "scale")
        require("ray.data", "scale")
        self.encoder, self.config = encoder, config or RayEngineConfig()

    def waves(self, ctx: Context, run_id: int, size: int, limit: int | None) -> Waves:
        if limit is not None and limit < 1:
            return
        batches = iter(
            self._dataset(ctx, run_id, None if limit is None else limit * size).iter_batches(
                batch_size=size, batch_format="numpy", prefetch_batches=1
            )
        )
        try:
            for done, batch in enumerate(batches, start=1):
                # Arrow hands out read-only views; the commit path gets its own writable copy.
                vectors = np.require(batch["vector"], np.float32, "W")  # (n, d)
                yield batch["item_id"].astype(np.int64), torch.from_numpy(vectors)
                if limit is not None and done >= limit:
                    return
        except Exception as e:
            domain = _domain_error(e)
            if domain is None:
                raise
            # As raised in the actor, without the retry advice Ray Data appends to its message.
            raise type(domain)(domain.message, fix=domain.fix) from e
        finally:
            close = getattr(batches, "close", None)
            if close is not None:  # stops the streaming executor and its actors now
                close()

    def _dataset(self, ctx: Context, run_id: int, items: int | None) -> Any:
        """The pipeline over the pending ledger, or its first ``items`` (rounded up to pages)."""
        ray = self.ray
        if not ray.is_initialized():  # a new one-machine cluster goes without the dashboard,
            # whose processes take CPU from the encoders (ignored when joining a cluster)
            ray.init(address=self.config.address, include_dashboard=False)
        with read_only(ctx) as session:
            bounds = page_bounds(session, run_id, self.config.page_size)
        url = ctx.engine.url.render_as_string(hide_password=False)
        count = len(bounds) + 1  # the last page: everything after the last bound
        if items is not None:  # a --limit run encodes no page it will not commit
            count = min(count, -(-items // self.config.page_size))
        # One in-memory block per page: a read operator would want a CPU the encoders hold.
        pages = ray.data.from_numpy([np.array([p]) for p in range(count)])
        ids = pages.map_batches(
            read_pages,
            batch_size=1,
            fn_kwargs={"url": url, "run_id": run_id, "bounds": bounds},
            num_cpus=0,  # SQL reads: the CPUs belong to the encoders
        )
        # One call in flight per actor: a batch is seconds of encoder work and its input is a
        # few KB of ids, so queueing a second one gains no overlap, while it lets the first actor
        # up take pages a slower-starting one should get (a whole run on one actor, seen here).
        # No more actors than pages: an actor with nothing to do still costs its start-up.
        workers = min(self.config.workers, count)
        pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1)
        embedded = ids.map_batches(
            Embedder,
            fn_constructor_args=(self.encoder,),
            batch_size=self.config.batch_size,
            batch_format="numpy",
            compute=pool,
            num_cpus=self.config.cpus_per_worker,
            num_gpus=self._gpus(),
        )
        options = embedded.context
        options.execution_options.preserve_order = True  # waves in priority order
        options.enable_progress_bars = options.print_on_execution_start = False
        options.raise_original_map_exception = True  # our typed errors, not a wrapper
        return embedded

    def _gpus(self) -> float:
        if self.config.gpus_per_worker is not None:
            return self.config.gpus_per_worker
        have = float(self.ray.cluster_resources().get("GPU", 0.0))
        return 1.0 if have >= self.config.workers else 0.0


def precomputed_engine(
    ctx: Context, ids: Path, vectors: Path, config: RayEngineConfig | None = None
) -> RayEngine:
    """``hotswap migrate start --engine ray``: actors memory-map the .npy file (on a cluster it
    must sit on storage every node sees); external ids are resolved to item ids here, once."""
    external = load_ids(ids)
    table = np.load(vectors, mmap_mode="r", allow_pickle=False) if vectors.is_file() else None
    if vectors.suffix != ".npy" or table is None or table.ndim != 2 or len(table) != len(external):
        raise InvalidInputError(
            f"{vectors} must be a .npy (N, d) array with one row per line of {ids}",
            fix="write the vectors with numpy.save, in the order of the ids file",
        )
    row_of = _rows_by_item_id(ctx, external)
    item_ids = np.array(sorted(row_of), dtype=np.int64)
    rows = np.array([row_of[int(i)] for i in item_ids], dtype=np.int64)
    return RayEngine(ItemVectors(item_ids, rows, vectors.resolve()), config)


def _domain_error(error: BaseException) -> HotswapError | None:
    """The hotswap error an actor raised, under the exceptions Ray wraps it in."""
    seen: BaseException | None = error
    while seen is not None:
        cause = getattr(seen, "cause", None)  # RayTaskError: the exception the worker raised
        if isinstance(cause, HotswapError):
            return cause
        if isinstance(seen, HotswapError):
            return seen
        seen = cause or seen.__cause__
    return None


ENGINES = ("local", "ray")


def precomputed(
    ctx: Context, ids: Path, vectors: Path, *, engine: str = "local", workers: int = 2
) -> Reembed | RayEngine:
    """What ``hotswap migrate start`` hands to ``migrate.run`` for precomputed vectors: a
    callable run in this process (``local``) or a :class:`RayEngine` with ``workers`` actors."""
    if engine == "ray":
        return precomputed_engine(ctx, ids, vectors, RayEngineConfig(workers=workers))
    if engine != "local":
        raise InvalidInputError(
            f"unknown engine {engine!r}", fix=did_you_mean(engine, list(ENGINES))
        )
    return precomputed_source(ctx, load_ids(ids), load_vectors(vectors))
