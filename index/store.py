"""One FAISS index per embedding space, written as atomic, checksummed snapshots.

FAISS stores only int64 ids, so the id of every vector is the item's SQL id (identical in every
space) and all metadata lives in the catalog. Snapshots are immutable files named by sequence number:
a writer writes ``<space>.<seq+1>.faiss`` (temporary file, fsync, rename) and only the catalog commit
that records the new path, checksum and ntotal makes it current. A reader therefore never sees a
half-written index, and a crash between the two leaves an orphan file, never a wrong one. (A
migration wave appends a delta file of its rows instead of a new snapshot: index/deltas.py.)

Three kinds, registered in :data:`STORE_KINDS` under the keys the catalog records per space
(``embedding_space.index_factory``, with the kind's config as JSON in ``index_params``):

- ``Flat``: exact inner product (``IndexIDMap2(IndexFlatIP)``).
- ``IVF``: ``IndexIVFFlat`` with a hash-table direct map (``reconstruct`` and ``remove_ids`` by
  item id). K-means needs data, so below ``min_train`` vectors the store stays exact (a flat index
  inside the same file); once enough exist it trains on them, with ``nlist = round(sqrt(N))``
  capped so every list gets >= 39 training points (FAISS's own warning threshold). Rebuilding
  retrains; with an automatic ``nlist`` it also retrains by itself when N has grown 4x (the chosen
  ``nlist`` doubled), since centroids fitted on a quarter of the data go stale.
- ``HNSW``: ``IndexIDMap2(IndexHNSWFlat)``. HNSW cannot delete, so a removal is a tombstone: the
  position's entry in the id map is set to -1. The id map is serialized with the index, so the
  removed set lives in the same checksummed snapshot, and search filters it out with a bitmap
  selector over positions. When tombstones exceed ``max_tombstones`` of the positions the graph is
  rebuilt from the live vectors (also on demand: :meth:`GalleryStore.rebuild`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from kernels.errors import CorruptArtifactError, InvalidInputError
from models.checkpoint import atomic_write_bytes, sha256_file
from models.config import Config, check
from models.registry import Registry

MIN_POINTS_PER_LIST = 39  # below this FAISS warns that k-means has too few points per centroid
TRAIN_POINTS_PER_LIST = 64  # k-means sample cap: enough for stable centroids, bounded cost
RETRAIN_GROWTH = 2  # auto-nlist IVF retrains when its chosen nlist has doubled (N grew 4x)


def choose_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: sqrt(n), and never fewer than 39 training points per list."""
    return max(1, min(round(math.sqrt(n)), n // MIN_POINTS_PER_LIST))


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlatConfig(Config):
    """Exact search: nothing to tune."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class IVFConfig(Config):
    nlist: int | None = None  # None: choose_nlist(N) at every (re)training
    nprobe: int = 16  # lists scanned per query: the recall/speed knob
    min_train: int = 2048  # fewer vectors than this: stay exact (documented minimum 2 * 39)

    def __post_init__(self) -> None:
        check(self.nlist is None or self.nlist >= 1, f"nlist must be >= 1, got {self.nlist}")
        check(self.nprobe >= 1, f"nprobe must be >= 1, got {self.nprobe}")
        floor = MIN_POINTS_PER_LIST * max(2, self.nlist or 2)
        check(
            self.min_train >= floor,
            f"min_train must be >= {floor} ({MIN_POINTS_PER_LIST} points per list), "
            f"got {self.min_train}",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class HNSWConfig(Config):
    m: int = 32  # graph degree
    ef_construction: int = 80
    ef_search: int = 64  # raised to k when k is larger
    max_tombstones: float = 0.2  # rebuild when this fraction of positions is removed

    def __post_init__(self) -> None:
        check(2 <= self.m <= 256, f"m must be in [2, 256], got {self.m}")
        check(
            self.ef_construction >= 1, f"ef_construction must be >= 1, got {self.ef_construction}"
        )
        check(self.ef_search >= 1, f"ef_search must be >= 1, got {self.ef_search}")
        check(
            0.0 < self.max_tombstones < 1.0,
            f"max_tombstones must be in (0, 1), got {self.max_tombstones}",
        )


def _ids_array(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64).ravel()


class GalleryStore:
    """Inner-product vectors of one space keyed by item id. Not thread-safe: one writer, readers
    search their own loaded snapshot. ``GalleryStore.create``/``load`` return the kind's subclass."""

    kind: ClassVar[str] = "Flat"
    config_type: ClassVar[type[Config]] = FlatConfig

    def __init__(self, index: faiss.Index, config: Config | None = None) -> None:
        self.index: Any = index  # faiss's SWIG classes are untyped (IndexIDMap2 has id_map, ...)
        self.config: Any = config if config is not None else self.config_type()
        if not isinstance(self.config, self.config_type):
            raise InvalidInputError(f"a {self.kind} store needs a {self.config_type.__name__}")

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def create(cls, dim: int, factory: str = "Flat", config: Config | None = None) -> GalleryStore:
        """An empty store of kind ``factory`` (a key of :data:`STORE_KINDS`)."""
        kind = STORE_KINDS.get(factory)
        return kind(kind.empty_index(dim, config or kind.config_type()), config)

    @classmethod
    def empty_index(cls, dim: int, config: Any) -> faiss.Index:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def accepts(cls, index: faiss.Index) -> bool:
        """Whether a file's index type belongs to this kind."""
        return isinstance(index, faiss.IndexIDMap2) and isinstance(
            faiss.downcast_index(index.index), faiss.IndexFlat
        )

    # ---- the public contract --------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace: re-adding an id replaces its vector, so a replayed wave duplicates
        nothing. ids (N,) int64, vectors (N, dim) float32."""
        ids = _ids_array(ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(ids), self.dim):
            raise InvalidInputError(
                f"expected {len(ids)} vectors of width {self.dim}, got shape {vectors.shape}"
            )
        if len(np.unique(ids)) != len(ids):
            raise InvalidInputError("ids added in one call must be distinct")
        self.remove(ids)
        self.index.add_with_ids(vectors, ids)
        self._after_add()

    def _after_add(self) -> None:
        """Maintenance a kind does when it grows (IVF trains)."""

    def remove(self, ids: np.ndarray) -> int:
        return int(self.index.remove_ids(faiss.IDSelectorBatch(_ids_array(ids))))

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """ids (n,) held by the store -> their (n, dim) float32 vectors."""
        ids = _ids_array(ids)
        if not len(ids):
            return np.empty((0, self.dim), dtype=np.float32)
        return np.asarray(self.index.reconstruct_batch(ids), dtype=np.float32)

    def rebuild(self) -> None:
        """Rebuild the index from its own vectors (a no-op for an exact store)."""

    def subset(self, allowed: np.ndarray) -> GalleryStore:
        """A copy holding only ``allowed`` (ids the store holds), for a searcher's snapshot."""
        held = self.ids()
        keep = held[np.isin(held, allowed)]
        compact = type(self)(self.empty_index(self.dim, self.config), self.config)
        compact.index.add_with_ids(self.vectors(keep), keep)
        return compact

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products, restricted to ``allowed`` ids when given.

        queries (Q, dim) float32 -> scores (Q, k) float32, ids (Q, k) int64; -1 pads rows with
        fewer than k candidates.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InvalidInputError(f"queries must be (Q, {self.dim}), got {queries.shape}")
        k = max(1, min(k, self.ntotal))
        return self._search(queries, k, allowed)

    def _search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        params = None
        if allowed is not None:
            params = faiss.SearchParameters()
            params.sel = faiss.IDSelectorBatch(_ids_array(allowed))
        return self.index.search(queries, k, params=params)

    # ---- snapshots ------------------------------------------------------------------------

    def save(self, path: Path) -> str:
        """Write an atomic snapshot at ``path``; return its sha256 (to record in the catalog)."""
        atomic_write_bytes(path, faiss.serialize_index(self.index).tobytes())
        return sha256_file(path)

    @classmethod
    def load(
        cls,
        path: Path,
        checksum: str | None,
        ntotal: int | None = None,
        *,
        factory: str | None = None,
        config: Config | None = None,
    ) -> GalleryStore:
        """Read a snapshot, refusing one whose checksum, size or kind disagrees with the catalog.
        Without ``factory`` the kind is read from the file."""
        if not path.is_file():
            raise CorruptArtifactError(f"index file {path} is missing", fix="run: hotswap doctor")
        if checksum is not None and sha256_file(path) != checksum:
            raise CorruptArtifactError(
                f"index file {path} does not match the checksum in the catalog",
                fix="the file was changed or truncated: run hotswap doctor to rebuild it",
            )
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise CorruptArtifactError(f"cannot read index file {path}: {e}") from e
        store = _wrap(index, path, factory, config)
        if ntotal is not None and store.ntotal != ntotal:
            raise CorruptArtifactError(
                f"index file {path} holds {store.ntotal} vectors, the catalog says {ntotal}"
            )
        return store


STORE_KINDS: Registry[type[GalleryStore]] = Registry("index kind")
STORE_KINDS.register("Flat")(GalleryStore)


def store_config(factory: str, params_json: str | None) -> Config:
    """The validated config of kind ``factory`` from its catalog JSON (empty: the defaults)."""
    return STORE_KINDS.get(factory).config_type.from_json(params_json or "{}")


def _wrap(index: Any, path: Path, factory: str | None, config: Config | None) -> GalleryStore:
    kinds = [STORE_KINDS.get(factory)] if factory else [STORE_KINDS.get(k) for k in STORE_KINDS]
    for kind in kinds:
        if kind.accepts(index):
            return kind(index, config)
    raise CorruptArtifactError(
        f"index file {path} holds a {type(index).__name__}, not a {factory or 'known'} index",
        fix="the catalog and the file disagree: run hotswap doctor",
    )


@STORE_KINDS.register("IVF")
class IVFStore(GalleryStore):
    """Approximate: an exact flat index until ``min_train`` vectors exist, then ``IndexIVFFlat``."""

    kind = "IVF"
    config_type = IVFConfig

    @classmethod
    def accepts(cls, index: faiss.Index) -> bool:
        return isinstance(index, faiss.IndexIVFFlat) or GalleryStore.accepts(index)

    @property
    def trained(self) -> bool:
        return isinstance(self.index, faiss.IndexIVF)

    def _after_add(self) -> None:
        n = self.ntotal
        if not self.trained:
            if n >= self.config.min_train:
                self.rebuild()
        elif self.config.nlist is None and choose_nlist(n) >= RETRAIN_GROWTH * self.index.nlist:
            self.rebuild()

    def remove(self, ids: np.ndarray) -> int:
        if not self.trained:
            return super().remove(ids)
        # The hash-table direct map removes only through an explicit id array.
        return int(self.index.remove_ids(faiss.IDSelectorArray(_ids_array(ids))))

    def ids(self) -> np.ndarray:
        if not self.trained:
            return super().ids()
        lists = self.index.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(self.index.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)

    def rebuild(self) -> None:
        """Retrain on the current vectors (exact again below ``min_train``)."""
        ids = self.ids()
        x = self.vectors(ids)
        self.index = self.empty_index(self.dim, self.config, x)
        if len(ids):
            self.index.add_with_ids(x, ids)

    @classmethod
    def empty_index(cls, dim: int, config: Any, train: np.ndarray | None = None) -> faiss.Index:
        n = 0 if train is None else len(train)
        if train is None or n < config.min_train:
            return GalleryStore.empty_index(dim, config)
        nlist = config.nlist or choose_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).permutation(n)[: TRAIN_POINTS_PER_LIST * nlist]
        index.train(np.ascontiguousarray(train[np.sort(sample)]))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        index.nprobe = config.nprobe
        return index

    def subset(self, allowed: np.ndarray) -> GalleryStore:
        if not self.trained:
            return super().subset(allowed)
        held = self.ids()
        compact = IVFStore(faiss.clone_index(self.index), self.config)
        # Keep the trained centroids: dropping ids is O(N), retraining is k-means.
        compact.remove(held[~np.isin(held, allowed)])
        return compact

    def _search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if not self.trained:
            return super()._search(queries, k, allowed)
        params = faiss.SearchParametersIVF()
        params.nprobe = self.config.nprobe
        if allowed is not None:
            params.sel = faiss.IDSelectorBatch(_ids_array(allowed))
        return self.index.search(queries, k, params=params)


@STORE_KINDS.register("HNSW")
class HNSWStore(GalleryStore):
    """Approximate graph search; removals are tombstones (id map entry -1) until a rebuild."""

    kind = "HNSW"
    config_type = HNSWConfig

    @classmethod
    def empty_index(cls, dim: int, config: Any) -> faiss.Index:
        graph = faiss.IndexHNSWFlat(dim, config.m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = config.ef_construction
        graph.hnsw.efSearch = config.ef_search
        return faiss.IndexIDMap2(graph)

    @classmethod
    def accepts(cls, index: faiss.Index) -> bool:
        return isinstance(index, faiss.IndexIDMap2) and isinstance(
            faiss.downcast_index(index.index), faiss.IndexHNSW
        )

    def __init__(self, index: faiss.Index, config: Config | None = None) -> None:
        super().__init__(index, config)
        self._cached: tuple[np.ndarray, np.ndarray | None] | None = None

    def _positions(self) -> np.ndarray:
        """(positions,) item id per graph node, -1 for a tombstone."""
        return self._view()[0]

    def _view(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The id per position and the packed live bitmap (None: no tombstones), cached between
        mutations because every search batch needs them."""
        if self._cached is None:
            positions = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            live = positions >= 0
            bits = None if live.all() else np.packbits(live, bitorder="little")
            self._cached = (positions, bits)
        return self._cached

    def _after_add(self) -> None:
        self._cached = None

    @property
    def ntotal(self) -> int:
        return int((self._positions() >= 0).sum())

    @property
    def tombstones(self) -> int:
        return int((self._positions() < 0).sum())

    def ids(self) -> np.ndarray:
        positions = self._positions()
        return positions[positions >= 0]

    def remove(self, ids: np.ndarray) -> int:
        removed = self._tombstone(ids)
        if self.tombstones > self.config.max_tombstones * max(1, self.index.ntotal):
            self.rebuild()
        return removed

    def _tombstone(self, ids: np.ndarray) -> int:
        positions = self._positions()
        dead = np.isin(positions, _ids_array(ids)) & (positions >= 0)
        if dead.any():
            positions[dead] = -1
            faiss.copy_array_to_vector(positions, self.index.id_map)
            self.index.construct_rev_map()  # forget the removed ids
            self._cached = None
        return int(dead.sum())

    def rebuild(self) -> None:
        """A fresh graph over the live vectors: tombstones are dropped."""
        ids = self.ids()
        x = self.vectors(ids)
        self.index = self.empty_index(self.dim, self.config)
        self._cached = None
        if len(ids):
            self.index.add_with_ids(x, ids)

    def subset(self, allowed: np.ndarray) -> GalleryStore:
        # Tombstone the rest instead of rebuilding a graph for every searcher snapshot.
        copy = HNSWStore(faiss.clone_index(self.index), self.config)
        held = copy.ids()
        copy._tombstone(held[~np.isin(held, allowed)])
        return copy

    def _search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        positions, bits = self._view()
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = max(self.config.ef_search, k)
        if allowed is not None:
            live = (positions >= 0) & np.isin(positions, allowed)
            bits = np.packbits(live, bitorder="little")
        if bits is not None:  # the bitmap must outlive the search call: keep ``bits`` bound
            params.sel = faiss.IDSelectorBitmap(len(positions), faiss.swig_ptr(bits))
        scores, found = faiss.downcast_index(self.index.index).search(queries, k, params=params)
        return scores, np.where(found >= 0, positions[np.maximum(found, 0)], -1)
