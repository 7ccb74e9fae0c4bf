"""Orthogonal layers: exact isometries where their widths allow it, and they stay so under AdamW
when (and because) their parametrized tensors are exempt from weight decay."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compat.adapters import no_decay_parameters
from models.layers import LAYERS, make_linear, structure_kwargs

F64 = torch.float64
ORTHOGONAL = [kind for kind in LAYERS if LAYERS.get(kind).isometric]


# Small tensors: on a shared 2-core machine extra OpenMP threads only spin-wait (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_orthogonal_variant_is_registered() -> None:
    expected = {"orthogonal_dense", "orthogonal_block_diagonal", "orthogonal_monarch"}
    assert set(ORTHOGONAL) == expected | {"orthogonal_butterfly"}


def orthogonal_layer(
    kind: str, n_in: int, n_out: int, nblocks: int, **kw: object
) -> torch.nn.Module:
    return make_linear(kind, n_in, n_out, **kw, **structure_kwargs(kind, nblocks=nblocks))


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(ORTHOGONAL),
    nblocks=st.sampled_from([1, 2, 4]),
    block=st.integers(1, 6),
    widen=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_inner_products_are_preserved(
    kind: str, nblocks: int, block: int, widen: int, seed: int
) -> None:
    """<Wx, Wy> = <x, y> for square and widening maps whose widths nblocks divides (for the
    butterfly: a power-of-2 output width, so the padded map's rows are all kept)."""
    if kind == "orthogonal_butterfly":
        n_out = 1 << block
        n_in = max(1, n_out - widen)  # any input width up to the (power-of-2) output width
    else:
        n_in, n_out = nblocks * block, nblocks * (block + widen)
    torch.manual_seed(seed)
    layer = orthogonal_layer(kind, n_in, n_out, nblocks, bias=False, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(2, 5, n_in, dtype=F64, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close((layer(x) * layer(y)).sum(-1), (x * y).sum(-1))
        weight = layer.to_dense()
    torch.testing.assert_close(weight.T @ weight, torch.eye(n_in, dtype=F64))


@pytest.mark.parametrize("kind", ORTHOGONAL)
def test_narrowing_maps_have_orthonormal_rows(kind: str) -> None:
    torch.manual_seed(0)
    layer = orthogonal_layer(kind, 64, 24, nblocks=4, bias=False, dtype=F64)
    with torch.no_grad():
        weight = layer.to_dense()
    torch.testing.assert_close(weight @ weight.T, torch.eye(24, dtype=F64))


@pytest.mark.parametrize("kind", ORTHOGONAL)
@pytest.mark.parametrize(("n_in", "n_out"), [(64, 64), (64, 32), (32, 64)])
def test_adamw_steps_keep_the_map_orthogonal(kind: str, n_in: int, n_out: int) -> None:
    torch.manual_seed(0)
    layer = orthogonal_layer(kind, n_in, n_out, nblocks=4)
    exempt = no_decay_parameters(layer)
    # Everything but the bias sits behind the parametrization, named as no_decay_parameters expects.
    assert {id(p) for p in exempt} == {id(p) for p in layer.parameters() if p is not layer.bias}
    optimizer = torch.optim.AdamW(
        [{"params": [layer.bias]}, {"params": exempt, "weight_decay": 0.0}],
        lr=1e-2,
        weight_decay=0.1,
    )
    target = torch.randn(n_out, n_in)
    before = layer.to_dense().detach().clone()
    for _ in range(8):
        x = torch.randn(32, n_in)
        loss = (layer(x) - x @ target.T).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        weight = layer.to_dense()
    gram = weight.T @ weight if n_out >= n_in else weight @ weight.T
    assert (gram - torch.eye(min(n_in, n_out))).abs().max() < 1e-5
    assert (weight - before).abs().max() > 1e-3  # it did train
