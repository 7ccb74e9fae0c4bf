"""One FAISS index per embedding space, written as atomic, checksummed snapshots.

FAISS stores only int64 ids, so the id of every vector is the item's SQL id (identical in every
space) and all metadata lives in the catalog. Snapshots are immutable files named by sequence number:
a writer writes ``<space>.<seq+1>.faiss`` (temporary file, fsync, rename) and only the catalog commit
that records the new path, checksum and ntotal makes it current. A reader therefore never sees a
half-written index, and a crash between the two leaves an orphan file, never a wrong one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from kernels.errors import CorruptArtifactError, InvalidInputError
from models.checkpoint import atomic_write_bytes, sha256_file


class GalleryStore:
    """Inner-product vectors of one space keyed by item id. Not thread-safe: one writer, readers
    search their own loaded snapshot."""

    def __init__(self, index: faiss.Index) -> None:
        self.index: Any = index  # faiss's SWIG classes are untyped (IndexIDMap2 has id_map, ...)

    @classmethod
    def create(cls, dim: int, factory: str = "Flat") -> GalleryStore:
        if factory != "Flat":
            raise InvalidInputError(f"index factory {factory!r} is not supported yet; use 'Flat'")
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace: re-adding an id replaces its vector, so a replayed wave duplicates
        nothing. ids (N,) int64, vectors (N, dim) float32."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(ids), self.dim):
            raise InvalidInputError(
                f"expected {len(ids)} vectors of width {self.dim}, got shape {vectors.shape}"
            )
        self.remove(ids)
        self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        return int(self.index.remove_ids(selector))

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

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
        params = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            params = faiss.SearchParameters()
            params.sel = selector
        k = max(1, min(k, self.ntotal))
        scores, ids = self.index.search(queries, k, params=params)
        return scores, ids

    def save(self, path: Path) -> str:
        """Write an atomic snapshot at ``path``; return its sha256 (to record in the catalog)."""
        atomic_write_bytes(path, faiss.serialize_index(self.index).tobytes())
        return sha256_file(path)

    @classmethod
    def load(cls, path: Path, checksum: str | None, ntotal: int | None = None) -> GalleryStore:
        """Read a snapshot, refusing one whose checksum or size disagrees with the catalog."""
        if not path.is_file():
            raise CorruptArtifactError(f"index file {path} is missing", fix="run: hotswap doctor")
        if checksum is not None and sha256_file(path) != checksum:
            raise CorruptArtifactError(
                f"index file {path} does not match the checksum in the catalog",
                fix="the file was changed or truncated: run hotswap doctor to rebuild it",
            )
        try:
            store = cls(faiss.read_index(str(path)))
        except RuntimeError as e:
            raise CorruptArtifactError(f"cannot read index file {path}: {e}") from e
        if ntotal is not None and store.ntotal != ntotal:
            raise CorruptArtifactError(
                f"index file {path} holds {store.ntotal} vectors, the catalog says {ntotal}"
            )
        return store
