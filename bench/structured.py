"""Structured layers vs dense: parameters, CPU throughput, and Fashion-MNIST retrieval quality.

    .venv/bin/python bench/structured.py [--quick] [--threads 1,2] [--part all|speed|quality]

(a) rows/s of one d x d layer in inference mode, dense / Monarch / block-diagonal / butterfly
side by side in one process (interleaved rounds, median of ``--repeats``), as ratios to dense;
then the serving ops on their own: ``kernels.project`` (dense, contiguous (d, d) weight) against
``kernels.monarch.apply_monarch`` on a prepared map, with bias, with and without normalize;
(b) the demo's v2 MLP (784 -> 512 -> 512 -> 128) trained with a cosine classifier and label
smoothing, dense vs structured layers at equal width, CMC top-1 / mAP of self-retrieval on the test
split, mean ± std over seeds. Prints markdown and writes each part that ran into its own
marked section of docs/results/structured.md (``<!-- begin speed ... -->`` / ``quality``), leaving
the other part and the hand-written notes as they are.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from any directory

import torch  # noqa: E402
from torch import nn  # noqa: E402

from compat.metrics import self_retrieval_metrics  # noqa: E402
from compat.objectives import Classification, ObjectiveConfig  # noqa: E402
from compat.training import TrainConfig, train  # noqa: E402
from kernels import project  # noqa: E402
from kernels.monarch import apply_monarch, prepare_monarch  # noqa: E402
from models.datasets import load_fashion_mnist  # noqa: E402
from models.encoders import MLPEncoderConfig, build_encoder, embed  # noqa: E402
from models.layers import make_linear, parameter_count, structure_kwargs  # noqa: E402

SPEED_LAYERS = [
    ("dense", 1),
    ("monarch", 4),
    ("monarch", 16),
    ("monarch", 32),
    ("block_diagonal", 4),
    ("butterfly", 1),
]
# (name, hidden-layer kind, input-layer kind); nblocks=4 everywhere, as in the demo.
VARIANTS = [
    ("dense", "dense", "dense"),
    ("monarch hidden (demo v2)", "monarch", "dense"),
    ("monarch all", "monarch", "monarch"),
    ("block_diagonal all", "block_diagonal", "block_diagonal"),
    ("butterfly hidden", "butterfly", "dense"),
    ("butterfly all", "butterfly", "butterfly"),
    ("orthogonal_monarch hidden", "orthogonal_monarch", "dense"),
]
OUT = ROOT / "docs" / "results" / "structured.md"


def label(kind: str, nblocks: int) -> str:
    return f"{kind} nb={nblocks}" if structure_kwargs(kind, nblocks=nblocks) else kind


def speed_layers(d: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        label(kind, nb): make_linear(kind, d, d, **structure_kwargs(kind, nblocks=nb)).eval()
        for kind, nb in SPEED_LAYERS
    }


def rows_per_second(
    layers: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    batch: int,
    repeats: int,
    min_s: float,
    width: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median rows/s per layer; rounds interleave the layers so load drifts hit all of them.

    ``clock`` is wall time by default; ``time.thread_time`` counts only this thread's CPU time,
    which with one torch thread is the work itself, not the share a loaded machine granted.
    """
    x = torch.randn(batch, width)
    calls: dict[str, int] = {}
    times: dict[str, list[float]] = {name: [] for name in layers}
    with torch.inference_mode():
        for name, layer in layers.items():
            start = clock()
            layer(x)  # warm-up, and a calibration of how many calls make min_s
            calls[name] = max(1, math.ceil(min_s / (clock() - start)))
        for _ in range(repeats):
            for name, layer in layers.items():
                start = clock()
                for _ in range(calls[name]):
                    layer(x)
                times[name].append((clock() - start) / calls[name])
    return {name: batch / statistics.median(t) for name, t in times.items()}


def run_speed(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    lines = ["## (a) Parameters and CPU throughput of one d x d layer", ""]
    verdict: list[str] = []
    names = [label(kind, nb) for kind, nb in SPEED_LAYERS]
    lines += ["| d | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for d in args.dims:
        counts = {name: parameter_count(layer) for name, layer in speed_layers(d).items()}
        dense = counts["dense"]
        cells = [
            f"{c:,} ({dense / c:.1f}x fewer)" if c != dense else f"{c:,}" for c in counts.values()
        ]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    for threads in args.threads:
        torch.set_num_threads(threads)
        lines += [
            "",
            f"Rows/s with {threads} thread(s), {_clock_name(args, threads)}: dense (`nn.Linear`) "
            f"absolute, others as a ratio to dense; median of {args.repeats} interleaved rounds, "
            "inference mode",
            "",
        ]
        lines += ["| d | batch | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for d in args.dims:
            layers = speed_layers(d)
            ratios = {}
            for batch in args.batches:
                rate = rows_per_second(
                    layers, batch, args.repeats, args.min_seconds, d, _clock(args, threads)
                )
                ratios[batch] = {n: rate[n] / rate["dense"] for n in names}
                cells = [f"{rate['dense']:,.0f}"] + [f"{ratios[batch][n]:.2f}x" for n in names[1:]]
                lines.append(f"| {d} | {batch} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
            if d == 1024:
                verdict += _speed_verdict(ratios, threads)
        ops, op_verdict = _op_speed(args, threads)
        lines += ops
        verdict += op_verdict
    return lines, verdict


OP_NBLOCKS = (16, 32)


def serving_ops(d: int, normalize: bool) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """``project`` on a dense (d, d) weight vs ``apply_monarch`` on prepared maps, bias on both."""
    torch.manual_seed(0)
    ops: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    weight, bias = torch.randn(d, d) / d**0.5, torch.randn(d)
    ops["project"] = lambda x: project(x, weight, bias, normalize=normalize)
    for nb in OP_NBLOCKS:
        b = d // nb
        m = prepare_monarch(torch.randn(nb, b, b) / b**0.5, torch.randn(nb, b, b) / b**0.5, bias)
        ops[f"monarch nb={nb}"] = functools.partial(apply_monarch, m=m, normalize=normalize)
    return ops


def _clock(args: argparse.Namespace, threads: int) -> Callable[[], float]:
    """Thread CPU time for ``--clock cpu`` with one thread (other threads' work is not seen)."""
    return time.thread_time if args.clock == "cpu" and threads == 1 else time.perf_counter


def _clock_name(args: argparse.Namespace, threads: int) -> str:
    return "thread CPU time" if _clock(args, threads) is time.thread_time else "wall time"


def _op_speed(args: argparse.Namespace, threads: int) -> tuple[list[str], list[str]]:
    """The serving ops at d=1024: project_monarch >= 2x project at batch >= 1024 (issue 6)."""
    d = 1024
    names = ["project"] + [f"monarch nb={nb}" for nb in OP_NBLOCKS]
    lines = [
        "",
        f"Serving ops at d={d}, {threads} thread(s), {_clock_name(args, threads)}: "
        "`project` rows/s absolute, "
        "`apply_monarch` (prepared map) as a ratio to it; bias on both",
        "",
        "| normalize | batch | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    worst: dict[str, float] = {}
    for normalize in (False, True):
        ops = serving_ops(d, normalize)
        for batch in args.batches:
            rate = rows_per_second(
                ops, batch, args.repeats, args.min_seconds, d, _clock(args, threads)
            )
            cells = [f"{rate['project']:,.0f}"] + [
                f"{rate[n] / rate['project']:.2f}x" for n in names[1:]
            ]
            lines.append(f"| {normalize} | {batch} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
            if batch >= 1024:
                for n in names[1:]:
                    worst[n] = min(worst.get(n, math.inf), rate[n] / rate["project"])
    verdict = [
        f"- project_monarch {n}, {threads} thread(s), batch >= 1024: need >= 2x `project`, "
        f"worst {r:.2f}x: {'met' if r >= 2 else 'missed'}"
        for n, r in worst.items()
    ]
    return lines, verdict


def _speed_verdict(ratios: dict[int, dict[str, float]], threads: int) -> list[str]:
    """Monarch at d=1024: >= 2x dense at batch >= 1024, >= 4x at batch <= 32."""
    lines = []
    for name in [label(k, nb) for k, nb in SPEED_LAYERS if k == "monarch"]:
        for rows, need, pick in (
            (">= 1024", 2.0, lambda b: b >= 1024),
            ("<= 32", 4.0, lambda b: b <= 32),
        ):
            got = {b: r[name] for b, r in ratios.items() if pick(b)}
            if got:
                worst = min(got, key=got.__getitem__)
                status = "met" if got[worst] >= need else "missed"
                detail = ", ".join(f"B={b}: {v:.2f}x" for b, v in got.items())
                lines.append(
                    f"- {name}, {threads} thread(s), batch {rows}: need >= {need:.0f}x, got "
                    f"{detail}: {status}"
                )
    return lines


def linear_parameters(encoder: nn.Module) -> int:
    """Weights and biases of the linear layers (every layer in LAYERS has ``to_dense``)."""
    return sum(parameter_count(m) for m in encoder.modules() if hasattr(m, "to_dense"))


def train_and_score(
    variant: tuple[str, str, str], seed: int, data: dict[str, torch.Tensor], epochs: int
) -> dict[str, float]:
    _, layer, input_layer = variant
    torch.manual_seed(seed)
    config = MLPEncoderConfig(
        input_dim=784,
        hidden_dims=(512, 512),
        embed_dim=128,
        layer=layer,
        input_layer=input_layer,
        nblocks=4,
    )
    encoder = build_encoder("mlp", config)
    objective = Classification(ObjectiveConfig(classes=10, embed_dim=128, label_smoothing=0.1))
    start = time.perf_counter()
    train(
        encoder, objective, data["train_x"], data["train_y"], TrainConfig(epochs=epochs, seed=seed)
    )
    seconds = time.perf_counter() - start
    z = embed(encoder, data["test_x"])
    metrics = self_retrieval_metrics(z, z, data["test_y"])
    return {
        "top1": 100 * metrics["top1"],
        "map": 100 * metrics["ap"],
        "params": linear_parameters(encoder),
        "seconds": seconds,
    }


def run_quality(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    torch.set_num_threads(args.train_threads)
    raw = load_fashion_mnist()
    data = {
        "train_x": torch.from_numpy(raw.train_x[: args.train_limit]),
        "train_y": torch.from_numpy(raw.train_y[: args.train_limit]),
        "test_x": torch.from_numpy(raw.test_x[: args.gallery_limit]),
        "test_y": torch.from_numpy(raw.test_y[: args.gallery_limit]),
    }
    n_train, n_test = len(data["train_x"]), len(data["test_x"])
    lines = [
        "## (b) Fashion-MNIST retrieval, MLP 784 -> 512 -> 512 -> 128, equal width",
        "",
        f"Train {n_train:,} images, {args.epochs} epochs (AdamW + one-cycle, cosine classifier, "
        f"label smoothing 0.1); query set = gallery = {n_test:,} test images; seeds "
        f"{', '.join(map(str, args.seeds))}; nblocks=4; {args.train_threads} thread(s). "
        "'hidden': the input layer stays dense; 'all': every linear layer is structured.",
        "",
        "| variant | linear params | vs dense | top-1 (%) | mAP (%) | train s/run |",
        "|---|---|---|---|---|---|",
    ]
    summary: dict[str, tuple[int, float, float]] = {}
    for variant in VARIANTS:
        runs = [train_and_score(variant, seed, data, args.epochs) for seed in args.seeds]
        top1, maps = [r["top1"] for r in runs], [r["map"] for r in runs]
        params = int(runs[0]["params"])
        dense_params = summary.get("dense", (params, 0.0, 0.0))[0]
        summary[variant[0]] = (params, statistics.mean(top1), statistics.mean(maps))
        ratio = f"{dense_params / params:.2f}x fewer" if variant[0] != "dense" else "reference"
        lines.append(
            f"| {variant[0]} | {params:,} | {ratio} | {_pm(top1)} | "
            f"{_pm(maps)} | {statistics.mean(r['seconds'] for r in runs):.0f} |"
        )
        print(lines[-1], flush=True)
    return lines, _quality_verdict(summary)


def _pm(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def _quality_verdict(summary: dict[str, tuple[int, float, float]]) -> list[str]:
    dense_params, dense_top1, _ = summary["dense"]
    lines = []
    for name, (params, top1, _) in summary.items():
        if name != "dense" and 2 * params <= dense_params:
            met = "met" if top1 >= dense_top1 - 1.0 else "missed"
            lines.append(
                f"- {name}: {dense_params / params:.2f}x fewer linear parameters, top-1 "
                f"{top1 - dense_top1:+.2f} points vs dense: target {met}"
            )
    return lines


def machine() -> str:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return (
        f"{nproc} CPU cores ({cpu}), no GPU; torch {torch.__version__}, Python "
        f"{platform.python_version()}"
    )


def _load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",")]

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sweep and 1 short run per variant")
    p.add_argument("--part", choices=["all", "speed", "quality"], default="all")
    p.add_argument("--threads", type=ints, default=[os.cpu_count() or 1], help="e.g. 1,2")
    p.add_argument("--train-threads", type=int, default=1, help="threads for part (b)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: time 1-thread runs by this thread's CPU time (robust on a loaded machine)",
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=ints, default=[0, 1, 2])
    p.add_argument("--gallery-limit", type=int, default=None, help="test images (default all)")
    p.add_argument("--dims", type=ints, default=[256, 512, 768, 1024], help="layer widths")
    p.add_argument("--batches", type=ints, default=[1, 32, 1024, 16384], help="rows per call")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    args.min_seconds, args.train_limit = 0.1, None
    if args.quick:
        args.dims, args.batches, args.min_seconds, args.repeats = [256, 1024], [1, 1024], 0.02, 3
        args.epochs, args.seeds, args.train_limit = 1, [0], 6000
        args.gallery_limit = args.gallery_limit or 2000
    return args


TITLE = "# Structured layers: parameters, CPU throughput, retrieval quality"


def write_section(path: Path, name: str, text: str) -> None:
    """Replace the generated section ``name`` of ``path`` (between markers), keeping the rest
    (the other part, hand-written notes) as it is; append the section if it is new."""
    begin = f"<!-- begin {name} (generated by bench/structured.py --part {name}) -->"
    end = f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else f"{TITLE}\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def run_part(args: argparse.Namespace, part: str) -> str:
    """One part, measured and rendered with its command, machine state and verdict."""
    start, load = time.perf_counter(), _load()
    body, verdict = run_speed(args) if part == "speed" else run_quality(args)
    minutes = (time.perf_counter() - start) / 60
    command = ".venv/bin/python bench/structured.py " + " ".join(sys.argv[1:])
    lines = [
        f"Measured {datetime.date.today().isoformat()} with",
        "",
        "```sh",
        command.rstrip(),
        "```",
        "",
        *body,
        "",
        f"Machine: {machine()}; load average (1/5/15 min) at the start {load}, at the end "
        f"{_load()} (a shared machine: other jobs ran alongside). This part took {minutes:.0f} min.",
        "",
    ]
    if part == "speed" and os.getloadavg()[0] >= (os.cpu_count() or 1):
        lines += [
            "Caveat: the load average was at or above the core count, so a second torch thread "
            "competes with other jobs and OpenMP spin-waits dominate: timings with more than one "
            "thread are unreliable here. Ratios come from interleaved rounds, so a slow spell "
            "hits every layer alike; absolute rows/s are depressed.",
            "",
        ]
    title = (
        "Speed target (Monarch, d=1024):"
        if part == "speed"
        else "Quality target (>= 2x fewer linear parameters, within 1 point of dense top-1):"
    )
    return "\n".join(lines + ([title, "", *verdict] if verdict else []))


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    for part in ("speed", "quality"):
        if args.part in ("all", part):
            text = run_part(args, part)
            print(text)
            write_section(args.out, part, text)


if __name__ == "__main__":
    main()
