"""An affine adapter trained for retrieval, not regression: in-batch InfoNCE instead of MSE.

MSE pulls each mapped source towards its own target but says nothing about the other targets; a
retrieval bridge fails when a mapped query lands nearer someone else's vector. ``contrastive_affine``
trains B(x) = xW + b so that every mapped source ranks its own target first among the batch's
targets (cosine / temperature, cross-entropy over the batch), optionally also the other way
round (each target ranks its own source first), with an optional orthogonality penalty
‖WWᵀ − I‖_F (weight ``orthogonality``; 0 = off) and an optional MSE term (weight ``mse``).

Pairs whose targets are the same vector (one definition paired with two texts) are not each
other's negatives: duplicates are masked out of the batch's logits. One projection plus bias once
trained, so it serves through ``kernels.project`` like the other linear adapters; it starts from
the closed-form Procrustes fit (``init="procrustes"``).

``contrastive_residual`` is the nonlinear form: B(x) = xW + b + MLP(x), the same loss, the MLP's
last layer starting at zero (so training starts at the Procrustes map). It is not one projection:
``serving_form()`` is None and it serves through its module (``Adapter.bridge()``), as
``residual_mlp`` does. ``learn_temperature`` makes τ a trained parameter (log-parametrised,
starting at ``temperature``) for either adapter.

Soft targets from the new model (``distill`` > 0): the one-hot InfoNCE target teaches the map to
emulate the old model text by text, which at best reproduces old/old retrieval. The source
vectors are the new model's own, so the batch also carries the new model's view of which targets
belong together: softmax_j(cos(x_i, x_j) / ``distill_temperature``) over the batch. ``distill``
weighs a cross-entropy from those soft targets to the mapped rows' batch logits, so a bridged
query ranks old vectors as the new model would rank the same texts. No labels: only the anchor
texts, embedded by both models, as before.

More negatives than the batch (compat/negative_bank.py): the targets are frozen old vectors, so a
bank of every distinct training target is exact. ``negatives`` draws that many bank rows per step
(shared by the batch), ``hard_negatives`` draws that many per batch row from its own target's
old-space cluster (``clusters`` k-means clusters; 0 = about √bank). Both only add negatives to the
mapped-query direction, the one retrieval uses; the bank lives for the fit and is not saved.
"""

from __future__ import annotations

import dataclasses
import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compat.adapters import ADAPTERS, Adapter, AdapterConfig, ServingForm, squared_distance
from compat.linear_adapters import (
    Init,
    affine_serving_form,
    identity_linear,
    load_procrustes,
    orthogonality_gap,
)
from compat.mlp_adapters import _mlp
from compat.negative_bank import NegativeBank
from models.config import check


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContrastiveConfig(AdapterConfig):
    temperature: float = 0.05
    symmetric: bool = True  # also each target must rank its own mapped source first
    orthogonality: float = 0.0  # weight of ‖WWᵀ − I‖_F; 0: a free affine map
    mse: float = 0.0  # weight of the squared distance to the own target; 0: InfoNCE alone
    init: Init = "procrustes"
    learn_temperature: bool = False  # τ trained with the map, starting at ``temperature``
    negatives: int = 0  # bank rows drawn per step as extra negatives for the whole batch
    hard_negatives: int = 0  # bank rows per batch row from its own target's old-space cluster
    clusters: int = 0  # k-means clusters of the bank for hard_negatives; 0: about sqrt(bank)
    distill: float = 0.0  # weight of the soft-target term (the new model's in-batch similarities)
    distill_temperature: float = 0.05  # sharpness of those soft targets

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(self.orthogonality >= 0, f"orthogonality must be >= 0, got {self.orthogonality}")
        check(self.mse >= 0, f"mse must be >= 0, got {self.mse}")
        check(self.init in ("procrustes", "identity"), "init must be procrustes|identity")
        check(self.distill >= 0, f"distill must be >= 0, got {self.distill}")
        check(
            self.distill_temperature > 0,
            f"distill_temperature must be > 0, got {self.distill_temperature}",
        )
        for name in ("negatives", "hard_negatives", "clusters"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")


def in_batch_info_nce(
    mapped: Tensor,
    target: Tensor,
    temperature: float | Tensor,
    *,
    symmetric: bool = True,
    extra: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of row i picking target i among the batch's targets: (B, d), (B, d) -> ().

    Targets identical to row i's own (duplicated pairs) are masked out as negatives. ``extra``
    (K, d): more negative targets for every mapped row (a bank), masked the same way.
    """
    m, t = F.normalize(mapped, dim=1), F.normalize(target, dim=1)
    logits = m @ t.T / temperature  # (B, B)
    with torch.no_grad():
        same = (t @ t.T > 1 - 1e-6) & ~torch.eye(len(t), dtype=torch.bool, device=t.device)
    logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(m), device=m.device)
    forward = logits
    if extra is not None:
        e = F.normalize(extra, dim=1)
        with torch.no_grad():
            own = t @ e.T > 1 - 1e-6  # (B, K): a bank row that is row i's own target
        forward = torch.cat([logits, (m @ e.T / temperature).masked_fill(own, float("-inf"))], 1)
    loss = F.cross_entropy(forward, labels)
    if symmetric:  # the mask is symmetric, so the transpose masks the same duplicates
        loss = (loss + F.cross_entropy(logits.T, labels)) / 2
    return loss


def soft_target_loss(
    source: Tensor, mapped: Tensor, target: Tensor, temperature: float | Tensor, soft: float
) -> Tensor:
    """Cross-entropy from the source space's in-batch similarities to the mapped rows' logits.

    (B, d_in), (B, d_out), (B, d_out) -> (). Row i's target distribution is softmax_j(cos(x_i,
    x_j) / soft); its prediction is softmax_j(cos(mapped_i, y_j) / temperature). Duplicated
    targets (the same y twice) get their soft mass merged onto row i's own column.
    """
    x, m, t = (F.normalize(v, dim=1) for v in (source, mapped, target))
    with torch.no_grad():
        p = torch.softmax(x @ x.T / soft, dim=1)  # (B, B)
        same = (t @ t.T > 1 - 1e-6) & ~torch.eye(len(t), dtype=torch.bool, device=t.device)
        p = p + torch.diag((p * same).sum(1))  # a duplicate's mass goes to the own column
        p = p.masked_fill(same, 0.0)
    logits = (m @ t.T / temperature).masked_fill(same, float("-inf"))  # (B, B)
    log_q = torch.log_softmax(logits, dim=1).masked_fill(same, 0.0)
    return -(p * log_q).sum(1).mean()


@ADAPTERS.register("contrastive_affine")
class ContrastiveAffineAdapter(Adapter):
    """B(x) = xW + b trained with in-batch InfoNCE (+ optional orthogonality and MSE terms)."""

    key = "contrastive_affine"
    config_class = ContrastiveConfig
    config: ContrastiveConfig

    def __init__(self, config: ContrastiveConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = identity_linear(config.dim_in, config.dim_out)
        # log τ: a parameter only when learned, so a fixed-τ artifact keeps its old state dict
        log_tau = torch.tensor(math.log(config.temperature))
        self.log_tau = nn.Parameter(log_tau) if config.learn_temperature else None
        self.bank: NegativeBank | None = None  # built by prepare() when negatives are asked for

    def tau(self) -> float | Tensor:
        """The InfoNCE temperature: the config's, or the learned one (clamped to [1e-3, 1])."""
        if self.log_tau is None:
            return self.config.temperature
        return self.log_tau.clamp(math.log(1e-3), 0.0).exp()

    def forward(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        return self.linear(x)

    def prepare(self, x: Tensor, y: Tensor) -> None:
        c = self.config
        if c.init == "procrustes":
            load_procrustes(self.linear, x, y)
        if c.negatives or c.hard_negatives:
            self.bank = NegativeBank(y, clusters=c.clusters)

    def bank_negatives(self, y: Tensor) -> Tensor | None:
        """(B, d_out) batch targets -> (K, d_out) extra negatives from the bank, or None."""
        c = self.config
        if self.bank is None:
            return None
        parts = [self.bank.uniform(c.negatives)] if c.negatives else []
        if c.hard_negatives:
            parts.append(self.bank.near(y, c.hard_negatives))
        return torch.cat(parts)

    def training_loss(self, x: Tensor, y: Tensor, labels: Tensor | None = None) -> Tensor:
        c = self.config
        mapped = self(x)  # (B, dim_out)
        loss = in_batch_info_nce(
            mapped, y, self.tau(), symmetric=c.symmetric, extra=self.bank_negatives(y)
        )
        if c.distill > 0:
            soft = soft_target_loss(x, mapped, y, self.tau(), c.distill_temperature)
            loss = loss + c.distill * soft
        if c.mse > 0:
            loss = loss + c.mse * squared_distance(mapped, y)
        if c.orthogonality > 0:
            loss = loss + c.orthogonality * orthogonality_gap(self.linear.weight)
        return loss

    def serving_form(self) -> ServingForm | None:  # None in the nonlinear subclass
        return affine_serving_form(self.linear)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContrastiveResidualConfig(ContrastiveConfig):
    hidden: int = 512
    depth: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}")
        check(self.depth >= 1, f"depth must be >= 1, got {self.depth}")


@ADAPTERS.register("contrastive_residual")
class ContrastiveResidualAdapter(ContrastiveAffineAdapter):
    """B(x) = xW + b + MLP(x) trained with in-batch InfoNCE; the MLP starts at zero."""

    key = "contrastive_residual"
    config_class = ContrastiveResidualConfig
    config: ContrastiveResidualConfig

    def __init__(self, config: ContrastiveResidualConfig) -> None:
        super().__init__(config)
        self.mlp = _mlp(config.dim_in, config.hidden, config.dim_out, config.depth)
        last = cast(nn.Linear, self.mlp[-1])  # _mlp ends with a Linear
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        return self.linear(x) + self.mlp(x)

    def serving_form(self) -> None:
        return None
