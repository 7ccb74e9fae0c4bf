"""The orthogonal Monarch adapter is exactly orthogonal, structured, and preserves inner products."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from compat.adapters import build_adapter, no_decay_parameters
from compat.monarch_adapter import default_nblocks
from kernels.errors import InvalidInputError

WIDTHS = [(16, 16), (24, 12), (12, 24), (18, 18), (23, 10)]


def trained_like(dim_in: int, dim_out: int, seed: int, **config) -> torch.nn.Module:
    """An adapter whose free parameters moved far from their initial values."""
    torch.manual_seed(seed)
    adapter = build_adapter("orthogonal_monarch", {"dim_in": dim_in, "dim_out": dim_out, **config})
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p))
    return adapter


@pytest.mark.parametrize(("dim_in", "dim_out"), WIDTHS)
@pytest.mark.parametrize("parametrization", ["matrix_exp", "cayley"])
def test_exactly_orthogonal(dim_in: int, dim_out: int, parametrization: str) -> None:
    adapter = trained_like(dim_in, dim_out, 0, parametrization=parametrization)
    with torch.no_grad():
        q = adapter.dense()  # (n, n)
    n = max(dim_in, dim_out)
    assert torch.linalg.matrix_norm(q.T @ q - torch.eye(n)) < 1e-5
    w = adapter.serving_form().weight  # (dim_in, dim_out): orthonormal rows or columns
    gram = w.T @ w if dim_in >= dim_out else w @ w.T
    assert torch.linalg.matrix_norm(gram - torch.eye(min(dim_in, dim_out))) < 1e-5


def test_structure_equals_its_dense_form_and_uses_few_parameters() -> None:
    adapter = trained_like(64, 64, 1, nblocks=8)
    x = torch.randn(9, 64)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x), x @ adapter.dense(), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in adapter.parameters()) == 2 * 8 * 8 * 8  # vs 64² dense


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), widths=st.sampled_from([(16, 16), (12, 24), (18, 18), (9, 27)]))
def test_preserves_inner_products(seed: int, widths: tuple[int, int]) -> None:
    dim_in, dim_out = widths  # square or widening: an isometry
    adapter = trained_like(dim_in, dim_out, seed)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, dim_in, generator=g), torch.randn(4, dim_in, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x) @ adapter(y).T, x @ y.T, atol=1e-4, rtol=1e-4)


def test_default_blocks_and_bad_block_counts() -> None:
    assert [default_nblocks(n) for n in (16, 23, 24, 384, 512, 768)] == [4, 1, 4, 16, 16, 24]
    with pytest.raises(InvalidInputError, match=r"nblocks=5 must divide .*=16.*\[1, 2, 4, 8, 16\]"):
        build_adapter("orthogonal_monarch", {"dim_in": 16, "dim_out": 12, "nblocks": 5})


def test_all_parameters_are_exempt_from_weight_decay() -> None:
    adapter = build_adapter("orthogonal_monarch", {"dim_in": 16, "dim_out": 16})
    assert {id(p) for p in no_decay_parameters(adapter)} == {id(p) for p in adapter.parameters()}


@pytest.mark.parametrize(
    ("dim_in", "dim_out", "bias"), [(16, 16, False), (24, 12, True), (9, 27, False)]
)
def test_serving_form_runs_the_factors_and_equals_forward(
    monkeypatch: pytest.MonkeyPatch, dim_in: int, dim_out: int, bias: bool
) -> None:
    from compat import monarch_adapter

    adapter = trained_like(dim_in, dim_out, 3, bias=bias)
    form = adapter.serving_form()
    x = torch.randn(7, dim_in, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = adapter(x)
    if form.normalize:
        want = torch.nn.functional.normalize(want, dim=1)
    calls: list[int] = []
    real = monarch_adapter.apply_monarch

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(monarch_adapter, "apply_monarch", counting)
    got = form(x)
    assert calls == [1]  # one structured op, not the dense matrix
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        got,
        kernels.project(x, form.weight, form.bias, normalize=form.normalize),
        atol=1e-5,
        rtol=1e-5,
    )
    with pytest.raises(InvalidInputError, match=rf"\(N, {dim_in}\)"):
        form(torch.randn(2, dim_in - 1))
