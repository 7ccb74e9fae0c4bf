"""BT² (Zhou et al., ICCV 2023): backward-compatible training with basis transformations.

The encoder emits D = d_new + a dims (a = ``extra_dims`` added dims). Two exactly orthogonal maps
(``torch.nn.utils.parametrizations.orthogonal``, matrix exponential) mix the backbone's features:

    b = (R_c z)[:d_old]     the compatible block, trained to live in the old space
    e = (R_a z)[d_old:]     the added block, free to carry what the old space cannot
    new embedding = [b; e]  (N, D)

L = CE(head([b; e])) + λ2·CE(s·b̂·Pᵀ) + λ3·(1 − cos(φ_old, b)) [+ λ1·(1 − cos(φ′, z[:d_new]))], P = old
class prototypes (unit rows), φ_old = the old model's features of the same inputs, φ′ = an
independently trained new model (teacher), both supplied by ``compat.references.WithReferences``
(old first, then the teacher). Defaults a=32, λ1=1, λ2=10, λ3=5 (the paper's). Serving: the new
space is [b; e]; v2 queries reach the v1 gallery through b alone (:meth:`BT2.bridge_module`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compat.objectives import OBJECTIVES, CosineClassifier, Objective, ObjectiveConfig, Slice
from models.config import check


@dataclasses.dataclass(frozen=True, kw_only=True)
class BT2Config(ObjectiveConfig):
    """``embed_dim`` is the encoder's full width D = d_new + extra_dims."""

    old_dim: int
    extra_dims: int = 32
    teacher_dim: int | None = None  # width of the teacher's features (= D - extra_dims) or None
    teacher_weight: float = 1.0  # λ1
    prototype_weight: float = 10.0  # λ2
    feature_weight: float = 5.0  # λ3

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.extra_dims >= 0, f"extra_dims must be >= 0, got {self.extra_dims}")
        check(
            0 < self.old_dim < self.embed_dim,
            f"BT² needs 0 < old_dim < embed_dim (the added block is non-empty), got {self}",
        )
        check(
            self.teacher_dim in (None, self.embed_dim - self.extra_dims),
            f"teacher_dim must be None or embed_dim - extra_dims = "
            f"{self.embed_dim - self.extra_dims}, got {self.teacher_dim}",
        )
        weights = (self.teacher_weight, self.prototype_weight, self.feature_weight)
        check(min(weights) >= 0, f"loss weights must be >= 0, got {weights}")


def _rotation(dim: int) -> nn.Module:
    """A (dim, dim) exactly orthogonal map; matrix_exp of a skew matrix, identity at init."""
    linear = nn.utils.parametrizations.orthogonal(
        nn.Linear(dim, dim, bias=False), orthogonal_map="matrix_exp"
    )
    with torch.no_grad():  # through the parametrization's right_inverse: exactly I afterwards,
        linear.weight = torch.eye(dim)  # so training starts from the backbone's own basis
    return linear


class _Blocks(nn.Module):
    """z (N, D) -> [b; e] (N, D): the compatible block from one rotation, the added one from the other."""

    def __init__(self, compatible: nn.Module, added: nn.Module, old_dim: int) -> None:
        super().__init__()
        self.compatible, self.added, self.old_dim = compatible, added, old_dim

    def forward(self, z: Tensor) -> Tensor:
        b = self.compatible(z)[:, : self.old_dim]  # (N, d_old)
        e = self.added(z)[:, self.old_dim :]  # (N, D - d_old)
        return torch.cat([b, e], dim=1)


@OBJECTIVES.register("bt2")
class BT2(Objective):
    key = "bt2"
    prototypes: Tensor  # (classes, old_dim) unit rows, a buffer

    def __init__(self, config: BT2Config, prototypes: Tensor) -> None:
        super().__init__()
        check(
            tuple(prototypes.shape) == (config.classes, config.old_dim),
            f"old prototypes must be ({config.classes}, {config.old_dim}), got {tuple(prototypes.shape)}",
        )
        self.config = config
        self.rotate_compatible = _rotation(config.embed_dim)  # R_c
        self.rotate_added = _rotation(config.embed_dim)  # R_a
        self.blocks = _Blocks(self.rotate_compatible, self.rotate_added, config.old_dim)
        self.head = CosineClassifier(config.embed_dim, config.classes, config.scale)
        self.register_buffer("prototypes", F.normalize(prototypes.detach().float(), dim=1))

    def reference_dims(self) -> tuple[int, ...]:
        teacher = () if self.config.teacher_dim is None else (self.config.teacher_dim,)
        return (self.config.old_dim, *teacher)

    def embedding(self) -> nn.Module:
        return self.blocks

    def bridge_module(self) -> nn.Module:
        return nn.Sequential(self.rotate_compatible, Slice(0, self.config.old_dim))

    def loss(self, features: Tensor, labels: Tensor) -> Tensor:
        c, smoothing = self.config, self.config.label_smoothing
        z, refs = self.split(features)  # (N, D), [(N, d_old), ((N, d_new))]
        new = self.blocks(z)
        b = F.normalize(new[:, : c.old_dim], dim=1)
        loss = self._ce(self.head(new), labels, smoothing)
        loss = loss + c.prototype_weight * self._ce(
            c.scale * b @ self.prototypes.T, labels, smoothing
        )
        loss = loss + c.feature_weight * (1 - (b * refs[0]).sum(dim=1)).mean()
        if c.teacher_dim is not None:
            backbone = F.normalize(z[:, : c.teacher_dim], dim=1)
            loss = loss + c.teacher_weight * (1 - (backbone * refs[1]).sum(dim=1)).mean()
        return loss
