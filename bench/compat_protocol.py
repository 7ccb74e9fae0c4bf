"""The compatibility protocol on Fashion-MNIST: every training-time objective and two post-hoc maps.

Old model: MLP 784→256→64 on classes 0-4. New models on all 10 classes, wider (784→512→128) and a
Monarch variant (784→512→512→128, 4 blocks). For each method × seed: old/old, new/old (new queries on
the untouched old gallery, through the method's bridge), new/new, top-1 and mAP; ECC; gain fraction
(vs the independent new model of the same architecture); compatibility tax. Then a 3-step chain
(classes 0-3 → 0-6 → 0-9) with AC/AM for BCT and d-Simplex+HOC.

    .venv/bin/python -m bench.compat_protocol --full --threads 1 --out /tmp/protocol/full
    .venv/bin/python -m bench.compat_protocol --quick   # 1 seed, tiny: what the test runs

:func:`run_protocol` returns the results as a dict, so the CLI can call it; :func:`render_tables`
turns them into the markdown tables of docs/results/compat_protocol.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compat.bt2 import BT2, BT2Config
from compat.fitting import fit_adapter
from compat.metrics import (
    chain_metrics,
    compatibility_tax,
    compatible,
    gain_fraction,
    self_retrieval_metrics,
    truncate_to_common_width,
)
from compat.objectives import (
    BCT,
    BCTConfig,
    Classification,
    Objective,
    ObjectiveConfig,
    PrototypeMode,
    new_space_model,
    old_prototypes,
    old_space_model,
)
from compat.oca import OCA, OCAConfig
from compat.ract import RACT, RACTConfig
from compat.references import WithReferences
from compat.simplex import Simplex, SimplexConfig
from compat.training import TrainConfig, train
from models.config import Config, check
from models.datasets import load_dataset
from models.encoders import MLPEncoderConfig, build_encoder, embed

METHODS = (
    "independent",
    "bct",
    "bct_paper",
    "bt2",
    "oca",
    "simplex",
    "ract",
    "procrustes",
    "lambda_orthogonal",
    "independent@monarch",
    "bct@monarch",
    "bt2@monarch",
)
METRICS = ("top1", "ap")
BRIDGES = {  # how each trained method's new queries reach the old gallery (Objective.bridge_module)
    "bct": "orthogonal adapter, trained jointly",
    "bct_paper": "orthogonal adapter, trained jointly",
    "ract": "orthogonal adapter, trained jointly",
    "bt2": "block b = (R_c z)[:64]",
    "oca": "first 64 dims of the orthogonal layer",
}
Cells = dict[str, dict[str, float]]  # cell name -> metric -> value


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProtocolConfig(Config):
    seeds: tuple[int, ...] = (0, 1, 2)
    train_limit: int = 20_000  # first rows of the (shuffled) training split
    test_limit: int = 5_000  # query set = gallery
    epochs: int = 3
    old_classes: int = 5
    old_dim: int = 64
    new_dim: int = 128
    extra_dims: int = 32  # BT²'s a and OCA's k
    methods: tuple[str, ...] = METHODS
    chain: tuple[int, ...] = (4, 7, 10)  # classes seen by each version of the chain
    chain_dims: tuple[int, ...] = (64, 96, 128)

    def __post_init__(self) -> None:
        for name in ("seeds", "methods", "chain", "chain_dims"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check(bool(self.seeds) and self.epochs >= 1, f"need seeds and epochs >= 1: {self}")
        unknown = sorted(set(self.methods) - set(METHODS))
        check(not unknown, f"unknown methods {unknown}; known: {METHODS}")
        check(
            len(self.chain) == len(self.chain_dims) >= 2, "chain and chain_dims: same length >= 2"
        )
        for (
            method
        ) in self.methods:  # BT²'s teacher and the post-hoc maps reuse the independent model
            needs = "independent@monarch" if method == "bt2@monarch" else "independent"
            uses = method.split("@")[0] in ("bt2", "procrustes", "lambda_orthogonal")
            check(not uses or needs in self.methods, f"method {method!r} needs {needs!r} too")

    @classmethod
    def quick(cls) -> ProtocolConfig:
        return cls(seeds=(0,), train_limit=2_000, test_limit=400, epochs=1)


@dataclasses.dataclass
class Run:
    """One seed's shared state: data, the old model and its embeddings."""

    config: ProtocolConfig
    seed: int
    x: Tensor  # (N, 784) training images
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    old: nn.Module
    old_classifier: Tensor  # (old_classes, old_dim), the paper's BCT variant reuses it
    old_train: Tensor  # (N, old_dim) unit rows
    old_test: Tensor
    trained: dict[str, tuple[nn.Module, Objective]] = dataclasses.field(default_factory=dict)


def _mlp(dim: int, layer: str = "dense") -> nn.Module:
    hidden = (512, 512) if layer == "monarch" else (512,)
    config = MLPEncoderConfig(input_dim=784, hidden_dims=hidden, embed_dim=dim, layer=layer)
    return build_encoder("mlp", config)


def _fit(
    encoder: nn.Module,
    objective: Objective,
    x: Tensor,
    y: Tensor,
    seed: int,
    epochs: int,
    references: list[nn.Module] | None = None,
) -> tuple[nn.Module, Objective]:
    model = WithReferences(encoder, references) if references else encoder
    train(model, objective, x, y, TrainConfig(epochs=epochs, seed=seed))
    return encoder, objective


def _old_model(
    run_seed: int, x: Tensor, y: Tensor, classes: int, dim: int, epochs: int
) -> tuple[nn.Module, Classification]:
    torch.manual_seed(run_seed)
    encoder = build_encoder(
        "mlp", MLPEncoderConfig(input_dim=784, hidden_dims=(256,), embed_dim=dim)
    )
    objective = Classification(ObjectiveConfig(classes=classes, embed_dim=dim))
    _fit(encoder, objective, x, y, run_seed, epochs)
    return encoder, objective


def _prepare(config: ProtocolConfig, seed: int) -> Run:
    data = load_dataset("fashion-mnist")
    x = torch.from_numpy(data.train_x[: config.train_limit])
    y = torch.from_numpy(data.train_y[: config.train_limit])
    x_test = torch.from_numpy(data.test_x[: config.test_limit])
    y_test = torch.from_numpy(data.test_y[: config.test_limit])
    seen = y < config.old_classes
    old, objective = _old_model(
        seed, x[seen], y[seen], config.old_classes, config.old_dim, config.epochs
    )
    classifier = objective.head.weight.detach()
    return Run(
        config, seed, x, y, x_test, y_test, old, classifier, embed(old, x), embed(old, x_test)
    )


def _train_method(run: Run, method: str) -> tuple[nn.Module, Objective]:
    """Train the new model of a training-time method (seeded per method and run)."""
    c, name, layer = run.config, *(method.split("@") + ["dense"])[:2]
    torch.manual_seed(run.seed * 1000 + METHODS.index(method))
    seed, classes, width = run.seed + 1, 10, c.new_dim
    if name == "independent":
        objective: Objective = Classification(ObjectiveConfig(classes=classes, embed_dim=width))
        return _fit(_mlp(width, layer), objective, run.x, run.y, seed, c.epochs)
    if name in ("bct", "bct_paper"):
        mode: PrototypeMode = "classifier" if name == "bct_paper" else "class_means"
        protos = old_prototypes(
            run.old_train, run.y, classes, mode=mode, old_classifier=run.old_classifier
        )
        objective = BCT(BCTConfig(classes=classes, embed_dim=width, old_dim=c.old_dim), protos)
        return _fit(_mlp(width, layer), objective, run.x, run.y, seed, c.epochs)
    protos = old_prototypes(run.old_train, run.y, classes)
    if name == "bt2":
        teacher, _ = run.trained["independent" if layer == "dense" else "independent@monarch"]
        config = BT2Config(
            classes=classes,
            embed_dim=width + c.extra_dims,
            old_dim=c.old_dim,
            extra_dims=c.extra_dims,
            teacher_dim=width,
        )
        encoder = _mlp(width + c.extra_dims, layer)
        return _fit(encoder, BT2(config, protos), run.x, run.y, seed, c.epochs, [run.old, teacher])
    if name == "oca":
        config_oca = OCAConfig(
            classes=classes, embed_dim=c.old_dim + c.extra_dims, old_dim=c.old_dim
        )
        encoder = _mlp(c.old_dim + c.extra_dims, layer)
        return _fit(encoder, OCA(config_oca, protos), run.x, run.y, seed, c.epochs)
    if name == "ract":
        objective = RACT(RACTConfig(classes=classes, embed_dim=width, old_dim=c.old_dim))
        return _fit(_mlp(width, layer), objective, run.x, run.y, seed, c.epochs, [run.old])
    raise ValueError(f"not a training-time method: {method}")  # guarded by ProtocolConfig


def _cells(old_q: Tensor, old_g: Tensor, bridged: Tensor, new: Tensor, labels: Tensor) -> Cells:
    return {
        "old/old": self_retrieval_metrics(old_q, old_g, labels),
        "new/old": self_retrieval_metrics(bridged, old_g, labels),
        "new/new": self_retrieval_metrics(new, new, labels),
    }


def _simplex(run: Run) -> Cells:
    """d-Simplex needs its own old model: the same fixed 10-vertex classifier, classes 0-4 only."""
    c, seen = run.config, run.y < run.config.old_classes
    torch.manual_seed(run.seed)
    old_obj = Simplex(SimplexConfig(classes=10, embed_dim=c.old_dim))
    old_enc, _ = _fit(_mlp_old(c.old_dim), old_obj, run.x[seen], run.y[seen], run.seed, c.epochs)
    old_model = new_space_model(old_enc, old_obj)
    new_obj = Simplex(SimplexConfig(classes=10, embed_dim=c.new_dim, hoc=True))
    enc, _ = _fit(_mlp(c.new_dim), new_obj, run.x, run.y, run.seed + 1, c.epochs, [old_model])
    old_test, new_test = (
        embed(old_model, run.x_test),
        embed(new_space_model(enc, new_obj), run.x_test),
    )
    return _cells(old_test, old_test, new_test, new_test, run.y_test)


def _mlp_old(dim: int) -> nn.Module:
    return build_encoder("mlp", MLPEncoderConfig(input_dim=784, hidden_dims=(256,), embed_dim=dim))


def _method_cells(run: Run, method: str) -> tuple[Cells, str]:
    """The three cells of one method and how its new/old cell was bridged."""
    name = method.split("@")[0]
    if name == "simplex":
        return _simplex(run), "shared simplex space (own simplex old model)"
    if name in ("procrustes", "lambda_orthogonal"):
        encoder, objective = run.trained["independent"]
        new_train, new_test = embed(encoder, run.x), embed(encoder, run.x_test)
        fit = fit_adapter(name, new_train, run.old_train, direction="backward", seed=run.seed)
        bridged = fit.adapter.transform(new_test)
        return _cells(run.old_test, run.old_test, bridged, new_test, run.y_test), "post-hoc adapter"
    if method not in run.trained:
        run.trained[method] = _train_method(run, method)
    encoder, objective = run.trained[method]
    new_test = embed(new_space_model(encoder, objective), run.x_test)
    bridged = embed(old_space_model(encoder, objective), run.x_test)
    how = BRIDGES.get(name, "none")
    if objective.bridge_module() is None and bridged.shape[1] != run.old_test.shape[1]:
        # the BT²/OCA protocol for an incompatible model of another width: said, not silent
        bridged, _ = truncate_to_common_width(bridged, run.old_test)
        how = f"truncated to the first {bridged.shape[1]} dims"
    return _cells(run.old_test, run.old_test, bridged, new_test, run.y_test), how


def _chain(run: Run, method: str) -> list[list[float]]:
    """C[i][j] (top-1): version-i queries on the version-j gallery, for bct or simplex."""
    c, matrices = run.config, []
    models: list[tuple[nn.Module, Objective]] = []
    for v, (classes, dim) in enumerate(zip(c.chain, c.chain_dims, strict=True)):
        torch.manual_seed(run.seed * 100 + v)
        seen = run.y < classes
        x, y = run.x[seen], run.y[seen]
        if method == "simplex":
            refs = [new_space_model(*models[-1])] if models else []
            objective: Objective = Simplex(SimplexConfig(classes=10, embed_dim=dim, hoc=bool(refs)))
            models.append(_fit(_mlp(dim), objective, x, y, run.seed + v, c.epochs, refs))
        elif not models:
            objective = Classification(ObjectiveConfig(classes=classes, embed_dim=dim))
            models.append(_fit(_mlp(dim), objective, x, y, run.seed + v, c.epochs))
        else:
            protos = old_prototypes(embed(new_space_model(*models[-1]), x), y, classes)
            prev_dim = c.chain_dims[v - 1]
            bct = BCT(BCTConfig(classes=classes, embed_dim=dim, old_dim=prev_dim), protos)
            models.append(_fit(_mlp(dim), bct, x, y, run.seed + v, c.epochs))
    galleries = [embed(new_space_model(*m), run.x_test) for m in models]
    for i, (encoder, _) in enumerate(models):
        row = []
        for j in range(len(models)):
            if j > i:
                row.append(float("nan"))
                continue
            chain = [encoder] + [
                models[k][1].bridge_module() or nn.Identity() for k in range(i, j, -1)
            ]
            if method == "simplex":
                chain = [new_space_model(*models[i])]
            queries = embed(nn.Sequential(*chain), run.x_test)
            row.append(self_retrieval_metrics(queries, galleries[j], run.y_test)["top1"])
        matrices.append(row)
    return matrices


def run_protocol(
    config: ProtocolConfig,
    progress: Callable[[str], None] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every method × seed, plus the chains; returns per-seed cells, summaries and timings.

    ``checkpoint`` receives the results so far after each seed (a long run keeps what it finished).
    """
    say = progress or (lambda message: None)
    start = time.perf_counter()
    per_seed: list[dict[str, Any]] = []
    chains: list[dict[str, list[list[float]]]] = []
    for seed in config.seeds:
        if per_seed and checkpoint:
            checkpoint(_results(config, per_seed, chains, start))
        run = _prepare(config, seed)
        cells: dict[str, Any] = {}
        for method in sorted(config.methods, key=lambda m: not m.startswith("independent")):
            cells[method], how = _method_cells(run, method)
            cells[method]["bridge"] = how
            say(f"seed {seed} {method}: new/old top1 {cells[method]['new/old']['top1']:.3f}")
        per_seed.append(cells)
        chains.append({m: _chain(run, m) for m in ("bct", "simplex")})
        say(f"seed {seed} chains done")
    return _results(config, per_seed, chains, start)


def _results(
    config: ProtocolConfig, per_seed: list[dict[str, Any]], chains: list[Any], start: float
) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "seeds_done": len(per_seed),
        "per_seed": per_seed,
        "chain_matrices": chains,
        "summary": _summarise(per_seed, config.methods),
        "chains": _summarise_chains(chains),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _summarise(per_seed: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in methods:
        ref = "independent@monarch" if method.endswith("@monarch") else "independent"
        row: dict[str, Any] = {"bridge": per_seed[0][method]["bridge"]}
        for m in METRICS:
            for cell in ("old/old", "new/old", "new/new"):
                row[f"{cell} {m}"] = _mean_std([s[method][cell][m] for s in per_seed])
            old = [s[method]["old/old"][m] for s in per_seed]
            cross = [s[method]["new/old"][m] for s in per_seed]
            new = [s[method]["new/new"][m] for s in per_seed]
            star = [s[ref]["new/new"][m] if ref in s else float("nan") for s in per_seed]
            row[f"ecc {m}"] = sum(compatible(a, b) for a, b in zip(cross, old, strict=True))
            row[f"gain {m}"] = _mean_std(
                [gain_fraction(a, b, s) for a, b, s in zip(cross, old, star, strict=True)]
            )
            row[f"tax {m}"] = _mean_std(
                [compatibility_tax(s, n) for s, n in zip(star, new, strict=True)]
            )
        out[method] = row
    return out


def _summarise_chains(chains: list[dict[str, list[list[float]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in chains[0]:
        scores = [chain_metrics(c[method]) for c in chains]
        t = len(chains[0][method])
        mean = [
            [
                statistics.fmean(c[method][i][j] for c in chains) if j <= i else None
                for j in range(t)
            ]
            for i in range(t)
        ]
        out[method] = {
            "ac": _mean_std([s.ac for s in scores]),
            "am": _mean_std([s.am for s in scores]),
            "mean_matrix_top1": mean,
        }
    return out


def _pm(value: tuple[float, float], digits: int = 3) -> str:
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def render_tables(results: dict[str, Any]) -> str:
    """Markdown: one cells table per metric, then the chains."""
    seeds = results["seeds_done"]
    lines = []
    for m, label in (("top1", "top-1"), ("ap", "mAP")):
        lines += [
            f"### {label} (mean ± std over {seeds} seeds)",
            "",
            "| method | old/old | new/old | new/new | ECC (seeds passing) | gain fraction | tax | bridge |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, row in results["summary"].items():
            lines.append(
                f"| {method} | {_pm(row[f'old/old {m}'])} | {_pm(row[f'new/old {m}'])} | "
                f"{_pm(row[f'new/new {m}'])} | {row[f'ecc {m}']}/{seeds} | "
                f"{_pm(row[f'gain {m}'], 2)} | {_pm(row[f'tax {m}'])} | {row['bridge']} |"
            )
        lines.append("")
    lines += ["### Chain (top-1, mean matrix over seeds; rows = query version, cols = gallery)", ""]
    for method, chain in results["chains"].items():
        lines.append(f"**{method}**: AC {_pm(chain['ac'], 2)}, AM {_pm(chain['am'])}")
        lines.append("")
        t = len(chain["mean_matrix_top1"])
        lines += ["| query \\ gallery | " + " | ".join(f"v{j + 1}" for j in range(t)) + " |"]
        lines += ["|---" * (t + 1) + "|"]
        for i, row in enumerate(chain["mean_matrix_top1"]):
            cells = " | ".join("" if v is None else f"{v:.3f}" for v in row)
            lines.append(f"| v{i + 1} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def _write(out: Path | None, results: dict[str, Any]) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "tables.md").write_text(render_tables(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 seed, tiny subsets (the test)")
    mode.add_argument("--full", action="store_true", help="3 seeds, 20k train / 5k test (default)")
    parser.add_argument(
        "--out", type=Path, default=None, help="write results.json + tables.md here"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ProtocolConfig.quick() if args.quick else ProtocolConfig()
    results = run_protocol(
        config,
        lambda message: print(message, file=sys.stderr, flush=True),
        lambda partial: _write(args.out, partial),
    )
    _write(args.out, results)
    print(render_tables(results))
    print(f"total {results['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
