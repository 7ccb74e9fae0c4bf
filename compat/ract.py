"""RACT (Zhang et al., Hot-Refresh, ICLR 2022): regression-alleviating compatible training.

L = CE(head(φ_new)) + λ·InfoNCE, with, for each new feature n_i (bridged into the old space when the
widths differ, through a jointly trained backward adapter as in BCT) and the frozen old feature o_i
of the same input (``compat.references.WithReferences``):

    InfoNCE_i = −log exp(⟨n_i, o_i⟩/τ) / (exp(⟨n_i, o_i⟩/τ) + Σ_{j: y_j≠y_i} exp(⟨n_i, o_j⟩/τ)
                                                          + Σ_{j: y_j≠y_i} exp(⟨n_i, n_j⟩/τ))

all vectors unit-norm, τ = 0.01. Negatives of other classes only, in both the old and new space.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compat.adapters import Adapter, AdapterConfig, build_adapter, with_penalty
from compat.objectives import OBJECTIVES, CosineClassifier, Objective, ObjectiveConfig
from models.config import check


@dataclasses.dataclass(frozen=True, kw_only=True)
class RACTConfig(ObjectiveConfig):
    old_dim: int
    tau: float = 0.01
    weight: float = 1.0  # λ
    adapter: str = "orthogonal"  # the backward map, used only when embed_dim != old_dim

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.old_dim > 0 and self.tau > 0 and self.weight >= 0, f"bad RACT config {self}")


def ract_infonce(new: Tensor, old: Tensor, labels: Tensor, tau: float) -> Tensor:
    """Mean InfoNCE above: new (N, d), old (N, d) unit rows, labels (N,) -> scalar."""
    other = labels[:, None] != labels[None, :]  # (N, N) the admissible negatives
    positive = (new * old).sum(dim=1, keepdim=True) / tau  # (N, 1)
    to_old = (new @ old.T / tau).masked_fill(~other, float("-inf"))
    to_new = (new @ new.T / tau).masked_fill(~other, float("-inf"))
    logits = torch.cat([positive, to_old, to_new], dim=1)  # (N, 1 + 2N)
    return (logits.logsumexp(dim=1) - positive[:, 0]).mean()


@OBJECTIVES.register("ract")
class RACT(Objective):
    key = "ract"
    head: CosineClassifier

    def __init__(self, config: RACTConfig) -> None:
        super().__init__()
        self.config = config
        self.head = CosineClassifier(config.embed_dim, config.classes, config.scale)
        self.adapter: Adapter | None = None
        if config.embed_dim != config.old_dim:
            adapter_config = AdapterConfig(dim_in=config.embed_dim, dim_out=config.old_dim)
            self.adapter = build_adapter(config.adapter, adapter_config)

    def reference_dims(self) -> tuple[int, ...]:
        return (self.config.old_dim,)

    def bridge_module(self) -> nn.Module | None:
        return self.adapter

    def loss(self, features: Tensor, labels: Tensor) -> Tensor:
        c = self.config
        own, (old,) = self.split(features)
        bridged = own if self.adapter is None else self.adapter(own)
        contrast = ract_infonce(F.normalize(bridged, dim=1), old, labels, c.tau)
        loss = self._ce(self.head(own), labels, c.label_smoothing) + c.weight * contrast
        return with_penalty(loss, self.adapter)
