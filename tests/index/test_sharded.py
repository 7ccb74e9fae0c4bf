"""Sharded search on a real local Ray cluster equals the single-process search, tie-aware."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index import galleries
from index.context import Context
from index.galleries import load_store
from index.search import read_only
from index.sharded import ShardConfig, ShardedStore
from kernels.errors import InvalidInputError, MissingExtraError
from tests.index.fixtures import OLD_DIM, new_deployment, unit_vectors

ray = pytest.importorskip("ray")
N = 500


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Context:
    """500 items in v1; every tenth shares its vector with the next item: ties across shards."""
    ctx = new_deployment(tmp_path_factory.mktemp("sharded") / "data")
    x = unit_vectors(N, OLD_DIM, seed=5)
    x[1::10] = x[0::10]  # items 10j+1 and 10j+2 (ids) tie, one per shard
    galleries.ingest(ctx, "v1", [f"item-{i}" for i in range(N)], x)
    return ctx


def single(ctx: Context):
    with read_only(ctx) as session:
        return load_store(ctx, galleries.get_space(session, "v1"))


def assert_same_knn(
    ref: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray], exact: np.ndarray
) -> None:
    """Tie-aware, as faiss's own tests: equal scores row by row, the same id sets within each run
    of equal scores, and at the cut-off (where ties may be broken either way) ids whose exact
    score (``exact``: (Q, N+1) by item id) is the reported one."""
    (d_ref, i_ref), (d_new, i_new) = ref, new
    assert d_ref.shape == d_new.shape == i_new.shape
    np.testing.assert_allclose(d_new, d_ref, rtol=1e-5, atol=1e-6)
    for row in range(len(d_ref)):
        cuts = np.flatnonzero(~np.isclose(np.diff(d_ref[row]), 0, atol=1e-6)) + 1
        groups = np.split(np.arange(d_ref.shape[1]), cuts)
        for group in groups[:-1]:
            assert set(i_ref[row, group]) == set(i_new[row, group]), (row, group)
        last = groups[-1]
        real = i_new[row, last] >= 0
        assert (i_new[row, last] >= 0).sum() == (i_ref[row, last] >= 0).sum()
        np.testing.assert_allclose(exact[row, i_new[row, last][real]], d_ref[row, last][real], 1e-5)
    assert all(len(set(r[r >= 0])) == (r >= 0).sum() for r in i_new)  # no item twice


@pytest.fixture(scope="module")
def sharded(cluster: None, ctx: Context) -> Iterator[ShardedStore]:
    store = ShardedStore.open(ctx, "v1", ShardConfig(shards=2))
    yield store
    store.close()


def exact_scores(ctx: Context, queries: np.ndarray) -> np.ndarray:
    store = single(ctx)
    ids = store.ids()
    table = np.zeros((len(queries), ids.max() + 1), np.float32)
    table[:, ids] = queries @ store.index.reconstruct_batch(ids).T
    return table


@pytest.mark.parametrize("k", [1, 10, 64])
def test_two_shards_equal_the_unsharded_search(ctx: Context, sharded: ShardedStore, k: int) -> None:
    queries = unit_vectors(50, OLD_DIM, seed=11)
    queries[:10] = single(ctx).index.reconstruct_batch(np.arange(1, 101, 10))  # exact tie hits
    assert sorted(sharded.shard_sizes()) == [N // 2, N // 2]
    ref, new = single(ctx).search(queries, k), sharded.search(queries, k)
    assert_same_knn(ref, new, exact_scores(ctx, queries))


def test_allowed_ids_and_padding_match(ctx: Context, sharded: ShardedStore) -> None:
    """Fewer allowed items than k: both pad with -1 the same way; k beyond the gallery clamps."""
    queries = unit_vectors(8, OLD_DIM, seed=12)
    allowed = np.random.default_rng(0).choice(np.arange(1, N + 1), 7, replace=False)
    exact = exact_scores(ctx, queries)
    ref, new = single(ctx).search(queries, 12, allowed), sharded.search(queries, 12, allowed)
    assert_same_knn(ref, new, exact)
    assert set(new[1][new[1] >= 0]) <= set(allowed.tolist()) and (new[1][:, 7:] == -1).all()
    ref, new = single(ctx).search(queries, 10 * N), sharded.search(queries, 10 * N)
    assert new[0].shape == (8, N)
    assert_same_knn(ref, new, exact)


def test_bad_queries_and_configs_are_refused(sharded: ShardedStore) -> None:
    with pytest.raises(InvalidInputError, match=r"queries must be \(Q, 6\)"):
        sharded.search(np.zeros((2, OLD_DIM + 1), np.float32), 5)
    with pytest.raises(InvalidInputError, match="shards must be >= 1"):
        ShardConfig(shards=0)


def test_without_ray_the_error_names_the_extra(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"hotswap\[scale\]"):
        ShardedStore.open(ctx, "v1")


def test_shards_keep_the_space_kind_and_parameters(cluster: None, tmp_path: Path) -> None:
    """An HNSW space shards into HNSW shards with its own M and efSearch, not the defaults."""
    ctx = new_deployment(tmp_path / "data")
    galleries.ingest(ctx, "v1", [f"item-{i}" for i in range(40)], unit_vectors(40, OLD_DIM, seed=6))
    galleries.rebuild_space(ctx, "v1", kind="HNSW", params={"m": 8, "ef_search": 20})
    # No CPUs reserved: the module's `sharded` store may still hold both of the cluster's.
    store = ShardedStore.open(ctx, "v1", ShardConfig(shards=2, cpus_per_shard=0))
    try:
        configs = ray.get([s.__ray_call__.remote(lambda h: h.store.config) for s in store.shards])
    finally:
        store.close()
    assert [(c.m, c.ef_search) for c in configs] == [(8, 20), (8, 20)]
