"""Closed-form adapters fitted on paired anchors: orthogonal Procrustes and least-squares affine.

Both keep their maps as buffers, so they save, load and serve like any other adapter but have
nothing for an optimizer. The fp64 solvers live in :mod:`compat.solvers`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from compat.adapters import ADAPTERS, Adapter, AdapterConfig, ServingForm
from compat.solvers import Rectangular, least_squares_map, procrustes_map
from kernels.errors import InvalidInputError
from models.config import check


def _means(x: Tensor, y: Tensor, center: bool) -> tuple[Tensor, Tensor]:
    if not center:
        return torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros(
            y.shape[1], dtype=torch.float64
        )
    return x.double().mean(dim=0), y.double().mean(dim=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcrustesConfig(AdapterConfig):
    center: bool = True
    rectangular: Rectangular = "stiefel"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rectangular in ("stiefel", "truncate"), "rectangular must be stiefel|truncate")


class _ClosedFormAdapter(Adapter):
    """y = (x − μx) W + μy with W, μx, μy buffers set by :meth:`prepare`."""

    closed_form = True
    weight: Tensor  # (dim_in, dim_out)
    mean_in: Tensor  # (dim_in,)
    mean_out: Tensor  # (dim_out,)

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("weight", torch.eye(config.dim_in, config.dim_out))
        self.register_buffer("mean_in", torch.zeros(config.dim_in))
        self.register_buffer("mean_out", torch.zeros(config.dim_out))

    def forward(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        return (x - self.mean_in) @ self.weight + self.mean_out

    def _set(self, weight: Tensor, mean_in: Tensor, mean_out: Tensor) -> None:
        with torch.no_grad():
            self.weight.copy_(weight)
            self.mean_in.copy_(mean_in)
            self.mean_out.copy_(mean_out)

    def _bias(self) -> Tensor | None:
        # (x − μx)W + μy = xW + (μy − μx W): one projection with a bias
        bias = self.mean_out - self.mean_in @ self.weight
        return None if not bool(bias.any()) else bias

    def _check_pairs(self, x: Tensor, y: Tensor) -> None:
        if x.shape[1:] != (self.dim_in,) or y.shape[1:] != (self.dim_out,) or len(x) != len(y):
            raise InvalidInputError(
                f"{self.key} fits (N, {self.dim_in}) -> (N, {self.dim_out}) pairs, got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )


@ADAPTERS.register("procrustes")
class ProcrustesAdapter(_ClosedFormAdapter):
    """Centred orthogonal Procrustes: y = (x − μx)R + μy, R = UVᵀ from SVD((x − μx)ᵀ(y − μy)).

    Rectangular maps: see :func:`procrustes_map` (``rectangular`` = ``stiefel`` or ``truncate``).
    Before :meth:`prepare` it is the (truncated) identity.
    """

    key = "procrustes"
    config_class = ProcrustesConfig
    config: ProcrustesConfig

    def prepare(self, x: Tensor, y: Tensor) -> None:
        self._check_pairs(x, y)
        mx, my = _means(x, y, self.config.center)
        r = procrustes_map(x.double() - mx, y.double() - my, self.config.rectangular)
        self._set(r, mx, my)

    def serving_form(self) -> ServingForm:
        bias = self._bias()
        # R with orthonormal rows (widening or square) is an isometry: unit rows stay unit.
        isometric = self.dim_out >= self.dim_in and bias is None
        return ServingForm(weight=self.weight.clone(), bias=bias, normalize=not isometric)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AffineConfig(AdapterConfig):
    ridge: float = 0.0  # added to xᵀx of the centred sources
    bias: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.ridge >= 0, f"ridge must be >= 0, got {self.ridge}")


@ADAPTERS.register("affine")
class AffineAdapter(_ClosedFormAdapter):
    """Least-squares affine map y = xW + b (ridge optional), solved in closed form on the pairs."""

    key = "affine"
    config_class = AffineConfig
    config: AffineConfig

    def prepare(self, x: Tensor, y: Tensor) -> None:
        self._check_pairs(x, y)
        # Centring first fits the bias exactly and leaves it out of the ridge penalty.
        mx, my = _means(x, y, self.config.bias)
        w = least_squares_map(x.double() - mx, y.double() - my, self.config.ridge)
        self._set(w, mx, my)

    def serving_form(self) -> ServingForm:
        return ServingForm(weight=self.weight.clone(), bias=self._bias(), normalize=True)
