"""The Ray migration engine on a real local Ray cluster: the local engine's waves, pause/resume,
and crash safety when the driver is SIGKILLed (one cluster for the module: starting one is slow)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from index import migrate
from index.catalog import BackfillTask
from index.context import Context
from index.galleries import get_space, load_store
from index.ledger import pending_tasks
from index.ray_engine import RayEngine, RayEngineConfig
from index.ray_workers import ItemVectors
from index.search import read_only
from kernels.errors import InvalidInputError, MissingExtraError
from tests.index import workers
from tests.index.workers import N, assert_consistent, ray_encoder, reembed

ray = pytest.importorskip("ray")
WAVE, SEED = 40, 7  # 300 items: 8 waves, the last one short; pages of 64 straddle waves


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def engine(encoder: ItemVectors | None = None) -> RayEngine:
    config = RayEngineConfig(workers=2, batch_size=16, page_size=64)
    return RayEngine(encoder or ray_encoder(), config)


def ledger(ctx: Context, run_id: int) -> dict[int, int | None]:
    """item id -> the wave that migrated it (None: still pending)."""
    with read_only(ctx) as session:
        rows = session.execute(
            select(BackfillTask.item_id, BackfillTask.wave).where(BackfillTask.run_id == run_id)
        )
        return {int(item): wave for item, wave in rows}


def target_vectors(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n,) sorted, vectors (n, d)) as the v2 index stores them."""
    with read_only(ctx) as session:
        store = load_store(ctx, get_space(session, "v2"))
    ids = np.sort(store.ids())
    return ids, store.index.reconstruct_batch(ids)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[int, int | None], np.ndarray]:
    """The reference: the same plan migrated by the local engine."""
    ctx = workers.build(tmp_path_factory.mktemp("local") / "data")
    run_id = migrate.plan(ctx, "v1", "v2", ordering="random", seed=SEED)
    migrate.run(ctx, run_id, reembed, wave_size=WAVE)
    return ledger(ctx, run_id), target_vectors(ctx)[1]


def assert_same_as_local(ctx: Context, run_id: int, local: tuple[dict, np.ndarray]) -> None:
    assert migrate.status(ctx, run_id)["state"] == "completed"
    assert ledger(ctx, run_id) == local[0]  # every item in the same wave: same order, same waves
    ids, vectors = target_vectors(ctx)
    assert (ids == np.arange(1, N + 1)).all()
    np.testing.assert_array_equal(vectors, local[1])
    assert assert_consistent(ctx)["v2"] == N  # one space each, none lost, doctor clean


@pytest.mark.slow  # actor pools start per run: seconds each
def test_waves_pause_and_resume_match_the_local_engine(
    cluster: str, tmp_path: Path, local: tuple[dict, np.ndarray]
) -> None:
    ctx = workers.build(tmp_path / "data")
    run_id = migrate.plan(ctx, "v1", "v2", ordering="random", seed=SEED)
    seen: list[migrate.WaveReport] = []

    def pause_after_two(report: migrate.WaveReport) -> None:
        seen.append(report)
        if report.wave == 2:
            migrate.pause(ctx, run_id)

    migrate.run(ctx, run_id, engine(), wave_size=WAVE, on_wave=pause_after_two)
    assert [r.wave for r in seen] == [1, 2] and migrate.status(ctx, run_id)["state"] == "paused"
    assert migrate.status(ctx, run_id)["done"] == 2 * WAVE
    # Two waves (80 items) span two pages of 64: vectors for those 128 items only. An actor
    # handed any later page would fail the run ("no new vector").
    with read_only(ctx) as session:
        covered = np.sort(session.scalars(pending_tasks(run_id).limit(128)).all())
    partial = ItemVectors(covered, covered - 1, workers.NEW_VECTORS[1:])
    report = migrate.run(ctx, run_id, engine(partial), wave_size=WAVE, max_waves=2)
    assert (report.wave, report.done) == (4, 4 * WAVE)
    migrate.run(ctx, run_id, reembed, wave_size=WAVE)  # engines mix: the ledger is the truth
    assert_same_as_local(ctx, run_id, local)


@pytest.mark.slow  # actor pools start per run: seconds each
def test_sigkilled_driver_resumes_to_the_local_engines_state(
    cluster: str, tmp_path: Path, local: tuple[dict, np.ndarray]
) -> None:
    """Kill one driver at a random instant of its start-up and one mid-migration (once a random
    number of items committed), check the catalog and indexes after each, then resume."""
    rng = np.random.default_rng(2026)
    ctx = workers.build(tmp_path / "data")
    run_id = migrate.plan(ctx, "v1", "v2", ordering="random", seed=SEED)
    procs, args = workers.processes(), (str(ctx.data_dir), None, run_id, WAVE, cluster)
    workers.kill_after(procs, workers.ray_migrate_child, args, rng.uniform(0.5, 3.0))
    assert_consistent(ctx)
    before = int(str(migrate.status(ctx, run_id)["done"]))
    assert before <= N - 2 * WAVE, "the start-up kill landed after most waves had committed"
    # A wave boundary before the last wave (items commit WAVE at a time): the driver is mid-run.
    threshold = before + WAVE * int(rng.integers(1, (N - before) // WAVE))
    killed_at = kill_when(procs, args, ctx, run_id, threshold)
    assert before < killed_at < N, "the kill should land mid-migration"
    assert assert_consistent(ctx)["v2"] == killed_at
    migrate.run(ctx, run_id, engine(), wave_size=WAVE)  # resume on the Ray engine
    assert_same_as_local(ctx, run_id, local)


def kill_when(procs, args: tuple, ctx: Context, run_id: int, threshold: int) -> int:
    """Start a Ray driver; SIGKILL it once ``threshold`` items committed; the count at the kill."""
    child = procs.Process(target=workers.ray_migrate_child, args=args)
    child.start()
    deadline = time.monotonic() + 240  # actor start-up on a loaded 2-core machine is slow
    while (done := int(str(migrate.status(ctx, run_id)["done"]))) < threshold:
        assert child.is_alive() and time.monotonic() < deadline, "the driver made no progress"
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join()
    assert child.exitcode == -signal.SIGKILL, "the driver finished before the kill"
    return done


def test_bad_configs_and_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInputError, match="workers must be >= 1"):
        RayEngineConfig(workers=0)
    with pytest.raises(InvalidInputError, match="cpus_per_worker must be >= 1"):
        RayEngineConfig(cpus_per_worker=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the scale extra were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'hotswap\[scale\]'"):
        RayEngine(ray_encoder())


@pytest.mark.slow  # actor pools start per run: seconds each
def test_cli_engine_ray_with_precomputed_vectors(
    cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``migrate start --engine ray``: a missing vector fails in an actor and reaches the user as
    the local engine's typed error (no wave partly applied); then two Ray waves, a local resume."""
    from typer.testing import CliRunner

    from cli.main import app

    ctx, names = workers.build(tmp_path / "data"), [f"item-{i}" for i in range(N)]
    np.save(tmp_path / "new.npy", workers.NEW_VECTORS[1:])
    (tmp_path / "ids.txt").write_text("\n".join(names))
    np.save(tmp_path / "part.npy", workers.NEW_VECTORS[1:-10])
    (tmp_path / "part.txt").write_text("\n".join(names[:-10]))
    d = ("--dir", str(ctx.data_dir), "--yes")
    run_id = migrate.plan(ctx, "v1", "v2", ordering="insertion")
    cli = lambda *a: CliRunner().invoke(app, ["migrate", "start", str(run_id), *a, *d])  # noqa: E731
    files = ("--vectors", str(tmp_path / "part.npy"), "--ids", str(tmp_path / "part.txt"))
    failed = cli(*files, "--engine", "ray", "--wave-size", "100")
    assert isinstance(failed.exception, InvalidInputError)
    assert str(failed.exception).startswith("no new vector for 10 item(s) in this wave")
    assert str(failed.exception).endswith("(add them to the vectors file and resume)")
    moved = workers.authority(ctx)["v2"]  # actors run ahead: the error may beat earlier commits
    assert len(moved) in (0, 100, 200) and moved == set(range(1, len(moved) + 1))
    files = ("--vectors", str(tmp_path / "new.npy"), "--ids", str(tmp_path / "ids.txt"))
    ok = cli(*files, "--engine", "ray", "--workers", "1", "--wave-size", "30", "--limit", "2")
    assert ok.exit_code == 0, ok.output
    assert workers.authority(ctx)["v2"] == set(range(1, len(moved) + 61))
    assert "'ray'" in str(cli(*files, "--engine", "rai").exception)  # did you mean
    monkeypatch.setitem(sys.modules, "ray", None)
    missing = cli(*files, "--engine", "ray").exception
    assert isinstance(missing, MissingExtraError) and "hotswap[scale]" in str(missing)
    assert cli(*files, "--engine", "local").exit_code == 0
    assert_consistent(ctx)
    np.testing.assert_allclose(target_vectors(ctx)[1], reembed(np.arange(1, N + 1)), atol=1e-6)
