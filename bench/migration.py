"""Migration throughput against the bare encoder's, on the same items, side by side.

    .venv/bin/python bench/migration.py [--waves 1000 5000] [--rounds 3] [--threads 0]

Gallery: the 10,000 Fashion-MNIST test images (synthetic 784-d inputs where the dataset is not
installed), embedded by v1 = MLP 784-256-64 in a real deployment (SQLite catalog, FAISS files).
Two v2 encoders from models/encoders.py (dense MLPs, seeded random weights: throughput does not
depend on training): the demo's v2 shape 784-512-512-128, and a wider 784-2048-2048-256 that stands
in for a costlier encoder.

For each encoder and wave size W, every round measures, back to back:
- bare: ``embed(v2, x[chunk], batch_size=W)`` over every chunk of W items, in the migration's
  order (the same gathers, the same batches), nothing else;
- migration: ``migrate.run(..., wave_size=W)`` with that encoder as ``reembed`` -- waves, SQL
  ledger, FAISS snapshots, commits, the whole service path -- with and without ``prefetch``
  (re-embedding the next wave while the current one commits). Rolled back between runs (untimed).
Items/s are medians over rounds; a ratio is the median of per-round ratios (migration / bare).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
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


def inputs(n: int) -> tuple[np.ndarray, str]:
    if fashion_mnist_available():
        return load_fashion_mnist().test_x[:n], "Fashion-MNIST test images"
    x = np.random.default_rng(0).random((n, 784), dtype=np.float32)
    return x, "synthetic 784-d inputs (Fashion-MNIST not installed)"


V2_SHAPES = {
    "MLP 784-512-512-128": ((512, 512), 128),
    "MLP 784-2048-2048-256": ((2048, 2048), 256),
}


def encoder(hidden: tuple[int, ...], dim: int) -> Encoder:
    torch.manual_seed(0)
    config = MLPEncoderConfig(input_dim=784, hidden_dims=hidden, embed_dim=dim)
    return build_encoder("mlp", config)


def build(root: Path, x: torch.Tensor, v2: Encoder) -> Context:
    ctx = open_context(root, create=True)
    v1 = encoder((256,), 64)
    with ctx.transaction() as session:
        old = versions.register_version(ctx, session, "v1", v1)
        new = versions.register_version(ctx, session, "v2", v2)
        galleries.create_space(session, old)
        galleries.create_space(session, new)
    ids = galleries.ingest(ctx, "v1", [f"img-{i}" for i in range(len(x))], embed(v1, x))
    assert ids == list(range(1, len(x) + 1))  # item id = row + 1
    return ctx


def bare(v2: Encoder, x: torch.Tensor, order: np.ndarray, wave: int) -> float:
    """Seconds to encode every item, W at a time, in ``order`` (item ids)."""
    start = time.perf_counter()
    for first in range(0, len(order), wave):
        embed(v2, x[order[first : first + wave] - 1], batch_size=wave)
    return time.perf_counter() - start


def migration(
    ctx: Context, v2: Encoder, x: torch.Tensor, wave: int, seed: int, prefetch: bool
) -> float:
    """Seconds for one full run in the order ``seed`` gives (the bare loop uses the same)."""

    def reembed(ids: np.ndarray) -> torch.Tensor:
        return embed(v2, x[ids - 1], batch_size=wave)

    run_id = migrate.plan(ctx, "v1", "v2", ordering="random", seed=seed)
    start = time.perf_counter()
    report = migrate.run(ctx, run_id, reembed, wave_size=wave, prefetch=prefetch)
    seconds = time.perf_counter() - start
    assert report.done == len(x)
    migrate.rollback(ctx, run_id)
    return seconds


def planned_order(ctx: Context, seed: int, n: int) -> np.ndarray:
    """The item order a random-ordering run with ``seed`` migrates in."""
    priority = np.random.default_rng(seed).permutation(n)  # as migrate's "random" ordering
    return np.arange(1, n + 1)[np.argsort(priority)]


def estimate(ctx: Context, v2: Encoder, x: torch.Tensor, wave: int) -> float:
    return migrate.estimate(
        ctx, "v1", "v2", reembed=lambda ids: embed(v2, x[ids - 1], batch_size=wave), sample=256
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
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--waves", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/migration.md"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = machine()
    raw, source = inputs(args.items)
    x = torch.from_numpy(raw)
    rows = []
    for name, (hidden, dim) in V2_SHAPES.items():
        v2 = encoder(hidden, dim)
        with tempfile.TemporaryDirectory() as tmp:
            ctx = build(Path(tmp) / "data", x, v2)
            for wave in args.waves:
                rows.append(_measure(ctx, name, v2, x, wave, args.rounds))
                print(rows[-1], file=sys.stderr)
            ctx.engine.dispose()
    text = render(args, rows, env, source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


def _measure(
    ctx: Context, name: str, v2: Encoder, x: torch.Tensor, wave: int, rounds: int
) -> dict[str, Any]:
    n, seed = len(x), wave
    order = planned_order(ctx, seed, n)
    guess = estimate(ctx, v2, x, wave)
    bares: list[float] = []
    runs: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        bares.append(bare(v2, x, order, wave))
        for prefetch in (True, False):
            runs[prefetch].append(migration(ctx, v2, x, wave, seed, prefetch))
    b = statistics.median(bares)
    row: dict[str, Any] = {"encoder": name, "wave": wave, "bare": n / b, "estimate": guess}
    for prefetch, label in ((True, "prefetch"), (False, "serial")):
        t = runs[prefetch]
        row[label] = n / statistics.median(t)
        row[f"{label}_ratio"] = statistics.median(bt / mt for bt, mt in zip(bares, t, strict=True))
        row[f"{label}_seconds"] = statistics.median(t)
    # Service time per item: what the serial run spends beyond the encoder.
    row["overhead_us"] = 1e6 * (row["serial_seconds"] - b) / n
    return row


def render(args: argparse.Namespace, rows: list[dict[str, Any]], env: str, source: str) -> str:
    def cell(r: dict[str, Any], mode: str) -> str:
        ratio = r[f"{mode}_ratio"]
        return f"{r[mode]:,.0f} ({100 * ratio:.0f}%, {'met' if ratio >= TARGET else 'missed'})"

    table = [
        f"| {r['encoder']} | {r['wave']:,} | {r['bare']:,.0f} | {cell(r, 'prefetch')} "
        f"| {cell(r, 'serial')} | {r['overhead_us']:.0f} "
        f"| {r['estimate']:.2f} s / {r['prefetch_seconds']:.2f} s |"
        for r in rows
    ]
    waves = " ".join(str(w) for w in args.waves)
    return "\n".join(
        [
            "# Migration throughput",
            "",
            f"Command: `.venv/bin/python bench/migration.py --items {args.items} --waves {waves} "
            f"--rounds {args.rounds} --threads {args.threads}`  ",
            f"Machine: {env}.  ",
            f"Date: {date.today().isoformat()}.",
            "",
            f"Gallery: {args.items:,} {source}, embedded by v1 (MLP 784-256-64) in a real "
            "deployment (SQLite catalog, FAISS files), migrated to v2 in random order. *bare* "
            "encodes the same items in the same order and batches with nothing around it. "
            f"Medians of {args.rounds} rounds; ratios (migration / bare) are medians of per-round "
            "ratios. Target: migration >= 90% of bare.",
            "",
            "| v2 encoder | wave | bare items/s | migration items/s, prefetch (ratio, target) "
            "| migration items/s, serial (ratio, target) | service us/item | estimate / actual |",
            "|---|---|---|---|---|---|---|",
            *table,
            "",
            "*service us/item*: what a serial run spends per item beyond the bare encoder (SQL "
            "ledger and authority updates, the snapshot write, checksum and fsync per wave). "
            "*estimate*: ``migrate.estimate`` from a 256-item timing probe before the run (encoder "
            "time only), against the measured prefetching run.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
