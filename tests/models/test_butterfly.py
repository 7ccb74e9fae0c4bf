"""Butterfly: the level-by-level reference against an independent dense construction, the Monarch
factorization against the reference, and the small-batch and factored paths against each other."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from models.butterfly import (
    ButterflyLinear,
    Givens,
    butterfly_factors,
    butterfly_multiply_ref,
    butterfly_size,
)
from models.layers import make_linear, monarch_multiply, parameter_count

F64 = torch.float64


def level_matrix(coeffs: Tensor, level: int) -> Tensor:
    """The (n, n) matrix of one level, entry by entry: row j has c0[j] at j, c1[j] at j XOR 2**level."""
    rows = torch.arange(coeffs.shape[1])
    m = torch.diag(coeffs[0])
    m[rows, rows ^ (1 << level)] = coeffs[1]  # the partner is never j itself
    return m


@settings(max_examples=20, deadline=None)
@given(levels=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_reference_equals_product_of_level_matrices(levels: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 1 << levels
    twiddle = torch.randn(levels, 2, n, dtype=F64, generator=gen)
    want = torch.eye(n, dtype=F64)
    for level in range(levels):  # level 0 is applied first
        want = level_matrix(twiddle[level], level) @ want
    x = torch.randn(7, n, dtype=F64, generator=gen)
    torch.testing.assert_close(butterfly_multiply_ref(x, twiddle), x @ want.T)


@settings(max_examples=20, deadline=None)
@given(levels=st.integers(1, 9), rows=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_monarch_factors_equal_reference(levels: int, rows: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 1 << levels
    twiddle = torch.randn(levels, 2, n, dtype=F64, generator=gen) / math.sqrt(2)
    x = torch.randn(rows, n, dtype=F64, generator=gen)
    w1, w2 = butterfly_factors(twiddle)
    m = 1 << ((levels + 1) // 2)
    assert w1.shape == (n // m, m, m) and w2.shape == (m, n // m, n // m)
    want = butterfly_multiply_ref(x, twiddle)
    torch.testing.assert_close(monarch_multiply(x, w1, w2), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["butterfly", "orthogonal_butterfly"])
@pytest.mark.parametrize(("n_in", "n_out"), [(50, 23), (96, 200), (64, 64)])
def test_small_batch_path_agrees_with_factored_path(kind: str, n_in: int, n_out: int) -> None:
    """A few rows run the levels directly, many rows the Monarch factors: same values and grads."""
    torch.manual_seed(0)
    layer = make_linear(kind, n_in, n_out, dtype=F64)
    gen = torch.Generator().manual_seed(1)
    few = torch.randn(3, n_in, dtype=F64, generator=gen, requires_grad=True)
    filler = torch.randn(200, n_in, dtype=F64, generator=gen)  # > m + h rows: factored
    upstream = torch.randn(3, n_out, dtype=F64, generator=gen)
    params = [few, *layer.parameters()]

    direct = layer(few)
    got = torch.autograd.grad((direct * upstream).sum(), params)
    factored = layer(torch.cat([few, filler]))[:3]
    want = torch.autograd.grad((factored * upstream).sum(), params)

    torch.testing.assert_close(direct, factored, rtol=1e-10, atol=1e-10)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_parameter_counts_and_padding() -> None:
    assert butterfly_size(784, 512) == 1024 and butterfly_size(1, 1) == 2
    assert butterfly_size(64, 64) == 64 and butterfly_size(65, 3) == 128
    n, levels = 1024, 10
    assert parameter_count(make_linear("butterfly", n, n)) == 2 * n * levels + n
    assert parameter_count(make_linear("orthogonal_butterfly", n, n)) == n // 2 * levels + n
    layer = make_linear("butterfly", 784, 512, bias=False)
    assert isinstance(layer, ButterflyLinear)
    assert layer.twiddle.shape == (levels, 2, n) and layer.to_dense().shape == (512, 784)


def test_givens_right_inverse_recovers_angles() -> None:
    gen = torch.Generator().manual_seed(0)
    givens = Givens(5)
    angles = (torch.rand(5, 16, dtype=F64, generator=gen) * 2 - 1) * math.pi
    torch.testing.assert_close(givens.right_inverse(givens(angles)), angles)
    # A scaled rotation (the free butterfly's init) has the same angles.
    torch.testing.assert_close(givens.right_inverse(3.0 * givens(angles)), angles)
