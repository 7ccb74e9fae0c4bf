"""Bridging a version that extends its predecessor (models/extended.py), after or while training.

After: a ``block_step`` (compat/step_adapter.py) whose α is chosen on held-out pairs. While:
``nca_extended``, nca's objective with a λ-orth B that starts as the identity, i.e. reads the kept
old block, and is trained with the extra dimensions; one affine map, so it serves as a projection.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compat.fitting import FitOptions, fit_adapter, split_rows
from compat.metrics import self_retrieval_metrics
from compat.nca_objective import NCA, NCAConfig, nca_against
from compat.step_adapter import BlockStepAdapter
from kernels.errors import InvalidInputError
from models.extended import ExtendedEncoder

NCA_EXTENDED = "nca_extended"

# From the block alone (0) to the label-aware map (1); the protocol's chains chose 0.3-0.7, its
# extend+posthoc row 0.7-1 (docs/results/compat.md, stop 22)
STEPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)


def fit_block_step(
    source: Tensor,
    target: Tensor,
    labels: Tensor,
    *,
    seed: int = 0,
    options: FitOptions | None = None,
) -> BlockStepAdapter:
    """Fit the bridge of an extended version: source (N, d_new) its vectors of the training items,
    target (N, d_old) the predecessor's, labels (N,) their classes. α is chosen on a seeded fifth
    of the pairs (:func:`compat.fitting.split_rows`, the map fitted on the rest) by class top-1,
    then mAP, ties to the smaller step; the map is then refitted on all pairs with that α."""

    def fitted(rows: Tensor, step: float = 1.0) -> BlockStepAdapter:
        adapter = fit_adapter(
            "block_step",
            source[rows],
            target[rows],
            direction="backward",
            seed=seed,
            options=options,
            labels=labels[rows],
            config={"step": step},
        ).adapter
        assert isinstance(adapter, BlockStepAdapter)  # the registered class; a bug otherwise
        return adapter

    held, kept = split_rows(len(source), seed)
    probe = fitted(kept)

    def score(step: float) -> tuple[float, float, float]:
        with torch.no_grad():
            queries = probe.stepped(source[held], step)
        m = self_retrieval_metrics(queries, target[held], labels[held])
        return round(m["top1"], 6), round(m["ap"], 6), -step

    return fitted(torch.arange(len(source)), max(STEPS, key=score))


def extended_nca(
    encoder: nn.Module, old: nn.Module, x: Tensor, y: Tensor, classes: int
) -> tuple[NCA, list[nn.Module]]:
    """``nca_extended``'s objective for ``encoder``, an :class:`ExtendedEncoder` around ``old``,
    and the reference models its loss needs (x (N, ...) training inputs, y (N,) their classes)."""
    extended = extension_of(encoder, old, NCA_EXTENDED)
    config = NCAConfig(
        classes=classes,
        embed_dim=extended.embed_dim,
        old_dim=extended.previous.embed_dim,
        adapter="lambda_orthogonal",  # starts as the rectangular identity: B reads the old block
    )
    return nca_against(old, x, y, config)


def extension_of(encoder: nn.Module, old: nn.Module, method: str) -> ExtendedEncoder:
    """``encoder`` if it is an :class:`ExtendedEncoder` around ``old``; ``method`` trains no other."""
    if not (isinstance(encoder, ExtendedEncoder) and encoder.previous is old):
        raise InvalidInputError(
            f"method {method!r} trains an ExtendedEncoder around the old encoder"
        )
    return encoder
