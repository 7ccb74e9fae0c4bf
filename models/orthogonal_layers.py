"""Exactly orthogonal structured layers: torch's orthogonal parametrization on the weight tensors.

``torch.nn.utils.parametrizations.orthogonal`` on an (nb, s, p) block tensor makes every block
orthogonal (orthonormal rows if s < p, columns if s > p); a product of orthogonal block-diagonals
and permutations is orthogonal. The trainable tensors are named ``parametrizations.<name>.original``,
which :func:`compat.adapters.no_decay_parameters` exempts from weight decay (decay pulls the
rectangular parametrization off the manifold: ‖WWᵀ−I‖ reaches 1 in torch 2.13).

Exactness: when ``nblocks`` divides both widths the map is orthogonal (square), or has orthonormal
columns (widening) or rows (narrowing). Otherwise the zero padding makes it a crop of such a map,
which is still a contraction (‖W‖₂ ≤ 1) but no longer an isometry.

These layers preserve norms, so their output scale is the input's, not ``nn.Linear``'s 1/√3.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from models.layers import (
    LAYERS,
    BlockDiagonalLinear,
    DenseLinear,
    MonarchLinear,
    redraw_parametrized,
)


@LAYERS.register("orthogonal_dense")
class OrthogonalDenseLinear(DenseLinear):
    """A dense (out, in) weight with orthonormal rows or columns (the comparison point)."""

    isometric: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        orthogonal(self, "weight")

    def reset_parameters(self) -> None:
        if not redraw_parametrized(self, ("weight",)):
            super().reset_parameters()
        elif self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)


@LAYERS.register("orthogonal_block_diagonal")
class OrthogonalBlockDiagonalLinear(BlockDiagonalLinear):
    """Block-diagonal with orthogonal (nb, s, p) blocks: n·m/nb stored parameters."""

    isometric: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        nblocks: int = 4,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features, out_features, bias, nblocks=nblocks, device=device, dtype=dtype
        )
        orthogonal(self, "blocks")

    def reset_parameters(self) -> None:
        if redraw_parametrized(self, ("blocks",)):
            self.reset_bias()
        else:
            super().reset_parameters()


@LAYERS.register("orthogonal_monarch")
class OrthogonalMonarchLinear(MonarchLinear):
    """Monarch with both factors' blocks orthogonal: w1 (nb, q, p) and w2 (nb, s, q).

    With q = min(p, s) one factor is square (orthogonal blocks) and the other rectangular
    (orthonormal rows when narrowing, columns when widening), so the product is too.
    """

    isometric: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        nblocks: int = 4,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features, out_features, bias, nblocks=nblocks, device=device, dtype=dtype
        )
        orthogonal(self, "w1")
        orthogonal(self, "w2")

    def reset_parameters(self) -> None:
        if redraw_parametrized(self, ("w1", "w2")):
            self.reset_bias()
        else:
            super().reset_parameters()
