"""Closed-form solvers on paired anchors, in fp64: orthogonal Procrustes (dense, and restricted to
orthogonal Monarch maps) and (ridge) least squares.

Pure functions of tensors, no adapter in sight: the closed-form adapters (compat/closed_form.py) are
these solvers plus buffers, and gradient-trained adapters call :func:`procrustes_map` to start from
the best rotation instead of from noise. fp64 because the normal equations of a 768-d fit lose
digits in fp32.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Rectangular = Literal["stiefel", "truncate"]


def procrustes_map(x: Tensor, y: Tensor, rectangular: Rectangular = "stiefel") -> Tensor:
    """R (d_in, d_out) with orthonormal rows or columns maximising tr(Rᵀ xᵀy): x (N, d_in), y (N, d_out).

    Pass centred data for the centred fit. ``stiefel``: R = UVᵀ from the thin SVD of xᵀy, the
    projection of the cross-covariance onto the Stiefel manifold. It is the exact least-squares
    solution when widening (‖xR‖ = ‖x‖ for every R with orthonormal rows) and when narrowing from a
    wider space that holds the narrower one isometrically; otherwise, narrowing, it is the usual
    approximation of the unbalanced problem (which has no closed form). ``truncate``: fit a square
    rotation between the first min(d_in, d_out) coordinates of each side and leave the rest zero;
    crude, for spaces whose leading coordinates correspond (e.g. Matryoshka prefixes).
    """
    d_in, d_out = x.shape[1], y.shape[1]
    if rectangular == "truncate" and d_in != d_out:
        m = min(d_in, d_out)
        r = torch.zeros(d_in, d_out, dtype=torch.float64)
        r[:m, :m] = procrustes_map(x[:, :m], y[:, :m], "stiefel")
        return r
    return _polar(x.double().T @ y.double())  # of the (d_in, d_out) cross-covariance


def least_squares_map(x: Tensor, y: Tensor, ridge: float = 0.0) -> Tensor:
    """W (d_in, d_out) minimising ‖xW − y‖² + ridge·‖W‖²: x (N, d_in), y (N, d_out), fp64.

    ``ridge`` is added to xᵀx as is (not scaled by N). Without ridge the minimum-norm solution is
    returned, so fewer anchors than dimensions still gives a well-defined map.
    """
    xd, yd = x.double(), y.double()
    if ridge > 0:
        gram = xd.T @ xd + ridge * torch.eye(x.shape[1], dtype=torch.float64)
        return torch.linalg.solve(gram, xd.T @ yd)
    return torch.linalg.pinv(xd) @ yd  # pinv: min-norm even when rank-deficient


def monarch_procrustes(
    x: Tensor, y: Tensor, nblocks: int, *, sweeps: int = 100, tol: float = 1e-9
) -> tuple[Tensor, Tensor]:
    """Procrustes restricted to orthogonal Monarch maps: factors maximising tr(Q[:, :d_out]ᵀ xᵀy).

    x (N, d_in), y (N, d_out); pass centred data for the centred fit. Q (n, n), n = max(d_in,
    d_out), is the product :mod:`kernels.monarch` runs for w1 (nblocks, b, b) and w2 (b, nblocks,
    nblocks), b = n / nblocks, with x zero-padded to n and Q's first d_out columns kept — the layout
    of the ``orthogonal_monarch`` adapter. The trace, not ‖xQ − y‖²: narrowing, the least-squares
    map keeps the source's highest-energy directions instead of the ones that agree with the target
    (on the protocol it copies the old model's mistakes, docs/results/compat.md). With y zero-padded
    to n the two agree, as ‖xQ‖ = ‖x‖ for a square rotation.

    Block-coordinate ascent from the identity: with one factor fixed the trace splits into one small
    Procrustes problem per block of the other, each solved exactly by an SVD, so the trace never
    falls; stops after ``sweeps`` or when a sweep gains less than ``tol`` of it. The trace depends
    on the pairs only through the cross-covariance xᵀy, so each sweep costs O(n²·b), not O(N·n·b).
    A local optimum, deterministic; nblocks = 1 is dense Procrustes exactly. Returns (w1, w2),
    fp64, orthogonal blocks.
    """
    n = max(x.shape[1], y.shape[1])
    if nblocks < 1 or n % nblocks:
        raise ValueError(f"nblocks={nblocks} must divide max(d_in, d_out)={n}")
    size = n // nblocks
    cross = F.pad(x.double(), (0, n - x.shape[1])).T @ F.pad(y.double(), (0, n - y.shape[1]))
    # Both stride permutations (middle and output) send feature r·size + l to the second factor's
    # block l, entry r: indexing by ``order`` groups each block's nblocks features together
    order = torch.arange(n).view(nblocks, size).T.reshape(-1)
    by_block = cross[:, order]  # rows: input features; columns: the second factor's blocks
    w1 = torch.eye(size, dtype=torch.float64).repeat(nblocks, 1, 1)
    w2 = torch.eye(nblocks, dtype=torch.float64).repeat(size, 1, 1)
    best = -math.inf
    for _ in range(sweeps):
        # the first factor applied to the rows, which then move through the middle permutation
        mixed = torch.bmm(w1, cross.view(nblocks, size, n)).reshape(n, n)[order][:, order]
        second = _diagonal_blocks(mixed, size)  # (size, nblocks, nblocks): what each w2 block sees
        w2 = _procrustes_blocks(second)
        trace = float(torch.einsum("bij,bji->", w2, second))
        # the targets pulled back through w2 and the middle permutation, against x's blocks
        pulled = torch.bmm(by_block.view(n, size, nblocks).transpose(0, 1), w2)
        back = torch.empty_like(cross)
        back[:, order] = pulled.transpose(0, 1).reshape(n, n)
        w1 = _procrustes_blocks(_diagonal_blocks(back, nblocks))  # (nblocks, size, size)
        if trace - best <= tol * abs(trace):
            break
        best = trace
    return w1, w2


def _diagonal_blocks(m: Tensor, count: int) -> Tensor:
    """The ``count`` diagonal (s, s) blocks of a square (count·s, count·s) matrix: (count, s, s)."""
    s = m.shape[0] // count
    return m.view(count, s, count, s).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def _procrustes_blocks(cross: Tensor) -> Tensor:
    """W (G, s, s) orthogonal per block maximising tr(W_g cross_g), i.e. minimising ‖a_g W_gᵀ − b_g‖
    for cross_g = a_gᵀ b_g: (G, s, s)."""
    return _polar(cross).transpose(1, 2)


def _polar(cross: Tensor) -> Tensor:
    """UVᵀ from the thin SVD of (…, m, k) ``cross``: the orthonormal factor maximising tr(Rᵀ cross)."""
    u, _, vh = torch.linalg.svd(cross, full_matrices=False)
    return u @ vh
