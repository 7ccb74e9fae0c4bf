"""An exactly orthogonal Monarch adapter: ~2·n·√n parameters instead of a dense n×n rotation.

Q = P₂ · blockdiag(B₂) · P₁ · blockdiag(B₁) in the layout of :mod:`kernels.monarch`:
nb orthogonal (bs, bs) blocks, a stride permutation, bs orthogonal (nb, nb) blocks, a permutation
back (n = nb·bs). Permutations and block-diagonal orthogonal matrices are orthogonal, so Q is, to
rounding, whatever the training does: each stack of blocks is one batched
``torch.nn.utils.parametrizations.orthogonal`` weight.

Rectangular maps act in n = max(dim_in, dim_out) dims: a narrower input is zero-padded (an
isometric embedding), a narrower output keeps the first dim_out coordinates of Q's output (an
orthogonal projection). The served matrix therefore has orthonormal rows (widening) or columns
(narrowing), exactly like the dense ``orthogonal`` adapter. That needs nblocks to divide n.

Serving runs the frozen factors through ``kernels.monarch`` (:class:`MonarchServingForm`), not
the dense matrix: the pad and the crop are the op's own, and the matrix is kept for inspection.

Post-hoc fits start from :func:`compat.solvers.monarch_procrustes`, Procrustes restricted to these
maps (as ``orthogonal`` starts from dense Procrustes); ``procrustes_monarch`` is that solve alone,
in closed form, the structured counterpart of ``procrustes``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compat.adapters import (
    ADAPTERS,
    ROTATION_INITS,
    Adapter,
    AdapterConfig,
    RotationInit,
    ServingForm,
)
from compat.solvers import monarch_procrustes
from kernels.errors import InvalidInputError
from kernels.monarch import MonarchMap, apply_monarch, prepare_monarch
from models.config import check


def default_nblocks(n: int) -> int:
    """The largest divisor of n that is <= √n (Monarch's natural block count; 1 for a prime n)."""
    return max(b for b in range(1, math.isqrt(n) + 1) if n % b == 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrthogonalMonarchConfig(AdapterConfig):
    nblocks: int | None = None  # None: default_nblocks(max(dim_in, dim_out))
    parametrization: Literal["matrix_exp", "cayley"] = "matrix_exp"
    bias: bool = False
    init: RotationInit = "procrustes"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.parametrization in ("matrix_exp", "cayley"), "parametrization: matrix_exp|cayley"
        )
        check(self.init in ROTATION_INITS, f"init must be one of {ROTATION_INITS}")
        n = self.width
        if self.nblocks is not None:
            divisors = [b for b in range(1, n + 1) if n % b == 0]
            check(
                self.nblocks >= 1 and n % self.nblocks == 0,
                f"nblocks={self.nblocks} must divide max(dim_in, dim_out)={n} for an exactly "
                f"orthogonal map; choose one of {divisors} (or None for {default_nblocks(n)})",
            )

    @property
    def width(self) -> int:
        return max(self.dim_in, self.dim_out)

    @property
    def blocks(self) -> int:
        return self.nblocks if self.nblocks is not None else default_nblocks(self.width)


@dataclasses.dataclass(frozen=True, eq=False)
class MonarchServingForm(ServingForm):
    """A serving form executed as its Monarch factors by ``kernels.monarch`` (~2·n·√n
    multiply-adds per row instead of dim_in·dim_out); ``weight`` stays the equivalent dense
    (dim_in, dim_out) matrix for whoever needs the matrix itself."""

    factors: MonarchMap

    def __call__(self, x: Tensor) -> Tensor:
        """(N, dim_in) -> (N, dim_out), rows L2-normalized when ``normalize``."""
        if x.dim() != 2 or x.shape[1] != self.weight.shape[0]:
            # the op would zero-pad any narrower input: only exactly dim_in is this space
            raise InvalidInputError(
                f"this serving form maps (N, {self.weight.shape[0]}) inputs, got shape "
                f"{tuple(x.shape)}",
                fix="pass vectors of the adapter's source space, batched as (N, d)",
            )
        return apply_monarch(x, self.factors, normalize=self.normalize)


class _Blocks(nn.Module):
    """A stack of square blocks (count, size, size) for the orthogonal parametrization to own."""

    def __init__(self, count: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(count, size, size))


@ADAPTERS.register("orthogonal_monarch")
class OrthogonalMonarchAdapter(Adapter):
    """Exactly orthogonal structured map (Monarch factors with orthogonal blocks).

    Train without weight decay on its parameters (see ``no_decay_parameters``).
    """

    key = "orthogonal_monarch"
    config_class = OrthogonalMonarchConfig
    config: OrthogonalMonarchConfig

    def __init__(self, config: OrthogonalMonarchConfig) -> None:
        super().__init__()
        self.config = config
        nb = config.blocks
        bs = config.width // nb
        orth = nn.utils.parametrizations.orthogonal
        self.factor1 = orth(_Blocks(nb, bs), orthogonal_map=config.parametrization)
        self.factor2 = orth(_Blocks(bs, nb), orthogonal_map=config.parametrization)
        self.bias = nn.Parameter(torch.zeros(config.dim_out)) if config.bias else None

    @property
    def _dtype(self) -> torch.dtype:
        return cast(Tensor, self.factor1.weight).dtype

    def _rotate(self, x: Tensor) -> Tensor:  # (N, n) -> (N, n), x @ Q
        w1 = cast(Tensor, self.factor1.weight)  # (nb, bs, bs), computed on access
        w2 = cast(Tensor, self.factor2.weight)  # (bs, nb, nb)
        return self._rotate_with(x, w1, w2)

    @staticmethod
    def _rotate_with(x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
        return apply_monarch(x, prepare_monarch(w1, w2))

    def forward(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        x = F.pad(x, (0, self.config.width - self.dim_in))  # zero-pad to n: isometric
        y = self._rotate(x)[:, : self.dim_out]
        return y if self.bias is None else y + self.bias

    def dense(self) -> Tensor:
        """Q (n, n) with x @ Q == the rotation: the factors applied to the identity's rows."""
        n = self.config.width
        return self._rotate(torch.eye(n, dtype=self._dtype))

    def prepare(self, x: Tensor, y: Tensor) -> None:
        """Post-hoc fits start from the centred block Procrustes solve (``init="procrustes"``): the
        factors of :func:`compat.solvers.monarch_procrustes`, and μy − μx·Q as the bias if any."""
        if self.config.init != "procrustes":
            return
        mx, my = x.double().mean(dim=0), y.double().mean(dim=0)
        w1, w2 = monarch_procrustes(x.double() - mx, y.double() - my, self.config.blocks)
        with torch.no_grad():
            # assigning goes through the parametrizations' right_inverse: exactly w1, w2 afterwards
            self.factor1.weight = w1.to(self._dtype)
            self.factor2.weight = w2.to(self._dtype)
            if self.bias is not None:
                mean_in = F.pad(mx.to(self._dtype), (0, self.config.width - self.dim_in))
                self.bias.copy_(my.to(self._dtype) - self._rotate(mean_in[None])[0, : self.dim_out])

    def serving_form(self) -> MonarchServingForm:
        with torch.no_grad():
            w1 = cast(Tensor, self.factor1.weight).detach().clone()  # (nb, bs, bs)
            w2 = cast(Tensor, self.factor2.weight).detach().clone()  # (bs, nb, nb)
            weight = self._rotate_with(torch.eye(self.config.width, dtype=self._dtype), w1, w2)
            weight = weight[: self.dim_in, : self.dim_out].contiguous()  # (dim_in, dim_out)
            bias = None if self.bias is None else self.bias.detach().clone()
        isometric = self.dim_out >= self.dim_in and bias is None
        # zero-padding dim_in -> n and keeping dim_out columns are the op's own pad and crop
        factors = prepare_monarch(w1, w2, bias, d_out=self.dim_out)
        return MonarchServingForm(
            weight=weight, bias=bias, normalize=not isometric, factors=factors
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcrustesMonarchConfig(OrthogonalMonarchConfig):
    # The centred fit's means folded into one bias, μy − μx·Q (False: the rotation alone)
    bias: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.init == "procrustes",
            "procrustes_monarch is the block Procrustes solve: init=procrustes",
        )


@ADAPTERS.register("procrustes_monarch")
class ProcrustesMonarchAdapter(OrthogonalMonarchAdapter):
    """Centred Procrustes restricted to orthogonal Monarch maps, in closed form (no gradient steps).

    The solve that starts ``orthogonal_monarch``'s fit is the whole fit: it maximises the agreement
    Procrustes maximises (the trace of QᵀxᵀY), where the gradient fit's least squares, narrowing,
    favours the source's highest-energy directions and drifts towards reproducing the old features,
    the old model's mistakes included (the protocol's top-1: docs/results/compat.md, stop 18).
    """

    key = "procrustes_monarch"
    config_class = ProcrustesMonarchConfig
    config: ProcrustesMonarchConfig
    closed_form = True
