"""Butterfly layers (Dao et al. 2019): log2(n) levels of 2x2 twiddles, 2·n·log2(n) parameters.

Level ``i`` mixes the entries ``j`` and ``j ^ 2**i`` (XOR: the partner across stride ``2**i``) of
the padded vector with one 2x2 twiddle per pair, for strides 1, 2, ..., n/2 in that order. The
twiddles are stored as per-level coefficient vectors, ``twiddle`` (L, 2, n):

    y[j] = twiddle[i, 0, j] · x[j] + twiddle[i, 1, j] · x[j ^ 2**i]

so the pair (top t, bottom b = t + 2**i) has the 2x2 twiddle [[c0[t], c1[t]], [c1[b], c0[b]]], and
a level is one flip and two fused multiplies with long contiguous inner loops (a (2, 2)-shaped
twiddle tensor makes CPU loops of length 2 and runs ~5x slower).

:func:`butterfly_multiply_ref` applies the levels one by one (the reference, and the path for
small batches). For larger batches the layers multiply the levels out into two Monarch factors
(:func:`butterfly_factors`) and run the chunked block-diagonal matmuls of
:mod:`kernels.monarch`: the low levels mix the low index bits, so they act inside
contiguous blocks of ``m = 2**ceil(L/2)``; the high levels act across the stride grid
(Monarch with ``nblocks = h = n/m``). Building the factors costs as much as running the levels on
``(m + h) / 2`` rows, so batches of at most ``m + h`` rows run the levels directly.

Rectangular maps zero-pad both sides to ``n = 2**ceil(log2(max(in, out)))`` and crop.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kernels.errors import InvalidInputError
from models.layers import LAYERS, StructuredLinear, redraw_parametrized


def butterfly_size(in_features: int, out_features: int) -> int:
    """The padded width: the smallest power of 2 >= both widths (at least 2)."""
    return max(2, 1 << (max(in_features, out_features) - 1).bit_length())


def butterfly_level(x: Tensor, coeffs: Tensor, level: int) -> Tensor:
    """x (B, n), coeffs (2, n) -> (B, n): y[j] = coeffs[0, j]·x[j] + coeffs[1, j]·x[j ^ 2**level]."""
    batch, n = x.shape
    s = 1 << level
    # (B, n) -> (B, a, 2, s) -> swap the two halves of every 2s-group -> (B, n)
    partner = x.reshape(batch, n // (2 * s), 2, s).flip(2).reshape(batch, n)
    return torch.addcmul(x * coeffs[0], partner, coeffs[1])


def butterfly_multiply_ref(x: Tensor, twiddle: Tensor) -> Tensor:
    """Pure-torch reference: x (B, n), twiddle (L, 2, n) with n = 2**L -> (B, n)."""
    for level in range(twiddle.shape[0]):
        x = butterfly_level(x, twiddle[level], level)
    return x


def butterfly_factors(twiddle: Tensor) -> tuple[Tensor, Tensor]:
    """The butterfly as Monarch factors: w1 (h, m, m), w2 (m, h, h) with m*h = n, m = 2**ceil(L/2).

    ``monarch_multiply(x, w1, w2) == butterfly_multiply_ref(x, twiddle)``. Each factor is found by
    running its levels on basis vectors: e_j tiled over the h blocks for w1, e_j over the high index
    repeated for every low index for w2; the outputs are the blocks' columns.
    """
    levels, n = twiddle.shape[0], twiddle.shape[2]
    low = (levels + 1) // 2
    m, h = 1 << low, n >> low
    out1 = torch.eye(m, dtype=twiddle.dtype, device=twiddle.device).repeat(1, h)  # (m, n)
    for level in range(low):
        out1 = butterfly_level(out1, twiddle[level], level)
    out2 = torch.eye(h, dtype=twiddle.dtype, device=twiddle.device).repeat_interleave(m, dim=1)
    for level in range(low, levels):
        out2 = butterfly_level(out2, twiddle[level], level)
    # out1[j, b*m + o] = w1[b, o, j];  out2[j, o*m + l] = w2[l, o, j]. Contiguous: bmm falls back
    # to a scalar loop (~100x slower in fp64) on w2's permuted strides.
    w1 = out1.reshape(m, h, m).permute(1, 2, 0).contiguous()
    w2 = out2.reshape(h, h, m).permute(2, 1, 0).contiguous()
    return w1, w2


def pair_layout(levels: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Per level, which pair each position belongs to and whether it is the pair's bottom.

    Returns pair (L, n) int64 in [0, n/2) (pair ``a*s + c`` holds positions a*2s + c and
    a*2s + s + c, s = 2**level) and bottom (L, n) bool.
    """
    j = torch.arange(1 << levels, device=device)
    s = (1 << torch.arange(levels, device=device))[:, None]  # (L, 1)
    return (j // (2 * s)) * s + j % s, (j // s) % 2 == 1


def rotation_twiddle(angles: Tensor, pair: Tensor, bottom: Tensor) -> Tensor:
    """Givens rotations [[cos, -sin], [sin, cos]]: angles (L, n/2) -> twiddle (L, 2, n)."""
    cos, sin = angles.cos().gather(1, pair), angles.sin().gather(1, pair)
    return torch.stack([cos, torch.where(bottom, sin, -sin)], dim=1)


@LAYERS.register("butterfly")
class ButterflyLinear(StructuredLinear):
    """A learned butterfly: twiddle (L, 2, n), 2·n·log2(n) parameters for an n-wide map.

    Initialised as random rotations scaled so the map is ``g`` times an orthogonal matrix, with
    ``g = sqrt(n / (3·in_features))``: the output variance matches ``nn.Linear``'s (1/3 of the
    input's), and the product is well conditioned at any depth (random Gaussian 2x2 twiddles
    multiplied over log2(n) levels are not).
    """

    structure_params: ClassVar[tuple[str, ...]] = ()
    map_when_training: ClassVar[bool] = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if in_features <= 0 or out_features <= 0:
            raise InvalidInputError(
                f"features must be positive, got in={in_features}, out={out_features}"
            )
        n = butterfly_size(in_features, out_features)
        super().__init__(
            in_features,
            out_features,
            bias,
            in_padded=n,
            out_padded=n,
            device=device,
            dtype=dtype,
        )
        levels = n.bit_length() - 1
        self.twiddle = nn.Parameter(torch.empty(levels, 2, n, device=device, dtype=dtype))
        self.reset_parameters()
        self._constrain()

    def reset_parameters(self) -> None:
        if redraw_parametrized(self, self.constrained):
            self.reset_bias()
            return
        levels, n = self.twiddle.shape[0], self.twiddle.shape[2]
        gain = math.sqrt(n / (3 * self.in_features)) ** (1 / levels)
        angles = torch.rand(levels, n // 2, device=self.twiddle.device) * (2 * math.pi)
        with torch.no_grad():
            self.twiddle.copy_(rotation_twiddle(angles, *pair_layout(levels, angles.device)) * gain)
        self.reset_bias()

    def _operands(self, rows: int) -> tuple[Tensor, ...]:
        twiddle = self.twiddle  # (L, 2, n); parametrized in the orthogonal variant
        low = (twiddle.shape[0] + 1) // 2
        direct = rows <= (1 << low) + (self.in_padded >> low)  # rows <= m + h: see the module doc
        return (twiddle,) if direct else butterfly_factors(twiddle)

    def _multiply(self, x: Tensor, operands: tuple[Tensor, ...]) -> Tensor:
        if len(operands) == 1:
            return butterfly_multiply_ref(x, operands[0])
        return super()._multiply(x, operands)  # the factors, through kernels.monarch

    def _factors(self) -> tuple[Tensor, Tensor | None]:
        # used for inference only (map_when_training is False): built once, then cached
        return butterfly_factors(self.twiddle)


class Givens(nn.Module):
    """Parametrization angles (L, n/2) -> twiddle (L, 2, n) of one rotation per pair."""

    pair: Tensor
    bottom: Tensor

    def __init__(self, levels: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        pair, bottom = pair_layout(levels, device)
        # Constant index maps, rebuilt from the shape: kept out of the state dict.
        self.register_buffer("pair", pair, persistent=False)
        self.register_buffer("bottom", bottom, persistent=False)

    def forward(self, angles: Tensor) -> Tensor:
        return rotation_twiddle(angles, self.pair, self.bottom)

    def right_inverse(self, twiddle: Tensor) -> Tensor:
        """The angle of each pair, read at its top (cos) and bottom (sin) positions."""
        levels, n = self.pair.shape
        s = (1 << torch.arange(levels, device=self.pair.device))[:, None]  # (L, 1)
        p = torch.arange(n // 2, device=self.pair.device)
        top = (p // s) * 2 * s + p % s  # (L, n/2): pair p's top position; its bottom is top + s
        return torch.atan2(twiddle[:, 1].gather(1, top + s), twiddle[:, 0].gather(1, top))


@LAYERS.register("orthogonal_butterfly")
class OrthogonalButterflyLinear(ButterflyLinear):
    """A product of log2(n) layers of Givens rotations: n/2·log2(n) angles, exactly orthogonal.

    ``twiddle`` is parametrized by its angles (``parametrizations.twiddle.original``, which
    :func:`compat.adapters.no_decay_parameters` exempts from weight decay). Every map is a rotation
    (determinant +1). With padding (width not a power of 2) the layer is a crop of an orthogonal
    matrix: a contraction, orthonormal columns only when ``out_features`` is the padded width.
    """

    isometric: ClassVar[bool] = True
    constrained: ClassVar[tuple[str, ...]] = ("twiddle",)

    def _constrain(self) -> None:
        # The parent's init drew random rotations; right_inverse reads their angles back.
        givens = Givens(self.twiddle.shape[0], device=self.twiddle.device)
        parametrize.register_parametrization(self, "twiddle", givens, unsafe=True)
