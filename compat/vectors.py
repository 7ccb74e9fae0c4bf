"""Validation of vectors where they enter hotswap: once at the boundary, never per kernel call."""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.errors import InvalidInputError


def check_vectors(x: Tensor, dim: int | None, what: str) -> Tensor:
    """Return ``x`` as fp32 (N, dim) or raise a clear error: not 2-D, wrong width, NaN or Inf."""
    if x.ndim != 2:
        raise InvalidInputError(f"{what} must be a 2-D (N, d) array, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise InvalidInputError(
            f"{what} has width {x.shape[1]}, the space expects {dim}",
            fix="embed with the model version that owns this space, or bridge with an adapter",
        )
    if not x.is_floating_point():
        raise InvalidInputError(f"{what} must hold floating-point values, got {x.dtype}")
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()[:5].tolist()
        raise InvalidInputError(f"{what} has NaN or Inf values in row(s) {bad}")
    return x.float()
