"""doctor: every check finds its problem, repair fixes what has a source and nothing else."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import delete, select, update

from index import galleries, migrate, versions
from index.catalog import BackfillTask, ItemEmbedding, MigrationRun, utcnow
from index.context import Context
from index.doctor import doctor
from tests.index.fixtures import (
    N_ITEMS,
    OLD_VECTORS,
    reembed,
    seeded_deployment,
)


@pytest.fixture
def half(tmp_path: Path) -> tuple[Context, int]:
    """40 items in v1, the first wave of 20 migrated to v2, the run paused."""
    ctx = seeded_deployment(tmp_path / "data")
    run_id = migrate.plan(ctx, "v1", "v2", ordering="insertion")
    migrate.run(ctx, run_id, reembed, wave_size=20, max_waves=1)
    migrate.pause(ctx, run_id)
    return ctx, run_id


def index_file(ctx: Context, space: str) -> Path:
    with ctx.transaction() as session:
        path = galleries.get_space(session, space).index_path
    assert path is not None
    return ctx.path(path)


def checks(report) -> list[tuple[str, str, bool]]:
    return sorted((f.check, f.severity, f.repaired is not None) for f in report.findings)


def test_a_healthy_deployment_is_clean_and_reports_its_unfinished_run(half) -> None:
    ctx, run_id = half
    report = doctor(ctx)
    assert report.clean and checks(report) == [("run", "info", False)]
    assert f"resume {run_id}" in (report.findings[0].fix or "")
    assert json.loads(json.dumps(report.to_dict()))["clean"] is True


def test_versions_without_weights_of_ours_are_not_missing_files(half) -> None:
    """External and pretrained versions keep no weights file; a trained one's loss is an error."""
    ctx, _ = half
    with ctx.transaction() as session:
        versions.register_external_version(session, "api-v3", 16)
        fingerprint = {"weights_sha256": "0" * 64, "dim": 16}
        versions.register_pretrained_version(session, "st-v4", "st:x", fingerprint, 16)
    assert doctor(ctx).clean
    ctx.path("models/v1.safetensors").unlink()
    report = doctor(ctx)
    assert not report.clean
    assert [f.subject for f in report.findings if f.check == "artifact"] == ["model version 'v1'"]


def test_orphan_files_are_deleted_and_foreign_files_left_alone(half) -> None:
    ctx, _ = half
    current = index_file(ctx, "v2")  # v2.1.faiss
    litter = ["v2.0.faiss", "v2.2.faiss", ".v2.2.faiss.x1y2.tmp"]
    for name in litter:
        shutil.copy(current, current.parent / name)
    (current.parent / "notes.txt").write_text("mine")
    found = doctor(ctx)
    assert sorted(f.subject for f in found.problems) == sorted([*litter, "notes.txt"])
    assert all(f.severity == "warning" for f in found.problems)
    repaired = doctor(ctx, repair=True)
    assert [f.subject for f in repaired.problems] == ["notes.txt"]
    assert sorted(p.name for p in current.parent.iterdir()) == [
        "notes.txt",
        "v1.1.faiss",
        "v2.1.faiss",
    ]


def test_missing_index_without_a_source_is_unrepairable_and_untouched(half) -> None:
    ctx, _ = half
    index_file(ctx, "v1").unlink()
    report = doctor(ctx, repair=True)
    (finding,) = report.problems
    assert (finding.check, finding.subject, finding.repaired) == ("index_file", "v1", None)
    assert "ingested here" in finding.message and "backup" in (finding.fix or "")
    fixed = doctor(
        ctx, repair=True, reembed={"v1": lambda ids: torch.from_numpy(OLD_VECTORS[ids - 1])}
    )
    assert fixed.clean and doctor(ctx).clean


def test_lost_target_index_hands_a_cut_over_run_back(half) -> None:
    ctx, run_id = half
    migrate.run(ctx, run_id, reembed, wave_size=100)
    migrate.cutover(ctx, run_id)
    index_file(ctx, "v2").unlink()
    report = doctor(ctx, repair=True)
    assert report.clean, report.problems
    assert migrate.status(ctx, run_id)["state"] == "paused"
    assert migrate.status(ctx, run_id)["done"] == 0
    migrate.run(ctx, run_id, reembed, wave_size=100)
    assert migrate.status(ctx, run_id)["done"] == N_ITEMS and doctor(ctx).clean


def test_vectors_the_catalog_does_not_list_are_removed(half) -> None:
    ctx, _ = half
    with ctx.transaction() as session:  # item 1 was migrated: its v1 row is not authoritative
        v1 = galleries.get_space(session, "v1")
        session.execute(
            delete(ItemEmbedding).where(ItemEmbedding.space_id == v1.id, ItemEmbedding.item_id == 1)
        )
    report = doctor(ctx, repair=True)
    assert checks(report) == [("index_ids", "error", True), ("run", "info", False)]
    assert "removed 1 vectors" in str(report.findings[0].repaired)
    assert doctor(ctx).clean


def test_item_without_authority_gets_its_only_space_back(half) -> None:
    ctx, _ = half
    with ctx.transaction() as session:
        session.execute(
            update(ItemEmbedding).where(ItemEmbedding.item_id == 30).values(authoritative=False)
        )
    assert ("authority", "error", False) in checks(doctor(ctx))
    assert ("authority", "error", True) in checks(doctor(ctx, repair=True))
    assert doctor(ctx).clean


def test_expired_leases_return_to_pending(half) -> None:
    ctx, run_id = half
    with ctx.transaction() as session:
        session.execute(
            update(BackfillTask)
            .where(BackfillTask.run_id == run_id, BackfillTask.item_id.in_([25, 26]))
            .values(state="leased", lease_owner="w1", lease_expires_at=utcnow() - timedelta(1))
        )
        session.execute(
            update(BackfillTask)
            .where(BackfillTask.item_id == 27)  # still valid: not touched
            .values(state="leased", lease_owner="w2", lease_expires_at=utcnow() + timedelta(1))
        )
    report = doctor(ctx, repair=True)
    (lease,) = [f for f in report.findings if f.check == "lease"]
    assert "2 tasks" in lease.message and lease.repaired
    with ctx.transaction() as session:
        states = dict(
            session.execute(
                select(BackfillTask.item_id, BackfillTask.state).where(
                    BackfillTask.item_id.in_([25, 26, 27])
                )
            ).all()
        )
    assert states == {25: "pending", 26: "pending", 27: "leased"}


def test_ledger_follows_the_catalogs_authority(half) -> None:
    ctx, run_id = half
    with ctx.transaction() as session:
        session.execute(
            update(BackfillTask)
            .where(BackfillTask.run_id == run_id, BackfillTask.item_id.in_([1, 2]))
            .values(state="pending")
        )
        session.execute(
            update(BackfillTask)
            .where(BackfillTask.run_id == run_id, BackfillTask.item_id == 35)
            .values(state="done")
        )
        session.get_one(MigrationRun, run_id).done_items = 7
    found = [f for f in doctor(ctx).findings if f.check == "ledger"]
    assert len(found) == 1 and "1 tasks done without" in found[0].message
    doctor(ctx, repair=True)
    assert doctor(ctx).clean and migrate.status(ctx, run_id)["done"] == 20
    migrate.run(ctx, run_id, reembed, wave_size=100)  # item 35 is migrated after all
    assert migrate.status(ctx, run_id)["done"] == N_ITEMS and doctor(ctx).clean
