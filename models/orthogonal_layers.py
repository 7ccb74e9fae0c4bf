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
Each is its free parent plus ``constrained``: the parent's constructor registers the
parametrization last (projecting the plain init onto the manifold), and ``reset_parameters``
redraws on the manifold once it is registered.
"""

from __future__ import annotations

from typing import ClassVar

from models.layers import LAYERS, BlockDiagonalLinear, DenseLinear, MonarchLinear


@LAYERS.register("orthogonal_dense")
class OrthogonalDenseLinear(DenseLinear):
    """A dense (out, in) weight with orthonormal rows or columns (the comparison point)."""

    isometric: ClassVar[bool] = True
    constrained: ClassVar[tuple[str, ...]] = ("weight",)


@LAYERS.register("orthogonal_block_diagonal")
class OrthogonalBlockDiagonalLinear(BlockDiagonalLinear):
    """Block-diagonal with orthogonal (nb, s, p) blocks: n·m/nb stored parameters."""

    isometric: ClassVar[bool] = True
    constrained: ClassVar[tuple[str, ...]] = ("blocks",)


@LAYERS.register("orthogonal_monarch")
class OrthogonalMonarchLinear(MonarchLinear):
    """Monarch with both factors' blocks orthogonal: w1 (nb, q, p) and w2 (nb, s, q).

    With q = min(p, s) one factor is square (orthogonal blocks) and the other rectangular
    (orthonormal rows when narrowing, columns when widening), so the product is too.
    """

    isometric: ClassVar[bool] = True
    constrained: ClassVar[tuple[str, ...]] = ("w1", "w2")
