"""GalleryStore of every kind: exact search (tie-aware), filtering, insert-or-replace, atomic
checksummed snapshots; approximate kinds' recall against flat on seeded data; IVF training and
HNSW tombstones."""

import numpy as np
import pytest

from index.store import (
    STORE_KINDS,
    GalleryStore,
    HNSWConfig,
    HNSWStore,
    IVFConfig,
    IVFStore,
    choose_nlist,
    store_config,
)
from kernels.errors import CorruptArtifactError, InvalidInputError, NotFoundError
from tests.index.fixtures import unit_vectors

KINDS = STORE_KINDS.keys()


def make_store(
    n: int = 50, dim: int = 7, kind: str = "Flat"
) -> tuple[GalleryStore, np.ndarray, np.ndarray]:
    vectors, ids = unit_vectors(n, dim, seed=0), np.arange(100, 100 + n, dtype=np.int64)
    store = GalleryStore.create(dim, kind)
    store.add(ids, vectors)
    return store, ids, vectors


def clustered(n: int, dim: int, seed: int, centers: int = 40) -> np.ndarray:
    """Unit vectors around ``centers`` random directions: neighbourhoods an index can exploit."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_exact(
    scores: np.ndarray, found: np.ndarray, queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray
) -> None:
    """Tie-aware (faiss check_ref_knn_with_draws): each returned id carries its exact score, the
    scores are the exact top-k, and ids may differ from the reference only among equal scores."""
    exact = queries @ vectors.T
    score_of = [dict(zip(ids.tolist(), row.tolist(), strict=True)) for row in exact]
    k = found.shape[1]
    for q in range(len(queries)):
        top = np.sort(exact[q])[::-1][:k]
        np.testing.assert_allclose(scores[q], top, rtol=1e-5, atol=1e-6)
        got = [score_of[q][int(i)] for i in found[q]]
        np.testing.assert_allclose(got, scores[q], rtol=1e-5, atol=1e-6)
        assert len(set(found[q].tolist())) == k


def recall_at(found: np.ndarray, reference: np.ndarray) -> float:
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, reference, strict=True)]
    return float(np.mean(hits)) / reference.shape[1]


@pytest.mark.parametrize("kind", KINDS)
def test_search_matches_exact_inner_product_with_filter(kind: str) -> None:
    # 50 items: IVF is still exact (below min_train), HNSW's ef_search covers the whole graph.
    store, ids, vectors = make_store(kind=kind)
    queries = unit_vectors(5, 7, seed=1)
    allowed = ids[::3]
    scores, found = store.search(queries, k=4, allowed=allowed)
    assert set(found.ravel()) <= set(allowed)
    assert_exact(scores, found, queries, vectors[::3], allowed)


@pytest.mark.parametrize("kind", KINDS)
def test_add_replaces_instead_of_duplicating(kind: str) -> None:
    store, ids, _ = make_store(10, kind=kind)
    replacement = unit_vectors(3, 7, seed=5)
    store.add(ids[:3], replacement)
    assert store.ntotal == 10
    assert sorted(store.ids()) == sorted(ids)
    np.testing.assert_allclose(store.vectors(ids[:3]), replacement, rtol=1e-6)
    scores, found = store.search(replacement, k=1)
    assert found[:, 0].tolist() == ids[:3].tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_snapshot_round_trip_and_corruption(tmp_path, kind: str) -> None:
    store, ids, _ = make_store(kind=kind)
    path = tmp_path / "s.faiss"
    digest = store.save(path)
    loaded = GalleryStore.load(path, digest, store.ntotal, factory=kind)
    assert type(loaded) is type(store)
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


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_widths_are_refused(kind: str) -> None:
    store, ids, _ = make_store(kind=kind)
    with pytest.raises(InvalidInputError, match="width 7"):
        store.add(ids[:2], unit_vectors(2, 8, seed=0))
    with pytest.raises(InvalidInputError, match=r"\(Q, 7\)"):
        store.search(unit_vectors(2, 3, seed=0), k=2)
    with pytest.raises(InvalidInputError, match="distinct"):
        store.add(ids[[0, 0]], unit_vectors(2, 7, seed=0))
    assert store.ntotal == 50


def test_a_file_of_another_kind_is_refused(tmp_path) -> None:
    store, *_ = make_store(kind="HNSW")
    digest = store.save(tmp_path / "h.faiss")
    with pytest.raises(CorruptArtifactError, match="not a Flat index"):
        GalleryStore.load(tmp_path / "h.faiss", digest, factory="Flat")


def test_configs_are_validated() -> None:
    with pytest.raises(InvalidInputError, match="nprobe must be >= 1"):
        IVFConfig(nprobe=0)
    with pytest.raises(InvalidInputError, match="min_train must be >= 3900"):
        IVFConfig(nlist=100, min_train=1000)
    with pytest.raises(InvalidInputError, match="did you mean 'ef_search'"):
        store_config("HNSW", '{"ef_serch": 10}')
    with pytest.raises(NotFoundError, match="did you mean 'HNSW'"):
        GalleryStore.create(4, "HSNW")
    assert store_config("IVF", "{}") == IVFConfig()


@pytest.mark.parametrize(
    ("kind", "config", "floor"),
    [("IVF", IVFConfig(nprobe=8), 0.85), ("HNSW", HNSWConfig(m=16), 0.9)],
)
def test_approximate_kinds_recall_against_flat(kind: str, config, floor: float) -> None:
    n, dim = 4000, 32
    x = clustered(n + 40, dim, seed=3)
    gallery, queries, ids = x[:n], x[n:], np.arange(1, n + 1, dtype=np.int64)
    flat = GalleryStore.create(dim)
    flat.add(ids, gallery)
    store = GalleryStore.create(dim, kind, config)
    store.add(ids, gallery)
    _, reference = flat.search(queries, 10)
    scores, found = store.search(queries, 10)
    assert recall_at(found, reference) >= floor
    # Whatever an approximate index returns, it returns with its true score.
    exact = {int(i): gallery[int(i) - 1] for i in np.unique(found)}
    got = np.array([[queries[q] @ exact[int(i)] for i in row] for q, row in enumerate(found)])
    np.testing.assert_allclose(scores, got, rtol=1e-5, atol=1e-5)


def test_ivf_trains_when_enough_vectors_exist_and_retrains_on_growth() -> None:
    dim, config = 16, IVFConfig(min_train=400, nprobe=4)
    x, ids = clustered(2000, dim, seed=4), np.arange(1, 2001, dtype=np.int64)
    store = GalleryStore.create(dim, "IVF", config)
    assert isinstance(store, IVFStore)
    store.add(ids[:399], x[:399])
    assert not store.trained  # below min_train: exact
    store.add(ids[399:450], x[399:450])
    assert store.trained and store.index.nlist == choose_nlist(450) == 11
    store.add(ids[450:800], x[450:800])  # choose_nlist(800) = 20 < 2 * 11: keep centroids
    assert store.index.nlist == 11
    store.add(ids[800:], x[800:])  # choose_nlist(2000) = 45 >= 22: retrain
    assert store.index.nlist == 45 and store.ntotal == 2000
    assert sorted(store.ids()) == ids.tolist()


def test_ivf_scanning_every_list_is_exact() -> None:
    dim = 16
    x, ids = clustered(1500, dim, seed=5), np.arange(7, 1507, dtype=np.int64)
    store = GalleryStore.create(dim, "IVF", IVFConfig(min_train=500, nlist=10, nprobe=10))
    store.add(ids, x)
    assert store.index.nlist == 10
    queries = unit_vectors(6, dim, seed=6)
    allowed = ids[::2]
    scores, found = store.search(queries, 5, allowed=allowed)
    assert_exact(scores, found, queries, x[::2], allowed)
    store.remove(ids[:700])
    scores, found = store.search(queries, 5)
    assert_exact(scores, found, queries, x[700:], ids[700:])
    part = store.subset(ids[700:900])
    assert sorted(part.ids()) == ids[700:900].tolist() and store.ntotal == 800


def test_hnsw_tombstones_are_filtered_persisted_and_rebuilt(tmp_path) -> None:
    dim = 8
    x, ids = unit_vectors(200, dim, seed=7), np.arange(1, 201, dtype=np.int64)
    store = GalleryStore.create(dim, "HNSW", HNSWConfig(max_tombstones=0.3))
    assert isinstance(store, HNSWStore)
    store.add(ids, x)
    assert store.remove(ids[:40]) == 40
    assert store.tombstones == 40 and store.ntotal == 160  # 40 / 200 <= 0.3: no rebuild yet
    scores, found = store.search(x[:40], 5)
    assert not set(found.ravel()) & set(ids[:40].tolist())
    assert_exact(scores, found, x[:40], x[40:], ids[40:])
    digest = store.save(tmp_path / "h.faiss")
    loaded = GalleryStore.load(tmp_path / "h.faiss", digest, 160, factory="HNSW")
    assert isinstance(loaded, HNSWStore) and loaded.tombstones == 40
    assert not set(loaded.search(x[:40], 5)[1].ravel()) & set(ids[:40].tolist())
    loaded.add(ids[:5], x[:5])  # re-adding a removed id: its new node answers, once
    assert loaded.search(x[:5], 1)[1][:, 0].tolist() == ids[:5].tolist()
    assert loaded.ntotal == 165 and loaded.tombstones == 40
    loaded.remove(ids[100:130])  # 70 / 205 > 0.3: the graph is rebuilt without tombstones
    assert loaded.tombstones == 0 and loaded.ntotal == 135
    loaded.remove(ids[130:135])
    loaded.rebuild()  # on demand
    assert loaded.tombstones == 0 and loaded.index.ntotal == loaded.ntotal == 130


@pytest.mark.parametrize("kind", KINDS)
def test_subset_keeps_only_the_allowed_ids(kind: str) -> None:
    store, ids, vectors = make_store(kind=kind)
    part = store.subset(ids[10:30])
    assert sorted(part.ids()) == ids[10:30].tolist() and part.ntotal == 20
    assert store.ntotal == 50  # the original is untouched
    scores, found = part.search(vectors[:3], 3)
    assert_exact(scores, found, vectors[:3], vectors[10:30], ids[10:30])
