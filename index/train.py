"""``hotswap train``: train a compatible upgrade of a registered version and register it.

The old version's encoder comes from the catalog; the new encoder is any registered encoder built
from its key + config; the method is a registered training-time objective whose bridge is a
registered adapter (BCT's and RACT's backward adapter), or ``extend``: the old encoder kept whole
inside the new one beside trained extra dimensions, bridged by a ``block_step``, or
``nca_extended``: that encoder trained under nca with a jointly trained λ-orth bridge. The new
version, its backward adapter (with the protocol cells as its metrics) and its embedding space are
recorded in one transaction, after training and evaluation, so a bad input or a failed run changes
nothing in the catalog.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy import select
from torch import Tensor, nn

from compat.adapters import Adapter
from compat.extension import NCA_EXTENDED, extended_nca, extension_of, fit_block_step
from compat.metrics import compatible, self_retrieval_metrics
from compat.nca_objective import NCAConfig, nca_against
from compat.objectives import (
    BCT,
    OBJECTIVES,
    BCTConfig,
    Classification,
    Objective,
    ObjectiveConfig,
    PrototypeMode,
    old_prototypes,
)
from compat.ract import RACT, RACTConfig
from compat.references import WithReferences
from compat.training import TrainConfig, train
from index import galleries, versions
from index.catalog import ModelVersion
from index.context import Context
from kernels.errors import ConflictError, InvalidInputError, NotFoundError, did_you_mean
from models.config import Config, check
from models.datasets import LabelledImages
from models.encoders import ENCODERS, Encoder, build_encoder, embed
from models.extended import ExtendedEncoder
from models.vector_files import load_labels, load_vectors

Report = Callable[[str, int, int], None]  # (task, done, total): progress for the CLI to draw
# Objectives whose new space is the encoder's own output and whose bridge is a registered adapter:
# what the catalog can serve today; ``extend`` keeps the old encoder whole inside the new one
# (models/extended.py) and bridges by a held-out step, ``nca_extended`` trains that encoder with
# its bridge (compat/extension.py). BT²/OCA/d-Simplex embed through an extra module (see
# compat.objectives), which a model version cannot hold yet.
UPGRADE_METHODS = ("bct", "ract", "nca", "extend", NCA_EXTENDED)
EXTEND = "extend"
EXTENDING = (EXTEND, NCA_EXTENDED)  # the configured encoder gives the extra dimensions
# NCA terms compare each item with a bank of old training vectors, so their time grows with its
# size: extend's bridge is fitted on at most this many training inputs and nca's objectives hold at
# most this many in their bank (seeded samples). On all 60,000 Fashion-MNIST training rows extend's
# fit had not finished after 32 min and nca took 1,859 s; with 10,000, 99 s and 227 s, nca's cells
# unchanged within their noise (docs/results/compat.md, stops 22 and 23)
NCA_ROWS = 10_000
BANKED = ("nca", EXTEND, NCA_EXTENDED)  # the methods NCA_ROWS / bank_rows limits


class StageClock:
    """Wall-clock seconds per named stage, to say where a run's time went."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - start, 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpgradeConfig(Config):
    new: str  # name of the version to create
    old: str | None = None  # registered version with an encoder; None: an independent first one
    encoder: str = "mlp"  # ENCODERS key
    encoder_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    method: str = "bct"
    prototypes: PrototypeMode = "class_means"
    epochs: int = 5
    batch_size: int = 256
    train_limit: int | None = None  # first rows of the training split (None: all)
    eval_limit: int | None = 2000  # first rows of the held-out split used for the cells
    bank_rows: int = NCA_ROWS  # at most this many training rows in an NCA bank / extend's fit
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.old != self.new, f"the new version needs its own name, got {self.new!r} twice")
        ENCODERS.get(self.encoder)
        check(self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1")
        check(
            self.prototypes in get_args(PrototypeMode),
            f"prototypes must be one of {get_args(PrototypeMode)}, got {self.prototypes!r}",
        )
        for name in ("train_limit", "eval_limit", "bank_rows"):
            value = getattr(self, name)
            check(value is None or value >= 2, f"{name} must be >= 2, got {value}")
        if self.old is None:
            object.__setattr__(self, "method", "classification")  # nothing to be compatible with
            return
        if self.method not in OBJECTIVES and self.method not in EXTENDING:
            methods = [*OBJECTIVES.keys(), *EXTENDING]
            raise NotFoundError(
                f"unknown method {self.method!r}", fix=did_you_mean(self.method, methods)
            )
        check(
            self.method in UPGRADE_METHODS,
            f"method {self.method!r} cannot be registered as a served upgrade yet; "
            f"use one of {UPGRADE_METHODS}",
        )

    @classmethod
    def quick(cls, **overrides: Any) -> UpgradeConfig:
        """Small splits and one epoch: what tests and the walkthrough run."""
        return cls(**{"epochs": 1, "train_limit": 3000, "eval_limit": 500, **overrides})


def labelled_arrays(
    inputs: np.ndarray, labels: np.ndarray, *, seed: int = 0, held_out: float = 0.2
) -> LabelledImages:
    """User data: inputs (N, D) float, labels (N,) ints in [0, C); a seeded 80/20 split."""
    if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.floating):
        raise InvalidInputError(
            f"inputs must be a float (N, D) array, got {inputs.dtype} {inputs.shape}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInputError(
            f"labels must be an integer (N,) array, got {labels.dtype} {labels.shape}"
        )
    if len(inputs) != len(labels) or len(labels) < 10:
        raise InvalidInputError(
            f"need >= 10 rows and one label per input row: {len(inputs)} inputs, {len(labels)} labels"
        )
    if not np.isfinite(inputs).all() or labels.min() < 0:
        raise InvalidInputError("inputs must be finite and labels >= 0")
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(round(len(labels) * (1 - held_out)))
    x, y = inputs.astype(np.float32)[order], labels.astype(np.int64)[order]
    return LabelledImages(
        name="user arrays",
        train_x=x[:cut],
        train_y=y[:cut],
        test_x=x[cut:],
        test_y=y[cut:],
        classes=int(labels.max()) + 1,
        image_shape=(inputs.shape[1],),
    )


def load_labelled_files(inputs: Path, labels: Path, *, seed: int = 0) -> LabelledImages:
    """User training data from .npy files: inputs float (N, D), labels int (N,)."""
    return labelled_arrays(load_vectors(inputs), load_labels(labels), seed=seed)


def fit_compatible(
    encoder: Encoder,
    old: nn.Module,
    method: str,
    x: Tensor,
    y: Tensor,
    classes: int,
    config: TrainConfig,
    *,
    prototypes: PrototypeMode = "class_means",
    old_classifier: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    bank_rows: int = NCA_ROWS,
) -> Adapter:
    """Train ``encoder`` (x (N, D) -> (N, d_new)) compatibly with the frozen ``old`` (-> d_old).

    Returns the backward adapter (d_new -> d_old) that sends new queries into the old space.
    With ``extend`` or ``nca_extended``, ``encoder`` must be an :class:`ExtendedEncoder` around
    ``old``. ``bank_rows``: at most this many training rows (a seeded sample) in nca's banks and
    in extend's bridge fit.
    """
    if method == EXTEND:
        return _fit_extension(encoder, old, x, y, classes, config, progress, bank_rows)
    old_dim = int(embed(old, x[:1]).shape[1])
    objective: Objective
    references: list[nn.Module] = []  # frozen models whose features the loss reads
    if method == "bct":
        rows = old_prototypes(
            embed(old, x), y, classes, mode=prototypes, old_classifier=old_classifier
        )
        bct_config = BCTConfig(classes=classes, embed_dim=encoder.embed_dim, old_dim=old_dim)
        objective = BCT(bct_config, rows)
    elif method == "ract":
        check(
            encoder.embed_dim != old_dim,
            f"RACT with equal widths ({old_dim}) needs no adapter; pick another embed_dim",
        )
        ract_config = RACTConfig(classes=classes, embed_dim=encoder.embed_dim, old_dim=old_dim)
        objective, references = RACT(ract_config), [old]
    elif method in ("nca", NCA_EXTENDED):  # NCA over the old model's features of a bank of inputs
        bank = _nca_rows(len(x), config.seed, bank_rows)
        if method == "nca":
            nca_config = NCAConfig(classes=classes, embed_dim=encoder.embed_dim, old_dim=old_dim)
            objective, references = nca_against(old, x[bank], y[bank], nca_config)
        else:  # as nca, B starting at the kept old block (compat/extension.py)
            objective, references = extended_nca(encoder, old, x[bank], y[bank], classes)
    else:
        raise InvalidInputError(f"method {method!r} is not one of {UPGRADE_METHODS}")
    model = WithReferences(encoder, references) if references else encoder
    train(model, objective, x, y, config, progress)
    bridge = objective.bridge_module()
    assert isinstance(bridge, Adapter)  # every method above trains one; a bug otherwise
    return bridge


def _fit_extension(
    encoder: Encoder,
    old: nn.Module,
    x: Tensor,
    y: Tensor,
    classes: int,
    config: TrainConfig,
    progress: Callable[[int, int], None] | None,
    bank_rows: int,
) -> Adapter:
    """Train the extra dimensions beside the frozen ``old`` (plain classification: the old block
    already keeps the old space), then fit its ``block_step`` bridge on the training inputs."""
    extension_of(encoder, old, EXTEND)
    objective = Classification(ObjectiveConfig(classes=classes, embed_dim=encoder.embed_dim))
    train(encoder, objective, x, y, config, progress)
    rows = _nca_rows(len(x), config.seed, bank_rows)
    return fit_block_step(embed(encoder, x[rows]), embed(old, x[rows]), y[rows], seed=config.seed)


def _nca_rows(n: int, seed: int, limit: int = NCA_ROWS) -> Tensor:
    """A seeded sample of at most ``limit`` of n training rows (all of them, shuffled, if fewer)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]


def train_upgrade(
    ctx: Context, config: UpgradeConfig, data: LabelledImages, report: Report | None = None
) -> dict[str, Any]:
    """Train ``config.new`` (compatibly with ``config.old`` if given) on ``data``; register it,
    its space and its backward adapter. Returns the protocol cells on the held-out split."""
    report = report or (lambda task, done, total: None)
    clock = StageClock()
    old = _old_encoder(ctx, config)
    x, y = (torch.from_numpy(a[: config.train_limit]) for a in (data.train_x, data.train_y))
    torch.manual_seed(config.seed)
    encoder = build_encoder(config.encoder, _with_input_dim(config, data.dim))
    train_config = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed)

    def progress(done: int, total: int) -> None:
        report(f"train {config.new} ({config.method})", done, total)

    with clock("train"):
        if old is None:
            objective = Classification(
                ObjectiveConfig(classes=data.classes, embed_dim=encoder.embed_dim)
            )
            train(encoder, objective, x, y, train_config, progress)
            adapter = None
        else:
            _check_widths(old, x, data)
            if config.method in EXTENDING:
                encoder = ExtendedEncoder.around(old, encoder)
            adapter = fit_compatible(
                encoder,
                old,
                config.method,
                x,
                y,
                data.classes,
                train_config,
                prototypes=config.prototypes,
                progress=progress,
                bank_rows=config.bank_rows,
            )
    with clock("evaluate cells"):
        cells = _cells(old, encoder, adapter, data, config.eval_limit)
    adapter_name = _register(ctx, config, encoder, adapter, cells)
    result: dict[str, Any] = {
        "old": config.old,
        "new": config.new,
        "method": config.method,
        "encoder": config.encoder,
        "dim": encoder.embed_dim,
        "adapter": adapter_name,
        "dataset": data.name,
        "train_rows": len(x),
        "cells": cells,
        "seconds": clock.seconds,
    }
    if config.method in BANKED:
        result["bank_rows"] = min(config.bank_rows, len(x))
    if old is not None:
        result["compatible"] = {
            m: compatible(cells["new/old"][m], cells["old/old"][m]) for m in ("top1", "ap")
        }
    return result


def _register(
    ctx: Context,
    config: UpgradeConfig,
    encoder: Encoder,
    adapter: Adapter | None,
    cells: dict[str, dict[str, float]],
) -> str | None:
    """The new version, its space and (upgrades only) its adapter, in one transaction."""
    metrics = {f"{cell} {m}": v for cell, values in cells.items() for m, v in values.items()}
    with ctx.transaction() as session:
        new_version = versions.register_version(ctx, session, config.new, encoder)
        galleries.create_space(session, new_version)
        if adapter is None or config.old is None:
            return None
        old_version = versions.get_version(session, config.old)
        record = versions.register_adapter(
            ctx, session, adapter, new_version, old_version, metrics=metrics
        )
        return record.name


def _old_encoder(ctx: Context, config: UpgradeConfig) -> Encoder | None:
    """The old version's encoder; refuse early (before any training) a taken new name."""
    with ctx.transaction() as session:
        old = None if config.old is None else versions.get_version(session, config.old)
        taken = session.scalar(select(ModelVersion.id).where(ModelVersion.name == config.new))
        if taken is not None:
            raise ConflictError(
                f"model version {config.new!r} already exists", fix="choose another --new name"
            )
        return None if old is None else versions.load_version_encoder(ctx, old)


def _with_input_dim(config: UpgradeConfig, dim: int) -> dict[str, Any]:
    """The encoder config, its ``input_dim`` filled from the data when the config has one."""
    fields = {f.name for f in dataclasses.fields(ENCODERS.get(config.encoder).config_class)}
    default = {"input_dim": dim} if "input_dim" in fields else {}
    return {**default, **config.encoder_config}


def _check_widths(old: nn.Module, x: Tensor, data: LabelledImages) -> None:
    try:
        embed(old, x[:1])
    except (RuntimeError, InvalidInputError) as e:
        raise InvalidInputError(
            f"the old version's encoder cannot read {data.name} inputs of width {data.dim}",
            fix="train on the data the old version was trained for",
        ) from e


def _cells(
    old: nn.Module | None,
    new: Encoder,
    adapter: Adapter | None,
    data: LabelledImages,
    limit: int | None,
) -> dict[str, dict[str, float]]:
    """old/old, new/old (bridged new queries on the old gallery), new/new on the held-out split."""
    x, labels = torch.from_numpy(data.test_x[:limit]), torch.from_numpy(data.test_y[:limit])
    queries_new = embed(new, x)
    cells = {}
    if old is not None and adapter is not None:
        gallery_old = embed(old, x)
        with torch.no_grad():
            bridged = F.normalize(adapter(queries_new), dim=1)  # (N, d_new) -> (N, d_old)
        cells["old/old"] = self_retrieval_metrics(gallery_old, gallery_old, labels)
        cells["new/old"] = self_retrieval_metrics(bridged, gallery_old, labels)
    cells["new/new"] = self_retrieval_metrics(queries_new, queries_new, labels)
    return cells
