"""Migration orderings: which items a run re-embeds first (a registry with stable keys).

An ordering maps the items authoritative in the source space to priorities (lower migrates
sooner); :func:`index.migrate.plan` stores them in the task ledger once, so every wave and every
engine follows the same order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import faiss
import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from index.catalog import EmbeddingSpace, ItemAccess
from index.context import Context
from index.galleries import load_store
from index.store import GalleryStore
from kernels.errors import CorruptArtifactError, InvalidInputError
from models.registry import Registry

Score = Callable[[np.ndarray], np.ndarray | torch.Tensor]  # item ids (n,) -> uncertainty (n,)
KMEANS_MIN_POINTS = 39  # faiss warns below 39 training points per centroid


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
    return -check_priorities(scores, len(inputs.ids), "uncertainty scores")


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


def check_priorities(values: np.ndarray, n: int, what: str) -> np.ndarray:
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
