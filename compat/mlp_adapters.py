"""Nonlinear adapters: residual MLP (Drift-Adapter), its label-aware NCA variant (ours) and the
FCT / FastFill forward MLP.

Neither is one projection, so ``serving_form()`` is None and they serve through their module
(``Adapter.bridge()``), which L2-normalizes the output rows.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, cast

import torch
from torch import Tensor, nn

from compat.adapters import ADAPTERS, Adapter, AdapterConfig, Direction
from compat.label_terms import LabelAwareAdapter, LabelTermsConfig, MSEOn, SupervisedForm
from compat.solvers import procrustes_map
from kernels.errors import InvalidInputError
from models.config import check


def _mlp(dim_in: int, hidden: int, dim_out: int, depth: int) -> nn.Sequential:
    """depth hidden layers of GELU(Linear); a Linear to dim_out last."""
    layers: list[nn.Module] = []
    width = dim_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    layers.append(nn.Linear(width, dim_out))
    return nn.Sequential(*layers)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResidualMLPConfig(AdapterConfig):
    hidden: int | None = None  # None: max(dim_in, dim_out)
    depth: int = 1
    skip: Literal["auto", "identity", "linear"] = "auto"  # auto: identity iff the widths match
    skip_init: Literal["procrustes", "identity"] = "procrustes"  # of a linear skip

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.skip in ("auto", "identity", "linear"), "skip must be auto|identity|linear")
        check(
            self.skip != "identity" or self.dim_in == self.dim_out,
            f"an identity skip needs dim_in == dim_out, got {self.dim_in}->{self.dim_out}",
        )
        check(self.hidden is None or self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}")
        check(self.depth >= 1, f"depth must be >= 1, got {self.depth}")
        check(self.skip_init in ("procrustes", "identity"), "skip_init: procrustes|identity")


@ADAPTERS.register("residual_mlp")
class ResidualMLPAdapter(Adapter):
    """y = skip(x) + MLP(x) (Drift-Adapter): skip is the identity (x + MLP(x)) or a trained linear map.

    ``skip="auto"``: the identity when dim_in == dim_out, else linear. The identity assumes the two
    spaces' coordinates correspond (a fine-tuned successor); between unrelated encoders of one
    width ask for ``skip="linear"``. The MLP's last layer starts at zero, so training starts at the
    skip; a linear skip starts at the Procrustes fit of the training pairs (``skip_init``).
    """

    key = "residual_mlp"
    config_class = ResidualMLPConfig
    config: ResidualMLPConfig

    def __init__(self, config: ResidualMLPConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden or max(config.dim_in, config.dim_out)
        self.mlp = _mlp(config.dim_in, hidden, config.dim_out, config.depth)
        last = cast(nn.Linear, self.mlp[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.skip: nn.Linear | None = None
        if config.skip == "linear" or config.dim_in != config.dim_out:
            self.skip = nn.Linear(config.dim_in, config.dim_out, bias=False)
            with torch.no_grad():
                self.skip.weight.copy_(torch.eye(config.dim_out, config.dim_in))

    def forward(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        return (x if self.skip is None else self.skip(x)) + self.mlp(x)

    def prepare(self, x: Tensor, y: Tensor) -> None:
        if self.skip is not None and self.config.skip_init == "procrustes":
            r = procrustes_map(x - x.mean(dim=0), y - y.mean(dim=0))  # (dim_in, dim_out)
            with torch.no_grad():
                self.skip.weight.copy_(r.T)

    def serving_form(self) -> None:
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResidualMLPNCAConfig(ResidualMLPConfig, LabelTermsConfig):
    # lambda_orthogonal_nca's label term: NCA over every old training vector, τ 0.02. MSE weight 4
    # chosen on the protocol's held-out training images (seeds 0-1, top-1 at weight 1/2/4:
    # 0.816/0.821/0.824; 8: 0.821 on seed 0): the MSE keeps the map near the old geometry that the
    # sharp NCA term alone would distort. (Chosen with the MSE on vectors; kept on directions.)
    mse: float = 4.0
    mse_on: MSEOn = "directions"  # as lambda_orthogonal_nca's
    supervised: float = 1.0
    supervised_form: SupervisedForm = "nca"
    bank: bool = True
    temperature: float = 0.02


@ADAPTERS.register("residual_mlp_nca")
class ResidualMLPNCAAdapter(LabelAwareAdapter, ResidualMLPAdapter):
    """``residual_mlp`` trained like ``lambda_orthogonal_nca`` (ours): MSE + NCA over the old bank.

    The linear skip starts at the Procrustes fit and the MLP at zero, so the map starts as a rigid
    rotation and the label term can bend it where no linear map separates the classes; no
    orthogonality penalty (the MLP is not a matrix). Needs labelled pairs.
    """

    key = "residual_mlp_nca"
    config_class = ResidualMLPNCAConfig
    config: ResidualMLPNCAConfig

    def training_loss(self, x: Tensor, y: Tensor, labels: Tensor | None = None) -> Tensor:
        """x (B, dim_in) new, y (B, dim_out) old, labels (B,) int or None."""
        mapped = self(x)  # (B, dim_out)
        loss = self.fit_term(mapped, y)
        return self.add_label_terms(loss, mapped, y, labels)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ForwardMLPConfig(AdapterConfig):
    direction: Direction = "forward"  # FCT transforms stored old vectors into the new space
    hidden: int | None = None  # None: 2·max(dim_in, dim_out), at most 2048
    depth: int = 2
    uncertainty: bool = False  # FastFill's σ head

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.hidden is None or self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}")
        check(self.depth >= 1, f"depth must be >= 1, got {self.depth}")


@ADAPTERS.register("forward_mlp")
class ForwardMLPAdapter(Adapter):
    """FCT's forward transformation old → new (an MLP), with FastFill's optional uncertainty head.

    With the head, the loss per pair is ½·exp(−σ)·ℓ + ½·σ, ℓ = ‖F(x) − y‖² and σ = the predicted
    log-variance: the map learns to down-weight pairs it cannot fit and σ ranks items for backfill
    (most uncertain first). :meth:`uncertainty` returns σ.
    """

    key = "forward_mlp"
    config_class = ForwardMLPConfig
    config: ForwardMLPConfig

    def __init__(self, config: ForwardMLPConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden or min(2 * max(config.dim_in, config.dim_out), 2048)
        body = _mlp(config.dim_in, hidden, hidden, config.depth - 1)
        self.body = nn.Sequential(*body, nn.GELU())  # (N, dim_in) -> (N, hidden)
        self.out = nn.Linear(hidden, config.dim_out)
        self.sigma = nn.Linear(hidden, 1) if config.uncertainty else None

    def forward(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        return self.out(self.body(x))

    def uncertainty(self, x: Tensor) -> Tensor:
        """σ (N,): the predicted log-variance of each item's transformation; higher = less sure."""
        if self.sigma is None:
            raise InvalidInputError(
                "this forward_mlp has no uncertainty head",
                fix="fit it with config {'uncertainty': True}",
            )
        self._check_input(x)
        with torch.no_grad():
            return self.sigma(self.body(x.float())).squeeze(1)

    def training_loss(self, x: Tensor, y: Tensor, labels: Tensor | None = None) -> Tensor:
        hidden = self.body(x)
        loss = (self.out(hidden) - y).pow(2).sum(dim=1)  # ℓ per pair, (N,)
        if self.sigma is None:
            return loss.mean()
        sigma = self.sigma(hidden).squeeze(1)
        return (0.5 * torch.exp(-sigma) * loss + 0.5 * sigma).mean()

    def serving_form(self) -> None:
        return None
