"""Closed-form solvers on paired anchors, in fp64: orthogonal Procrustes and (ridge) least squares.

Pure functions of tensors, no adapter in sight: the closed-form adapters (compat/closed_form.py) are
these solvers plus buffers, and gradient-trained adapters call :func:`procrustes_map` to start from
the best rotation instead of from noise. fp64 because the normal equations of a 768-d fit lose
digits in fp32.
"""

from __future__ import annotations

from typing import Literal

import torch
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
    cross = x.double().T @ y.double()  # (d_in, N) @ (N, d_out) -> (d_in, d_out)
    u, _, vh = torch.linalg.svd(cross, full_matrices=False)  # u (d_in, k), vh (k, d_out)
    return u @ vh


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
