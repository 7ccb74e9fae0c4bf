"""Check a deployment's catalog against its files, and repair what can honestly be repaired.

Vectors live only in index files, so an index whose file is lost, corrupt or incomplete can be
rebuilt only from a source of vectors: the verified file itself (for vectors the catalog does not
know, which are simply dropped), a re-embedding function the caller passes for that space, or --
for items a migration moved into the space -- the items' old vectors, still in the run's source
index: those items are handed back to the source and become pending again, so resuming the run
re-embeds them. Anything without a source is reported as unrepairable and left exactly as found.

The whole check runs in one write transaction (the write lock on SQLite, locked space rows on
PostgreSQL): no writer can be staging a snapshot meanwhile, so every index file the catalog does
not point at really is litter (a superseded snapshot, one whose commit never happened, or a
temporary file of an interrupted write).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from compat.vectors import check_vectors
from index.catalog import (
    Adapter,
    BackfillTask,
    EmbeddingSpace,
    Item,
    ItemEmbedding,
    MigrationRun,
    ModelVersion,
    utcnow,
)
from index.context import Context
from index.galleries import (
    SQL_CHUNK,
    chunked,
    discard,
    empty_store,
    load_store,
    point_space_at,
    space_files,
    staged_for,
)
from index.migrate import Reembed, hand_back, stored_vectors
from index.store import GalleryStore
from kernels.errors import HotswapError, InvalidInputError
from models.checkpoint import sha256_file

Severity = Literal["error", "warning", "info"]
# Snapshots (<space>.<seq>.faiss), deltas (<space>.<seq>.delta) and their temporary files.
SNAPSHOT = re.compile(r"^\.?(?P<space>.+)\.(?P<seq>\d+)\.(?:faiss|delta)(?:\..+\.tmp)?$")
LIVE_RUNS = ("planned", "running", "paused", "completed", "cutover")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem (or, for ``info``, one fact worth knowing) and what was done about it."""

    check: str  # stable key: "index_file", "index_ids", "orphan_file", "authority", ...
    severity: Severity
    subject: str  # the space, file, run or item concerned
    message: str
    fix: str | None = None  # what a person can do, when doctor cannot
    repaired: str | None = None  # what doctor did; None when it changed nothing


@dataclasses.dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    repair: bool

    @property
    def problems(self) -> list[Finding]:
        """Errors and warnings still standing (not repaired)."""
        return [f for f in self.findings if f.severity != "info" and f.repaired is None]

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "repair": self.repair,
            "findings": [dataclasses.asdict(f) for f in self.findings],
        }


def doctor(
    ctx: Context, *, repair: bool = False, reembed: Mapping[str, Reembed] | None = None
) -> Report:
    """Check everything; with ``repair`` fix what has a source. ``reembed`` maps a space name to a
    function (item ids -> vectors) that can recreate that space's vectors."""
    findings: list[Finding] = []
    superseded: list[Path] = []
    with ctx.transaction() as session:
        # Runs before spaces: the order migration waves and rollbacks lock them in (PostgreSQL).
        session.scalars(select(MigrationRun).order_by(MigrationRun.id).with_for_update()).all()
        spaces = session.scalars(
            select(EmbeddingSpace).order_by(EmbeddingSpace.id).with_for_update()
        ).all()
        findings += _check_artifacts(ctx, session)
        damaged: set[str | Path] = set()
        for space in spaces:
            found, old = _check_space(ctx, session, space, repair, dict(reembed or {}))
            findings += found
            superseded += old
            damaged |= {space.name for f in found if f.repaired is None}
        findings += _check_authority(session, repair)
        findings += _check_runs(session, repair)
        findings += _check_leases(session, repair)
        skip = set(superseded)  # discarded below
        findings += _check_files(ctx, spaces, damaged | skip, repair)
    discard(superseded)
    return Report(tuple(findings), repair)


# ---- artifacts ---------------------------------------------------------------------------------


def _check_artifacts(ctx: Context, session: Session) -> list[Finding]:
    """Model weights and adapter artifacts: present, inside the data directory, unchanged."""
    expected = [
        (f"model version {v.name!r}", f"models/{v.name}.safetensors", v.weights_sha256)
        for v in session.scalars(select(ModelVersion).order_by(ModelVersion.id))
        # External and pretrained versions keep no weights file of ours: only trained ones do.
        if v.weights_sha256 is not None
    ] + [
        (f"adapter {a.name!r}", a.artifact_path, a.artifact_sha256)
        for a in session.scalars(select(Adapter).order_by(Adapter.id))
    ]
    findings = []
    for subject, relative, digest in expected:
        problem = _file_problem(ctx, relative, digest)
        if problem:
            findings.append(
                Finding(
                    "artifact",
                    "error",
                    subject,
                    problem,
                    fix="restore the file from a backup, or register the model/adapter again",
                )
            )
    return findings


def _file_problem(ctx: Context, relative: str, digest: str | None) -> str | None:
    try:
        path = ctx.path(relative)
    except InvalidInputError as e:
        return e.message
    if not path.is_file():
        return f"{relative} is missing"
    if digest is not None and sha256_file(path) != digest:
        return f"{relative} does not match the sha256 in the catalog (changed or truncated)"
    return None


# ---- one space's index -------------------------------------------------------------------------


@dataclasses.dataclass
class _SpaceState:
    """What the catalog says a space holds, and what its file holds, if it could be read."""

    space: EmbeddingSpace
    rows: np.ndarray  # (n,) item ids with a row in item_embedding for this space
    store: GalleryStore | None  # the verified file; None when missing or corrupt
    problem: str | None = None  # why the file could not be used
    unsafe: bool = False  # its path leaves the data directory: never touched


def _check_space(
    ctx: Context, session: Session, space: EmbeddingSpace, repair: bool, reembed: dict[str, Reembed]
) -> tuple[list[Finding], list[Path]]:
    """Whether the space's files (snapshot and deltas) hold exactly the items the catalog lists;
    with ``repair``, rebuild them from a source. Returns the findings and the files superseded."""
    state = _read_space(ctx, session, space)
    if state.unsafe:
        fix = (
            "correct embedding_space.index_path / index_deltas; doctor never touches files "
            "outside the data directory"
        )
        return [Finding("index_file", "error", space.name, str(state.problem), fix=fix)], []
    held = state.store.ids() if state.store is not None else np.empty(0, dtype=np.int64)
    extra, missing = np.setdiff1d(held, state.rows), np.setdiff1d(state.rows, held)
    if state.problem is None and not len(extra) and not len(missing):
        return [], []
    check = "index_file" if state.problem else "index_ids"
    message = state.problem or (
        f"the index holds {len(extra)} vectors the catalog does not list and lacks "
        f"{len(missing)} that it does"
    )
    plan = _rebuild_plan(ctx, session, space, missing, reembed)
    if isinstance(plan, str):
        return [Finding(check, "error", space.name, f"{message}; {plan}", fix=_REBUILD_FIX)], []
    if not repair:
        fix = "run doctor with repair=True"
        return [Finding(check, "error", space.name, message, fix=fix)], []
    done, superseded = _rebuild(ctx, session, state, extra, plan)
    return [Finding(check, "error", space.name, message, repaired=done)], superseded


_REBUILD_FIX = (
    "restore the index file from a backup, or run doctor with reembed={space: function} that "
    "recreates this space's vectors"
)


def _read_space(ctx: Context, session: Session, space: EmbeddingSpace) -> _SpaceState:
    rows = session.scalars(select(ItemEmbedding.item_id).where(ItemEmbedding.space_id == space.id))
    state = _SpaceState(space, np.array(sorted(rows), dtype=np.int64), None)
    if space.index_path is None:
        state.store = empty_store(space)  # the space's kind and params
        return state
    try:
        space_files(ctx, space)  # the snapshot and every delta stay inside the data directory
    except InvalidInputError as e:
        state.problem, state.unsafe = e.message, True
        return state
    except HotswapError as e:  # a malformed delta list: the files cannot be trusted
        state.problem = e.message
        return state
    try:
        state.store = load_store(ctx, space)  # verifies the snapshot and every delta
    except HotswapError as e:  # missing, checksum, unreadable, size: the file cannot be trusted
        state.problem = e.message
    return state


@dataclasses.dataclass(frozen=True)
class _Plan:
    missing: np.ndarray  # (m,) item ids the index lacks
    reembed: Reembed | None  # the caller's function for this space: recreates all of them
    handed_back: dict[int, np.ndarray]  # run id -> items whose old vectors their source holds


def _rebuild_plan(
    ctx: Context,
    session: Session,
    space: EmbeddingSpace,
    missing: np.ndarray,
    reembed: dict[str, Reembed],
) -> _Plan | str:
    """Where the missing vectors will come from, or why they cannot be recreated. Nothing is
    re-embedded yet: a check without repair stays cheap."""
    if not len(missing) or space.name in reembed:
        return _Plan(missing, reembed.get(space.name), {})
    runs: dict[int, list[int]] = {}
    for chunk in chunked(missing.tolist(), SQL_CHUNK):
        for item, run_id in session.execute(
            select(ItemEmbedding.item_id, ItemEmbedding.migration_run_id).where(
                ItemEmbedding.space_id == space.id, ItemEmbedding.item_id.in_(chunk)
            )
        ):
            if run_id is None:
                return f"{len(missing)} vectors are lost, item {item} among them was ingested here"
            runs.setdefault(run_id, []).append(item)
    plan = _Plan(missing, None, {r: np.array(sorted(i), dtype=np.int64) for r, i in runs.items()})
    for run_id, ids in plan.handed_back.items():
        problem = _source_problem(ctx, session, session.get_one(MigrationRun, run_id), ids)
        if problem:
            return f"{len(missing)} vectors are lost and {problem}"
    return plan


def _source_problem(
    ctx: Context, session: Session, run: MigrationRun, ids: np.ndarray
) -> str | None:
    """Why the run's source cannot take ``ids`` back with their old vectors, or None."""
    if run.state not in LIVE_RUNS:
        return f"run {run.id} that migrated them is {run.state}"
    source = session.get_one(EmbeddingSpace, run.source_space_id)
    try:
        held = load_store(ctx, source).ids()
    except HotswapError as e:
        return f"the source space {source.name!r} of run {run.id} is unreadable too ({e.message})"
    if len(np.setdiff1d(ids, held)):
        return f"the source space {source.name!r} no longer holds their old vectors"
    return None


def _rebuild(
    ctx: Context, session: Session, state: _SpaceState, extra: np.ndarray, plan: _Plan
) -> tuple[str, list[Path]]:
    space, done = state.space, []
    store = state.store
    if store is None:  # missing or corrupt: start empty; the plan has a source for every row
        store = empty_store(space)
        done.append("rebuilt the index from its sources")
    if len(extra):
        store.remove(extra)
        done.append(f"removed {len(extra)} vectors the catalog does not list")
    if plan.reembed is not None and len(plan.missing):
        x = torch.as_tensor(plan.reembed(plan.missing))
        x = check_vectors(x, space.model_version.dim, f"re-embedded vectors for {space.name}")
        if len(x) != len(plan.missing):  # raising rolls the whole repair back
            raise InvalidInputError(
                f"reembed[{space.name!r}] returned {len(x)} vectors for {len(plan.missing)} items"
            )
        store.add(plan.missing, torch.nn.functional.normalize(x, dim=1).numpy())
        done.append(f"re-embedded {len(plan.missing)} missing vectors")
    with staged_for(ctx, space, store) as staged:
        for run_id, ids in plan.handed_back.items():
            run_row = session.get_one(MigrationRun, run_id)
            hand_back(session, run_row, ids)
            if run_row.state in ("completed", "cutover"):
                run_row.state = "paused"  # resuming it re-embeds them
            done.append(
                f"handed {len(ids)} items of run {run_id} back to its source, pending again"
            )
        superseded = point_space_at(ctx, space, staged)
        session.flush()
    return "; ".join(done), superseded


# ---- authority, runs, leases, files ------------------------------------------------------------


def _check_authority(session: Session, repair: bool) -> list[Finding]:
    findings = []
    authoritative = and_(ItemEmbedding.item_id == Item.id, ItemEmbedding.authoritative.is_(True))
    orphans = session.scalars(
        select(Item.id)
        .outerjoin(ItemEmbedding, authoritative)
        .where(ItemEmbedding.item_id.is_(None))
    ).all()
    for item in orphans:
        spaces = session.scalars(
            select(ItemEmbedding.space_id).where(ItemEmbedding.item_id == item)
        ).all()
        done = None
        if repair and len(spaces) == 1:
            session.execute(
                update(ItemEmbedding)
                .where(ItemEmbedding.item_id == item)
                .values(authoritative=True)
            )
            done = f"made its only embedding (space id {spaces[0]}) authoritative"
        findings.append(
            Finding(
                "authority",
                "error",
                f"item {item}",
                f"no authoritative space (embedded in {len(spaces)} spaces): search never returns it",
                fix=None if len(spaces) == 1 else "re-ingest the item or pick its space by hand",
                repaired=done,
            )
        )
    doubled = session.execute(
        select(ItemEmbedding.item_id, func.count())
        .where(ItemEmbedding.authoritative.is_(True))
        .group_by(ItemEmbedding.item_id)
        .having(func.count() > 1)
    ).all()
    for item, n in doubled:  # only possible where the partial unique index was dropped
        findings.append(
            Finding(
                "authority",
                "error",
                f"item {item}",
                f"authoritative in {n} spaces: search returns it {n} times",
                fix="recreate ix_item_embedding_one_authoritative (hotswap db upgrade) and pick one",
            )
        )
    return findings


def _check_runs(session: Session, repair: bool) -> list[Finding]:
    findings = []
    for r in session.scalars(select(MigrationRun).where(MigrationRun.state.in_(LIVE_RUNS))):
        if r.state in ("planned", "running", "paused"):
            findings.append(
                Finding(
                    "run",
                    "info",
                    f"run {r.id}",
                    f"unfinished: {r.state}, {r.done_items}/{r.total_items} items migrated",
                    fix=f"resume it (hotswap migrate resume {r.id}) or roll it back",
                )
            )
        findings += _check_ledger(session, r, repair)
    return findings


def _check_ledger(session: Session, r: MigrationRun, repair: bool) -> list[Finding]:
    """Tasks done <=> the item has this run's row in the target space (authoritative unless a
    later run moved it on)."""
    migrated = set(
        session.scalars(
            select(ItemEmbedding.item_id).where(
                ItemEmbedding.space_id == r.target_space_id, ItemEmbedding.migration_run_id == r.id
            )
        )
    )
    done = set(
        session.scalars(
            select(BackfillTask.item_id).where(
                BackfillTask.run_id == r.id, BackfillTask.state == "done"
            )
        )
    )
    wrong_done, wrong_pending = sorted(done - migrated), sorted(migrated - done)
    if not wrong_done and not wrong_pending and r.done_items == len(done):
        return []
    message = (
        f"ledger disagrees with the catalog: {len(wrong_done)} tasks done without a migrated item, "
        f"{len(wrong_pending)} migrated items without a done task, done_items={r.done_items} "
        f"for {len(done)} done tasks"
    )
    fixed = None
    if repair:
        _set_tasks(session, r.id, wrong_done, "pending")
        _set_tasks(session, r.id, wrong_pending, "done")
        r.done_items = len(migrated)
        if wrong_done and r.state in ("completed", "cutover"):
            r.state = "paused"
        fixed = "the ledger now follows the catalog's authority"
    return [Finding("ledger", "error", f"run {r.id}", message, repaired=fixed)]


def _set_tasks(session: Session, run_id: int, items: list[int], state: str) -> None:
    if items:
        session.execute(
            update(BackfillTask)
            .where(BackfillTask.run_id == run_id, BackfillTask.item_id.in_(items))
            .values(state=state, lease_owner=None, lease_expires_at=None)
        )


def _check_leases(session: Session, repair: bool) -> list[Finding]:
    now: datetime = utcnow()
    expired = session.scalars(
        select(BackfillTask).where(
            BackfillTask.state == "leased",
            (BackfillTask.lease_expires_at.is_(None)) | (BackfillTask.lease_expires_at < now),
        )
    ).all()
    by_run: dict[int, int] = {}
    for task in expired:
        by_run[task.run_id] = by_run.get(task.run_id, 0) + 1
        if repair:
            task.state, task.lease_owner, task.lease_expires_at = "pending", None, None
    return [
        Finding(
            "lease",
            "warning",
            f"run {run_id}",
            f"{n} tasks leased by a worker whose lease expired (it probably died)",
            repaired="returned them to pending" if repair else None,
        )
        for run_id, n in sorted(by_run.items())
    ]


def _check_files(
    ctx: Context, spaces: Sequence[EmbeddingSpace], skip: set[str | Path], repair: bool
) -> list[Finding]:
    """Index files no space points at: superseded, never committed, or half-written temporaries.

    ``skip`` holds files doctor itself superseded (deleted after commit) and the names of spaces
    whose index is damaged: their orphans are kept, they may hold the only copy of some vectors."""
    directory = ctx.path("indexes")
    if not directory.is_dir():
        return []
    current = {ctx.relative(p) for s in spaces for p in _files_or_none(ctx, s)}
    known = {s.name for s in spaces}
    findings = []
    for path in sorted(directory.iterdir()):
        if path.is_symlink() or not path.is_file():
            findings.append(
                Finding("orphan_file", "warning", path.name, "not a regular file; left alone")
            )
            continue
        if ctx.relative(path) in current or path.resolve() in skip:
            continue
        match = SNAPSHOT.match(path.name)
        if match is None or match["space"] not in known:
            findings.append(
                Finding("orphan_file", "warning", path.name, "not a hotswap snapshot; left alone")
            )
            continue
        kind = "temporary file of an interrupted write" if path.name.startswith(".") else "snapshot"
        if match["space"] in skip:
            findings.append(
                Finding(
                    "orphan_file",
                    "warning",
                    path.name,
                    f"{kind} of space {match['space']!r}, kept: that space's index is damaged and "
                    "this file may hold vectors it lacks",
                    fix=f"inspect it, then doctor(reembed={{{match['space']!r}: rebuild_source(...)}})",
                )
            )
            continue
        done = None
        if repair:
            path.unlink(missing_ok=True)
            done = "deleted"
        findings.append(
            Finding(
                "orphan_file",
                "warning",
                path.name,
                f"{kind} of space {match['space']!r} that the catalog does not point at",
                repaired=done,
            )
        )
    return findings


def _files_or_none(ctx: Context, space: EmbeddingSpace) -> list[Path]:
    """The space's files; none when its catalog entry is unreadable or unsafe (reported by
    ``_check_space``; its name is in ``skip``, so its files are kept)."""
    try:
        return space_files(ctx, space)
    except HotswapError:
        return []


def rebuild_source(store: GalleryStore) -> Callable[[np.ndarray], torch.Tensor]:
    """A ``reembed`` for :func:`doctor` that reads vectors from another copy of a space's index
    (a backup, a replica): ``doctor(ctx, repair=True, reembed={"v1": rebuild_source(backup)})``."""
    return lambda ids: torch.from_numpy(stored_vectors(store, ids))
