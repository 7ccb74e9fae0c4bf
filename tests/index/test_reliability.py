"""Crash safety proven by killing real processes, queries during a migration, and bad inputs.

Kill instants are seeded; where they land depends on the machine's timing, so every assertion
holds for any instant. Set HOTSWAP_RELIABILITY_LOG=path to write what each kill hit (the figures
in docs/results/reliability.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import select

from compat.adapters import build_adapter, save_adapter
from index import galleries, migrate, versions
from index.catalog import Adapter, EmbeddingSpace, MigrationRun
from index.context import Context
from index.doctor import doctor, rebuild_source
from index.galleries import load_store
from index.search import MixedSearcher
from kernels.errors import CorruptArtifactError, DirectionError, InvalidInputError, NotFoundError
from models.checkpoint import sha256_file
from tests.index import workers
from tests.index.workers import NEW_DIM, N, assert_consistent, authority, kill_after, reembed
from tests.pg import fresh_postgres_database

MIGRATION_KILLS = 20  # across runs, plus one kill during each run's rollback
WAVE = 5


def _log(name: str, entries: list[dict[str, Any]]) -> None:
    path = os.environ.get("HOTSWAP_RELIABILITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": name, "entries": entries}) + "\n")


def _done(ctx: Context, run_id: int) -> int:
    return int(str(migrate.status(ctx, run_id)["done"]))


@dataclasses.dataclass(frozen=True)
class Timing:
    """Kill instants are drawn up to these, measured here and now (a quiet 2-core machine
    migrates the gallery in ~0.3 s, a loaded one in several times that)."""

    migrate: float  # half an uninterrupted child migration: a run takes several kills
    rollback: float  # an uninterrupted child rollback: kills land before and after its commit


def _calibrate(ctx: Context, url: str | None) -> Timing:
    procs, data = workers.processes(), str(ctx.data_dir)
    run_id = migrate.plan(ctx, "v1", "v2")
    ran = kill_after(procs, workers.migrate_child, (data, url, run_id, WAVE), 60)
    rolled = kill_after(procs, workers.rollback_child, (data, url, run_id), 60)
    assert ran["exitcode"] == rolled["exitcode"] == 0
    return Timing(float(ran["lived_s"]) / 2, float(rolled["lived_s"]))


def _kill_cycle(
    ctx: Context,
    url: str | None,
    run_id: int,
    rng: np.random.Generator,
    kills: int,
    timing: Timing,
) -> list[dict[str, Any]]:
    """Kill migrating children until ``kills`` kills landed or the run finished; check, then
    resume one wave in process after each (the next kill's check covers that resume). Then
    finish the run, kill a rolling-back child, and finish the rollback in process."""
    procs, entries, data = workers.processes(), [], str(ctx.data_dir)
    while sum(e["killed"] for e in entries) < kills and _done(ctx, run_id) < N:
        before = _done(ctx, run_id)
        event = kill_after(
            procs, workers.migrate_child, (data, url, run_id, WAVE), rng.uniform(0, timing.migrate)
        )
        event.update(kind="migrate", done_before=before, done_at_kill=_done(ctx, run_id))
        event.update(assert_consistent(ctx))  # before any repair or resume
        migrate.run(ctx, run_id, reembed, wave_size=WAVE, max_waves=1)  # resume in process
        entries.append(event)
    migrate.run(ctx, run_id, reembed, wave_size=50)
    assert authority(ctx)["v2"] == set(range(1, N + 1))
    assert migrate.status(ctx, run_id)["state"] == "completed"
    event = kill_after(
        procs, workers.rollback_child, (data, url, run_id), rng.uniform(0, timing.rollback)
    )
    event.update(kind="rollback", state_at_kill=migrate.status(ctx, run_id)["state"])
    event.update(assert_consistent(ctx))
    assert migrate.rollback(ctx, run_id) in (0, N)  # 0: the killed child had committed it
    assert authority(ctx)["v1"] == set(range(1, N + 1))
    assert migrate.rollback(ctx, run_id) == 0  # idempotent
    repaired = doctor(ctx, repair=True)
    assert all(f.check == "orphan_file" for f in repaired.findings), repaired.findings
    assert doctor(ctx).clean
    return [*entries, event]


def test_sigkill_at_random_instants_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(2026)
    ctx = workers.build(tmp_path / "data")
    timing = _calibrate(ctx, None)
    entries: list[dict[str, Any]] = []
    seed = 0
    while sum(e["kind"] == "migrate" and e["killed"] for e in entries) < MIGRATION_KILLS:
        run_id = migrate.plan(ctx, "v1", "v2", ordering="random", seed=seed)
        entries += _kill_cycle(ctx, None, run_id, rng, kills=8, timing=timing)
        seed += 1
    _log("sqlite", [dataclasses.asdict(timing), *entries])
    landed = [e for e in entries if e["kind"] == "migrate" and e["killed"]]
    assert len(landed) >= 20
    # Some kills landed mid-migration, after the child had committed waves of its own.
    assert any(e["done_before"] < e["done_at_kill"] < N for e in landed)


def test_queries_from_another_process_never_fail_nor_repeat(tmp_path: Path) -> None:
    ctx = workers.build(tmp_path / "data")
    run_id = migrate.plan(ctx, "v1", "v2", seed=4)
    procs = workers.processes()
    stop, results, searched = procs.Event(), procs.Queue(), procs.Value("i", 0)
    reader = procs.Process(
        target=workers.query_child, args=(str(ctx.data_dir), None, N, stop, results, searched)
    )
    reader.start()

    def let_the_reader_search(wave: migrate.WaveReport) -> None:
        """Go on to the next wave only once the reader finished another search (or 5 s passed):
        on a loaded machine it would otherwise see few intermediate snapshots."""
        seen, deadline = searched.value, time.monotonic() + 5
        while searched.value == seen and time.monotonic() < deadline:
            time.sleep(0.002)

    migrate.run(ctx, run_id, reembed, wave_size=10, on_wave=let_the_reader_search)
    stop.set()
    summary = results.get(timeout=60)
    reader.join(timeout=30)
    _log("queries", [{k: v for k, v in summary.items() if k != "v2_counts"}])
    assert summary["failures"] == [], summary["failures"][:3]
    assert summary["bad_rows"] == 0
    mid = [c for c in summary["v2_counts"] if 0 < c < 4 * N]
    # Searches really did run against half-migrated snapshots.
    assert len(mid) >= 10, (summary["searches"], summary["v2_counts"])


@pytest.mark.postgres
def test_postgresql_kill_resume_and_rollback(tmp_path: Path) -> None:
    with fresh_postgres_database() as url:
        ctx = workers.build(tmp_path / "data", url)
        try:
            timing = _calibrate(ctx, url)
            run_id = migrate.plan(ctx, "v1", "v2", seed=7)
            rng = np.random.default_rng(7)
            entries = _kill_cycle(ctx, url, run_id, rng, kills=4, timing=timing)
            _log("postgresql", [dataclasses.asdict(timing), *entries])
            assert sum(e["kind"] == "migrate" and e["killed"] for e in entries) >= 1
        finally:
            ctx.engine.dispose()


# ---- bad inputs: a clear error, nothing changed ------------------------------------------------


def fingerprint(ctx: Context) -> dict[str, Any]:
    """Everything a failed operation must leave as it was: catalog state and every file."""
    with ctx.transaction() as session:
        spaces = [
            (s.name, s.index_path, s.checksum, s.ntotal, s.snapshot_seq)
            for s in session.scalars(select(EmbeddingSpace).order_by(EmbeddingSpace.id))
        ]
        runs = [
            (r.id, r.state, r.done_items)
            for r in session.scalars(select(MigrationRun).order_by(MigrationRun.id))
        ]
        adapters = [(a.name, a.artifact_sha256) for a in session.scalars(select(Adapter))]
    files = {
        str(p.relative_to(ctx.data_dir)): sha256_file(p)
        for p in sorted(ctx.data_dir.rglob("*"))
        if p.is_file() and not p.name.startswith("catalog.sqlite")
    }
    return {
        "auth": authority(ctx),
        "spaces": spaces,
        "runs": runs,
        "adapters": adapters,
        "files": files,
    }


@pytest.fixture
def half(tmp_path: Path) -> tuple[Context, int]:
    """300 items, half migrated to v2 (the run paused)."""
    ctx = workers.build(tmp_path / "data")
    run_id = migrate.plan(ctx, "v1", "v2", seed=1)
    migrate.run(ctx, run_id, reembed, wave_size=N // 2, max_waves=1)
    return ctx, run_id


def _space_file(ctx: Context, name: str) -> Path:
    with ctx.transaction() as session:
        space = galleries.get_space(session, name)
        assert space.index_path is not None
        return ctx.path(space.index_path)


@pytest.mark.parametrize("damage", ["tamper", "truncate"])
def test_damaged_index_is_refused_then_rebuilt_from_a_backup(tmp_path: Path, damage: str) -> None:
    ctx = workers.build(tmp_path / "data")
    path = _space_file(ctx, "v1")
    backup = load_store(ctx, _space(ctx, "v1"))
    data = path.read_bytes()
    if damage == "tamper":
        data = (
            data[: len(data) // 2]
            + bytes([data[len(data) // 2] ^ 0xFF])
            + data[len(data) // 2 + 1 :]
        )
    path.write_bytes(data if damage == "tamper" else data[: len(data) // 3])
    before = fingerprint(ctx)
    with pytest.raises(CorruptArtifactError, match="checksum"):
        MixedSearcher.open(ctx, "v2")
    with pytest.raises(CorruptArtifactError, match="checksum"):
        migrate.plan(ctx, "v1", "v2", ordering="distance_to_mean")
    with pytest.raises(CorruptArtifactError, match="checksum"):
        galleries.ingest(ctx, "v1", ["new"], np.ones((1, 8), np.float32))
    report = doctor(ctx, repair=True)  # ingested vectors have no source: unrepairable, untouched
    (finding,) = report.problems
    assert (finding.check, finding.subject) == ("index_file", "v1") and "backup" in (
        finding.fix or ""
    )
    assert fingerprint(ctx) == before
    fixed = doctor(ctx, repair=True, reembed={"v1": rebuild_source(backup)})
    assert fixed.clean and "re-embedded 300" in str([f.repaired for f in fixed.findings])
    run_id = migrate.plan(ctx, "v1", "v2", ordering="distance_to_mean")
    migrate.run(ctx, run_id, reembed, wave_size=100)
    assert_consistent(ctx)


def _space(ctx: Context, name: str) -> EmbeddingSpace:
    with ctx.transaction() as session:
        return galleries.get_space(session, name)


def test_truncated_target_index_hands_items_back_and_the_run_redoes_them(half) -> None:
    ctx, run_id = half
    path = _space_file(ctx, "v2")
    path.write_bytes(path.read_bytes()[:200])
    before = fingerprint(ctx)
    with pytest.raises(CorruptArtifactError, match="checksum"):
        migrate.run(ctx, run_id, reembed, wave_size=10)
    with pytest.raises(CorruptArtifactError):
        MixedSearcher.open(ctx, "v2")
    assert (
        fingerprint(ctx)["auth"] == before["auth"]
        and fingerprint(ctx)["spaces"] == before["spaces"]
    )
    report = doctor(ctx, repair=True)
    assert report.clean and "handed 150 items of run" in str([f.repaired for f in report.findings])
    assert len(authority(ctx)["v1"]) == N and migrate.status(ctx, run_id)["done"] == 0
    migrate.run(ctx, run_id, reembed, wave_size=100)
    assert len(authority(ctx)["v2"]) == N
    assert_consistent(ctx)


def test_tampered_adapter_artifact_is_refused(half) -> None:
    ctx, _ = half
    artifact = next((ctx.data_dir / "adapters").iterdir())
    artifact.write_bytes(artifact.read_bytes()[:-8] + b"\0" * 8)
    before = fingerprint(ctx)
    with pytest.raises(CorruptArtifactError, match="sha256"):
        MixedSearcher.open(ctx, "v2")
    report = doctor(ctx, repair=True)
    assert [f.check for f in report.problems] == ["artifact"]
    assert fingerprint(ctx) == before


def test_adapter_labelled_backward_but_fitted_forward_is_refused(half) -> None:
    ctx, _ = half
    artifact = next((ctx.data_dir / "adapters").iterdir())
    forward = build_adapter("orthogonal", {"dim_in": NEW_DIM, "dim_out": 8, "direction": "forward"})
    digest = save_adapter(forward, artifact)
    with ctx.transaction() as session:
        session.scalars(select(Adapter)).one().artifact_sha256 = digest
    before = fingerprint(ctx)
    with pytest.raises(DirectionError):
        MixedSearcher.open(ctx, "v2")
    assert fingerprint(ctx) == before


def test_a_forward_adapter_cannot_bridge_queries(tmp_path: Path) -> None:
    ctx = workers.build(tmp_path / "data", n=10)
    with ctx.transaction() as session:
        v1 = versions.get_version(session, "v1")
        v3 = versions.register_version(ctx, session, "v3", versions.load_version_encoder(ctx, v1))
        galleries.create_space(session, v3)
        forward = build_adapter("orthogonal", {"dim_in": 8, "dim_out": 8, "direction": "forward"})
        versions.register_adapter(ctx, session, forward, v1, v3)
    with pytest.raises(DirectionError, match="cannot map v3 queries"):
        MixedSearcher.open(ctx, "v3")


def test_unknown_names_are_clear_errors_and_change_nothing(half) -> None:
    ctx, run_id = half
    before = fingerprint(ctx)
    with pytest.raises(NotFoundError, match="did you mean 'v2'"):
        MixedSearcher.open(ctx, "v22")
    with pytest.raises(NotFoundError, match="unknown embedding space 'v3'"):
        migrate.plan(ctx, "v1", "v3")
    with pytest.raises(NotFoundError, match="no migration run 99"):
        migrate.run(ctx, 99, reembed, wave_size=10)
    with pytest.raises(NotFoundError, match="unknown migration ordering"):
        migrate.plan(ctx, "v1", "v2", ordering="randm")
    with pytest.raises(InvalidInputError, match="re-embedding 10 items returned 9"):
        migrate.run(ctx, run_id, lambda ids: reembed(ids)[:-1], wave_size=10)
    assert fingerprint(ctx) == before


def test_paths_outside_the_data_directory_are_never_followed(half, tmp_path: Path) -> None:
    ctx, _ = half
    outside = tmp_path / "outside.faiss"
    shutil.copy(_space_file(ctx, "v1"), outside)
    (ctx.data_dir / "indexes" / "v1.99.faiss").symlink_to(outside)
    with ctx.transaction() as session:
        galleries.get_space(session, "v1").index_path = "../outside.faiss"
    before, outside_digest = fingerprint(ctx), sha256_file(outside)
    with pytest.raises(InvalidInputError, match="outside the data directory"):
        MixedSearcher.open(ctx, "v2")
    with pytest.raises(InvalidInputError, match="outside the data directory"):
        galleries.ingest(ctx, "v1", ["new"], np.ones((1, 8), np.float32))
    report = doctor(ctx, repair=True)
    assert {(f.check, f.subject) for f in report.problems} == {
        ("index_file", "v1"),
        ("orphan_file", "v1.99.faiss"),  # a symlink: left alone
        ("orphan_file", "v1.1.faiss"),  # kept: v1's index is unusable, it may be the real one
    }
    assert fingerprint(ctx) == before and sha256_file(outside) == outside_digest
    assert (ctx.data_dir / "indexes" / "v1.99.faiss").is_symlink()


def test_every_item_is_found_by_its_own_vector_after_a_kill(tmp_path: Path) -> None:
    """Not only bookkeeping: after a kill and resume, the vectors in v2 are the right ones."""
    ctx = workers.build(tmp_path / "data")
    run_id = migrate.plan(ctx, "v1", "v2", seed=3)
    kill_after(
        workers.processes(), workers.migrate_child, (str(ctx.data_dir), None, run_id, WAVE), 0.15
    )
    migrate.run(ctx, run_id, reembed, wave_size=50)
    ids = np.arange(1, N + 1)
    result = MixedSearcher.open(ctx, "v2").search(reembed(ids), k=1)
    np.testing.assert_array_equal(result.ids[:, 0], ids)
    torch.testing.assert_close(
        torch.from_numpy(result.scores[:, 0]), torch.ones(N), rtol=0, atol=1e-5
    )
