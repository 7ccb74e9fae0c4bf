"""Gradient-trained linear adapters: λ-orthogonal affine and low-rank affine (Drift-Adapter).

Both are one projection plus bias once trained, so both serve through ``kernels.project``. Both can
start from the closed-form Procrustes fit (``init="procrustes"``, the default): a few epochs then
refine the best rotation instead of first having to find it from noise.

λ-orth's optional supervised terms use the training items' class labels (passed by
:func:`compat.fitting.fit_adapter`): mapped new vectors must land among same-class *old* vectors
(cross-model supervised contrastive) and among each other (new→new). Two registered variants
switch them on and cannot be fitted without labels:

- ``lambda_orthogonal_supcon``: the paper's terms, SupCon in-batch, τ = 0.1;
- ``lambda_orthogonal_nca`` (ours): the cross-model term as NCA (−log of the softmax mass on
  same-class old vectors, i.e. the leave-nothing-out kNN objective) over a bank of *every* old
  training vector, sharp τ = 0.02. SupCon pulls a query towards all of its class (its mean); top-1
  only needs one same-class old vector nearest, which NCA at a low temperature asks for.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compat.adapters import ADAPTERS, Adapter, AdapterConfig, ServingForm
from compat.solvers import procrustes_map
from kernels.errors import InvalidInputError
from models.config import check

Init = Literal["procrustes", "identity"]
SupervisedForm = Literal["supcon", "nca"]
LAMBDA_AT_512 = 12.0  # λ-orth's tolerance for 512-d maps; scaled ∝ √d for other widths


def _procrustes_init(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(R (dim_in, dim_out), b (dim_out,)) with y ≈ xR + b: the centred Procrustes fit."""
    mx, my = x.double().mean(dim=0), y.double().mean(dim=0)
    r = procrustes_map(x.double() - mx, y.double() - my)
    return r.float(), (my - mx @ r).float()


def identity_linear(dim_in: int, dim_out: int) -> nn.Linear:
    """An nn.Linear that starts as the (rectangular) identity with zero bias."""
    linear = nn.Linear(dim_in, dim_out)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(dim_out, dim_in))
        linear.bias.zero_()
    return linear


def affine_serving_form(linear: nn.Linear) -> ServingForm:
    """The serving form of a free affine map held in ``linear``: x W + b, rows re-normalised."""
    weight = linear.weight.detach().T.contiguous()  # (dim_in, dim_out)
    return ServingForm(weight=weight, bias=linear.bias.detach().clone(), normalize=True)


def load_procrustes(linear: nn.Linear, x: Tensor, y: Tensor) -> None:
    """Set ``linear`` to the centred Procrustes fit of y ≈ x R + b (the free maps' start)."""
    r, b = _procrustes_init(x, y)
    with torch.no_grad():
        linear.weight.copy_(r.T)  # nn.Linear stores (dim_out, dim_in)
        linear.bias.copy_(b)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LambdaOrthogonalConfig(AdapterConfig):
    lam: float | None = None  # None: 12·√(m/512), m = min(dim_in, dim_out), the Gram's size
    alpha: float = 10.0  # sharpness of the gate σ(α(‖WWᵀ−I‖_F − λ)); ours, not from the paper
    init: Init = "procrustes"
    mse: float = 1.0  # weight of ‖B(h_src) − h_tgt‖²
    # λ-orth's supervised terms (weights; 0 = off; either > 0 needs labels): SupCon with anchors
    # B(h_new_i) and positives the same-class old vectors h_old_j of the batch (cross-model), and
    # among the mapped vectors themselves (new→new).
    supervised: float = 0.0
    supervised_new: float = 0.0
    temperature: float = 0.1  # of both supervised terms (cosine / τ)
    supervised_form: SupervisedForm = "supcon"  # of the cross-model term; new→new is SupCon
    bank: bool = False  # cross-model candidates: every training target, not only the batch's

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.lam is None or self.lam >= 0, f"lam must be >= 0, got {self.lam}")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        check(self.init in ("procrustes", "identity"), "init must be procrustes|identity")
        weights = (self.mse, self.supervised, self.supervised_new)
        check(min(weights) >= 0, f"mse, supervised, supervised_new must be >= 0: {self}")
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        forms = get_args(SupervisedForm)
        check(self.supervised_form in forms, f"supervised_form must be one of {forms}")

    @property
    def needs_labels(self) -> bool:
        return self.supervised > 0 or self.supervised_new > 0

    @property
    def tolerance(self) -> float:
        """λ in effect: the configured one, or 12 at 512-d scaled by √(m/512)."""
        if self.lam is not None:
            return self.lam
        return LAMBDA_AT_512 * math.sqrt(min(self.dim_in, self.dim_out) / 512)


def supervised_contrastive(
    anchors: Tensor,
    candidates: Tensor,
    same: Tensor,
    temperature: float,
    exclude: Tensor | None = None,
) -> Tensor:
    """SupCon (Khosla et al. 2020): anchors (B, d), candidates (C, d), same (B, C) bool -> ().

    Loss of anchor i: −mean over positives p (same[i, p]) of log softmax_c(cos(a_i, c) / τ)[p],
    the softmax over every candidate not in ``exclude`` (B, C) (e.g. the anchor itself); the mean
    is over anchors with at least one positive.
    """
    logits = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).T / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
        same = same & ~exclude
    log_prob = logits.log_softmax(dim=1).masked_fill(~same, 0.0)  # (B, C), no -inf left
    counts = same.sum(dim=1)  # (B,)
    has = counts > 0
    if not bool(has.any()):
        return anchors.sum() * 0.0  # no positive pair in the batch: nothing to learn, still a graph
    return -(log_prob.sum(dim=1)[has] / counts[has]).mean()


def neighbourhood_loss(
    anchors: Tensor, candidates: Tensor, same: Tensor, temperature: float
) -> Tensor:
    """NCA (Goldberger et al. 2004): −mean_i log Σ_{p: same[i, p]} softmax_c(cos(a_i, c) / τ)[p].

    anchors (B, d), candidates (C, d), same (B, C) bool -> (); anchors without a positive are
    left out. At a low τ it rewards the nearest candidate being same-class, which is CMC top-1.
    """
    logits = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).T / temperature
    has = same.any(dim=1)
    if not bool(has.any()):
        return anchors.sum() * 0.0
    positive = torch.logsumexp(logits.masked_fill(~same, float("-inf"))[has], dim=1)
    return (torch.logsumexp(logits[has], dim=1) - positive).mean()


def orthogonality_gap(weight: Tensor) -> Tensor:
    """‖WWᵀ − I‖_F on the smaller side of W (dim_out, dim_in): 0 iff rows or columns are orthonormal."""
    w = weight if weight.shape[0] <= weight.shape[1] else weight.T  # (m, M), m <= M
    gram = w @ w.T  # (m, m)
    return torch.linalg.matrix_norm(gram - torch.eye(len(gram), dtype=gram.dtype))


@ADAPTERS.register("lambda_orthogonal")
class LambdaOrthogonalAdapter(Adapter):
    """λ-orthogonal affine map B(h) = W h + b: free, pulled towards orthogonality only past λ.

    Loss: ‖B(h_src) − h_tgt‖² + σ(α(‖WWᵀ−I‖_F − λ))·‖WWᵀ−I‖_F. The gate leaves W free while it is
    within λ of orthogonal (so it can fix what a rotation cannot) and switches the penalty on
    beyond; λ = 0 asks for (nearly) orthogonal, a huge λ gives a plain affine fit. With labels,
    the paper's supervised terms are added (config ``supervised`` / ``supervised_new``): MSE
    alone reproduces the old model's mistakes; the supervised terms ask for what retrieval
    measures, a mapped query among same-class old gallery vectors.
    """

    key = "lambda_orthogonal"
    config_class = LambdaOrthogonalConfig
    config: LambdaOrthogonalConfig

    def __init__(self, config: LambdaOrthogonalConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = identity_linear(config.dim_in, config.dim_out)
        # (targets (N, d_out), labels (N,)) of the whole fit, set by prepare_labels; never saved
        self._bank: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        return self.linear(x)

    def penalty(self) -> Tensor:
        gap = orthogonality_gap(self.linear.weight)
        gate = torch.sigmoid(self.config.alpha * (gap - self.config.tolerance))
        return gate * gap

    def prepare(self, x: Tensor, y: Tensor) -> None:
        if self.config.init == "procrustes":
            load_procrustes(self.linear, x, y)

    def prepare_labels(self, y: Tensor, labels: Tensor) -> None:
        """See every training target (N, dim_out) and its label once: the bank, with ``bank``."""
        self._bank = (y.detach(), labels) if self.config.bank else None

    def training_loss(self, x: Tensor, y: Tensor, labels: Tensor | None = None) -> Tensor:
        """x (B, dim_in) new, y (B, dim_out) old, labels (B,) int or None."""
        c = self.config
        mapped = self(x)  # (B, dim_out)
        loss = c.mse * (mapped - y).pow(2).sum(dim=1).mean() + self.penalty()
        if not c.needs_labels:
            return loss
        if labels is None:
            raise InvalidInputError(
                f"adapter {self.key!r} has supervised terms (supervised={c.supervised}, "
                f"supervised_new={c.supervised_new}) and needs the pairs' class labels",
                fix="pass labels= to fit_adapter / select_adapter, or set both weights to 0",
            )
        same = labels[:, None] == labels[None, :]  # (B, B): item j is a positive of anchor i
        if c.supervised > 0:
            loss = loss + c.supervised * self._cross_model(mapped, y, labels, same)
        if c.supervised_new > 0:
            own = torch.eye(len(mapped), dtype=torch.bool, device=mapped.device)
            new_new = supervised_contrastive(mapped, mapped, same, c.temperature, exclude=own)
            loss = loss + c.supervised_new * new_new
        return loss

    def _cross_model(self, mapped: Tensor, y: Tensor, labels: Tensor, same: Tensor) -> Tensor:
        """Mapped new vectors (B, d_out) against old candidates: the batch's, or the whole bank."""
        c = self.config
        if self._bank is not None:
            y, bank_labels = self._bank  # (N, d_out), (N,)
            same = labels[:, None] == bank_labels[None, :]  # (B, N)
        if c.supervised_form == "nca":
            return neighbourhood_loss(mapped, y, same, c.temperature)
        return supervised_contrastive(mapped, y, same, c.temperature)

    def serving_form(self) -> ServingForm:
        return affine_serving_form(self.linear)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SupervisedLambdaOrthogonalConfig(LambdaOrthogonalConfig):
    supervised: float = 1.0
    supervised_new: float = 1.0


@ADAPTERS.register("lambda_orthogonal_supcon")
class SupervisedLambdaOrthogonalAdapter(LambdaOrthogonalAdapter):
    """``lambda_orthogonal`` with both supervised terms on by default: needs labelled pairs."""

    key = "lambda_orthogonal_supcon"
    config_class = SupervisedLambdaOrthogonalConfig
    config: SupervisedLambdaOrthogonalConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class LowRankAffineConfig(AdapterConfig):
    rank: int = 64  # capped at min(dim_in, dim_out)
    init: Init = "procrustes"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        check(self.init in ("procrustes", "identity"), "init must be procrustes|identity")


@ADAPTERS.register("low_rank_affine")
class LowRankAffineAdapter(Adapter):
    """y = x(W₀ + ABᵀ) + b: a fixed base W₀ plus a trained rank-r correction (Drift-Adapter).

    W₀ is the (rectangular) identity, or with ``init="procrustes"`` the closed-form rotation set by
    :meth:`prepare`; identity only makes sense between spaces whose coordinates correspond (a
    fine-tuned successor), not between unrelated encoders. B starts at zero, so training starts at
    W₀ exactly.
    """

    key = "low_rank_affine"
    config_class = LowRankAffineConfig
    config: LowRankAffineConfig
    base: Tensor  # (dim_in, dim_out), a buffer: saved, never trained

    def __init__(self, config: LowRankAffineConfig) -> None:
        super().__init__()
        self.config = config
        rank = min(config.rank, config.dim_in, config.dim_out)
        self.register_buffer("base", torch.eye(config.dim_in, config.dim_out))
        self.a = nn.Parameter(torch.randn(config.dim_in, rank) / math.sqrt(config.dim_in))
        self.b = nn.Parameter(torch.zeros(config.dim_out, rank))
        self.bias = nn.Parameter(torch.zeros(config.dim_out))

    def weight(self) -> Tensor:
        return self.base + self.a @ self.b.T  # (dim_in, r) @ (r, dim_out) -> (dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        # x(W₀ + ABᵀ) = xW₀ + (xA)Bᵀ: never forms the dense correction while training
        return x @ self.base + (x @ self.a) @ self.b.T + self.bias

    def prepare(self, x: Tensor, y: Tensor) -> None:
        if self.config.init == "procrustes":
            r, b = _procrustes_init(x, y)
            with torch.no_grad():
                self.base.copy_(r)
                self.bias.copy_(b)

    def serving_form(self) -> ServingForm:
        with torch.no_grad():
            weight = self.weight().contiguous()
        return ServingForm(weight=weight, bias=self.bias.detach().clone(), normalize=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NeighbourhoodLambdaOrthogonalConfig(LambdaOrthogonalConfig):
    supervised: float = 1.0
    supervised_form: SupervisedForm = "nca"
    bank: bool = True
    temperature: float = 0.02  # chosen on held-out training images (docs/results/compat.md)


@ADAPTERS.register("lambda_orthogonal_nca")
class NeighbourhoodLambdaOrthogonalAdapter(LambdaOrthogonalAdapter):
    """``lambda_orthogonal`` + NCA of mapped new vectors over every old training vector (ours)."""

    key = "lambda_orthogonal_nca"
    config_class = NeighbourhoodLambdaOrthogonalConfig
    config: NeighbourhoodLambdaOrthogonalConfig
