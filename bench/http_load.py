"""HTTP query overhead: `hotswap serve` on loopback against calling the same search in-process.

    .venv/bin/python bench/http_load.py [--items 20000] [--requests 600] [--seconds 120]

A real deployment (SQLite catalog, one FAISS space, ``--items`` seeded unit vectors of ``--dim``)
is served by a real ``hotswap serve`` subprocess bound to 127.0.0.1. One query vector per request,
k=10. Two contenders answer the same queries, interleaved in rounds of ``--block`` so drifting load
on a shared machine hits both alike:

- direct: what the endpoint does, called in this process (``SearcherPool.get`` → search →
  external ids);
- HTTP: ``POST /query`` through one keep-alive ``httpx`` client (JSON encode, loopback TCP,
  FastAPI validation, the same call, JSON decode).

Reported: p50/p90/p99 latency and sequential QPS of each, the HTTP overhead (p50 difference;
target <= 2 ms), then the QPS of ``--clients`` concurrent HTTP clients. Bounded: at most
``--requests`` per contender and ``--seconds`` in all, then it stops by itself. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch

PERCENTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from index import galleries, versions  # noqa: E402
from index.context import Context, open_context  # noqa: E402
from index.serving import SearcherPool  # noqa: E402


def build(directory: Path, items: int, dim: int, seed: int) -> Context:
    ctx = open_context(directory, create=True)
    with ctx.transaction() as session:
        galleries.create_space(session, versions.register_external_version(session, "v1", dim))
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((items, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    galleries.ingest(ctx, "v1", [f"item-{i}" for i in range(items)], vectors)
    return ctx


@contextmanager
def server(directory: Path, threads: int) -> Iterator[httpx.Client]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", "from cli.main import main; main()"]
    command += ["serve", "--dir", str(directory), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("hotswap serve did not start") from None
                time.sleep(0.2)
        yield client
    finally:
        process.terminate()
        process.wait(timeout=20)
        client.close()


def interleaved(
    contenders: dict[str, Callable[[int], object]], requests: int, block: int, budget: float
) -> dict[str, list[float]]:
    """Blocks of ``block`` requests per contender in turn, until ``requests`` each or ``budget`` s."""
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    stop = time.monotonic() + budget
    done = 0
    while done < requests and time.monotonic() < stop:
        for name, call in contenders.items():
            for q in range(done, done + block):
                start = time.perf_counter()
                call(q)
                seconds[name].append(time.perf_counter() - start)
        done += block
    return seconds


def concurrent_qps(
    base_url: str, body: Callable[[int], dict], clients: int, seconds: float
) -> float:
    """Requests per second answered by ``clients`` threads, each with its own keep-alive client."""
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def worker(slot: int) -> None:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while time.monotonic() < stop:
                response = client.post("/query", json=body(counts[slot] + slot * 100_000))
                response.raise_for_status()
                counts[slot] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def percentiles(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    rank = {name: ms[min(len(ms) - 1, int(p * len(ms)))] for name, p in PERCENTILES.items()}
    return {**rank, "qps": len(ms) / (sum(ms) / 1000)}


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed + 1)
    queries = rng.standard_normal((4096, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def body(q: int) -> dict:
        return {"version": "v1", "vectors": [queries[q % 4096].tolist()], "k": args.k}

    with tempfile.TemporaryDirectory() as tmp:
        ctx = build(Path(tmp) / "data", args.items, args.dim, args.seed)
        pool = SearcherPool(ctx)

        def direct(q: int) -> object:
            searcher = pool.get("v1")
            result = searcher.search(torch.from_numpy(queries[q % 4096 : q % 4096 + 1]), k=args.k)
            return searcher.external_ids(result.ids)

        with server(ctx.data_dir, args.threads) as client:

            def post(q: int) -> object:
                return client.post("/query", json=body(q)).raise_for_status()

            for q in range(20):  # warm both paths (first searcher open, first requests)
                direct(q), post(q)
            seconds = interleaved(
                {"direct": direct, "HTTP": post}, args.requests, args.block, args.seconds
            )
            qps = concurrent_qps(str(client.base_url), body, args.clients, args.concurrent_seconds)
    return report(
        args, {name: percentiles(s) for name, s in seconds.items()}, qps, len(seconds["HTTP"])
    )


def report(args: argparse.Namespace, stats: dict[str, dict[str, float]], qps: float, n: int) -> str:
    overhead = stats["HTTP"]["p50"] - stats["direct"]["p50"]
    lines = [
        f"items {args.items} x {args.dim}-d (Flat), k={args.k}, 1 query per request, "
        f"{n} requests per contender (interleaved blocks of {args.block}), torch/OMP threads {args.threads}",
        f"machine: {platform.machine()}, {os.cpu_count()} cores (shared, loaded), Python {platform.python_version()}",
        "",
        "| contender | p50 ms | p90 ms | p99 ms | sequential QPS |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} | {s['qps']:.0f} |"
            for name, s in stats.items()
        ),
        "",
        f"HTTP overhead at p50: {overhead:.2f} ms (target <= 2 ms: {'met' if overhead <= 2 else 'MISSED'})",
        f"HTTP with {args.clients} concurrent clients for {args.concurrent_seconds:.0f} s: {qps:.0f} QPS",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--requests", type=int, default=600, help="per contender, at most")
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=120, help="budget of the latency part")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--concurrent-seconds", type=float, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(run(args))


if __name__ == "__main__":
    main()
