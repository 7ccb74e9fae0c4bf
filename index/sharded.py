"""Sharded search: one space's index split across Ray actors, queries fanned out, results merged.

Items go to shard ``item_id % shards`` (stable as the gallery grows, and balanced for the
sequential ids the catalog assigns). Every shard answers the whole query batch with its own top-k;
the k best of those per query are the global top-k, merged with FAISS's own k-NN result heap
(``faiss.ResultHeap``), so for an exact (Flat) index the answer is the single-process answer
(up to the order of equal scores). The caller sees :class:`~index.store.GalleryStore`'s search
signature, shapes and padding.

Ray is the ``scale`` extra, imported lazily (``MissingExtraError`` names the install command).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import faiss
import numpy as np

from index.context import Context
from index.galleries import get_space, load_store
from index.migrate import stored_vectors
from index.search import read_only
from index.store import GalleryStore
from kernels.errors import InvalidInputError
from kernels.optional import require

PAD_SCORE = -np.finfo(np.float32).max  # what FAISS reports for a missing inner-product result


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardConfig:
    shards: int = 2
    cpus_per_shard: float = 1.0  # Ray resources each shard actor holds
    address: str | None = None  # None: the cluster of RAY_ADDRESS, or a new local one

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise InvalidInputError(f"shards must be >= 1, got {self.shards}")
        if self.cpus_per_shard < 0:
            raise InvalidInputError(f"cpus_per_shard must be >= 0, got {self.cpus_per_shard}")


class ShardHolder:
    """The state of one shard actor: a store of the ids (n,) and vectors (n, d) it was given,
    of the space's kind and with its parameters (an HNSW shard keeps the space's M and efSearch)."""

    def __init__(
        self, ids: np.ndarray, vectors: np.ndarray, dim: int, factory: str, config: Any
    ) -> None:
        self.store = GalleryStore.create(dim, factory, config)
        if len(ids):
            self.store.add(ids, vectors)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Q, d) -> scores, ids (Q, k), padded with PAD_SCORE / -1 past this shard's items."""
        q = len(queries)
        scores, ids = np.full((q, k), PAD_SCORE, np.float32), np.full((q, k), -1, np.int64)
        if self.store.ntotal:
            found_scores, found_ids = self.store.search(queries, k, allowed)
            scores[:, : found_ids.shape[1]], ids[:, : found_ids.shape[1]] = found_scores, found_ids
        return scores, ids

    def ntotal(self) -> int:
        return self.store.ntotal


class ShardedStore:
    """A space's vectors held by ``config.shards`` Ray actors; search like a GalleryStore."""

    def __init__(self, store: GalleryStore, factory: str, config: ShardConfig) -> None:
        self.ray: Any = require("ray", "scale")
        if not self.ray.is_initialized():
            self.ray.init(address=config.address)
        ids = store.ids()  # (n,)
        vectors = stored_vectors(store, ids)  # (n, d)
        owner = ids % config.shards
        holder = self.ray.remote(num_cpus=config.cpus_per_shard)(ShardHolder)
        self.shards = [
            holder.remote(ids[owner == s], vectors[owner == s], store.dim, factory, store.config)
            for s in range(config.shards)
        ]
        self.dim, self.ntotal = store.dim, store.ntotal

    @classmethod
    def open(cls, ctx: Context, space: str, config: ShardConfig | None = None) -> ShardedStore:
        """Shard the current snapshot of ``space`` (checked against the catalog as it loads)."""
        with read_only(ctx) as session:
            found = get_space(session, space)
            store, factory = load_store(ctx, found), found.index_factory
        return cls(store, factory, config or ShardConfig())

    def shard_sizes(self) -> list[int]:
        return [int(n) for n in self.ray.get([s.ntotal.remote() for s in self.shards])]

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products over every shard, restricted to ``allowed`` ids when given.

        queries (Q, dim) float32 -> scores (Q, k) float32, ids (Q, k) int64, k clamped to the
        gallery's size and -1 padding rows with fewer than k candidates, as GalleryStore.search.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InvalidInputError(f"queries must be (Q, {self.dim}), got {queries.shape}")
        k = max(1, min(k, self.ntotal))
        q_ref, allowed_ref = self.ray.put(queries), self.ray.put(allowed)  # put once, read by all
        parts = self.ray.get([s.search.remote(q_ref, k, allowed_ref) for s in self.shards])
        heap = faiss.ResultHeap(len(queries), k, keep_max=True)
        for scores, ids in parts:  # each (Q, k)
            heap.add_result(np.ascontiguousarray(scores), np.ascontiguousarray(ids))
        heap.finalize()
        return heap.D, heap.I

    def close(self) -> None:
        """Stop the shard actors (their memory is freed; the snapshot on disk is untouched)."""
        for shard in self.shards:
            self.ray.kill(shard)
        self.shards = []
