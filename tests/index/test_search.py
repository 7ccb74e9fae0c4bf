"""Mixed-version search against an exact reference computed by hand, and the merge policies."""

from collections import Counter

import numpy as np
import pytest
import torch
from sqlalchemy import select

from compat.adapters import build_adapter
from compat.calibration import fit_calibration
from index import galleries, migrate, versions
from index.catalog import ItemAccess
from index.search import MERGE_POLICIES, MixedSearcher
from index.serving import SearcherPool
from kernels.errors import DirectionError, InvalidInputError, NotFoundError
from tests.index.fixtures import NEW_DIM, OLD_DIM, new_deployment, unit_vectors


@pytest.fixture
def mixed(tmp_path):
    """30 items embedded by v1 and 20 by v2: a half-migrated gallery."""
    ctx = new_deployment(tmp_path / "data")
    old, new = unit_vectors(30, OLD_DIM, seed=1), unit_vectors(20, NEW_DIM, seed=2)
    old_ids = galleries.ingest(ctx, "v1", [f"old-{i}" for i in range(30)], old)
    new_ids = galleries.ingest(ctx, "v2", [f"new-{i}" for i in range(20)], new)
    return ctx, old, new, np.array(old_ids), np.array(new_ids)


def test_mixed_search_equals_exact_merge(mixed) -> None:
    ctx, old, new, old_ids, new_ids = mixed
    searcher = MixedSearcher.open(ctx, "v2")
    queries = unit_vectors(8, NEW_DIM, seed=3)
    bridged = searcher.views[0].bridge(torch.from_numpy(queries)).numpy()  # v1 space (first)
    exact = np.concatenate([bridged @ old.T, queries @ new.T], axis=1)  # (8, 50)
    all_ids = np.concatenate([old_ids, new_ids])
    result = searcher.search(torch.from_numpy(queries), k=10)
    for q in range(8):
        # Tie-aware: each returned id carries its exact score, and none is beaten by a left-out item.
        exact_by_id = dict(zip(all_ids.tolist(), exact[q].tolist(), strict=True))
        kth_best = np.sort(exact[q])[::-1][9]
        got = [exact_by_id[int(i)] for i in result.ids[q]]
        np.testing.assert_allclose(result.scores[q], got, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            result.scores[q], np.sort(exact[q])[::-1][:10], rtol=1e-5, atol=1e-6
        )
        assert min(got) >= kth_best - 1e-6 and len(set(result.ids[q].tolist())) == 10
    assert result.space_names == ["v1", "v2"]
    answered_by = {
        int(i): s for i, s in zip(result.ids.ravel(), result.spaces.ravel(), strict=True)
    }
    assert all(answered_by[i] == 0 for i in answered_by if i in set(old_ids))


def test_bridge_equals_adapter_forward(mixed) -> None:
    ctx, *_ = mixed
    searcher = MixedSearcher.open(ctx, "v2")
    with ctx.transaction() as session:
        adapter = versions.query_adapter(
            ctx, session, versions.get_version(session, "v2"), versions.get_version(session, "v1")
        )
    q = torch.from_numpy(unit_vectors(4, NEW_DIM, seed=4))
    expected = torch.nn.functional.normalize(adapter(q).detach(), dim=1)
    torch.testing.assert_close(searcher.views[0].bridge(q), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", MERGE_POLICIES.keys())
def test_every_policy_returns_each_item_once(mixed, policy: str) -> None:
    ctx, *_ = mixed
    result = MixedSearcher.open(ctx, "v2").search(
        torch.from_numpy(unit_vectors(5, NEW_DIM, 5)), 50, policy
    )
    for row in result.ids:
        assert sorted(row) == sorted(set(row)) and len(row) == 50


def test_native_first_puts_native_hits_first(mixed) -> None:
    ctx, *_ = mixed
    result = MixedSearcher.open(ctx, "v2").search(
        torch.from_numpy(unit_vectors(3, NEW_DIM, 6)), 25, "native_first"
    )
    for spaces in result.spaces:
        assert list(spaces[:20]) == [1] * 20 and set(spaces[20:]) == {0}


def test_external_ids_and_padding(mixed) -> None:
    ctx, *_ = mixed
    searcher = MixedSearcher.open(ctx, "v2")
    result = searcher.search(torch.from_numpy(unit_vectors(2, NEW_DIM, 7)), k=60)
    assert (result.ids[:, 50:] == -1).all()
    names = searcher.external_ids(result.ids)
    assert names[0][50:] == [None] * 10 and all(
        n.startswith(("old-", "new-")) for n in names[0][:50]
    )


def test_query_errors(mixed) -> None:
    ctx, *_ = mixed
    searcher = MixedSearcher.open(ctx, "v2")
    with pytest.raises(InvalidInputError, match="width 6"):
        searcher.search(torch.from_numpy(unit_vectors(2, OLD_DIM, 0)))
    bad = unit_vectors(2, NEW_DIM, 0)
    bad[1, 3] = np.nan
    with pytest.raises(InvalidInputError, match=r"NaN or Inf values in row\(s\) \[1\]"):
        searcher.search(torch.from_numpy(bad))
    with pytest.raises(NotFoundError, match="did you mean 'v2'"):
        MixedSearcher.open(ctx, "v3")


def test_v1_queries_cannot_use_a_backward_adapter_forwards(mixed) -> None:
    ctx, *_ = mixed  # v1 queries must reach the v2 space: only a v2 -> v1 backward map exists
    with pytest.raises(DirectionError, match="cannot map v1 queries"):
        MixedSearcher.open(ctx, "v1")


def test_no_adapter_is_a_clear_error(tmp_path) -> None:
    ctx = new_deployment(tmp_path / "d")
    with ctx.transaction() as session:
        v3 = versions.register_version(
            ctx,
            session,
            "v3",
            versions.load_version_encoder(ctx, versions.get_version(session, "v2")),
        )
        galleries.create_space(session, v3)
    galleries.ingest(ctx, "v1", ["a"], unit_vectors(1, OLD_DIM, 0))
    with pytest.raises(NotFoundError, match="no adapter from 'v3' to 'v1'"):
        MixedSearcher.open(ctx, "v3")


def test_wrong_width_adapter_cannot_be_registered(tmp_path) -> None:
    ctx = new_deployment(tmp_path / "d")
    with ctx.transaction() as session, pytest.raises(DirectionError, match="spaces need 10->6"):
        versions.register_adapter(
            ctx,
            session,
            build_adapter("orthogonal", {"dim_in": 10, "dim_out": 5}),
            versions.get_version(session, "v2"),
            versions.get_version(session, "v1"),
            name="bad",
        )


# ---- the serving pool: access counting, read-only generation -------------------------------


def _hits(ctx) -> dict[int, int]:
    with ctx.transaction() as session:
        return {i: h for i, h in session.execute(select(ItemAccess.item_id, ItemAccess.hits))}


def test_pool_counts_what_it_returns_and_flushes(mixed) -> None:
    ctx, *_ = mixed
    pool = SearcherPool(ctx, flush_every_s=3600)
    queries = torch.from_numpy(unit_vectors(3, NEW_DIM, seed=12))
    first = pool.get("v2").search(queries, k=4)
    pool.get("v2").search(queries, k=4)
    assert _hits(ctx) == {}  # counted in memory, not yet flushed
    assert pool.flush() == len(set(first.ids.ravel().tolist()))
    expected = Counter(first.ids.ravel().tolist())
    assert _hits(ctx) == {i: 2 * n for i, n in expected.items()}
    assert pool.counter.pending() == {}


def test_pool_flushes_in_the_background_when_due(mixed) -> None:
    ctx, *_ = mixed
    pool = SearcherPool(ctx, flush_every_s=0.0)
    result = pool.get("v2").search(torch.from_numpy(unit_vectors(2, NEW_DIM, seed=13)), k=3)
    pool.get("v2")  # due: starts a background flush
    pool.wait_for_flush(timeout=30)
    assert pool.flush_error is None
    assert set(_hits(ctx)) == set(result.ids.ravel().tolist())


def test_pool_reads_the_generation_while_a_writer_holds_the_lock(mixed) -> None:
    """generation() and resolve() are reads: with a migration wave holding SQLite's write lock
    they must answer at once, not queue behind it (and fail after the busy timeout)."""
    ctx, *_ = mixed
    pool = SearcherPool(ctx)
    before = pool.generation()
    with ctx.transaction() as session:  # BEGIN IMMEDIATE: the write lock is held from here
        space = galleries.get_space(session, "v1")
        space.snapshot_seq += 1
        session.flush()
        assert pool.generation() == before  # the last committed state
        assert pool.resolve("v2") == "v2"
    assert pool.generation() != before


# ---- calibrated merge and the cascade ---------------------------------------------------------


def test_fit_calibration_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    bridged = rng.uniform(-0.5, 0.6, 5000)
    native = 0.3 + 0.8 * bridged + rng.normal(0, 0.02, 5000)
    calibration = fit_calibration(bridged, native)
    grid = np.linspace(-0.4, 0.55, 50)
    np.testing.assert_allclose(calibration(grid), 0.3 + 0.8 * grid, atol=0.02)
    wide = np.linspace(-2, 2, 401)  # beyond the fitted range too: still increasing
    assert (np.diff(calibration(wide)) > 0).all()
    few = fit_calibration(bridged[:50], native[:50])
    assert few.pairs == 0 and few(grid) is grid  # too little evidence: raw scores


@pytest.fixture
def migrating(tmp_path):
    """200 items in v1; a real migration moved half of them to v2. New vectors form tight
    clusters; old ones are them seen through the adapter plus noise, so the two spaces roughly
    agree on neighbours but bridged scores are systematically lower (the demo's situation)."""
    ctx = new_deployment(tmp_path / "data")
    with ctx.transaction() as session:
        adapter = versions.query_adapter(
            ctx, session, versions.get_version(session, "v2"), versions.get_version(session, "v1")
        )
    bridge = adapter.bridge()
    rng = np.random.default_rng(20)
    centers = rng.standard_normal((8, NEW_DIM)).astype(np.float32)
    new = centers[rng.integers(0, 8, 200)] + 0.4 * rng.standard_normal((200, NEW_DIM))
    new = (new / np.linalg.norm(new, axis=1, keepdims=True)).astype(np.float32)
    noise = 0.5 * np.random.default_rng(21).standard_normal((200, OLD_DIM)).astype(np.float32)
    old = bridge(torch.from_numpy(new)).numpy() + noise
    ids = np.array(galleries.ingest(ctx, "v1", [f"i{n}" for n in range(200)], old))
    run_id = migrate.plan(ctx, "v1", "v2", ordering="insertion")
    migrate.run(
        ctx, run_id, lambda batch: torch.from_numpy(new[batch - ids[0]]), wave_size=100, max_waves=1
    )
    return ctx, ids, old / np.linalg.norm(old, axis=1, keepdims=True), new, bridge


def test_calibration_is_measured_on_the_shared_items(migrating) -> None:
    ctx, ids, old, new, bridge = migrating
    searcher = MixedSearcher.open(ctx, "v2")
    v1_view, v2_view = searcher.views
    assert v1_view.calibration is not None
    assert v1_view.calibration.pairs == 100 * 99  # every moved item probes the others
    assert v2_view.calibration is None
    q = new[100:130]  # queries like the gallery: the calibration's premise
    moved = ids[:100]  # insertion order: the first half
    native = q @ new[:100].T
    raw = bridge(torch.from_numpy(q)).numpy() @ old[:100].T
    calibrated = v1_view.calibration(raw)
    # Raw bridged scores sit systematically below native ones and are less spread; calibrated
    # ones match the native distribution (rank matching), and the order is kept.
    assert abs((calibrated - native).mean()) < 0.2 * abs((raw - native).mean())
    assert abs(calibrated.std() - native.std()) < 0.5 * abs(raw.std() - native.std())
    assert (np.argsort(calibrated, axis=1) == np.argsort(raw, axis=1)).mean() > 0.95
    assert sorted(v2_view.allowed.tolist()) == moved.tolist()


def test_calibrated_merge_ranks_by_calibrated_scores(migrating) -> None:
    ctx, ids, old, new, bridge = migrating
    searcher = MixedSearcher.open(ctx, "v2")
    calibration = searcher.views[0].calibration
    q = unit_vectors(6, NEW_DIM, seed=23)
    result = searcher.search(torch.from_numpy(q), k=15, policy="calibrated")
    keys = np.concatenate(  # the exact merge key of every item: native or calibrated bridged
        [calibration(bridge(torch.from_numpy(q)).numpy() @ old[100:].T), q @ new[:100].T], axis=1
    )
    key_of = [dict(zip(np.r_[ids[100:], ids[:100]].tolist(), row, strict=True)) for row in keys]
    for row in range(6):
        got = np.array([key_of[row][int(i)] for i in result.ids[row]])
        np.testing.assert_allclose(got, np.sort(keys[row])[::-1][:15], rtol=1e-5, atol=1e-5)
    assert set(result.spaces.ravel()) == {0, 1}


def test_cascade_rescores_bridged_candidates_with_the_new_model(migrating) -> None:
    ctx, ids, old, new, bridge = migrating
    plain = MixedSearcher.open(ctx, "v2")
    cascade = MixedSearcher.open(ctx, "v2", cascade=40)
    assert cascade.views[0].full is not None and cascade.views[0].full.ntotal == 200
    q = torch.from_numpy(unit_vectors(5, NEW_DIM, seed=24))
    small = cascade.search(q, k=10, policy="calibrated")
    native_score = dict(zip(ids[:100].tolist(), (q.numpy() @ new[:100].T).T, strict=True))
    for row in range(5):
        assert len(set(small.ids[row].tolist())) == 10
        for i, s, space in zip(small.ids[row], small.scores[row], small.spaces[row], strict=True):
            if int(i) in native_score:  # moved: answered by the new model, whoever proposed it
                assert space == 1 and s == pytest.approx(native_score[int(i)][row], abs=1e-5)
            else:
                assert space == 0
    # At full depth every moved item is re-scored: the same ranking as the calibrated merge.
    full = cascade.search(q, k=200, policy="calibrated")
    ref = plain.search(q, k=200, policy="calibrated")
    np.testing.assert_array_equal(np.sort(full.ids, axis=1), np.sort(ref.ids, axis=1))
    np.testing.assert_allclose(full.scores, ref.scores, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInputError, match="cascade depth"):
        MixedSearcher.open(ctx, "v2", cascade=-1)
