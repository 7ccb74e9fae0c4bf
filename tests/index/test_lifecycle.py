"""Run lifecycle (resume, cutover, rollback), orderings, the estimate and access counting."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from sqlalchemy import inspect, select

from index import db, galleries, migrate
from index.catalog import BackfillTask, ItemAccess, ServingAlias
from index.context import Context
from index.doctor import doctor
from index.search import AccessCounter, MixedSearcher
from kernels.errors import ConflictError, InvalidInputError
from tests.index import workers
from tests.index.fixtures import (
    N_ITEMS,
    NEW_DIM,
    OLD_DIM,
    new_deployment,
    reembed,
    seeded_deployment,
    unit_vectors,
)
from tests.pg import fresh_postgres_database


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return seeded_deployment(tmp_path / "data")


def authority(ctx: Context) -> dict[str, list[int]]:
    searcher = MixedSearcher.open(ctx, "v2")
    return {v.name: sorted(v.allowed.tolist()) for v in searcher.views}


def aliases(ctx: Context) -> dict[str, tuple[str, list[str]]]:
    with ctx.transaction() as session:
        return {
            a.name: (a.query_version.name, json.loads(a.spaces_json))
            for a in session.scalars(select(ServingAlias))
        }


def order_of(ctx: Context, run_id: int) -> list[int]:
    with ctx.transaction() as session:
        return list(
            session.scalars(
                select(BackfillTask.item_id)
                .where(BackfillTask.run_id == run_id)
                .order_by(BackfillTask.priority, BackfillTask.item_id)
            )
        )


# ---- resume, cutover, rollback -----------------------------------------------------------------


def test_resume_after_pause_and_after_completion(ctx: Context) -> None:
    run_id = migrate.plan(ctx, "v1", "v2", wave_size=15)
    migrate.run(ctx, run_id, reembed, on_wave=lambda w: migrate.pause(ctx, run_id))
    assert migrate.status(ctx, run_id)["state"] == "paused"
    assert migrate.run(ctx, run_id, reembed).done == N_ITEMS  # the planned wave size is used
    again = migrate.run(ctx, run_id, reembed)  # resuming a completed run changes nothing
    assert (again.migrated, again.done, migrate.status(ctx, run_id)["state"]) == (
        0,
        N_ITEMS,
        "completed",
    )
    with pytest.raises(ConflictError, match="only an active run pauses"):
        migrate.pause(ctx, run_id)


def test_cutover_only_when_completed_and_switches_aliases(ctx: Context) -> None:
    with ctx.transaction() as session:
        v1 = galleries.get_space(session, "v1")
        session.add(
            ServingAlias(name="prod", query_version_id=v1.model_version_id, spaces_json='["v1"]')
        )
    run_id = migrate.plan(ctx, "v1", "v2")
    migrate.run(ctx, run_id, reembed, wave_size=10, max_waves=1)
    with pytest.raises(ConflictError, match="only a completed run can be cut over"):
        migrate.cutover(ctx, run_id)
    migrate.run(ctx, run_id, reembed, wave_size=100)
    assert migrate.cutover(ctx, run_id, alias="search") == ["prod", "search"]
    assert aliases(ctx) == {"prod": ("v2", ["v2"]), "search": ("v2", ["v2"])}
    assert migrate.cutover(ctx, run_id) == ["prod", "search"]  # idempotent
    assert migrate.status(ctx, run_id)["state"] == "cutover"
    with pytest.raises(ConflictError, match="is cutover; it cannot run"):
        migrate.run(ctx, run_id, reembed, wave_size=10)


def test_cutover_refused_while_items_remain_in_the_source(ctx: Context) -> None:
    run_id = migrate.plan(ctx, "v1", "v2")
    galleries.ingest(ctx, "v1", ["late"], unit_vectors(1, OLD_DIM, seed=1))  # not in the ledger
    migrate.run(ctx, run_id, reembed, wave_size=100)
    with pytest.raises(ConflictError, match="1 items are still authoritative in 'v1'"):
        migrate.cutover(ctx, run_id)


@pytest.mark.parametrize("stage", ["partial", "completed", "cutover"])
def test_rollback_hands_everything_back(ctx: Context, stage: str) -> None:
    before = MixedSearcher.open(ctx, "v2").search(reembed(np.arange(1, 4)), k=5)
    run_id = migrate.plan(ctx, "v1", "v2")
    migrate.run(ctx, run_id, reembed, wave_size=15, max_waves=1 if stage == "partial" else None)
    if stage == "cutover":
        migrate.cutover(ctx, run_id, alias="prod")
    assert migrate.rollback(ctx, run_id) == (15 if stage == "partial" else N_ITEMS)
    assert authority(ctx) == {"v1": list(range(1, N_ITEMS + 1))}
    after = MixedSearcher.open(ctx, "v2").search(reembed(np.arange(1, 4)), k=5)
    np.testing.assert_array_equal(after.ids, before.ids)  # the old vectors answer again
    assert migrate.rollback(ctx, run_id) == 0  # idempotent
    assert doctor(ctx).clean
    if stage == "cutover":
        assert aliases(ctx) == {"prod": ("v1", ["v1"])}
    with pytest.raises(ConflictError, match="rolled_back; it cannot run"):
        migrate.run(ctx, run_id, reembed, wave_size=10)
    again = migrate.plan(ctx, "v1", "v2")  # the space is free for a new run
    assert migrate.run(ctx, again, reembed, wave_size=100).done == N_ITEMS


def test_a_failed_rollback_changes_nothing(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = migrate.plan(ctx, "v1", "v2")
    migrate.run(ctx, run_id, reembed, wave_size=25, max_waves=1)
    before = authority(ctx), sorted(p.name for p in (ctx.data_dir / "indexes").iterdir())

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("crash at commit")

    monkeypatch.setattr("index.lifecycle.point_space_at", crash)
    with pytest.raises(RuntimeError, match="crash at commit"):
        migrate.rollback(ctx, run_id)
    monkeypatch.undo()
    assert (authority(ctx), sorted(p.name for p in (ctx.data_dir / "indexes").iterdir())) == before
    assert migrate.rollback(ctx, run_id) == 25


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_run_rolled_back_while_it_encodes_stops(ctx: Context, prefetch: bool) -> None:
    """Someone rolls the run back while wave 2 is being re-embedded: wave 2 is dropped."""
    run_id = migrate.plan(ctx, "v1", "v2")
    reports: list[migrate.WaveReport] = []
    calls = []

    def encoder(ids: np.ndarray) -> torch.Tensor:
        calls.append(len(ids))
        if len(calls) == 2 and not prefetch:  # serial: wave 2 encodes after wave 1 committed
            migrate.rollback(ctx, run_id)
        return reembed(ids)

    def on_wave(report: migrate.WaveReport) -> None:
        reports.append(report)
        if prefetch:  # wave 2 was handed to the encoder thread before wave 1 committed
            migrate.rollback(ctx, run_id)

    migrate.run(ctx, run_id, encoder, wave_size=10, on_wave=on_wave, prefetch=prefetch)
    assert len(reports) == 1 and len(calls) == 2
    assert migrate.status(ctx, run_id)["state"] == "rolled_back"
    assert authority(ctx) == {"v1": list(range(1, N_ITEMS + 1))} and doctor(ctx).clean


def test_rollback_refused_while_a_later_run_moved_the_items_on(ctx: Context) -> None:
    run_id = migrate.plan(ctx, "v1", "v2")
    migrate.run(ctx, run_id, reembed, wave_size=100)
    migrate.plan(ctx, "v2", "v1")
    with pytest.raises(ConflictError, match="roll back run 2 first"):
        migrate.rollback(ctx, run_id)


# ---- orderings ---------------------------------------------------------------------------------


def test_uncertainty_order_follows_the_callers_scores(ctx: Context) -> None:
    run_id = migrate.plan(ctx, "v1", "v2", ordering="uncertainty", score=lambda ids: ids % 7)
    first = order_of(ctx, run_id)[:5]
    assert all(i % 7 == 6 for i in first)  # most uncertain first, ties by item id
    with pytest.raises(InvalidInputError, match="needs a per-item score"):
        migrate.plan(ctx, "v2", "v1", ordering="uncertainty")
    migrate.rollback(ctx, run_id)
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        migrate.plan(
            ctx, "v1", "v2", ordering="uncertainty", score=lambda i: np.full(len(i), np.nan)
        )
    with pytest.raises(InvalidInputError, match=r"expected shape \(40,\)"):
        migrate.plan(ctx, "v1", "v2", ordering="uncertainty", score=lambda i: i[:3])


def test_distance_to_mean_puts_outliers_first(tmp_path: Path) -> None:
    ctx = new_deployment(tmp_path / "data")
    rng = np.random.default_rng(0)
    centres = unit_vectors(2, OLD_DIM, seed=1) * 5
    x = np.concatenate(
        [
            centres[0] + 0.1 * rng.normal(size=(30, OLD_DIM)),
            centres[1] + 0.1 * rng.normal(size=(30, OLD_DIM)),
        ]
    )
    x[[7, 40]] += 3 * unit_vectors(2, OLD_DIM, seed=2)  # two outliers, one per cluster
    ids = galleries.ingest(ctx, "v1", [f"i{i}" for i in range(60)], x.astype(np.float32))
    by_kmeans = migrate.plan(ctx, "v1", "v2", ordering="distance_to_mean", clusters=2)
    assert set(order_of(ctx, by_kmeans)[:2]) == {ids[7], ids[40]}
    migrate.rollback(ctx, by_kmeans)
    labels = {i: int(n >= 30) for n, i in enumerate(ids)}
    by_label = migrate.plan(ctx, "v1", "v2", ordering="distance_to_mean", labels=labels)
    assert set(order_of(ctx, by_label)[:2]) == {ids[7], ids[40]}
    migrate.rollback(ctx, by_label)
    with pytest.raises(InvalidInputError, match="no label for 1 items"):
        migrate.plan(ctx, "v1", "v2", ordering="distance_to_mean", labels={i: 0 for i in ids[1:]})


def test_access_frequency_migrates_what_search_returns_most(ctx: Context) -> None:
    counter = AccessCounter()
    searcher = MixedSearcher.open(ctx, "v2", counter=counter)
    hot = unit_vectors(3, NEW_DIM, seed=11)
    for _ in range(4):
        result = searcher.search(torch.from_numpy(hot), k=2)
    returned = set(result.ids.ravel().tolist())
    assert counter.flush(ctx) == len(returned) and counter.pending() == {}
    counter.record(result.ids)
    counter.flush(ctx)
    with ctx.transaction() as session:
        hits = dict(session.execute(select(ItemAccess.item_id, ItemAccess.hits)).all())
    assert set(hits) == returned and min(hits.values()) >= 5
    run_id = migrate.plan(ctx, "v1", "v2", ordering="access_frequency")
    assert set(order_of(ctx, run_id)[: len(returned)]) == returned


def test_orderings_are_registered() -> None:
    assert set(migrate.ORDERINGS.keys()) == {
        "random",
        "insertion",
        "uncertainty",
        "distance_to_mean",
        "access_frequency",
    }


# ---- estimate ----------------------------------------------------------------------------------


def test_estimate_from_a_throughput_or_a_timing_probe(ctx: Context) -> None:
    given = migrate.estimate(ctx, "v1", "v2", throughput=20.0)
    assert (given.items, given.seconds, given.probed) == (N_ITEMS, 2.0, 0)
    calls = []

    def encoder(ids: np.ndarray) -> torch.Tensor:
        calls.append(len(ids))
        return reembed(ids)

    probed = migrate.estimate(ctx, "v1", "v2", reembed=encoder, sample=16)
    assert probed.items == N_ITEMS and probed.probed == 16 and calls == [8, 16, 16, 16]
    assert probed.seconds == pytest.approx(N_ITEMS / probed.throughput)
    with pytest.raises(InvalidInputError, match="width 6, the space expects 10"):
        migrate.estimate(ctx, "v1", "v2", reembed=lambda ids: torch.ones(len(ids), OLD_DIM))
    with pytest.raises(InvalidInputError, match="exactly one of"):
        migrate.estimate(ctx, "v1", "v2")
    with pytest.raises(InvalidInputError, match="positive"):
        migrate.estimate(ctx, "v1", "v2", throughput=0.0)
    run_id = migrate.plan(ctx, "v1", "v2")
    migrate.run(ctx, run_id, reembed, wave_size=30, max_waves=1)
    assert migrate.estimate(ctx, "v1", "v2", throughput=1.0).items == N_ITEMS - 30  # what is left


def test_plan_refuses_bad_arguments(ctx: Context) -> None:
    with pytest.raises(InvalidInputError, match="same space"):
        migrate.plan(ctx, "v1", "v1")
    with pytest.raises(InvalidInputError, match="wave_size must be >= 1"):
        migrate.plan(ctx, "v1", "v2", wave_size=0)
    run_id = migrate.plan(ctx, "v1", "v2")
    with pytest.raises(InvalidInputError, match="planned without a wave size"):
        migrate.run(ctx, run_id, reembed)


# ---- schema revision 0002 ----------------------------------------------------------------------


def test_revision_0002_adds_and_drops_only_item_access(tmp_path: Path) -> None:
    engine = db.connect(db.sqlite_url(tmp_path / "c.db"))
    db.upgrade(engine, "0001")
    tables = set(inspect(engine).get_table_names())
    db.upgrade(engine)
    assert set(inspect(engine).get_table_names()) == tables | {"item_access"}
    db.downgrade(engine, "0001")
    assert set(inspect(engine).get_table_names()) == tables and db.current(engine) == "0001"
    engine.dispose()


@pytest.mark.postgres
def test_access_counts_add_up_on_postgresql(tmp_path: Path) -> None:
    with fresh_postgres_database() as url:
        ctx = workers.build(tmp_path / "data", url, n=20)
        try:
            counter = AccessCounter()
            for _ in range(2):
                counter.record(np.array([[1, 2, -1], [2, 3, 3]]))
                assert counter.flush(ctx) == 3
            with ctx.transaction() as session:
                hits = dict(session.execute(select(ItemAccess.item_id, ItemAccess.hits)).all())
            assert hits == {1: 2, 2: 4, 3: 4}
            run_id = migrate.plan(ctx, "v1", "v2", ordering="access_frequency")
            assert order_of(ctx, run_id)[:3] == [2, 3, 1]
        finally:
            ctx.engine.dispose()


def test_rollback_keeps_the_target_spaces_store_kind_and_parameters(ctx: Context) -> None:
    """Rolling a whole run back empties the target; the empty store keeps the space's kind."""
    galleries.rebuild_space(ctx, "v2", kind="HNSW", params={"m": 8, "ef_construction": 40})
    run_id = migrate.plan(ctx, "v1", "v2")
    migrate.run(ctx, run_id, reembed, wave_size=100)
    assert migrate.rollback(ctx, run_id) == N_ITEMS
    with ctx.transaction() as session:
        store = galleries.load_store(ctx, galleries.get_space(session, "v2"))
    graph = faiss.downcast_index(store.index.index).hnsw  # what the snapshot was built with
    assert store.kind == "HNSW" and graph.efConstruction == 40
    assert doctor(ctx).clean
