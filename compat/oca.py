"""OCA (Biondi et al. 2023): compatible training with an orthogonal layer and expanded dimensions.

The encoder emits D = d_old + k dims; an exactly orthogonal layer with bias maps them to b′ (N, D)
before a free (learned) classifier. The compatible part is b′'s first d_old dims, c = b′[:d_old]:

    L = w_ce·LS-CE(head(b′)) + w_proto·LS-CE(s·ĉ·Pᵀ) + w_cos·(1 − cos(P_y, c))

with P the old model's class prototypes (unit rows). Defaults k=32, weights 5, 10, 5 (the paper's).
New space: b′ (:meth:`OCA.embedding`); old space: its first d_old dims, cut by an explicit
:class:`compat.objectives.Slice`. As methods.md notes, the orthogonal layer sits before a free
classifier and adds no capacity of its own; it is kept for fidelity.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from compat.objectives import OBJECTIVES, CosineClassifier, Objective, ObjectiveConfig, Slice
from models.config import check


@dataclasses.dataclass(frozen=True, kw_only=True)
class OCAConfig(ObjectiveConfig):
    """``embed_dim`` is the encoder's width D = old_dim + k (k = 32 in the paper)."""

    old_dim: int
    ce_weight: float = 5.0
    prototype_weight: float = 10.0
    cosine_weight: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.old_dim < self.embed_dim, f"OCA needs 0 < old_dim < embed_dim, got {self}")
        weights = (self.ce_weight, self.prototype_weight, self.cosine_weight)
        check(min(weights) >= 0, f"loss weights must be >= 0, got {weights}")

    @property
    def k(self) -> int:
        return self.embed_dim - self.old_dim


@OBJECTIVES.register("oca")
class OCA(Objective):
    key = "oca"
    prototypes: Tensor  # (classes, old_dim) unit rows, a buffer

    def __init__(self, config: OCAConfig, prototypes: Tensor) -> None:
        super().__init__()
        check(
            tuple(prototypes.shape) == (config.classes, config.old_dim),
            f"old prototypes must be ({config.classes}, {config.old_dim}), got {tuple(prototypes.shape)}",
        )
        self.config = config
        linear = nn.Linear(config.embed_dim, config.embed_dim, bias=True)
        self.orthogonal = nn.utils.parametrizations.orthogonal(linear, orthogonal_map="matrix_exp")
        self.head = CosineClassifier(config.embed_dim, config.classes, config.scale)
        self.register_buffer("prototypes", F.normalize(prototypes.detach().float(), dim=1))

    def embedding(self) -> nn.Module:
        return self.orthogonal

    def bridge_module(self) -> nn.Module:
        return nn.Sequential(self.orthogonal, Slice(0, self.config.old_dim))

    def loss(self, features: Tensor, labels: Tensor) -> Tensor:
        c, smoothing = self.config, self.config.label_smoothing
        mapped = self.orthogonal(features)  # (N, D)
        compat = F.normalize(mapped[:, : c.old_dim], dim=1)  # (N, d_old)
        new_ce = self._ce(self.head(mapped), labels, smoothing)
        proto_ce = self._ce(c.scale * compat @ self.prototypes.T, labels, smoothing)
        cosine = (1 - (compat * self.prototypes[labels]).sum(dim=1)).mean()
        return c.ce_weight * new_ce + c.prototype_weight * proto_ce + c.cosine_weight * cosine
