"""The processes the reliability tests start and kill, and the small deployment they share.

Children come from a multiprocessing *forkserver* that imported this module (torch, faiss, hotswap)
once: each forks from it in milliseconds instead of paying seconds of imports, so a test can kill
dozens of real processes with SIGKILL in a few seconds. The server forks before any torch or FAISS
thread pool exists, which is what makes forking safe here.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import func, select

from compat.adapters import build_adapter
from index import galleries, migrate, versions
from index.catalog import EmbeddingSpace, Item, ItemEmbedding
from index.context import Context, open_context
from index.doctor import SNAPSHOT, doctor
from index.ray_workers import ItemVectors
from index.search import MixedSearcher
from models.encoders import MLPEncoderConfig, build_encoder
from tests.index.fixtures import unit_vectors

N, OLD_DIM, NEW_DIM = 300, 8, 8
NEW_VECTORS = unit_vectors(N + 1, NEW_DIM, seed=9)  # row = item id (ids start at 1)


def build(root: Path, url: str | None = None, n: int = N) -> Context:
    """v1 (8-d) holding ``n`` items, an empty v2 (8-d), a backward orthogonal adapter v2 -> v1."""
    torch.manual_seed(0)
    ctx = open_context(root, url, create=True)
    with ctx.transaction() as session:
        encoder = MLPEncoderConfig(input_dim=4, hidden_dims=(8,), embed_dim=OLD_DIM)
        v1 = versions.register_version(ctx, session, "v1", build_encoder("mlp", encoder))
        v2 = versions.register_version(ctx, session, "v2", build_encoder("mlp", encoder))
        adapter = build_adapter("orthogonal", {"dim_in": NEW_DIM, "dim_out": OLD_DIM})
        versions.register_adapter(ctx, session, adapter, v2, v1)
        galleries.create_space(session, v1)
        galleries.create_space(session, v2)
    galleries.ingest(ctx, "v1", [f"item-{i}" for i in range(n)], unit_vectors(n, OLD_DIM, seed=8))
    return ctx


def reembed(ids: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(NEW_VECTORS[ids])


def processes() -> ForkServerContext:
    procs = multiprocessing.get_context("forkserver")
    procs.set_forkserver_preload([__name__])  # only effective before the server's first start
    return procs


def kill_after(procs: ForkServerContext, target: Any, args: tuple, delay: float) -> dict[str, Any]:
    """Start ``target(*args)`` in a child, SIGKILL it ``delay`` s after it started; what happened."""
    child = procs.Process(target=target, args=args)
    child.start()
    started = time.perf_counter()
    child.join(timeout=delay)
    if child.exitcode is None:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join()
    return {
        "delay_s": round(delay, 4),
        "lived_s": round(time.perf_counter() - started, 4),
        "killed": child.exitcode == -signal.SIGKILL,  # else it had finished (or failed) first
        "exitcode": child.exitcode,
    }


# ---- children ----------------------------------------------------------------------------------


def migrate_child(data_dir: str, url: str | None, run_id: int, wave_size: int) -> None:
    ctx = open_context(Path(data_dir), url)
    migrate.run(ctx, run_id, reembed, wave_size=wave_size)


def rollback_child(data_dir: str, url: str | None, run_id: int) -> None:
    migrate.rollback(open_context(Path(data_dir), url), run_id)


def query_child(
    data_dir: str, url: str | None, k: int, stop: Any, results: Any, searched: Any
) -> None:
    """Open a fresh searcher and search, again and again until ``stop``; report every anomaly.
    ``searched`` (a shared counter) lets the migrating parent see the reader's progress."""
    ctx = open_context(Path(data_dir), url)
    queries = torch.from_numpy(unit_vectors(4, NEW_DIM, seed=6))
    summary: dict[str, Any] = {"searches": 0, "failures": [], "bad_rows": 0, "v2_counts": []}
    while not stop.is_set():
        try:
            result = MixedSearcher.open(ctx, "v2").search(queries, k=k)
        except Exception:
            summary["failures"].append(traceback.format_exc(limit=3))
            continue
        summary["searches"] += 1
        with searched.get_lock():
            searched.value += 1
        for ids in result.ids:
            if len(set(ids.tolist()) - {-1}) != k:  # each item once, none missing
                summary["bad_rows"] += 1
        summary["v2_counts"].append(
            int((result.spaces == result.space_names.index("v2")).sum())
            if "v2" in result.space_names
            else 0
        )
    results.put(summary)


# ---- invariants --------------------------------------------------------------------------------


def authority(ctx: Context) -> dict[str, set[int]]:
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


def assert_consistent(ctx: Context, n: int = N) -> dict[str, Any]:
    """Every item authoritative in exactly one space, none lost, none duplicated; every index
    holds exactly what the catalog lists (doctor finds no error); search returns each item once.
    Returns the counts and the litter (orphan files) doctor saw."""
    auth = authority(ctx)
    assert not auth["v1"] & auth["v2"], "an item is authoritative twice"
    with ctx.transaction() as session:
        items = session.scalar(select(func.count()).select_from(Item))
    assert items == n and len(auth["v1"] | auth["v2"]) == n, "an item was lost"
    report = doctor(ctx)
    errors = [f for f in report.findings if f.severity == "error"]
    assert not errors, errors
    litter = [f.subject for f in report.problems if f.check == "orphan_file"]
    assert len(litter) == len(report.problems), report.problems
    result = MixedSearcher.open(ctx, "v2").search(reembed(np.arange(1, 3)), k=n)
    for row in result.ids:
        assert sorted(row.tolist()) == list(range(1, n + 1))
    return {"v1": len(auth["v1"]), "v2": len(auth["v2"]), "litter": _kinds(ctx, litter)}


def _kinds(ctx: Context, names: list[str]) -> list[str]:
    """What each orphan file is: a temporary file, a superseded or a never-committed snapshot."""
    with ctx.transaction() as session:
        seq = dict(session.execute(select(EmbeddingSpace.name, EmbeddingSpace.snapshot_seq)).all())
    kinds = []
    for name in names:
        match = SNAPSHOT.match(name)
        assert match is not None, name
        if name.startswith("."):
            kinds.append("temporary")
        else:
            newer = int(match["seq"]) > seq[match["space"]]
            kinds.append("uncommitted" if newer else "superseded")
    return kinds


# ---- the Ray engine (tests/index/test_ray_engine.py) ------------------------------------------


def ray_encoder() -> ItemVectors:
    """What each Ray actor builds its encoder from: ``reembed``'s table, shipped by value (an
    actor that imported this module would spend seconds importing torch and FAISS)."""
    return ItemVectors(np.arange(1, N + 1), np.arange(N), NEW_VECTORS[1:])


def ray_migrate_child(
    data_dir: str, url: str | None, run_id: int, wave_size: int, address: str
) -> None:
    """A migrating driver on the Ray engine, attached to the test's cluster at ``address``."""
    import ray

    from index.ray_engine import RayEngine, RayEngineConfig

    ray.init(address=address, log_to_driver=False)
    engine = RayEngine(ray_encoder(), RayEngineConfig(workers=2, batch_size=16, page_size=64))
    migrate.run(open_context(Path(data_dir), url), run_id, engine, wave_size=wave_size)
