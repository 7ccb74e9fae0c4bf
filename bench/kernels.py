"""Kernel benchmarks: every op of kernels/ against torch (and torch.compile on GPU), beside its floor.

    .venv/bin/python bench/kernels.py [--quick] [--threads 1] [--suite auto|cpu|gpu] [--json out.json]

On a CUDA device (``--suite gpu``, the default there), per op:
- gallery re-projection, N x 768 bf16 -> 768 bf16, normalize (and the int8 epilogue);
- query-time projection, batch 1..4096, fp16: eager, and replayed from a captured CUDA graph;
- ``ip_topk`` over an N x 768 fp16 gallery (N = 1e7; ``--quick`` 1e6), 1..1024 queries, k = 10;
- ``kernels.monarch.apply_monarch`` (d = 1024, 32 blocks) against the dense projection, when the
  module exists;
each against torch (cuBLAS matmul + normalize; matmul + ``torch.topk``) and ``torch.compile`` of
the same. Every figure is printed beside its floor: max(bytes / copy bandwidth, FLOPs / bf16 GEMM
rate), both measured here first (best of 7) (copy bandwidth counts read + write, so a read-only scan may beat
it by up to ~2x at most; the % column is floor / time).

On CPU (``--suite cpu``) it times the torch paths: ``project`` vs a plain matmul (+ normalize),
``project_int8`` vs ``project``, chunked ``ip_topk`` vs matmul + ``torch.topk`` (whose (Q, N) score
matrix the chunked path never holds), and Monarch vs dense when present; floors from a measured
memory copy and fp32 GEMM. ``--suite gpu`` on a CPU device runs the GPU suite's torch contenders
only (a smoke test of the script). Contenders of one case run interleaved, in rounds, and each
figure is the median, so drifting load on a shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from any directory

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.projection import project, project_int8, quantize_rows  # noqa: E402
from kernels.topk import QUERY_BLOCK, chunk_rows, ip_topk  # noqa: E402

Fn = Callable[[], object]
HAS_MONARCH = importlib.util.find_spec("kernels.monarch") is not None


@contextlib.contextmanager
def kernels_env(value: str) -> Iterator[None]:
    """Run with ``HOTSWAP_KERNELS=value`` (read by kernels.dispatch at every call)."""
    old = os.environ.get("HOTSWAP_KERNELS")
    os.environ["HOTSWAP_KERNELS"] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ["HOTSWAP_KERNELS"]
        else:
            os.environ["HOTSWAP_KERNELS"] = old


def bind(fn: Callable[..., object], *args: object, env: str | None = None, **kw: object) -> Fn:
    """``fn(*args, **kw)`` as a no-argument contender, under ``HOTSWAP_KERNELS=env`` if given."""

    def run() -> object:
        with kernels_env(env) if env else contextlib.nullcontext():
            return fn(*args, **kw)

    return run


class Timer:
    """Seconds per call of ``fn``: wall clock on CPU, CUDA events (GPU time) on a GPU."""

    def __init__(self, device: torch.device, min_s: float) -> None:
        self.device, self.min_s = device, min_s

    def calls_for(self, fn: Fn) -> int:
        """Calls per measurement so that one measurement lasts about ``min_s``."""
        fn()
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return max(1, int(self.min_s / max(time.perf_counter() - t0, 1e-7)))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, fn: Fn, calls: int) -> float:
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            return (time.perf_counter() - t0) / calls
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls


def race(timer: Timer, contenders: dict[str, Fn], rounds: int) -> dict[str, float]:
    """Median seconds per call of each contender, measured in interleaved rounds.

    A contender named ``... CUDA graph`` replays GRAPH_REPS calls at once: its time is divided.
    """
    calls = {name: timer.calls_for(fn) for name, fn in contenders.items()}  # also warms up
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(timer.once(fn, calls[name]))
    per = {name: GRAPH_REPS if name.endswith("CUDA graph") else 1 for name in contenders}
    return {name: statistics.median(s) / per[name] for name, s in samples.items()}


GRAPH_REPS = 20  # calls captured per CUDA graph; a replay's time is divided by this


def graph_of(fn: Fn, device: torch.device) -> Fn:
    """Capture GRAPH_REPS calls of ``fn`` in one CUDA graph; the returned callable replays it.

    Timing replays measures GPU time per call without the Python and launch overhead of eager.
    """
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # compile / autotune outside the capture
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_REPS):
            fn()
    return graph.replay


def best_of(timer: Timer, fn: Fn, rounds: int) -> float:
    """Fastest seconds per call over ``rounds``: a floor is what the machine can do at best."""
    calls = timer.calls_for(fn)
    return min(timer.once(fn, calls) for _ in range(rounds))


def measure_floors(device: torch.device, quick: bool) -> dict[str, float]:
    """Copy bandwidth (bytes read + written per s) and GEMM rate (FLOP/s), measured here."""
    timer = Timer(device, 0.2)
    mib = (256 if quick else 2048) if device.type == "cuda" else (64 if quick else 256)
    src = torch.empty(mib << 20, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    copy_s = best_of(timer, lambda: dst.copy_(src), 7)
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    gemm_s = best_of(timer, lambda: a @ b, 7)
    return {"copy_bytes_per_s": 2 * (mib << 20) / copy_s, "gemm_flop_per_s": 2 * n**3 / gemm_s}


class Report:
    """Rows of (op, case, contender, time, floor); printed as markdown, saved as JSON."""

    def __init__(self, floors: dict[str, float]) -> None:
        self.floors = floors
        self.rows: list[dict[str, object]] = []

    def floor_s(self, n_bytes: float, flops: float) -> float:
        return max(
            n_bytes / self.floors["copy_bytes_per_s"], flops / self.floors["gemm_flop_per_s"]
        )

    def add(
        self, op: str, case: str, times: dict[str, float], n_bytes: float, flops: float
    ) -> None:
        floor = self.floor_s(n_bytes, flops)
        for name, t in times.items():
            row = {"op": op, "case": case, "contender": name, "seconds": t, "floor_seconds": floor}
            self.rows.append(row)
            print(
                f"| {op} | {case} | {name} | {fmt(t)} | {fmt(floor)} | {100 * floor / t:.0f}% |",
                flush=True,
            )


def fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def speedup(times: dict[str, float], base: str, ours: str) -> None:
    if base in times and ours in times:
        print(f"({ours} is {times[base] / times[ours]:.2f}x as fast as {base})")


def normalized_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.normalize(x @ w, dim=1)


def quantized_matmul(x: torch.Tensor, w: torch.Tensor) -> object:
    return quantize_rows(normalized_matmul(x, w))


def matmul_topk(q: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(q @ g.T, k, dim=1).indices


def add_compiled(c: dict[str, Fn], enabled: bool, fn: Callable[..., object], *args: object) -> None:
    """Add ``torch.compile(fn)`` (static shapes) as a contender when ``enabled``."""
    if enabled:
        c["torch.compile"] = bind(torch.compile(fn, dynamic=False), *args)


def bench_project_gpu(rep: Report, timer: Timer, args: argparse.Namespace, cuda: bool) -> None:
    dev, d = timer.device, 768
    # 2^23 rows: 12.9 GB per bf16 buffer, so the torch int8 contender (bf16 matmul, normalize, fp32
    # copy) stays well inside 139 GiB; on CPU the suite is a smoke test
    n = 1 << (21 if args.quick else 23) if cuda else 1 << 12
    x = torch.randn(n, d, device=dev).to(torch.bfloat16)
    w = (torch.randn(d, d, device=dev) / d**0.5).to(torch.bfloat16)
    c: dict[str, Fn] = {"torch matmul + normalize": bind(normalized_matmul, x, w)}
    add_compiled(c, args.compile, normalized_matmul, x, w)
    if cuda:
        c["hotswap project (triton)"] = bind(project, x, w, env="triton", normalize=True)
    times = race(timer, c, args.rounds)
    rep.add("re-project", f"N={n:.0e} d=768 bf16", times, n * 2 * d * 2, 2 * n * d * d)
    c = {"torch matmul + normalize + quantize": bind(quantized_matmul, x, w)}
    if cuda:
        c["hotswap project_int8 (triton)"] = bind(project_int8, x, w, env="triton", normalize=True)
    times = race(timer, c, args.rounds)
    rep.add("re-project int8", f"N={n:.0e} d=768", times, n * (3 * d + 4), 2 * n * d * d)
    for batch in (1, 64, 1024, 4096):
        xq = torch.randn(batch, d, device=dev, dtype=torch.float16)
        wq = w.to(torch.float16)
        eager: dict[str, Fn] = {"torch": bind(normalized_matmul, xq, wq)}
        if cuda:
            eager["hotswap (triton)"] = bind(project, xq, wq, env="triton", normalize=True)
        c = dict(eager)
        add_compiled(c, args.compile and batch in (1, 4096), normalized_matmul, xq, wq)
        if cuda:
            c.update({f"{name}, CUDA graph": graph_of(fn, dev) for name, fn in eager.items()})
        times = race(timer, c, args.rounds)
        n_bytes = batch * d * 4 + d * d * 2
        rep.add("query project", f"B={batch} d=768 fp16", times, n_bytes, 2 * batch * d * d)


def bench_topk_gpu(rep: Report, timer: Timer, args: argparse.Namespace, cuda: bool) -> None:
    dev, d, k = timer.device, 768, 10
    n = int(1e6 if args.quick else 1e7) if cuda else 20_000
    gallery = torch.empty(n, d, device=dev, dtype=torch.float16)
    for i in range(0, n, 1 << 20):  # fill in slices: no fp32 copy of the whole gallery
        rows = gallery[i : i + (1 << 20)]
        rows.copy_(F.normalize(torch.randn(rows.shape, device=dev), dim=1))
    for n_q in (1, 8, 64, 512) if args.quick else (1, 8, 64, 512, 1024):
        q = F.normalize(torch.randn(n_q, d, device=dev), dim=1).to(torch.float16)
        c: dict[str, Fn] = {"torch matmul + topk": bind(matmul_topk, q, gallery, k)}
        add_compiled(c, args.compile and n_q in (64, 512), matmul_topk, q, gallery, k)
        if cuda:
            c["hotswap ip_topk (triton)"] = bind(ip_topk, q, gallery, k, env="triton")
        times = race(timer, c, args.rounds)
        case = f"N={n:.0e} d=768 fp16 Q={n_q} k={k}"
        rep.add("ip_topk", case, times, n * d * 2, 2 * n_q * n * d)
        speedup(times, "torch matmul + topk", "hotswap ip_topk (triton)")
        del c, times  # drop the compiled graph and its (Q, N) buffers before the next size


def monarch_factors(
    d: int, nb: int, dev: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    b = d // nb  # w1 (k, q, p) = (nb, b, b); w2 (l, s, r) = (nb, b, b): l*r == k*q == d
    w1 = torch.randn(nb, b, b, device=dev) / b**0.5
    w2 = torch.randn(nb, b, b, device=dev) / b**0.5
    return w1.to(dtype), w2.to(dtype)


def bench_monarch(
    rep: Report, timer: Timer, args: argparse.Namespace, batches: tuple[int, ...], env: str
) -> None:
    """Monarch nb=32 vs the dense projection at d=1024 (bf16 on GPU, fp32 on CPU)."""
    if not HAS_MONARCH:
        print("(kernels.monarch is absent: Monarch not timed)")
        return
    from kernels.monarch import apply_monarch, prepare_monarch

    dev, d, nb = timer.device, 1024, 32
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    w1, w2 = monarch_factors(d, nb, dev, dtype)
    m = prepare_monarch(w1, w2)
    w = (torch.randn(d, d, device=dev) / d**0.5).to(dtype)
    for batch in batches:
        x = torch.randn(batch, d, device=dev).to(dtype)
        c: dict[str, Fn] = {
            "hotswap project (dense)": bind(project, x, w, env=env, normalize=True),
            f"hotswap apply_monarch nb={nb}": bind(apply_monarch, x, m, env=env, normalize=True),
        }
        times = race(timer, c, args.rounds)
        n_bytes, case = batch * 2 * d * x.element_size(), f"B={batch} d={d} {dtype}"
        dense, monarch = list(times)
        # each beside its own floor: Monarch does 2 * d/nb of the dense FLOPs (two factors)
        rep.add("dense (for Monarch)", case, {dense: times[dense]}, n_bytes, 2 * batch * d * d)
        flops = 2 * batch * d * (2 * d // nb)
        rep.add("Monarch", case, {monarch: times[monarch]}, n_bytes, flops)
        print(f"(Monarch / dense throughput at B={batch}: {times[dense] / times[monarch]:.2f}x)")


def bench_project_cpu(rep: Report, timer: Timer, args: argparse.Namespace) -> None:
    d = 768
    w = torch.randn(d, d) / d**0.5
    for batch in (1, 64, 1024) if args.quick else (1, 64, 1024, 16384):
        x = torch.randn(batch, d)
        c: dict[str, Fn] = {
            "torch x @ w": bind(torch.matmul, x, w),
            "torch normalize(x @ w)": bind(normalized_matmul, x, w),
            "hotswap project (torch path)": bind(project, x, w, env="torch", normalize=True),
            "hotswap project_int8 (torch path)": bind(
                project_int8, x, w, env="torch", normalize=True
            ),
        }
        times = race(timer, c, args.rounds)
        n_bytes = batch * 2 * d * 4 + d * d * 4
        rep.add("project", f"B={batch} d=768 fp32", times, n_bytes, 2 * batch * d * d)


def bench_topk_cpu(rep: Report, timer: Timer, args: argparse.Namespace) -> None:
    d, k = 384, 10
    n = 50_000 if args.quick else 200_000
    gen = torch.Generator().manual_seed(0)
    gallery = F.normalize(torch.randn(n, d, generator=gen), dim=1)
    for n_q in (1, 64, 1024):
        q = F.normalize(torch.randn(n_q, d, generator=gen), dim=1)
        c: dict[str, Fn] = {
            "torch matmul + topk": bind(matmul_topk, q, gallery, k),
            "hotswap ip_topk (chunked torch path)": bind(ip_topk, q, gallery, k, env="torch"),
        }
        times = race(timer, c, args.rounds)
        rep.add("ip_topk", f"N={n:.0e} d={d} fp32 Q={n_q} k={k}", times, n * d * 4, 2 * n_q * n * d)
        speedup(times, "torch matmul + topk", "hotswap ip_topk (chunked torch path)")
        rows, block = min(chunk_rows(n_q, d, k, upcast=False), n), min(n_q, QUERY_BLOCK)
        print(
            f"(score memory: matmul + topk holds {n_q * n * 4 / 2**20:.1f} MiB; ip_topk one "
            f"{block} x {rows} tile, {block * rows * 4 / 2**20:.1f} MiB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer cases")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--suite", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case")
    parser.add_argument("--min-seconds", type=float, default=0.05, help="per measurement")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    suite = args.suite if args.suite != "auto" else ("gpu" if cuda else "cpu")
    name = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"{platform.processor() or platform.machine()} CPU"
    )
    print(f"device: {name}; torch {torch.__version__}; threads {args.threads}; suite {suite}")
    floors = measure_floors(device, args.quick)
    print(
        f"floors (measured): copy {floors['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + write), "
        f"{'bf16' if cuda else 'fp32'} GEMM {floors['gemm_flop_per_s'] / 1e12:.2f} TFLOP/s\n"
    )
    print("| op | case | contender | time | floor | floor / time |\n|---|---|---|---|---|---|")
    rep, timer = Report(floors), Timer(device, args.min_seconds)
    with torch.inference_mode():
        if suite == "gpu":
            args.compile = args.compile and cuda  # Inductor on CPU compiles for minutes: GPU only
            bench_project_gpu(rep, timer, args, cuda)
            batches, env = ((1024, 1 << 20), "triton") if cuda else ((1024,), "torch")
            bench_monarch(rep, timer, args, batches, env)
            bench_topk_gpu(rep, timer, args, cuda)
        else:
            bench_project_cpu(rep, timer, args)
            bench_monarch(rep, timer, args, (1024, 4096), "torch")
            bench_topk_cpu(rep, timer, args)
    if args.json:
        meta = {"device": name, "torch": torch.__version__, "threads": args.threads, "suite": suite}
        args.json.write_text(
            json.dumps({"meta": meta, "floors": floors, "rows": rep.rows}, indent=1)
        )


if __name__ == "__main__":
    main()
