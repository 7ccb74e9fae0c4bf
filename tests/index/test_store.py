"""GalleryStore: exact search, filtering, insert-or-replace, atomic checksummed snapshots."""

import numpy as np
import pytest

from index.store import GalleryStore
from kernels.errors import CorruptArtifactError, InvalidInputError
from tests.index.fixtures import unit_vectors


def make_store(n: int = 50, dim: int = 7) -> tuple[GalleryStore, np.ndarray, np.ndarray]:
    vectors, ids = unit_vectors(n, dim, seed=0), np.arange(100, 100 + n, dtype=np.int64)
    store = GalleryStore.create(dim)
    store.add(ids, vectors)
    return store, ids, vectors


def test_search_matches_exact_inner_product_with_filter() -> None:
    store, ids, vectors = make_store()
    queries = unit_vectors(5, 7, seed=1)
    allowed = ids[::3]
    scores, found = store.search(queries, k=4, allowed=allowed)
    exact = queries @ vectors[::3].T
    for q in range(5):
        order = np.argsort(-exact[q], kind="stable")[:4]
        np.testing.assert_allclose(scores[q], exact[q, order], rtol=1e-5)
        assert set(found[q]) <= set(allowed)
        # tie-aware: the ids may differ only where scores are equal
        assert set(found[q]) == set(allowed[order]) or np.allclose(scores[q], exact[q, order])


def test_add_replaces_instead_of_duplicating() -> None:
    store, ids, _ = make_store(10)
    store.add(ids[:3], unit_vectors(3, 7, seed=5))
    assert store.ntotal == 10
    assert sorted(store.ids()) == sorted(ids)


def test_snapshot_round_trip_and_corruption(tmp_path) -> None:
    store, ids, _ = make_store()
    path = tmp_path / "s.faiss"
    digest = store.save(path)
    loaded = GalleryStore.load(path, digest, store.ntotal)
    assert loaded.ntotal == store.ntotal and sorted(loaded.ids()) == sorted(ids)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with pytest.raises(CorruptArtifactError, match="holds 50 vectors"):
        GalleryStore.load(path, digest, 49)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CorruptArtifactError, match="checksum"):
        GalleryStore.load(path, digest)
    with pytest.raises(CorruptArtifactError, match="cannot read"):
        GalleryStore.load(path, None)
    with pytest.raises(CorruptArtifactError, match="missing"):
        GalleryStore.load(tmp_path / "nope.faiss", digest)


def test_wrong_widths_are_refused() -> None:
    store, ids, _ = make_store()
    with pytest.raises(InvalidInputError, match="width 7"):
        store.add(ids[:2], unit_vectors(2, 8, seed=0))
    with pytest.raises(InvalidInputError, match=r"\(Q, 7\)"):
        store.search(unit_vectors(2, 3, seed=0), k=2)
