"""``project``: reference vs fp64, torch path vs reference, Triton kernel by the precision rule."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
import torch

from kernels import project, project_ref
from kernels.errors import InvalidInputError

# the module, to patch its launchers
project_mod = importlib.import_module("kernels.projection")

# Tolerances for the precision-aware rule, per input dtype (outputs are O(1)).
ATOL = {torch.float32: 1e-6, torch.float16: 1e-4}


def _data(
    n: int,
    d_in: int,
    d_out: int,
    dtype: torch.dtype = torch.float32,
    bias: bool = True,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Seeded x (n, d_in), weight (d_in, d_out) scaled so outputs are O(1), bias (d_out,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g).to(dtype)
    w = (torch.randn(d_in, d_out, generator=g) / d_in**0.5).to(dtype)
    b = torch.randn(d_out, generator=g).to(dtype) if bias else None
    return x, w, b


def _fp64(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, normalize: bool
) -> torch.Tensor:
    """The fp64 reference of the same (already rounded) inputs."""
    return project_ref(
        x.double(), w.double(), None if b is None else b.double(), normalize=normalize
    )


def _err(y: torch.Tensor, ref64: torch.Tensor) -> float:
    return (y.double() - ref64).abs().max().item()


# --- reference -----------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
def test_ref_matches_fp64_hand_computation(normalize: bool) -> None:
    x, w, b = _data(7, 13, 5)
    xd, wd, bd = x.double(), w.double(), b.double()
    # sum_k x[i, k] w[k, j] + b[j], written out: (7, 13, 1) * (1, 13, 5) -> sum over k -> (7, 5)
    y = (xd[:, :, None] * wd[None, :, :]).sum(dim=1) + bd
    if normalize:
        y = y / y.pow(2).sum(dim=1, keepdim=True).sqrt()
    out = project_ref(x, w, b, normalize=normalize)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), y, rtol=1e-6, atol=1e-6)


def test_ref_accumulates_in_fp32_for_fp16_inputs() -> None:
    x, w, b = _data(4, 300, 8, torch.float16)
    out = project_ref(x, w, b, out_dtype=torch.float32)
    # only fp32 accumulation gets this close to fp64 on a K=300 sum of fp16 products
    assert _err(out, _fp64(x, w, b, False)) < 1e-5


def test_ref_normalize_zero_row_is_zero() -> None:
    x, w, _ = _data(3, 6, 4)
    x[1] = 0
    out = project_ref(x, w, None, normalize=True)
    assert torch.all(out[1] == 0) and torch.isfinite(out).all()


# --- torch path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("d_in", "d_out"), [(50, 23), (100, 64)])
@pytest.mark.parametrize("n", [1, 37, 1000])
def test_torch_path_equals_ref(
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    d_in: int,
    d_out: int,
    bias: bool,
    normalize: bool,
    dtype: torch.dtype,
) -> None:
    monkeypatch.setenv("HOTSWAP_KERNELS", "torch")
    x, w, b = _data(n, d_in, d_out, dtype, bias)
    out = project(x, w, b, normalize=normalize)
    ref = project_ref(x, w, b, normalize=normalize)
    assert out.shape == (n, d_out) and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-3  # fp16: one output ulp where roundings differ
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    ("dtype", "out_dtype"),
    [
        (torch.float16, torch.float32),
        (torch.float32, torch.float16),
        (torch.float64, torch.float64),
    ],
)
def test_torch_path_out_dtype(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, out_dtype: torch.dtype
) -> None:
    monkeypatch.setenv("HOTSWAP_KERNELS", "torch")
    x, w, b = _data(9, 20, 11, dtype)
    out = project(x, w, b, normalize=True, out_dtype=out_dtype)
    assert out.dtype == out_dtype
    ref = project_ref(x, w, b, normalize=True, out_dtype=out_dtype)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("normalize", [False, True])
def test_torch_path_gradients_match_ref(monkeypatch: pytest.MonkeyPatch, normalize: bool) -> None:
    monkeypatch.setenv("HOTSWAP_KERNELS", "auto")
    x, w, b = _data(6, 10, 7)
    grads = []
    for fn in (project, project_ref):
        wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
        fn(x, wr, br, normalize=normalize).pow(2).sum().backward()
        grads.append((wr.grad, br.grad))
    torch.testing.assert_close(grads[0], grads[1])


def test_torch_path_output_can_feed_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs are ordinary tensors (not inference tensors): a trainable layer may consume them."""
    monkeypatch.setenv("HOTSWAP_KERNELS", "torch")
    x, w, b = _data(5, 8, 4)
    y = project(x, w, b, normalize=True)
    assert not y.is_inference() and not y.requires_grad
    layer = torch.nn.Linear(4, 2)
    layer(y).sum().backward()
    assert layer.weight.grad is not None


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [project, project_ref])
def test_width_mismatch_names_both_widths(fn: Callable[..., torch.Tensor]) -> None:
    x, _, _ = _data(3, 50, 4)
    _, w, _ = _data(3, 64, 4)
    with pytest.raises(InvalidInputError, match=r"d_in=50.*d_in=64"):
        fn(x, w)


def test_1d_input_names_the_shape() -> None:
    _, w, _ = _data(1, 50, 4)
    with pytest.raises(InvalidInputError, match=r"\(50,\)"):
        project(torch.zeros(50), w)


def test_mismatched_bias_names_both_sizes() -> None:
    x, w, _ = _data(3, 50, 4)
    with pytest.raises(InvalidInputError, match=r"\(4,\).*\(5,\)"):
        project(x, w, torch.zeros(5))


@pytest.mark.parametrize(
    ("x", "w", "b", "out_dtype", "match"),
    [
        (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3, 4), None, None, "floating"),
        (torch.zeros(2, 3), torch.zeros(3, 4), None, torch.int8, "out_dtype"),
        (torch.zeros(2, 3), torch.zeros(3, 4, device="meta"), None, None, "meta"),
        (torch.zeros(2, 3), torch.zeros(3, 4), torch.zeros(4, device="meta"), None, "bias"),
    ],
)
def test_bad_dtypes_and_devices(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    out_dtype: torch.dtype | None,
    match: str,
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        project(x, w, b, out_dtype=out_dtype)


# --- Triton kernel (interpreter on CPU, real kernel on GPU) --------------------------------------


@pytest.fixture
def triton_on(force_triton: Callable[[str, str], list[int]]) -> list[int]:
    """Force the Triton path (skipped where it cannot run); the list counts launches."""
    return force_triton("kernels.projection", "_launch_triton")


# (N, d_in, d_out): one program and one K step; several programs and K steps with masked tails
SHAPES = [(37, 50, 23), (130, 150, 23), (1, 33, 70)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("bias", "normalize"), [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize(("n", "d_in", "d_out"), SHAPES)
def test_triton_precision_rule(
    triton_on: list[int],
    n: int,
    d_in: int,
    d_out: int,
    bias: bool,
    normalize: bool,
    dtype: torch.dtype,
) -> None:
    """err(kernel vs fp64) <= 2 * err(same-precision torch ref vs fp64) + atol."""
    x, w, b = _data(n, d_in, d_out, dtype, bias, seed=n + d_in)
    ref64 = _fp64(x, w, b, normalize)
    out = project(x, w, b, normalize=normalize)
    assert triton_on == [1] and out.shape == (n, d_out) and out.dtype == dtype
    ref_err = _err(project_ref(x, w, b, normalize=normalize), ref64)
    assert _err(out, ref64) <= 2 * ref_err + ATOL[dtype]


@pytest.mark.parametrize(
    ("dtype", "w_dtype", "out_dtype"),
    [(torch.float16, torch.float32, torch.float32), (torch.float32, torch.float32, torch.float16)],
)
def test_triton_mixed_dtypes(
    triton_on: list[int], dtype: torch.dtype, w_dtype: torch.dtype, out_dtype: torch.dtype
) -> None:
    x, _, b = _data(37, 50, 23, dtype)
    _, w, _ = _data(37, 50, 23, w_dtype)
    out = project(x, w, b, normalize=True, out_dtype=out_dtype)
    ref = project_ref(x, w, b, normalize=True, out_dtype=out_dtype)
    assert triton_on == [1] and out.dtype == out_dtype
    ref64 = _fp64(x, w, b, True)
    assert _err(out, ref64) <= 2 * _err(ref, ref64) + ATOL[torch.float16]


def test_triton_strided_input(triton_on: list[int]) -> None:
    x, w, b = _data(37, 100, 23)
    xs = x[:, ::2]  # (37, 50) view with stride (100, 2): the kernel reads it without a copy
    out = project(xs, w[:50], b, normalize=True)
    assert triton_on == [1]
    ref = project_ref(xs, w[:50], b, normalize=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_triton_empty_batch(triton_on: list[int]) -> None:
    x, w, b = _data(0, 50, 23)
    assert project(x, w, b, normalize=True).shape == (0, 23)


def test_triton_domain(triton_on: list[int]) -> None:
    """Wider than 2048 or fp64: the launcher refuses, ``project`` routes to torch."""
    from kernels._triton_project import project_triton

    x, w, _ = _data(2, 3, 2049)
    with pytest.raises(InvalidInputError, match="2048.*2049"):
        project_triton(x, w, None, False, torch.float32)
    torch.testing.assert_close(project(x, w), project_ref(x, w))
    xd, wd, _ = _data(2, 3, 4, torch.float64)
    with pytest.raises(InvalidInputError, match="float64"):
        project_triton(xd, wd, None, False, torch.float64)
    assert project(xd, wd).dtype == torch.float64
    assert triton_on == []


# --- int8 output ---------------------------------------------------------------------------------


def test_quantize_rows_hand_checked() -> None:
    y = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [2.54, 1.27, -0.635]])
    q, s = project_mod.quantize_rows(y)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    # row 0: amax 1 -> 127 * (0.5, -1, 0.25) = (63.5 -> 64 (ties to even), -127, 31.75 -> 32)
    assert q[0].tolist() == [64, -127, 32]
    assert q[1].tolist() == [0, 0, 0] and s[1].item() == 0.0
    assert q[2].tolist() == [127, 64, -32]  # 63.5 and -31.75 after scaling by 127 / 2.54
    torch.testing.assert_close(s, torch.tensor([1.0, 0.0, 2.54]) / 127)
    assert y[0].tolist() == [0.5, -1.0, 0.25]  # the input is left alone


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_int8_ref_error_is_half_a_step(normalize: bool, dtype: torch.dtype) -> None:
    x, w, b = _data(50, 40, 33, dtype)
    rows = project_mod.project_int8_ref(x, w, b, normalize=normalize)
    y = _fp64(x, w, b, normalize)
    assert rows.values.shape == (50, 33) and rows.scales.shape == (50,)
    assert rows.values.abs().amax(dim=1).eq(127).all()  # the max element of each row uses the range
    step = rows.scales.double()[:, None]
    # rounding error <= half a quantization step (+ the fp32 rounding of the projection itself)
    assert ((rows.dequantize(torch.float64) - y).abs() <= 0.5 * step + 1e-5).all()


@pytest.mark.parametrize("n", [1, 37, 1000])
def test_int8_torch_path_equals_ref(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setenv("HOTSWAP_KERNELS", "torch")
    x, w, b = _data(n, 64, 23, seed=n)
    x[0] = 0  # a zero row: scale 0, values 0, no division by zero
    q, s = project_mod.project_int8(x, w, None, normalize=True)
    q_ref, s_ref = project_mod.project_int8_ref(x, w, None, normalize=True)
    assert s[0] == 0 and torch.all(q[0] == 0)
    torch.testing.assert_close(s, s_ref)
    # the torch path's addmm/matmul may round differently from the reference: at most one step
    assert (q.int() - q_ref.int()).abs().max() <= 1
    q_b, _ = project_mod.project_int8(x, w, b, normalize=False)
    assert q_b.dtype == torch.int8 and q_b.shape == (n, 23)


def test_int8_never_tracks_gradients() -> None:
    x, w, b = _data(4, 8, 5)
    rows = project_mod.project_int8(x, w.requires_grad_(), b, normalize=True)
    assert not rows.values.requires_grad and not rows.scales.requires_grad


def test_int8_bad_input_raises() -> None:
    x, w, _ = _data(3, 8, 5)
    with pytest.raises(InvalidInputError, match="d_in=8.*d_in=9"):
        project_mod.project_int8(x, torch.zeros(9, 5))
    with pytest.raises(InvalidInputError, match="project_int8"):
        project(x, w, out_dtype=torch.int8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("bias", "normalize"), [(False, True), (True, False)])
@pytest.mark.parametrize(("n", "d_in", "d_out"), [(37, 50, 23), (1, 33, 70)])
def test_triton_int8_epilogue(
    force_triton: Callable[[str, str], list[int]],
    n: int,
    d_in: int,
    d_out: int,
    bias: bool,
    normalize: bool,
    dtype: torch.dtype,
) -> None:
    """Scales by the precision rule; values within one step of the reference's (rounding ties)."""
    launches = force_triton("kernels.projection", "_launch_triton_int8")
    x, w, b = _data(n, d_in, d_out, dtype, bias, seed=n + d_out)
    x[0] = 0
    q, s = project_mod.project_int8(x, w, b, normalize=normalize)
    q_ref, s_ref = project_mod.project_int8_ref(x, w, b, normalize=normalize)
    assert launches == [1] and q.dtype == torch.int8 and q.shape == (n, d_out)
    amax64 = _fp64(x, w, b, normalize).abs().amax(dim=1)
    ref_err = (s_ref.double() * 127 - amax64).abs().max().item()
    assert (s.double() * 127 - amax64).abs().max().item() <= 2 * ref_err + ATOL[dtype]
    assert (q.int() - q_ref.int()).abs().max() <= 1
    assert (q.int() != q_ref.int()).float().mean() < 0.01  # only rare near-ties may differ
