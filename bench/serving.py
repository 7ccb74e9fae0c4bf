"""Mixed-version search overhead: a half-migrated 100k gallery against plain FAISS, side by side.

    .venv/bin/python bench/serving.py [--part overhead|kinds|merge] [--items 100000] [--rounds 7]

(``-P``: bench/ holds a kernels.py that would shadow the kernels package.) Each part rewrites its
own generated section of docs/results/serving.md, leaving the others and the notes alone.

The deployment is real (SQLite catalog, one FAISS file per space, a real migration run moved half
the gallery): v1 = 128-d, v2 = 256-d, a backward orthogonal adapter 256 -> 128; seeded synthetic
unit vectors. v2 queries, k=10, batches of 64. Every contender answers the same batches, in rounds
that interleave the contenders (so drifting load on a shared machine hits all of them alike); the
figure per contender is the median batch latency over all rounds.

Contenders:
- hotswap: ``MixedSearcher.search`` (checks, normalisation, bridge, two searches, merge);
- hotswap, per-batch IDSelector: the same views, filtered per batch with an ``IDSelectorBatch``
  over the full v1 index (what index/search.py did before it cached the filter per snapshot);
- plain FAISS 256-d: one ``IndexFlatIP`` over 100k v2 vectors (the gallery after a full re-embed);
- plain FAISS 128-d: one ``IndexFlatIP`` over the 100k v1 vectors (the gallery before any upgrade);
- FAISS floor: two plain ``IndexFlatIP`` searches over exactly the vectors the mixed search scans
  (50k x 128 + 50k x 256), queries already bridged: the FAISS work alone, no hotswap code.

``--part kinds``: the same half-migrated gallery (clustered data) with both spaces rebuilt as IVF
and as HNSW: recall@10 against the flat mixed search, latency and QPS, per search setting.
``--part merge``: the demo's Fashion-MNIST models, migrated in waves; every merge policy's top-1
and mAP after each wave (the calibrated policy against the dip of raw-score merging).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

# The repository root first: bench/kernels.py would otherwise shadow the kernels package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from compat.adapters import build_adapter  # noqa: E402
from index import galleries, migrate, versions  # noqa: E402
from index.context import Context, open_context  # noqa: E402
from index.search import MixedSearcher, SpaceView, _authoritative_part, search_views  # noqa: E402
from models.encoders import MLPEncoderConfig, build_encoder  # noqa: E402

OLD_DIM, NEW_DIM, K, BATCH = 128, 256, 10, 64
TARGET_OVERHEAD = 0.15
OURS, SELECTOR = "hotswap mixed search", "hotswap, per-batch IDSelector"
FLOOR, PLAIN_NEW, PLAIN_OLD = "FAISS floor (two halves)", "plain FAISS, 256-d", "plain FAISS, 128-d"


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(
    root: Path, n: int, data: Callable[[int, int, int], np.ndarray] = unit, related: bool = False
) -> tuple[Context, np.ndarray, np.ndarray]:
    """v1 holds n items; a migration moved the first half (insertion order) to v2. ``related``:
    v1 vectors are the v2 ones through the adapter plus noise (bridged queries find their
    neighbours in v1 as well), else independent draws."""
    torch.manual_seed(0)
    ctx = open_context(root, create=True)
    old, new = data(n, OLD_DIM, 1), data(n, NEW_DIM, 2)  # row r = item id r + 1
    with ctx.transaction() as session:
        config = MLPEncoderConfig(input_dim=8, hidden_dims=(8,), embed_dim=OLD_DIM)
        v1 = versions.register_version(ctx, session, "v1", build_encoder("mlp", config))
        config = MLPEncoderConfig(input_dim=8, hidden_dims=(8,), embed_dim=NEW_DIM)
        v2 = versions.register_version(ctx, session, "v2", build_encoder("mlp", config))
        adapter = build_adapter("orthogonal", {"dim_in": NEW_DIM, "dim_out": OLD_DIM})
        versions.register_adapter(ctx, session, adapter, v2, v1)
        galleries.create_space(session, v1)
        galleries.create_space(session, v2)
    if related:
        mapped = adapter.bridge()(torch.from_numpy(new)).numpy()
        noise = np.random.default_rng(3).standard_normal(mapped.shape, np.float32)
        old = mapped + 0.5 / np.sqrt(OLD_DIM) * noise  # unit rows + noise of norm ~0.5
        old /= np.linalg.norm(old, axis=1, keepdims=True)
    galleries.ingest(ctx, "v1", [f"item-{i}" for i in range(n)], old)
    run_id = migrate.plan(ctx, "v1", "v2", ordering="insertion")
    migrate.run(
        ctx, run_id, lambda ids: torch.from_numpy(new[ids - 1]), wave_size=n // 2, max_waves=1
    )
    return ctx, old, new


Contender = Callable[[int], object]  # batch number -> (ignored) result


def contenders(
    ctx: Context, old: np.ndarray, new: np.ndarray, batches: list[torch.Tensor]
) -> dict[str, Contender]:
    searcher = MixedSearcher.open(ctx, "v2")
    v1_view, v2_view = searcher.views  # v1: compact (authoritative half), v2: native
    assert v1_view.bridge is not None
    half = len(old) // 2
    with ctx.transaction() as session:
        full_v1 = galleries.load_store(ctx, galleries.get_space(session, "v1"))
    selector_views = [SpaceView("v1", full_v1, v1_view.allowed, v1_view.bridge), v2_view]
    # Baselines get their queries ready-made (bridged where the index is 128-d): FAISS time only.
    raw = [q.numpy() for q in batches]
    bridged = [v1_view.bridge(q).numpy() for q in batches]
    plain_new, plain_old = _flat(new), _flat(old)
    floor_old, floor_new = _flat(old[half:]), _flat(new[:half])
    return {
        OURS: lambda b: searcher.search(batches[b], K),
        SELECTOR: lambda b: search_views(batches[b], selector_views, K),
        PLAIN_NEW: lambda b: plain_new.search(raw[b], K),
        PLAIN_OLD: lambda b: plain_old.search(bridged[b], K),
        FLOOR: lambda b: (
            floor_old.search(bridged[b], K),
            floor_new.search(raw[b], K),
        ),
    }


def _flat(x: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x))
    return index


Samples = dict[str, list[float]]  # contender -> seconds per batch, in the same (round, batch) order


def measure(runs: dict[str, Contender], n_batches: int, rounds: int) -> Samples:
    """Every contender answers every batch, back to back, in an order rotated each round."""
    times: Samples = {name: [] for name in runs}
    names = list(runs)
    for fn in runs.values():  # warm-up: first calls allocate
        fn(0)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for b in range(n_batches):
            for name in order:
                start = time.perf_counter()
                runs[name](b)
                times[name].append(time.perf_counter() - start)
    return times


def paired_overhead(ours: list[float], ref: list[float]) -> float:
    """Median over batches of (ours / reference) - 1: each pair ran back to back, so load that
    drifts over the run cancels out."""
    return statistics.median(o / r for o, r in zip(ours, ref, strict=True)) - 1


def open_cost(ctx: Context, repeats: int = 3) -> dict[str, float]:
    """Seconds to open a searcher (catalog read, two file loads with checksums, compaction)."""
    opened, compacted = [], []
    with ctx.transaction() as session:
        full_v1 = galleries.load_store(ctx, galleries.get_space(session, "v1"))
    allowed = MixedSearcher.open(ctx, "v2").views[0].allowed
    for _ in range(repeats):
        start = time.perf_counter()
        MixedSearcher.open(ctx, "v2")
        opened.append(time.perf_counter() - start)
        start = time.perf_counter()
        _authoritative_part(full_v1, allowed, "v1")
        compacted.append(time.perf_counter() - start)
    return {"open": statistics.median(opened), "compact": statistics.median(compacted)}


def profile(ctx: Context, batches: list[torch.Tensor], rounds: int) -> dict[str, float]:
    """Where the mixed search's time goes, median ms per batch for each stage."""
    searcher = MixedSearcher.open(ctx, "v2")
    v1_view, v2_view = searcher.views
    assert v1_view.bridge is not None
    stages: dict[str, list[float]] = {s: [] for s in ("bridge", "search v1", "search v2", "total")}
    for _ in range(rounds):
        for q in batches:
            t0 = time.perf_counter()
            bridged = v1_view.bridge(q)
            t1 = time.perf_counter()
            v1_view.store.search(bridged.numpy(), K)
            t2 = time.perf_counter()
            v2_view.store.search(q.numpy(), K)
            t3 = time.perf_counter()
            searcher.search(q, K)
            t4 = time.perf_counter()
            for stage, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                stages[stage].append(dt)
    out = {s: 1e3 * statistics.median(v) for s, v in stages.items()}
    out["checks + normalise + merge"] = (
        out["total"] - out["bridge"] - out["search v1"] - out["search v2"]
    )
    return out


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    load = (
        Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    )
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), no GPU; {faiss.omp_get_max_threads()} FAISS / "
        f"{torch.get_num_threads()} torch threads; Python {platform.python_version()}, "
        f"torch {torch.__version__}, faiss-cpu {faiss.__version__}; load average at start "
        f"{' '.join(load)} (the machine is shared)"
    )


def render(
    args: argparse.Namespace,
    times: Samples,
    stages: dict[str, float],
    opening: dict[str, float],
    env: str,
) -> str:
    ours = times[OURS]
    rows = []
    for name, t in times.items():
        median, best = statistics.median(t), min(t)
        vs = "" if name == OURS else f"{100 * paired_overhead(ours, t):+.1f}%"
        rows.append(
            f"| {name} | {1e3 * median:.1f} | {1e3 * best:.1f} | {BATCH / median:,.0f} | {vs} |"
        )
    over = {name: paired_overhead(ours, times[name]) for name in (FLOOR, PLAIN_NEW, PLAIN_OLD)}
    verdict = {n: "met" if o <= TARGET_OVERHEAD else "missed" for n, o in over.items()}
    return "\n".join(
        [
            "# Serving: mixed-version search overhead",
            "",
            f"Command: `.venv/bin/python bench/serving.py --items {args.items} --rounds "
            f"{args.rounds} --threads {args.threads}`  ",
            f"Machine: {env}.  ",
            f"Date: {date.today().isoformat()}.",
            "",
            f"Gallery: {args.items:,} items, half migrated by a real run (v1, 128-d, holds all of "
            f"them, {args.items // 2:,} authoritative; v2, 256-d, holds the other "
            f"{args.items // 2:,}), backward orthogonal adapter 256 -> 128, seeded unit vectors. "
            f"Queries: v2, {args.batches} batches of {BATCH}, k={K}, {args.rounds} rounds; in each "
            "round every contender answers each batch back to back (order rotated per round). "
            "QPS = 64 / median batch latency. *hotswap vs this* is the median over the "
            f"{args.batches * args.rounds} batches of hotswap's latency over this contender's on "
            "the same batch, minus 1 (paired, so the shared machine's drifting load cancels).",
            "",
            "| contender | median ms / batch | best ms / batch | QPS | hotswap vs this |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Target: overhead <= {100 * TARGET_OVERHEAD:.0f}% over one plain FAISS search of the "
            "same 100k items.",
            "",
            f"- **{verdict[FLOOR]}** against the FAISS floor, {100 * over[FLOOR]:+.1f}%: the same "
            "vectors at the same widths, searched by two bare FAISS indexes with queries bridged "
            "beforehand. This is the cost of hotswap itself (validation, normalisation, bridge "
            "projection, merge, the id map) and the figure to hold it to.",
            f"- **{verdict[PLAIN_NEW]}** against one plain 256-d index (the gallery after a full "
            f"re-embed), {100 * over[PLAIN_NEW]:+.1f}%: half the mixed gallery is 128-d, so mixed "
            "search scans fewer floats than this baseline.",
            f"- **{verdict[PLAIN_OLD]}** against one plain 128-d index (the gallery before the "
            f"upgrade), {100 * over[PLAIN_OLD]:+.1f}%: not a like-for-like overhead, since half "
            "the mixed gallery is 256-d (twice the floats per item): that is the price of the new "
            "model's width, with or without hotswap.",
            "",
            "Where one mixed batch goes (median ms, measured stage by stage):",
            "",
            "| stage | ms |",
            "|---|---|",
            *[f"| {s} | {ms:.2f} |" for s, ms in stages.items()],
            "",
            "The *per-batch IDSelector* row is what index/search.py did before this change: an "
            "``IDSelectorBatch`` over the ids v1 answers for, built for every batch, over the full "
            "v1 index. Building it costs ~2 ms per 50k ids, and FAISS's flat search with a "
            "selector checks every id of the full index against it and computes the allowed "
            "inner products vector by vector instead of as one matrix product (an early "
            "single-run measurement: 50 ms for a 64-query batch over 100k x 128 with half the "
            "ids allowed, 31 ms over a compact 50k index). index/search.py now applies the "
            "authority filter "
            "once per snapshot: a space whose index holds non-authoritative vectors is copied "
            "into a compact index of its authoritative vectors when the searcher opens (a one-off "
            "cost per snapshot, paid by the serving pool when a wave commits, plus memory for the "
            "authoritative part of the source space), and a space holding only authoritative "
            "vectors is searched as it is. Opening a searcher on this gallery (catalog read, both "
            f"files read and checksummed, compaction) took {opening['open']:.2f} s, of which "
            f"{opening['compact']:.2f} s compaction (medians of 3).",
            "",
        ]
    )


# ---- merge policies mid-migration, on Fashion-MNIST (the demo's models) -----------------------

ALL_MERGE_POLICIES = ("score", "rrf", "native_first", "calibrated")


def merge_curve(args: argparse.Namespace) -> str:
    """Train the demo's v1 and v2 (same seeds), migrate in waves of 25%, and after each wave
    answer the query set with every merge policy; returns the markdown section."""
    from index import demo
    from index.evaluation import evaluate_searcher
    from models.datasets import load_dataset
    from models.encoders import embed

    config = demo.DemoConfig.quick() if args.quick else demo.DemoConfig()
    torch.manual_seed(config.seed)
    data = demo._limit(load_dataset(config.dataset), config)
    x_test = torch.from_numpy(data.test_x)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = open_context(Path(tmp) / "data", create=True)
        v1, v1_classifier = demo._train_v1(data, config, lambda *a: None)
        ids = demo._register_v1_gallery(ctx, v1, x_test)
        v2, adapter = demo._train_v2(data, v1, v1_classifier, config, lambda *a: None)
        with ctx.transaction() as session:
            old = versions.get_version(session, "v1")
            new = versions.register_version(ctx, session, "v2", v2)
            versions.register_adapter(ctx, session, adapter, new, old, name="v2-to-v1")
            galleries.create_space(session, new)
        labels = {int(i): int(c) for i, c in zip(ids, data.test_y, strict=True)}
        q_new = embed(v2, x_test)
        row_of = {int(item): row for row, item in enumerate(ids)}
        run_id = migrate.plan(ctx, "v1", "v2", ordering="random", seed=config.seed)
        rows: list[tuple[float, dict[str, dict[str, float]], list[float]]] = []
        start = evaluate_searcher(MixedSearcher.open(ctx, "v2"), q_new, ids, labels)
        rows.append((0.0, {p: start for p in args.policies}, []))
        done = 0
        for target in config.waves[:-1]:  # 100% is one space: every policy gives new/new
            wave = migrate.run(
                ctx,
                run_id,
                lambda batch: embed(v2, x_test[[row_of[int(i)] for i in batch]]),
                wave_size=round(target * len(ids)) - done,
                max_waves=1,
            )
            done = wave.done
            searcher = MixedSearcher.open(ctx, "v2")
            points = {
                p: evaluate_searcher(searcher, q_new, ids, labels, policy=p) for p in args.policies
            }
            knots = [
                float(v.calibration(np.array([0.5]))[0]) - 0.5
                for v in searcher.views
                if v.calibration is not None
            ]
            rows.append((wave.fraction, points, knots))
            print(f"wave {wave.fraction:.2f} done", file=sys.stderr)
        ctx.engine.dispose()
    return render_merge(args, config, len(ids), rows, time.perf_counter() - started)


def render_merge(
    args: argparse.Namespace,
    config: object,
    n: int,
    rows: list[tuple[float, dict[str, dict[str, float]], list[float]]],
    seconds: float,
) -> str:
    header = " | ".join(f"{p} top-1 / mAP" for p in args.policies)
    lines = [
        "## Merge policies mid-migration (Fashion-MNIST, the demo's models)",
        "",
        f"Command: `.venv/bin/python bench/serving.py --part merge --threads {args.threads}"
        f" --policies {' '.join(args.policies)}{' --quick' if args.quick else ''}`  ",
        f"Machine: {machine()}.  ",
        f"Date: {date.today().isoformat()}; {seconds:.0f} s.",
        "",
        f"The demo's protocol (docs/results/demo.md; same seeds): v1 and v2 trained as there, "
        f"{n:,} test images are both the query set and the gallery, random migration order in "
        "waves of 25%; after each wave the same searcher snapshot answers every query with each "
        "merge policy (CMC top-1 and mAP over the full ranking, own item removed).",
        "",
        f"| migrated | {header} | calibration shift at bridged 0.5 |",
        "|---|" + "---|" * (len(args.policies) + 1),
    ]
    for fraction, points, knots in rows:
        cells = " | ".join(
            f"{points[p]['top1']:.3f} / {points[p]['ap']:.3f}" for p in args.policies
        )
        shift = ", ".join(f"{k:+.3f}" for k in knots) or "-"
        lines.append(f"| {100 * fraction:.0f}% | {cells} | {shift} |")
    return "\n".join(lines) + "\n"


# ---- store kinds: IVF and HNSW against flat, in the same mixed search -------------------------

KIND_SWEEP = {  # kind -> search-time settings tried on one build (the others at defaults)
    "IVF": [{"nprobe": p} for p in (4, 16, 64)],
    "HNSW": [{"ef_search": e} for e in (16, 64, 256)],
}


def clustered(n: int, d: int, seed: int, centers: int = 1000) -> np.ndarray:
    """Unit vectors around ``centers`` random directions (neighbourhoods an ANN index can use;
    i.i.d. Gaussian vectors, the overhead part's data, are the worst case for IVF and HNSW)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d), dtype=np.float32)
    x = c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def kinds(args: argparse.Namespace) -> str:
    """Flat, IVF and HNSW spaces of one half-migrated gallery: recall@10 of the mixed search
    against the flat (exact) mixed search, median latency per batch (interleaved rounds)."""
    env = machine()
    with tempfile.TemporaryDirectory() as tmp:
        ctx, _, new = build(Path(tmp) / "data", args.items, data=clustered, related=True)
        rng = np.random.default_rng(7)  # queries: near gallery items, in v2's space
        picks = rng.integers(0, args.items, (args.batches, BATCH))
        batches = [
            torch.nn.functional.normalize(
                torch.from_numpy(
                    new[p] + 0.5 / np.sqrt(NEW_DIM) * rng.standard_normal(new[p].shape, np.float32)
                ),
                dim=1,
            )
            for p in picks
        ]
        searchers = {"Flat": MixedSearcher.open(ctx, "v2")}
        built: dict[str, tuple[float, float]] = {}
        for kind in KIND_SWEEP:
            started = time.perf_counter()
            for space in ("v1", "v2"):
                galleries.rebuild_space(ctx, space, kind=kind)
            build_s = time.perf_counter() - started
            started = time.perf_counter()
            searchers[kind] = MixedSearcher.open(ctx, "v2")
            built[kind] = (build_s, time.perf_counter() - started)
            print(f"{kind}: built in {build_s:.1f} s", file=sys.stderr)
        ctx.engine.dispose()
    exact = [searchers["Flat"].search(q, K).ids for q in batches]
    rows = []
    for kind, settings in [("Flat", [{}]), *KIND_SWEEP.items()]:
        searcher = searchers[kind]
        for setting in settings:
            for view in searcher.views:
                view.store.config = view.store.config.replace(**setting)
            found = [searcher.search(q, K).ids for q in batches]
            recall = np.mean([_recall(f, e) for f, e in zip(found, exact, strict=True)])
            times = measure(
                {
                    "flat": lambda b: searchers["Flat"].search(batches[b], K),
                    "this": lambda b, s=searcher: s.search(batches[b], K),  # type: ignore[misc]
                },
                len(batches),
                args.rounds,
            )
            rows.append((kind, setting, recall, times))
    return render_kinds(args, env, rows, built)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact, strict=True)]
    return float(np.mean(hits)) / exact.shape[1]


def render_kinds(
    args: argparse.Namespace,
    env: str,
    rows: list[tuple[str, dict[str, int], float, Samples]],
    built: dict[str, tuple[float, float]],
) -> str:
    table = []
    for kind, setting, recall, times in rows:
        median = statistics.median(times["this"])
        vs = paired_overhead(times["this"], times["flat"])
        params = ", ".join(f"{k}={v}" for k, v in setting.items()) or "exact"
        table.append(
            f"| {kind} | {params} | {recall:.3f} | {1e3 * median:.1f} | {BATCH / median:,.0f} | "
            f"{100 * vs:+.1f}% |"
        )
    builds = "; ".join(
        f"{kind}: rebuild of both spaces {b:.1f} s, searcher open {o:.1f} s"
        for kind, (b, o) in built.items()
    )
    return "\n".join(
        [
            "## Store kinds in the mixed search: Flat, IVF, HNSW",
            "",
            f"Command: `.venv/bin/python bench/serving.py --part kinds --items {args.items} "
            f"--rounds {args.rounds} --batches {args.batches} --threads {args.threads}`  ",
            f"Machine: {env}.  ",
            f"Date: {date.today().isoformat()}.",
            "",
            f"The overhead part's half-migrated gallery ({args.items:,} items, v1 128-d holds all, "
            "v2 256-d the migrated half), but clustered v2 data (1,000 centres), v1 vectors = "
            "the v2 ones through the adapter plus noise (norm ~0.5), and queries = gallery items "
            "plus noise (norm ~0.5); both spaces rebuilt in place with `galleries.rebuild_space` to "
            "each kind at its defaults (IVF: nlist = round(sqrt(N)), HNSW: M=32, "
            "ef_construction=80), then the search-time knob swept on the same build. recall@10: "
            "against the Flat mixed search's top-10 over the same batches. Latency: median per "
            f"batch of {BATCH}, k={K}, {args.rounds} rounds interleaved with the Flat searcher; "
            "*vs Flat* is the paired median ratio minus 1.",
            "",
            "| kind | search setting | recall@10 | median ms / batch | QPS | vs Flat |",
            "|---|---|---|---|---|---|",
            *table,
            "",
            f"Build: {builds} (the HNSW searcher tombstones v1's migrated half instead of "
            "rebuilding its graph; the IVF one drops it from a copy of the lists).",
        ]
    )


def write_section(path: Path, name: str, text: str) -> None:
    """Replace the generated section ``name`` of ``path`` (between markers), keeping the rest
    (other sections, hand-written notes) as it is; append the section if it is new."""
    begin, end = f"<!-- begin {name} (generated by bench/serving.py) -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + "\n" + rest.split(end, 1)[1].lstrip("\n")
    else:
        new = old + ("\n" if old else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def overhead(args: argparse.Namespace) -> str:
    env = machine()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ctx, old, new = build(Path(tmp) / "data", args.items)
        print(f"built the deployment in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        batches = [torch.from_numpy(unit(BATCH, NEW_DIM, 100 + b)) for b in range(args.batches)]
        times = measure(contenders(ctx, old, new, batches), len(batches), args.rounds)
        stages = profile(ctx, batches, max(1, args.rounds // 2))
        opening = open_cost(ctx)
        ctx.engine.dispose()
    return render(args, times, stages, opening, env)


PARTS = {"overhead": overhead, "merge": merge_curve, "kinds": kinds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=sorted(PARTS), default="overhead")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--threads", type=int, default=0, help="FAISS and torch threads (0: one per core)"
    )
    parser.add_argument("--quick", action="store_true", help="merge: the demo's quick config")
    parser.add_argument(
        "--policies", nargs="+", choices=ALL_MERGE_POLICIES, default=["score", "calibrated"]
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/serving.md"))
    args = parser.parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    text = PARTS[args.part](args)
    write_section(args.out, args.part, text)
    print(text)


if __name__ == "__main__":
    main()
