"""``hotswap demo``: the whole service end to end on real data, offline, in a few minutes on 2 cores.

1. train v1 on classes 0-4 of Fashion-MNIST and register it; embed the test split as the gallery;
2. train v2 (Monarch hidden layers, wider) on all classes with BCT through an orthogonal backward
   adapter; register v2 and the adapter;
3. measure old/old, new/old (v2 queries on the untouched v1 gallery, through the adapter) and
   new/new, with the compatibility criterion;
4. migrate the gallery to v2 in waves, answering the query set with the mixed-version search after
   each wave: the backfilling curve.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from compat.metrics import compatible, curve_area, self_retrieval_metrics
from compat.objectives import Classification, ObjectiveConfig, PrototypeMode
from compat.training import TrainConfig, train
from index import galleries, migrate, versions
from index.catalog import EvalResult
from index.context import Context, open_context
from index.evaluation import evaluate_searcher
from index.plots import plot_backfill_curve
from index.search import MixedSearcher
from index.train import StageClock, fit_compatible
from kernels.errors import ConflictError
from models.config import Config, check
from models.datasets import LabelledImages, load_dataset, subset_classes
from models.encoders import Encoder, MLPEncoderConfig, build_encoder, embed

Report = Callable[[str, int, int], None]  # (task, done, total): progress for the CLI to draw
MARKER = "hotswap-demo.json"  # marks a directory the demo may wipe and rebuild


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig(Config):
    dataset: str = "auto"
    old_classes: int = 5  # v1 sees classes [0, old_classes)
    v1_epochs: int = 5
    v2_epochs: int = 5
    v2_layer: str = "monarch"
    prototypes: PrototypeMode = "class_means"  # BCT's old classifier (compat.objectives)
    waves: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    train_limit: int | None = None  # rows of the training split used (None: all); quick mode
    gallery_limit: int | None = None  # rows of the test split used as query set = gallery
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "waves", tuple(self.waves))
        check(
            list(self.waves) == sorted(self.waves) and self.waves[-1] == 1.0,
            f"waves must rise to 1.0, got {self.waves}",
        )
        check(self.waves[0] > 0, "the first wave must migrate some items")
        check(
            self.prototypes in get_args(PrototypeMode),
            f"prototypes must be one of {get_args(PrototypeMode)}, got {self.prototypes!r}",
        )

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A reduced run for tests: small splits, one epoch each."""
        base = dict(v1_epochs=1, v2_epochs=1, train_limit=6000, gallery_limit=1000)
        return cls(**{**base, **overrides})


def run_demo(directory: Path, config: DemoConfig, report: Report | None = None) -> dict[str, Any]:
    """Run the demo in ``directory`` (wiped first if an earlier demo made it); return the results."""
    report = report or (lambda task, done, total: None)
    clock = StageClock()
    torch.manual_seed(config.seed)
    data = _limit(load_dataset(config.dataset), config)
    ctx = open_context(_fresh(directory, config), create=True)
    x_test, y_test = torch.from_numpy(data.test_x), torch.from_numpy(data.test_y)

    with clock("train v1"):
        v1, v1_classifier = _train_v1(data, config, report)
    with clock("embed + ingest gallery"):
        ids = _register_v1_gallery(ctx, v1, x_test)
    with clock("train v2"):
        v2, adapter = _train_v2(data, v1, v1_classifier, config, report)
    with ctx.transaction() as session:
        old, new = (
            versions.get_version(session, "v1"),
            versions.register_version(ctx, session, "v2", v2),
        )
        versions.register_adapter(ctx, session, adapter, new, old, name="v2-to-v1")
        galleries.create_space(session, new)

    labels = {int(i): int(c) for i, c in zip(ids, data.test_y, strict=True)}
    with clock("evaluate cells"):
        q_old, q_new = embed(v1, x_test), embed(v2, x_test)
        cells = {
            "old/old": evaluate_searcher(MixedSearcher.open(ctx, "v1"), q_old, ids, labels),
            "new/old": evaluate_searcher(MixedSearcher.open(ctx, "v2"), q_new, ids, labels),
            "new/new": self_retrieval_metrics(q_new, q_new, y_test),
        }
    with clock("migrate + evaluate each wave"):
        curve = _migrate(ctx, v2, x_test, ids, labels, q_new, cells["new/old"], config, report)
    references = {k: cells[k] for k in ("old/old", "new/new")}
    plot = plot_backfill_curve(curve, references, directory / "backfill.png")
    results = _results(data, config, cells, curve, clock.seconds)
    results["plot"] = str(plot)
    (directory / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _train_v1(
    data: LabelledImages, config: DemoConfig, report: Report
) -> tuple[Encoder, torch.Tensor]:
    """v1 and its classifier's weights (classes 0..old_classes-1), which BCT's paper variant reuses."""
    x, y = subset_classes(data.train_x, data.train_y, range(config.old_classes))
    encoder = build_encoder(
        "mlp", MLPEncoderConfig(input_dim=data.dim, hidden_dims=(256,), embed_dim=64)
    )
    objective = Classification(ObjectiveConfig(classes=config.old_classes, embed_dim=64))
    train(
        encoder,
        objective,
        torch.from_numpy(x),
        torch.from_numpy(y),
        TrainConfig(epochs=config.v1_epochs, seed=config.seed),
        lambda done, total: report("train v1 (classes 0-4)", done, total),
    )
    return encoder, objective.head.weight.detach()


def _register_v1_gallery(ctx: Context, v1: Encoder, x_test: torch.Tensor) -> np.ndarray:
    with ctx.transaction() as session:
        galleries.create_space(session, versions.register_version(ctx, session, "v1", v1))
    external = [f"test-{row:05d}" for row in range(len(x_test))]
    return np.array(galleries.ingest(ctx, "v1", external, embed(v1, x_test)), dtype=np.int64)


def _train_v2(
    data: LabelledImages,
    v1: Encoder,
    v1_classifier: torch.Tensor,
    config: DemoConfig,
    report: Report,
) -> tuple[Encoder, Any]:
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    encoder = build_encoder(
        "mlp",
        MLPEncoderConfig(
            input_dim=data.dim,
            hidden_dims=(512, 512),
            embed_dim=128,
            layer=config.v2_layer,
            nblocks=4,
        ),
    )
    adapter = fit_compatible(
        encoder,
        v1,
        "bct",
        x,
        y,
        data.classes,
        TrainConfig(epochs=config.v2_epochs, seed=config.seed + 1),
        prototypes=config.prototypes,
        old_classifier=v1_classifier,
        progress=lambda done, total: report("train v2 (all classes, BCT)", done, total),
    )
    return encoder, adapter


def _migrate(
    ctx: Context,
    v2: Encoder,
    x_test: torch.Tensor,
    ids: np.ndarray,
    labels: dict[int, int],
    q_new: torch.Tensor,
    start: dict[str, float],
    config: DemoConfig,
    report: Report,
) -> list[dict[str, float]]:
    """Migrate in the configured waves; after each, answer the query set with mixed search."""
    row_of = {int(item): row for row, item in enumerate(ids)}
    run_id = migrate.plan(ctx, "v1", "v2", ordering="random", seed=config.seed)
    curve = [{"fraction": 0.0, **start}]
    done = 0
    for target in config.waves:
        count = round(target * len(ids)) - done
        wave = migrate.run(
            ctx,
            run_id,
            lambda batch: embed(v2, x_test[[row_of[int(i)] for i in batch]]),
            wave_size=count,
            max_waves=1,
        )
        done = wave.done
        point = evaluate_searcher(MixedSearcher.open(ctx, "v2"), q_new, ids, labels)
        curve.append({"fraction": wave.fraction, **point})
        _record(ctx, run_id, wave.fraction, point)
        report("migrate v1 -> v2 in waves", done, len(ids))
    return curve


def _record(ctx: Context, run_id: int, fraction: float, point: dict[str, float]) -> None:
    with ctx.transaction() as session:
        session.add_all(
            EvalResult(run_id=run_id, fraction=fraction, ordering="random", metric=m, value=v)
            for m, v in point.items()
        )


def _results(
    data: LabelledImages,
    config: DemoConfig,
    cells: dict[str, dict[str, float]],
    curve: list[dict[str, float]],
    seconds: dict[str, float],
) -> dict[str, Any]:
    old_old, new_old = cells["old/old"], cells["new/old"]
    fractions = [p["fraction"] for p in curve]
    return {
        "dataset": data.name,
        "gallery": len(data.test_y),
        "cells": cells,
        "compatible": {m: compatible(new_old[m], old_old[m]) for m in ("top1", "ap")},
        "curve": curve,
        "curve_area": {m: curve_area(fractions, [p[m] for p in curve]) for m in ("top1", "ap")},
        "seconds": {**seconds, "total": round(sum(seconds.values()), 1)},
        "config": config.to_dict(),
    }


def _limit(data: LabelledImages, config: DemoConfig) -> LabelledImages:
    """Keep the first rows of each split (quick mode); the splits are already shuffled."""
    t, g = config.train_limit, config.gallery_limit
    return dataclasses.replace(
        data,
        train_x=data.train_x[:t],
        train_y=data.train_y[:t],
        test_x=data.test_x[:g],
        test_y=data.test_y[:g],
    )


def _fresh(directory: Path, config: DemoConfig) -> Path:
    """Wipe a directory an earlier demo made; refuse to touch any other non-empty directory."""
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).is_file():
            raise ConflictError(
                f"{directory} exists and was not made by hotswap demo", fix="pass another --dir"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text(config.to_json())
    return directory
