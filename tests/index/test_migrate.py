"""Migration waves: the ledger is the truth, a crash at any step loses and duplicates nothing."""

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from index import galleries, migrate
from index.catalog import BackfillTask, EmbeddingSpace, ItemEmbedding
from index.galleries import load_store
from index.search import MixedSearcher
from kernels.errors import ConflictError, InvalidInputError
from tests.index.fixtures import (
    N_ITEMS,
    NEW_DIM,
    NEW_VECTORS,
    OLD_DIM,
    reembed,
    seeded_deployment,
)


@pytest.fixture
def ctx(tmp_path):
    return seeded_deployment(tmp_path / "data")


def authority(ctx) -> dict[str, set[int]]:
    with ctx.transaction() as session:
        rows = session.execute(
            select(EmbeddingSpace.name, ItemEmbedding.item_id)
            .join(EmbeddingSpace, EmbeddingSpace.id == ItemEmbedding.space_id)
            .where(ItemEmbedding.authoritative.is_(True))
        ).all()
    out: dict[str, set[int]] = {"v1": set(), "v2": set()}
    for space, item in rows:
        out[space].add(item)
    return out


def assert_consistent(ctx, migrated: int) -> None:
    """Every item authoritative in exactly one space; each index holds exactly what the catalog says."""
    auth = authority(ctx)
    assert not auth["v1"] & auth["v2"] and len(auth["v1"] | auth["v2"]) == N_ITEMS
    assert len(auth["v2"]) == migrated
    with ctx.transaction() as session:
        v2 = session.scalar(select(EmbeddingSpace).where(EmbeddingSpace.name == "v2"))
        store = load_store(ctx, v2)  # verifies checksum and ntotal against the catalog
        assert set(store.ids().tolist()) == auth["v2"]
        done = session.scalar(select(func.count()).where(BackfillTask.state == "done"))
        assert done == migrated
        current = {p.name for p in galleries.space_files(ctx, v2)}
    files = {p.name for p in (ctx.data_dir / "indexes").iterdir() if p.name.startswith("v2.")}
    assert files == current  # superseded snapshots and deltas are removed


def test_waves_move_authority_and_search_stays_correct(ctx) -> None:
    run_id = migrate.plan(ctx, "v1", "v2", ordering="random", seed=3)
    sizes = []
    migrate.run(
        ctx,
        run_id,
        reembed,
        wave_size=15,
        on_wave=lambda w: (sizes.append(w.migrated), assert_consistent(ctx, w.done)),
    )
    assert sizes == [15, 15, 10]
    assert migrate.status(ctx, run_id)["state"] == "completed"
    result = MixedSearcher.open(ctx, "v2").search(torch.from_numpy(NEW_VECTORS[1:6]), k=N_ITEMS)
    assert result.space_names == ["v2"] and (result.ids[:, 0] == np.arange(1, 6)).all()


def test_orderings_decide_who_goes_first(ctx) -> None:
    run_id = migrate.plan(ctx, "v1", "v2", ordering="insertion")
    migrate.run(ctx, run_id, reembed, wave_size=10, max_waves=1)
    assert authority(ctx)["v2"] == set(range(1, 11))


@pytest.mark.parametrize("step", ["reembed", "stage", "commit"])
def test_crash_at_each_step_then_resume(ctx, monkeypatch, step: str) -> None:
    run_id = migrate.plan(ctx, "v1", "v2")
    migrate.run(ctx, run_id, reembed, wave_size=10, max_waves=1)
    crash = RuntimeError(f"crash during {step}")
    if step == "reembed":
        broken = lambda ids: (_ for _ in ()).throw(crash)  # noqa: E731
    else:
        broken = reembed
        target = {
            "stage": "index.galleries.stage_snapshot",
            "commit": "index.migrate.point_space_at",
        }[step]
        monkeypatch.setattr(target, lambda *a, **k: (_ for _ in ()).throw(crash))
    with pytest.raises(RuntimeError, match="crash"):
        migrate.run(ctx, run_id, broken, wave_size=10)
    monkeypatch.undo()
    assert_consistent(ctx, 10)  # the failed wave left no trace
    migrate.run(ctx, run_id, reembed, wave_size=10)  # resume
    assert_consistent(ctx, N_ITEMS)


def test_bad_vectors_abort_the_wave_without_changes(ctx) -> None:
    run_id = migrate.plan(ctx, "v1", "v2")
    with pytest.raises(InvalidInputError, match="width 6, the space expects 10"):
        migrate.run(ctx, run_id, lambda ids: torch.ones(len(ids), OLD_DIM), wave_size=10)
    bad = lambda ids: torch.full((len(ids), NEW_DIM), float("nan"))  # noqa: E731
    with pytest.raises(InvalidInputError, match="NaN"):
        migrate.run(ctx, run_id, bad, wave_size=10)
    assert_consistent(ctx, 0)


def test_pause_stops_at_a_wave_boundary_and_resume_finishes(ctx) -> None:
    run_id = migrate.plan(ctx, "v1", "v2")
    migrate.run(ctx, run_id, reembed, wave_size=10, on_wave=lambda w: migrate.pause(ctx, run_id))
    assert migrate.status(ctx, run_id)["state"] == "paused"
    assert_consistent(ctx, 10)
    migrate.run(ctx, run_id, reembed, wave_size=100)
    assert migrate.status(ctx, run_id)["done"] == N_ITEMS


def test_one_active_run_per_space(ctx) -> None:
    migrate.plan(ctx, "v1", "v2")
    with pytest.raises(ConflictError, match="already has migration run"):
        migrate.plan(ctx, "v1", "v2")
