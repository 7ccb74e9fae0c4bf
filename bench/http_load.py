"""HTTP query overhead: `hotswap serve` on loopback against calling the same search in-process.

    .venv/bin/python bench/http_load.py [--items 20000] [--requests 600] [--seconds 120]
        [--variant rev=3b33ac5,http=h11,loop=asyncio,log=on ...]

A real deployment (SQLite catalog, one FAISS space, ``--items`` seeded unit vectors of ``--dim``)
is served by a real ``hotswap serve`` subprocess bound to 127.0.0.1. One query vector per request,
k=10. The contenders answer the same queries, interleaved in blocks of ``--block`` so drifting
load on a shared machine hits all alike:

- direct: what the endpoint does, called in this process (``SearcherPool.get`` → search →
  external ids);
- HTTP: ``POST /query`` through one keep-alive ``httpx`` client (JSON encode, loopback TCP,
  uvicorn, FastAPI, parsing, the same call, the JSON answer);
- HTTP, http.client: the same through the standard library's keep-alive client (lighter);
- HTTP float32 body, http.client: the octet-stream fast path (no JSON floats either way in);
- one ``HTTP [spec]`` per ``--variant``: another server, e.g. cli/server.py at an older git
  revision or under another uvicorn protocol/loop, for a paired A/B in the same run.

Reported per contender: p50/p90/p99 latency, sequential QPS, the overhead against direct at
p50 (target <= 2 ms), and CPU ms per request (this thread + the server process): on a loaded
machine waits for a core swamp wall times, CPU time much less. Then the QPS of ``--clients``
concurrent httpx clients per server. Bounded: at most ``--requests`` per contender and
``--seconds`` in all, then it stops by itself. Loopback only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlencode

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


# Starts a variant of the server for an A/B: cli/server.py as of a git revision (or the working
# tree), under uvicorn with the given protocol, loop and access log.
LAUNCH = """
import importlib.util, sys, uvicorn
from pathlib import Path
from index.context import open_context
path, data, port, http, loop, access_log = sys.argv[1:7]
spec = importlib.util.spec_from_file_location("server_under_test", path)
module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
api = module.create_app(open_context(Path(data)))
uvicorn.run(api, host="127.0.0.1", port=int(port), log_level="warning", http=http, loop=loop,
            access_log=access_log == "on")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def variant_command(directory: Path, port: int, spec: str, keep: Path) -> list[str]:
    """``rev=REV,http=h11|httptools|auto,loop=asyncio|uvloop|auto,log=on|off`` -> a command line."""
    options = {"rev": "", "http": "auto", "loop": "auto", "log": "off"}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in options:
            raise SystemExit(f"--variant {spec!r}: unknown key {key!r}, expected {sorted(options)}")
        options[key] = value
    path = ROOT / "cli" / "server.py"
    if options["rev"]:
        path = keep / f"server_{options['rev'].replace('/', '_')}.py"
        source = subprocess.run(
            ["git", "show", f"{options['rev']}:cli/server.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        path.write_text(source)
    args = [str(path), str(directory), str(port)]
    args += [options[key] for key in ("http", "loop", "log")]
    return [sys.executable, "-c", LAUNCH, *args]


@contextmanager
def server(
    directory: Path, threads: int, spec: str | None = None
) -> Iterator[tuple[httpx.Client, Callable[[], float]]]:
    """``hotswap serve`` as users start it (spec None), or a variant of it: a keep-alive client,
    and the CPU seconds the server process has used so far."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    if spec is None:
        command = [sys.executable, "-c", "from cli.main import main; main()"]
        command += ["serve", "--dir", str(directory), "--host", "127.0.0.1", "--port", str(port)]
    else:
        command = variant_command(directory, port, spec, directory.parent)
    log = (directory.parent / f"server-{port}.log").open("w")
    process = subprocess.Popen(command, env=env, stderr=log)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    name, text = spec or "hotswap serve", Path(log.name).read_text()[-2000:]
                    raise RuntimeError(f"server {name} did not start:\n{text}") from None
                time.sleep(0.2)
        yield client, lambda: process_cpu_seconds(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=20)
        client.close()
        log.close()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PlainClient:
    """A keep-alive ``http.client`` connection: the standard library's client, far lighter per
    request than httpx; reopened when the server has closed an idle connection."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, target: str, body: bytes, content_type: str) -> bytes:
        for attempt in (1, 2):
            try:
                self.connection.request("POST", target, body, {"content-type": content_type})
                response = self.connection.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                self.connection.close()
                if attempt == 2:
                    raise
        if response.status != 200:
            raise RuntimeError(f"POST {target}: {response.status} {data[:200]!r}")
        return data

    def close(self) -> None:
        self.connection.close()


def interleaved(
    contenders: dict[str, Callable[[int], object]],
    server_cpu: dict[str, Callable[[], float]],
    requests: int,
    block: int,
    budget: float,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Blocks of ``block`` requests per contender in turn, until ``requests`` each or ``budget`` s.

    Returns each request's wall seconds and each contender's CPU seconds per request: this
    thread's (client, or the whole direct call) plus the server process's. CPU time is what
    a loaded machine stretches least: waiting for a core is not counted.
    """
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    cpu = dict.fromkeys(contenders, 0.0)
    stop = time.monotonic() + budget
    done = 0
    while done < requests and time.monotonic() < stop:
        for name, call in contenders.items():
            served = server_cpu.get(name, lambda: 0.0)
            cpu[name] -= time.thread_time() + served()
            for q in range(done, done + block):
                start = time.perf_counter()
                call(q)
                seconds[name].append(time.perf_counter() - start)
            cpu[name] += time.thread_time() + served()
        done += block
    return seconds, {name: total / len(seconds[name]) for name, total in cpu.items()}


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

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        ctx = build(Path(tmp) / "data", args.items, args.dim, args.seed)
        pool = SearcherPool(ctx)

        def direct(q: int) -> object:
            searcher = pool.get("v1")
            result = searcher.search(torch.from_numpy(queries[q % 4096 : q % 4096 + 1]), k=args.k)
            return searcher.external_ids(result.ids)

        servers = {"HTTP": stack.enter_context(server(ctx.data_dir, args.threads))}
        for spec in args.variant:
            servers[f"HTTP [{spec}]"] = stack.enter_context(
                server(ctx.data_dir, args.threads, spec)
            )
        clients = {name: client for name, (client, _) in servers.items()}
        server_cpu = {name: cpu for name, (_, cpu) in servers.items()}

        def poster(client: httpx.Client) -> Callable[[int], object]:
            return lambda q: client.post("/query", json=body(q)).raise_for_status()

        plain = PlainClient(clients["HTTP"].base_url.port or 80)
        stack.callback(plain.close)
        float32_target = "/query?" + urlencode({"version": "v1", "dim": args.dim, "k": args.k})

        def post_plain(q: int) -> object:
            return plain.post("/query", json.dumps(body(q)).encode(), "application/json")

        def post_float32(q: int) -> object:
            row = queries[q % 4096].tobytes()
            return plain.post(float32_target, row, "application/octet-stream")

        contenders = {"direct": direct, **{name: poster(c) for name, c in clients.items()}}
        contenders["HTTP, http.client"] = post_plain
        server_cpu["HTTP, http.client"] = server_cpu["HTTP"]
        if not args.no_binary:
            contenders["HTTP float32 body, http.client"] = post_float32
            server_cpu["HTTP float32 body, http.client"] = server_cpu["HTTP"]
        for q in range(20):  # warm every path (first searcher open, first requests)
            for call in contenders.values():
                call(q)
        seconds, cpu = interleaved(contenders, server_cpu, args.requests, args.block, args.seconds)
        qps = {
            name: concurrent_qps(str(c.base_url), body, args.clients, args.concurrent_seconds)
            for name, c in clients.items()
        }
    stats = {name: {**percentiles(s), "cpu": cpu[name] * 1000} for name, s in seconds.items()}
    return report(args, stats, qps, len(seconds["HTTP"]))


def verdict(overhead: float) -> str:
    # With more runnable threads than cores, waits for a core dominate wall time, and the
    # scheduler favours whichever thread has used the least CPU: the p50s stop meaning anything
    # (the HTTP contender has come out faster than the in-process call). Judge the CPU columns.
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        return f"not decidable: load average {load:.1f} on {cores} cores; read the CPU columns"
    return "met" if overhead <= 2 else "MISSED"


def report(
    args: argparse.Namespace, stats: dict[str, dict[str, float]], qps: dict[str, float], n: int
) -> str:
    base = stats["direct"]["p50"]
    overhead = stats["HTTP"]["p50"] - base
    lines = [
        f"items {args.items} x {args.dim}-d (Flat), k={args.k}, 1 query per request, "
        f"{n} requests per contender (interleaved blocks of {args.block}), torch/OMP threads {args.threads}",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end, Python {platform.python_version()}",
        "",
        "| contender | p50 ms | p90 ms | p99 ms | sequential QPS | overhead p50 ms "
        "| CPU ms/request | overhead CPU ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} | {s['qps']:.0f} "
            f"| {s['p50'] - base:.2f} | {s['cpu']:.2f} | {s['cpu'] - stats['direct']['cpu']:.2f} |"
            for name, s in stats.items()
        ),
        "",
        f"HTTP overhead at p50: {overhead:.2f} ms (target <= 2 ms: {verdict(overhead)})",
        *(
            f"{name} with {args.clients} concurrent clients for {args.concurrent_seconds:.0f} s: "
            f"{value:.0f} QPS"
            for name, value in qps.items()
        ),
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
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="also serve a variant, interleaved with the rest (A/B): "
        "rev=GIT_REV,http=h11|httptools|auto,loop=asyncio|uvloop|auto,log=on|off",
    )
    parser.add_argument("--no-binary", action="store_true", help="skip the float32-body contender")
    args = parser.parse_args(argv)
    print(run(args))


if __name__ == "__main__":
    main()
