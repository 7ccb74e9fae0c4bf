"""``project_monarch``: reference vs dense form, torch path at every size class, Triton by the
precision rule (under TRITON_INTERPRET=1 on CPU), errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from kernels.errors import InvalidInputError
from kernels.monarch import (
    COLUMN_ROWS,
    CPU_CHUNK_ROWS,
    apply_monarch,
    prepare_monarch,
    project_monarch,
    project_monarch_ref,
)

F64 = torch.float64
ATOL = {torch.float32: 1e-6, torch.float16: 1e-4}

# (k, q, p, l, s, r, d_in, d_out); l=None: block-diagonal. Non-power-of-2 p, s and crops, a
# rectangular middle (l != k), and with every dimension >= 16 (the tl.dot path, not the FMA one).
SHAPES = [
    (4, 2, 3, 2, 5, 4, 11, 9),
    (2, 4, 5, 4, 3, 2, 9, 12),
    (4, 16, 16, 4, 16, 16, 60, 50),
    (3, 5, 7, None, None, None, 20, 14),
    (2, 3, 4, None, None, None, 7, 6),
    (2, 16, 16, None, None, None, 30, 32),
]
# The torch path's layout cases beyond SHAPES (whose middle grids are all q % l == 0): l % q == 0
# with a crop of whole output-grid rows (d_out % l == 0), and neither dividing the other.
TORCH_SHAPES = [*SHAPES, (4, 3, 2, 6, 2, 2, 8, 6), (2, 6, 5, 4, 3, 3, 9, 10)]


def _data(
    shape: tuple[Any, ...], n: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Seeded x (n, d_in), w1, w2 (scaled so outputs are O(1)), bias (d_out,)."""
    k, q, p, l, s, r, d_in, d_out = shape  # noqa: E741
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g).to(dtype)
    w1 = (torch.randn(k, q, p, generator=g) / p**0.5).to(dtype)
    w2 = None if l is None else (torch.randn(l, s, r, generator=g) / r**0.5).to(dtype)
    return x, w1, w2, torch.randn(d_out, generator=g).to(dtype)


def stride_permutation(rows: int, cols: int) -> torch.Tensor:
    """P with (P v)[j*rows + i] = v[i*cols + j]: v read as a (rows, cols) grid, transposed."""
    perm = torch.zeros(rows * cols, rows * cols, dtype=F64)
    for i in range(rows):
        for j in range(cols):
            perm[j * rows + i, i * cols + j] = 1.0
    return perm


def dense_form(w1: torch.Tensor, w2: torch.Tensor | None) -> torch.Tensor:
    """The (d_out_padded, d_in_padded) matrix, built from block_diag and permutation matrices."""
    right = torch.block_diag(*w1.double())
    if w2 is None:
        return right
    l, s, r = w2.shape  # noqa: E741
    return (
        stride_permutation(l, s) @ torch.block_diag(*w2.double()) @ stride_permutation(r, l) @ right
    )


def _err(y: torch.Tensor, ref64: torch.Tensor) -> float:
    return (y.double() - ref64).abs().max().item()


# --- reference -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", [False, True])
def test_ref_equals_dense_form(shape: tuple[Any, ...], normalize: bool) -> None:
    x, w1, w2, b = _data(shape, 7)
    x, w1, b = x.double(), w1.double(), b.double()
    w2 = None if w2 is None else w2.double()
    d_in, d_out = shape[-2:]
    y = x @ dense_form(w1, w2)[:d_out, :d_in].T + b
    if normalize:
        y = y / y.norm(dim=1, keepdim=True)
    got = project_monarch_ref(x, w1, w2, b, d_out=d_out, normalize=normalize)
    torch.testing.assert_close(got, y, rtol=1e-12, atol=1e-12)


# --- torch path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", TORCH_SHAPES)
# empty, one row, small (row-wise first product), column-wise first product, chunked
@pytest.mark.parametrize("n", [0, 1, 2, 5, COLUMN_ROWS + 1, 2 * CPU_CHUNK_ROWS + 3])
@pytest.mark.parametrize(("bias", "normalize"), [(False, False), (True, True), (True, False)])
def test_torch_path_equals_dense_form(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[Any, ...], n: int, bias: bool, normalize: bool
) -> None:
    monkeypatch.setenv("HOTSWAP_KERNELS", "torch")
    x, w1, w2, b = _data(shape, n, F64, seed=n)
    d_in, d_out = shape[-2:]
    b = b if bias else None
    with torch.no_grad():  # the inference path: cached layouts, in-place normalize
        got = project_monarch(x, w1, w2, b, d_out=d_out, normalize=normalize)
    y = x @ dense_form(w1, w2)[:d_out, :d_in].T + (0 if b is None else b)
    if normalize:
        y = y / y.norm(dim=1, keepdim=True)
    assert got.shape == (n, d_out) and got.dtype == F64
    torch.testing.assert_close(got, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("normalize", [False, True])
def test_torch_path_gradients_match_ref(normalize: bool) -> None:
    x, w1, w2, b = _data(SHAPES[0], 2 * 8 + 3, F64)
    grads = []
    for fn in ("path", "ref"):
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2, b) if t is not None]
        xs, a, c, bb = leaves
        if fn == "path":
            m = prepare_monarch(a, c, bb, d_out=9)
            y = apply_monarch(xs, m, normalize=normalize, chunk_rows=8)  # chunked too
        else:
            y = project_monarch_ref(xs, a, c, bb, d_out=9, normalize=normalize)
        grads.append(torch.autograd.grad(y.pow(3).sum(), leaves))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", TORCH_SHAPES)
@pytest.mark.parametrize("n", [1, 3, COLUMN_ROWS])  # one row, row-wise, column-wise
def test_torch_path_values_and_gradients_match_dense_form(shape: tuple[Any, ...], n: int) -> None:
    """With autograd on (training): values and the gradients of x, w1, w2 and the bias."""
    x, w1, w2, b = _data(shape, n, F64, seed=n)
    d_in, d_out = shape[-2:]
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2, b) if t is not None]
    upstream = torch.randn(n, d_out, dtype=F64, generator=torch.Generator().manual_seed(9))
    grads = []
    for fn in ("path", "dense"):
        xs, a, *rest = leaves
        c, bb = (None, rest[0]) if w2 is None else rest
        if fn == "path":
            y = apply_monarch(xs, prepare_monarch(a, c, bb, d_out=d_out))
        else:
            y = xs @ _dense_form_autograd(a, c)[:d_out, :d_in].T + bb
        grads.append((y, *torch.autograd.grad((y * upstream).sum(), leaves)))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _dense_form_autograd(w1: torch.Tensor, w2: torch.Tensor | None) -> torch.Tensor:
    """``dense_form`` kept differentiable in the factors (fp64 factors only)."""
    right = torch.block_diag(*w1)
    if w2 is None:
        return right
    l, s, r = w2.shape  # noqa: E741
    return stride_permutation(l, s) @ torch.block_diag(*w2) @ stride_permutation(r, l) @ right


@pytest.mark.parametrize("n", [1, 4, COLUMN_ROWS])
@pytest.mark.parametrize("shape", [TORCH_SHAPES[0], TORCH_SHAPES[-1]])
def test_torch_path_reads_strided_rows(shape: tuple[Any, ...], n: int) -> None:
    """Full-width rows (no padding copy) with a column stride and a storage offset: the torch
    path reads the blocks as a strided view of x, so the strides must be honoured."""
    _, w1, w2, b = _data(shape, 1, F64)
    d_out, width = shape[-1], w1.shape[0] * w1.shape[2]
    x = torch.randn(n + 2, 2 * width, dtype=F64, generator=torch.Generator().manual_seed(n))
    rows = x[2:, ::2]  # (n, k*p), strides (2 k*p, 2), storage offset 4 k*p
    want = rows @ dense_form(w1, w2)[:d_out].T + b
    m = prepare_monarch(w1, w2, b, d_out=d_out)
    with torch.no_grad():
        torch.testing.assert_close(apply_monarch(rows, m), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(apply_monarch(rows, m), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("dtype", "out_dtype"), [(torch.float16, torch.float32), (torch.float32, torch.float16)]
)
def test_torch_path_dtypes(dtype: torch.dtype, out_dtype: torch.dtype) -> None:
    x, w1, w2, b = _data(SHAPES[1], 6, dtype)
    got = project_monarch(x, w1, w2, b, d_out=12, normalize=True, out_dtype=out_dtype)
    want = project_monarch_ref(x, w1, w2, b, d_out=12, normalize=True, out_dtype=out_dtype)
    assert got.dtype == out_dtype and not got.is_inference()
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[4]])  # uncropped: written in place per chunk
def test_chunked_inference_casts_and_normalizes_in_place(shape: tuple[Any, ...]) -> None:
    x, w1, w2, b = _data(shape, 3 * 16 + 5)
    m = prepare_monarch(w1, w2, b)
    with torch.no_grad():
        got = apply_monarch(x, m, normalize=True, out_dtype=torch.float16, chunk_rows=16)
    want = project_monarch_ref(x, w1, w2, b, normalize=True, out_dtype=torch.float16)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w1", "w2", "bias", "d_out", "match"),
    [
        (torch.zeros(4, 3), None, None, None, r"\(k, q, p\)"),
        (torch.zeros(2, 3, 4), torch.zeros(5, 2, 2), None, None, r"k\*q=6.*l\*r=10"),
        (torch.zeros(2, 3, 4), torch.zeros(3, 2, 2), None, 7, r"d_out=7.*\[1, 6\]"),
        (torch.zeros(2, 3, 4), torch.zeros(3, 2, 2), torch.zeros(5), None, r"\(6,\).*\(5,\)"),
        (torch.zeros(2, 3, 4, dtype=torch.int64), None, None, None, "w1 must be a floating"),
        (torch.zeros(2, 3, 4), torch.zeros(3, 2, 2, device="meta"), None, None, "w2 is on meta"),
    ],
)
def test_bad_factors_name_the_shapes(
    w1: torch.Tensor,
    w2: torch.Tensor | None,
    bias: torch.Tensor | None,
    d_out: int | None,
    match: str,
) -> None:
    for fn in (project_monarch, project_monarch_ref):
        with pytest.raises(InvalidInputError, match=match):
            fn(torch.zeros(1, 8), w1, w2, bias, d_out=d_out)


def test_bad_input_names_the_width() -> None:
    m = prepare_monarch(torch.zeros(2, 3, 4), torch.zeros(3, 2, 2))
    with pytest.raises(InvalidInputError, match=r"k\*p=8.*\(1, 9\)"):
        apply_monarch(torch.zeros(1, 9), m)
    with pytest.raises(InvalidInputError, match=r"\(8,\)"):
        apply_monarch(torch.zeros(8), m)
    with pytest.raises(InvalidInputError, match="meta"):
        apply_monarch(torch.zeros(1, 8, device="meta"), m)


# --- Triton kernel (interpreter on CPU, real kernel on GPU) --------------------------------------


@pytest.fixture
def triton_on(force_triton: Callable[[str, str], list[int]]) -> list[int]:
    """Force the Triton path (skipped where it cannot run); the list counts launches."""
    return force_triton("kernels._triton_monarch", "project_monarch_triton")


def _fp64_ref(x: Any, w1: Any, w2: Any, b: Any, d_out: int, normalize: bool) -> torch.Tensor:
    w2 = None if w2 is None else w2.double()
    b = None if b is None else b.double()
    return project_monarch_ref(x.double(), w1.double(), w2, b, d_out=d_out, normalize=normalize)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("bias", "normalize"), [(False, False), (True, True)])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_precision_rule(
    triton_on: list[int],
    shape: tuple[Any, ...],
    bias: bool,
    normalize: bool,
    dtype: torch.dtype,
) -> None:
    """err(kernel vs fp64) <= 2 * err(same-precision torch ref vs fp64) + atol."""
    x, w1, w2, b = _data(shape, 37, dtype, seed=shape[0])
    b = b if bias else None
    d_out = shape[-1]
    out = project_monarch(x, w1, w2, b, d_out=d_out, normalize=normalize)
    assert triton_on == [1] and out.shape == (37, d_out) and out.dtype == dtype
    ref64 = _fp64_ref(x, w1, w2, b, d_out, normalize)
    ref_err = _err(project_monarch_ref(x, w1, w2, b, d_out=d_out, normalize=normalize), ref64)
    assert _err(out, ref64) <= 2 * ref_err + ATOL[dtype]


def test_triton_mixed_dtypes_and_strided_input(triton_on: list[int]) -> None:
    x, w1, w2, b = _data(SHAPES[0], 20, torch.float16)
    xs = torch.cat([x, x], dim=1)[:, ::2]  # (20, 11) with stride (22, 2): read without a copy
    out = project_monarch(xs, w1.float(), w2, b, d_out=9, normalize=True, out_dtype=torch.float32)
    assert triton_on == [1] and out.dtype == torch.float32
    ref = project_monarch_ref(xs, w1.float(), w2, b, d_out=9, normalize=True)
    ref64 = _fp64_ref(xs, w1, w2, b, 9, True)
    assert _err(out, ref64) <= 2 * _err(ref.float(), ref64) + ATOL[torch.float16]


def test_triton_domain_routes_to_torch(triton_on: list[int]) -> None:
    """A non-power-of-2 middle grid or autograd: the launcher refuses, apply_monarch uses torch."""
    from kernels._triton_monarch import supports

    x, w1, w2, b = _data((3, 5, 7, 5, 2, 3, 20, 9), 4)
    m = prepare_monarch(w1, w2, b, d_out=9)
    assert not supports(m)
    torch.testing.assert_close(apply_monarch(x, m), project_monarch_ref(x, w1, w2, b, d_out=9))
    x, w1, w2, b = _data(SHAPES[0], 4)
    project_monarch(x, w1.requires_grad_(), w2, b, d_out=9).sum().backward()
    assert w1.grad is not None
    assert triton_on == []


def test_triton_empty_batch(triton_on: list[int]) -> None:
    x, w1, w2, b = _data(SHAPES[0], 0)
    assert project_monarch(x, w1, w2, b, d_out=9, normalize=True).shape == (0, 9)
