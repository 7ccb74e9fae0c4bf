"""Delta files: a migration wave appends its rows instead of rewriting the target index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import galleries, migrate
from index.catalog import EmbeddingSpace
from index.context import Context
from index.deltas import DeltaEntry, parse_entries, read_delta, write_delta
from index.doctor import doctor
from index.galleries import StagedSnapshot
from index.search import MixedSearcher
from kernels.errors import CorruptArtifactError
from tests.index.fixtures import (
    N_ITEMS,
    NEW_DIM,
    NEW_VECTORS,
    reembed,
    seeded_deployment,
    unit_vectors,
)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return seeded_deployment(tmp_path / "data")


def _v2(ctx: Context) -> tuple[list[str], list[DeltaEntry], int]:
    """v2's files (names), its delta entries and its vector count, as the catalog has them."""
    with ctx.transaction() as session:
        space = galleries.get_space(session, "v2")
        files = [p.name for p in galleries.space_files(ctx, space)]
        return files, galleries.space_deltas(space), space.ntotal


# ---- the file format ---------------------------------------------------------------------------


def test_a_delta_round_trips_and_refuses_any_damage(tmp_path: Path) -> None:
    ids, x = np.array([7, 3, 11]), unit_vectors(3, 5, seed=1)
    path = tmp_path / "s.2.delta"
    entry = DeltaEntry("s.2.delta", write_delta(path, ids, x), 3)
    got_ids, got_x = read_delta(path, entry, 5)
    assert got_ids.tolist() == [7, 3, 11] and np.array_equal(got_x, x)
    with pytest.raises(CorruptArtifactError, match="says 4 of width 5"):
        read_delta(path, DeltaEntry(entry.path, entry.sha256, 4), 5)
    with pytest.raises(CorruptArtifactError, match="width 6"):
        read_delta(path, entry, 6)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CorruptArtifactError, match="checksum"):
        read_delta(path, entry, 5)
    path.unlink()
    with pytest.raises(CorruptArtifactError, match="missing"):
        read_delta(path, entry, 5)


def test_a_malformed_delta_list_is_a_clear_error() -> None:
    assert parse_entries(None, "space 'v2'") == []
    with pytest.raises(CorruptArtifactError, match="delta list for space 'v2' is malformed"):
        parse_entries('[{"path": "v2.2.delta"}]', "space 'v2'")


# ---- waves, folds, readers ---------------------------------------------------------------------


def test_waves_append_deltas_fold_geometrically_and_at_completion(ctx: Context) -> None:
    """Waves of 10 over 40 items: a first snapshot (10), a delta (10 <= 10), a fold (20 > 10, a
    30-vector snapshot), a delta (10 <= 30); completing the run folds it into one snapshot."""
    run_id = migrate.plan(ctx, "v1", "v2", ordering="insertion")
    seen: list[tuple[list[str], int]] = []

    def after_wave(report: migrate.WaveReport) -> None:
        files, deltas, ntotal = _v2(ctx)
        appended = sum(d.rows for d in deltas)
        assert ntotal == report.done and appended <= ntotal - appended  # the fold rule
        seen.append((files, ntotal))
        searched = MixedSearcher.open(ctx, "v2").search(reembed(np.arange(1, 3)), k=N_ITEMS)
        for row in searched.ids:  # a reader loads snapshot + deltas: every item exactly once
            assert sorted(row.tolist()) == list(range(1, N_ITEMS + 1))

    migrate.run(ctx, run_id, reembed, wave_size=10, on_wave=after_wave)
    assert seen == [
        (["v2.1.faiss"], 10),
        (["v2.1.faiss", "v2.2.delta"], 20),
        (["v2.3.faiss"], 30),
        (["v2.3.faiss", "v2.4.delta"], 40),
    ]
    files, deltas, ntotal = _v2(ctx)
    assert (files, deltas, ntotal) == (["v2.5.faiss"], [], N_ITEMS)
    assert sorted(p.name for p in (ctx.data_dir / "indexes").glob("v2.*")) == ["v2.5.faiss"]
    with ctx.transaction() as session:
        store = galleries.load_store(ctx, galleries.get_space(session, "v2"))
    assert np.allclose(store.vectors(np.arange(1, N_ITEMS + 1)), NEW_VECTORS[1:], atol=1e-6)
    assert doctor(ctx).clean


def test_a_crash_in_the_final_fold_leaves_the_run_running_and_resume_completes(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = migrate.plan(ctx, "v1", "v2", ordering="insertion")
    migrate.run(ctx, run_id, reembed, wave_size=10, max_waves=3)  # v2: a snapshot of 30
    real = migrate.point_space_at

    def crash_on_fold(ctx: Context, space: EmbeddingSpace, staged: StagedSnapshot) -> list[Path]:
        if staged.delta_rows is None:
            raise RuntimeError("crash during the fold")
        return real(ctx, space, staged)

    monkeypatch.setattr("index.migrate.point_space_at", crash_on_fold)
    with pytest.raises(RuntimeError, match="fold"):
        migrate.run(ctx, run_id, reembed, wave_size=10)  # the last wave commits as a delta
    monkeypatch.undo()
    assert migrate.status(ctx, run_id)["state"] == "running"
    assert _v2(ctx)[0] == ["v2.3.faiss", "v2.4.delta"]
    assert doctor(ctx).clean
    migrate.run(ctx, run_id, reembed, wave_size=10)  # nothing left to embed: completes, folds
    assert migrate.status(ctx, run_id)["state"] == "completed"
    assert _v2(ctx)[:2] == (["v2.5.faiss"], [])


@pytest.mark.parametrize("damage", ["tamper", "delete"])
def test_a_damaged_delta_is_refused_and_doctor_hands_its_items_back(
    ctx: Context, damage: str
) -> None:
    run_id = migrate.plan(ctx, "v1", "v2", ordering="insertion")
    migrate.run(ctx, run_id, reembed, wave_size=10, max_waves=2)
    files, (delta,), _ = _v2(ctx)
    path = ctx.path(delta.path)
    if damage == "tamper":
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    with pytest.raises(CorruptArtifactError, match="checksum" if damage == "tamper" else "missing"):
        MixedSearcher.open(ctx, "v2")
    (finding,) = doctor(ctx).problems
    assert (finding.check, finding.subject) == ("index_file", "v2")
    fixed = doctor(ctx, repair=True)  # the source v1 still holds every item's old vector
    assert "handed 20 items of run" in str([f.repaired for f in fixed.findings])
    assert doctor(ctx).clean and _v2(ctx)[1] == []
    migrate.run(ctx, run_id, reembed, wave_size=10)  # resume re-embeds the handed-back items
    assert migrate.status(ctx, run_id)["done"] == N_ITEMS and doctor(ctx).clean


def test_rollback_and_ingest_fold_the_deltas(ctx: Context) -> None:
    run_id = migrate.plan(ctx, "v1", "v2", ordering="insertion")
    migrate.run(ctx, run_id, reembed, wave_size=10, max_waves=2)
    assert len(_v2(ctx)[1]) == 1
    galleries.ingest(ctx, "v2", ["fresh"], unit_vectors(1, NEW_DIM, seed=3))
    files, deltas, ntotal = _v2(ctx)
    assert len(files) == 1 and deltas == [] and ntotal == 21
    assert migrate.rollback(ctx, run_id) == 20
    assert _v2(ctx)[1:] == ([], 1) and doctor(ctx).clean
