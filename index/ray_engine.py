"""A migration engine on Ray Data: an actor pool re-embeds, this process commits.

The pipeline (one per :meth:`RayEngine.waves` call, i.e. per ``migrate.run``)::

    ledger pages (Ray tasks: SQL reads of pending tasks, in migration order)
      -> map_batches(_Embedder), an actor pool: each actor builds its encoder ONCE
         (``EncoderFactory``; on a GPU when the cluster has them) and embeds batches
      -> iter_batches(wave_size) in the driver -> migrate.run commits each wave

Order is preserved end to end (``preserve_order``), so waves are exactly the local engine's:
the next ``wave_size`` pending items by priority. The driver is the single committer and uses the
local engine's commit path (``migrate._commit_wave``): the FAISS snapshot is written and the
ledger marked in one transaction, so a crash anywhere -- driver, actor, or the whole cluster --
loses or duplicates nothing, and resume (``migrate.run`` again, with either engine) re-reads the
ledger. The ledger is read in pages keyed by ``(priority, task id)``, so the gallery never has to
fit in the driver's memory.

Ray is the ``scale`` extra, imported lazily: without it, building an engine raises
:class:`~kernels.errors.MissingExtraError` with the install command.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import func, select, tuple_

from index import db
from index.catalog import BackfillTask
from index.context import Context, open_context
from index.migrate import MIGRATION_ORDER, Reembed, Waves, pending_tasks
from index.search import read_only
from index.sources import precomputed_source
from kernels.errors import InvalidInputError
from kernels.optional import require
from models.vector_files import load_ids, load_vectors

EncoderFactory = Callable[[], Reembed]  # picklable; called once per actor, on its machine
Key = tuple[float, int]  # (priority, task id): a position in the migration order


@dataclasses.dataclass(frozen=True, kw_only=True)
class RayEngineConfig:
    """How the actor pool runs; ``address`` None joins the cluster of ``RAY_ADDRESS`` or starts a
    local one (``ray.init()``)."""

    workers: int = 2  # encoder actors, each holding one CPU (and its GPU share)
    batch_size: int = 256  # items per encoder call inside an actor
    page_size: int = 10_000  # ledger rows per read task
    gpus_per_worker: float | None = None  # None: one GPU each when the cluster has enough, else 0
    address: str | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "batch_size", "page_size"):
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
            self._dataset(ctx, run_id).iter_batches(
                batch_size=size, batch_format="numpy", prefetch_batches=1
            )
        )
        try:
            for done, batch in enumerate(batches, start=1):
                yield batch["item_id"].astype(np.int64), torch.from_numpy(batch["vector"])
                if limit is not None and done >= limit:
                    return
        finally:
            close = getattr(batches, "close", None)
            if close is not None:  # stops the streaming executor and its actors now
                close()

    def _dataset(self, ctx: Context, run_id: int) -> Any:
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.config.address)
        bounds = ledger_bounds(ctx, run_id, self.config.page_size)
        url = ctx.engine.url.render_as_string(hide_password=False)
        # One in-memory block per page: a read operator would want a CPU the encoders hold.
        pages = ray.data.from_numpy([np.array([p]) for p in range(len(bounds) + 1)])
        ids = pages.map_batches(
            read_pages,
            batch_size=1,
            fn_kwargs={"url": url, "run_id": run_id, "bounds": bounds},
            num_cpus=0,  # SQL reads: the CPUs belong to the encoders
        )
        embedded = ids.map_batches(
            _Embedder,
            fn_constructor_args=(self.encoder,),
            batch_size=self.config.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.config.workers),
            num_cpus=1,
            num_gpus=self._gpus(),
        )
        embedded.context.execution_options.preserve_order = True  # waves in priority order
        embedded.context.enable_progress_bars = False
        return embedded

    def _gpus(self) -> float:
        if self.config.gpus_per_worker is not None:
            return self.config.gpus_per_worker
        have = float(self.ray.cluster_resources().get("GPU", 0.0))
        return 1.0 if have >= self.config.workers else 0.0


def ledger_bounds(ctx: Context, run_id: int, page_size: int) -> list[Key]:
    """Every ``page_size``-th pending task's key, in migration order: page i holds the tasks
    after key i-1 up to key i (the last page: everything after the last key). One SQL scan
    done by the database; the driver holds total/page_size keys, never the ledger."""
    rank = func.row_number().over(order_by=MIGRATION_ORDER).label("rank")
    ranked = (
        select(BackfillTask.priority, BackfillTask.id, rank)
        .where(BackfillTask.run_id == run_id, BackfillTask.state == "pending")
        .subquery()
    )
    query = (
        select(ranked.c.priority, ranked.c.id)
        .where(ranked.c.rank % page_size == 0)
        .order_by(ranked.c.rank)
    )
    with read_only(ctx) as session:
        return [(float(p), int(i)) for p, i in session.execute(query)]


def read_pages(
    batch: dict[str, np.ndarray], *, url: str, run_id: int, bounds: list[Key]
) -> dict[str, np.ndarray]:
    """Ray task: page numbers (b,) -> their pending item ids, in migration order."""
    engine = db.connect(url)
    try:
        with engine.connect() as connection:
            ids = [
                item
                for page in batch["data"].tolist()
                for item in connection.scalars(_page(run_id, bounds, int(page)))
            ]
    finally:
        engine.dispose()
    return {"item_id": np.array(ids, dtype=np.int64)}


def _page(run_id: int, bounds: list[Key], page: int) -> Any:
    key = tuple_(*MIGRATION_ORDER)
    query = pending_tasks(run_id)
    if page > 0:
        query = query.where(key > tuple_(*bounds[page - 1]))
    if page < len(bounds):
        query = query.where(key <= tuple_(*bounds[page]))
    return query


class _Embedder:
    """One actor of the pool: builds its encoder once, then embeds batch after batch."""

    def __init__(self, encoder: EncoderFactory) -> None:
        self.reembed = encoder()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["item_id"].astype(np.int64)  # (b,)
        vectors = torch.as_tensor(self.reembed(ids)).detach().cpu().float().numpy()  # (b, d)
        if vectors.ndim != 2 or len(vectors) != len(ids):  # migrate.run checks width and values
            raise InvalidInputError(
                f"re-embedding {len(ids)} items returned an array of shape {vectors.shape}"
            )
        return {"item_id": ids, "vector": vectors}


@dataclasses.dataclass(frozen=True)
class Precomputed:
    """An :data:`EncoderFactory` for precomputed vectors (``hotswap migrate start --engine ray``):
    each actor reads the files itself, so on a cluster they must sit on storage every node sees,
    and the catalog must be a database every node reaches (PostgreSQL)."""

    data_dir: Path
    url: str
    ids: Path
    vectors: Path

    def __call__(self) -> Reembed:
        ctx = open_context(self.data_dir, self.url)
        try:
            return precomputed_source(ctx, load_ids(self.ids), load_vectors(self.vectors))
        finally:
            ctx.engine.dispose()


def precomputed_engine(
    ctx: Context, ids: Path, vectors: Path, config: RayEngineConfig | None = None
) -> RayEngine:
    url = ctx.engine.url.render_as_string(hide_password=False)
    files = Precomputed(ctx.data_dir.resolve(), url, ids.resolve(), vectors.resolve())
    return RayEngine(files, config)
