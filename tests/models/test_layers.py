"""Contract tests over every registered structured layer, plus Monarch's factor property."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from kernels.errors import InvalidInputError, NotFoundError
from models.layers import (
    CPU_CHUNK_ROWS,
    LAYERS,
    MonarchLinear,
    StructuredLinear,
    make_linear,
    parameter_count,
    structure_kwargs,
)

SIZES = [(50, 23), (96, 200), (64, 64)]
F64 = torch.float64


# Small tensors: on a shared 2-core machine extra OpenMP threads only spin-wait (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(kind: str, n_in: int, n_out: int, *, seed: int = 0, bias: bool = True) -> Any:
    """A float64 layer (tight tolerances), seeded."""
    torch.manual_seed(seed)
    return make_linear(kind, n_in, n_out, bias=bias, dtype=F64, **structure_kwargs(kind, nblocks=4))


def dense_reference(layer: Any, x: Tensor) -> Tensor:
    """x (B, n) @ W.T (n, m) + b -> (B, m), W from the layer's own to_dense()."""
    out = x @ layer.to_dense().T
    return out if layer.bias is None else out + layer.bias


@pytest.mark.parametrize("kind", LAYERS.keys())
@pytest.mark.parametrize(("n_in", "n_out"), SIZES)
@pytest.mark.parametrize("chunk_rows", [16, CPU_CHUNK_ROWS])
def test_forward_and_gradients_match_dense_form(
    kind: str, n_in: int, n_out: int, chunk_rows: int
) -> None:
    layer = build(kind, n_in, n_out)
    layer.chunk_rows = chunk_rows
    gen = torch.Generator().manual_seed(1)
    rows = 2 * chunk_rows + 5  # crosses the chunk boundary twice, with a ragged last chunk
    x = torch.randn(rows, n_in, dtype=F64, generator=gen, requires_grad=True)
    upstream = torch.randn(rows, n_out, dtype=F64, generator=gen)

    got_out = layer(x)
    got = torch.autograd.grad((got_out * upstream).sum(), [x, *layer.parameters()])
    want_out = dense_reference(layer, x)
    want = torch.autograd.grad((want_out * upstream).sum(), [x, *layer.parameters()])

    torch.testing.assert_close(got_out, want_out, rtol=1e-10, atol=1e-10)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", LAYERS.keys())
def test_drop_in_for_linear(kind: str) -> None:
    layer = build(kind, 50, 23, bias=False)
    x = torch.randn(2, 3, 50, dtype=F64)
    assert layer(x).shape == (2, 3, 23)
    assert layer.bias is None
    assert layer.to_dense().shape == (23, 50)
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T)
    with pytest.raises(InvalidInputError):
        layer(torch.randn(4, 49, dtype=F64))


@pytest.mark.parametrize("kind", LAYERS.keys())
def test_state_dict_round_trip(kind: str) -> None:
    layer, other = build(kind, 96, 200, seed=0), build(kind, 96, 200, seed=1)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(9, 96, dtype=F64)
    assert torch.equal(layer(x), other(x))


@pytest.mark.parametrize("kind", LAYERS.keys())
@pytest.mark.parametrize(("n_in", "n_out"), [(512, 512), (784, 256)])
def test_output_scale_comparable_to_linear(kind: str, n_in: int, n_out: int) -> None:
    """Free layers match nn.Linear's init scale (1/sqrt(3) for unit-variance input); isometric
    (orthogonal) layers preserve the scale instead, which no rescaling could change."""
    torch.manual_seed(0)
    x = torch.randn(2048, n_in)
    layer = make_linear(kind, n_in, n_out, **structure_kwargs(kind, nblocks=4))
    reference = nn.Linear(n_in, n_out)
    with torch.no_grad():
        want = x.std() if layer.isometric else reference(x).std()
        ratio = (layer(x).std() / want).item()
    assert 0.8 < ratio < 1.25


def test_monarch_has_fewer_parameters_than_dense() -> None:
    n, nb = 512, 4
    monarch = make_linear("monarch", n, n, nblocks=nb)
    dense = make_linear("dense", n, n)
    assert parameter_count(monarch) == 2 * n * n // nb + n  # two factors + bias
    assert parameter_count(monarch) < parameter_count(dense) == n * n + n


def test_make_linear_errors_name_the_fix() -> None:
    with pytest.raises(NotFoundError, match="monarch"):
        make_linear("monarc", 8, 8)
    with pytest.raises(InvalidInputError, match="nblocks"):
        make_linear("monarch", 8, 8, nblock=2)
    with pytest.raises(InvalidInputError, match="takes none"):
        make_linear("dense", 8, 8, nblocks=2)
    with pytest.raises(InvalidInputError, match="nblocks"):
        make_linear("block_diagonal", 8, 3, nblocks=4)


# --- Monarch = P_out . blockdiag(w2) . P_mid . blockdiag(w1), built independently here ---------


def stride_permutation(rows: int, cols: int) -> Tensor:
    """P with (P v)[j*rows + i] = v[i*cols + j]: v read as a (rows, cols) grid, transposed."""
    perm = torch.zeros(rows * cols, rows * cols, dtype=F64)
    for i in range(rows):
        for j in range(cols):
            perm[j * rows + i, i * cols + j] = 1.0
    return perm


@settings(max_examples=40, deadline=None)
@given(
    n_in=st.integers(1, 40),
    n_out=st.integers(1, 40),
    nblocks=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_monarch_dense_equals_product_of_factors(
    n_in: int, n_out: int, nblocks: int, seed: int
) -> None:
    nblocks = min(nblocks, n_in, n_out)
    torch.manual_seed(seed)
    layer = MonarchLinear(n_in, n_out, nblocks=nblocks, dtype=F64)
    k, q, _ = layer.w1.shape
    l, s, r = layer.w2.shape  # noqa: E741
    right = torch.block_diag(*layer.w1.detach())  # (k*q, k*p)
    left = torch.block_diag(*layer.w2.detach())  # (l*s, l*r)
    # Middle: the (k*q) vector as an (r, l) grid, transposed to (l, r). Output: (l, s) -> (s, l).
    product = stride_permutation(l, s) @ left @ stride_permutation(r, l) @ right
    torch.testing.assert_close(
        layer.to_dense().detach(), product[:n_out, :n_in], rtol=1e-12, atol=1e-12
    )
    assert k == l == nblocks and q == r


# --- the cached inference map (kernels.monarch) ---------------------------------------------------

STRUCTURED = [k for k in LAYERS if issubclass(LAYERS.get(k), StructuredLinear)]


@pytest.mark.parametrize("kind", STRUCTURED)
def test_inference_map_is_cached_and_follows_parameter_updates(kind: str) -> None:
    layer = build(kind, 50, 23)
    x = torch.randn(3, 50, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert layer.monarch_map() is layer.monarch_map()  # built once while nothing changes
        first = layer(x)
        for p in layer.parameters():
            p.add_(0.5 * torch.randn_like(p))  # in place, as an optimizer step: bumps _version
        second = layer(x)
        assert not torch.allclose(first, second)
        torch.testing.assert_close(second, dense_reference(layer, x), rtol=1e-10, atol=1e-10)
        layer.float()  # a conversion replaces the storage
        torch.testing.assert_close(layer(x.float()), second.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["monarch", "orthogonal_monarch"])
def test_training_map_is_rebuilt_and_differentiable(kind: str) -> None:
    layer = build(kind, 50, 23)
    first = layer.monarch_map()
    assert first is not None and first is not layer.monarch_map()
    assert first.w1t.requires_grad


@pytest.mark.parametrize("kind", STRUCTURED)
@pytest.mark.parametrize(("n_in", "n_out"), SIZES)
@pytest.mark.parametrize("rows", [1, 3])  # the one-row path and the small-batch path
def test_small_batches_match_dense_form(kind: str, n_in: int, n_out: int, rows: int) -> None:
    """Inference (the cached map) and training (values and gradients) at B=1 and B=3."""
    layer = build(kind, n_in, n_out)
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, n_in, dtype=F64, generator=gen, requires_grad=True)
    upstream = torch.randn(rows, n_out, dtype=F64, generator=gen)
    want_out = dense_reference(layer, x)
    want = torch.autograd.grad((want_out * upstream).sum(), [x, *layer.parameters()])
    got_out = layer(x)
    got = torch.autograd.grad((got_out * upstream).sum(), [x, *layer.parameters()])
    torch.testing.assert_close(got_out, want_out, rtol=1e-10, atol=1e-10)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x.detach()), want_out, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(layer(x.detach()[0]), want_out[0], rtol=1e-10, atol=1e-10)
