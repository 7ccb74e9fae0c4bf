"""The orthogonal Monarch adapters are exactly orthogonal, structured, preserve inner products, and
the block Procrustes solve behind their post-hoc fits finds a planted Monarch rotation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from compat.adapters import build_adapter, no_decay_parameters
from compat.fitting import FitOptions, fit_adapter
from compat.monarch_adapter import MonarchServingForm, default_nblocks
from compat.solvers import monarch_procrustes, procrustes_map
from kernels.errors import InvalidInputError
from kernels.monarch import apply_monarch, prepare_monarch

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


def planted(n: int, nblocks: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random orthogonal Monarch factors (w1 (nblocks, b, b), w2 (b, nblocks, nblocks))."""
    g = torch.Generator().manual_seed(seed)
    b = n // nblocks
    w1 = torch.linalg.qr(torch.randn(nblocks, b, b, generator=g))[0]
    w2 = torch.linalg.qr(torch.randn(b, nblocks, nblocks, generator=g))[0]
    return w1, w2


@pytest.mark.parametrize(("n", "nblocks", "dim_in"), [(16, 4, 16), (24, 4, 24), (64, 8, 40)])
def test_block_procrustes_recovers_a_planted_monarch_rotation(
    n: int, nblocks: int, dim_in: int
) -> None:
    """Square or widening (the op zero-pads x), where the trace's maximum is the least-squares fit;
    narrowing it is not, as for dense Procrustes (compat.solvers.procrustes_map)."""
    w1, w2 = planted(n, nblocks, seed=n)
    x = torch.randn(400, dim_in, generator=torch.Generator().manual_seed(1))
    y = apply_monarch(x, prepare_monarch(w1, w2))
    f1, f2 = monarch_procrustes(x, y, nblocks)
    assert f1.shape == w1.shape and f2.shape == w2.shape
    eye = torch.eye(n // nblocks, dtype=torch.float64)
    torch.testing.assert_close(f1 @ f1.transpose(1, 2), eye.expand_as(f1))
    got = apply_monarch(x, prepare_monarch(f1.float(), f2.float()))
    torch.testing.assert_close(got, y, atol=1e-5, rtol=1e-5)


def test_block_procrustes_with_one_block_is_dense_procrustes() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 32, generator=g), torch.randn(300, 20, generator=g)
    f1, f2 = monarch_procrustes(x, y, 1)
    dense = apply_monarch(torch.eye(32), prepare_monarch(f1.float(), f2.float()))[:, :20]
    torch.testing.assert_close(dense, procrustes_map(x, y).float(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="nblocks=5 must divide"):
        monarch_procrustes(x, y, 5)


def test_block_procrustes_beats_the_gradient_fit_on_the_trace_it_maximises() -> None:
    """Noisy narrowing pairs: the solve's tr(Qᵀxᵀy) beats the gradient fit's (least squares from a
    random start) and stays within dense Procrustes' maximum (a superset of maps)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 48, generator=g)
    y = x[:, :24] @ torch.randn(24, 24, generator=g) + 0.5 * torch.randn(600, 24, generator=g)

    def trace(q: torch.Tensor) -> float:
        return float(((x @ q) * y).sum())

    f1, f2 = monarch_procrustes(x, y, 4)
    solved = apply_monarch(torch.eye(48), prepare_monarch(f1.float(), f2.float()))
    trained = fit_adapter(
        "orthogonal_monarch",
        x,
        y,
        direction="backward",
        config={"init": "random", "nblocks": 4},
        options=FitOptions(epochs=20, normalize=False),
    ).adapter
    with torch.no_grad():
        gradient = trained.dense()[:, :24]
    assert trace(gradient) < trace(solved[:, :24]) <= trace(procrustes_map(x, y).float()) + 1e-3


@pytest.mark.parametrize("bias", [True, False])
def test_orthogonal_monarch_starts_from_the_centred_block_solve(bias: bool) -> None:
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(300, 24, generator=g) + 2.0, torch.randn(300, 12, generator=g) - 1.0
    adapter = build_adapter("orthogonal_monarch", {"dim_in": 24, "dim_out": 12, "bias": bias})
    adapter.prepare(x, y)
    f1, f2 = monarch_procrustes(x - x.mean(0), y - y.mean(0), adapter.config.blocks)
    rotate = prepare_monarch(f1.float(), f2.float(), d_out=12)
    want = apply_monarch(x - x.mean(0), rotate) + y.mean(0)
    if not bias:  # the centred fit's rotation alone
        want = apply_monarch(x, rotate)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x), want, atol=1e-4, rtol=1e-4)
        q = adapter.dense()
    torch.testing.assert_close(q.T @ q, torch.eye(24), atol=1e-5, rtol=1e-5)


def test_procrustes_monarch_is_the_solve_alone_and_serves_its_factors() -> None:
    w1, w2 = planted(64, 8, seed=5)
    g = torch.Generator().manual_seed(6)
    x = torch.nn.functional.normalize(torch.randn(500, 64, generator=g), dim=1)
    y = apply_monarch(x, prepare_monarch(w1, w2)) + 0.1  # a rotation and an offset
    report = fit_adapter(
        "procrustes_monarch", x, y, direction="backward", options=FitOptions(normalize=False)
    )
    assert report.losses == []  # closed form: no gradient training
    adapter = report.adapter
    assert adapter.bias is not None  # the centred fit's offset
    assert isinstance(adapter.serving_form(), MonarchServingForm)
    torch.testing.assert_close(adapter.transform(x), torch.nn.functional.normalize(y, dim=1))
    with pytest.raises(InvalidInputError, match="init=procrustes"):
        build_adapter("procrustes_monarch", {"dim_in": 64, "dim_out": 64, "init": "random"})
