"""Fused Triton kernel for ``project``: tiled matmul, fp32 accumulation, bias + normalize + cast.

The only module of hotswap that imports triton; ``kernels.projection`` imports it lazily, on the
Triton path only. The specification is ``kernels.projection.project_ref``.

Each program owns BLOCK_M full output rows: BLOCK_N = next_power_of_2(d_out) (masked) so that the
L2 norm (and the int8 scale, max|row|) of a row can be taken in the epilogue without a second pass,
hence d_out <= 2048.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from kernels.errors import InvalidInputError
from kernels.optional import require
from kernels.projection import EPS, INT8_MAX, TRITON_DTYPES, TRITON_MAX_D_OUT

triton = require("triton", "triton")
tl = require("triton.language", "triton")


@triton.jit
def _accumulate(
    x_ptr,
    w_ptr,
    rows,
    cols,
    n_rows,
    d_in,
    d_out,
    stride_xm,
    stride_xk,
    stride_wk,
    stride_wn,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """(BLOCK_M, d_in) @ (d_in, BLOCK_N) -> (BLOCK_M, BLOCK_N) fp32, over K in BLOCK_K steps."""
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        k = k0 + ks
        x_tile = x_ptr + rows[:, None] * stride_xm + k[None, :] * stride_xk  # (BLOCK_M, BLOCK_K)
        a = tl.load(x_tile, mask=(rows < n_rows)[:, None] & (k < d_in)[None, :], other=0.0)
        w_tile = w_ptr + k[:, None] * stride_wk + cols[None, :] * stride_wn  # (BLOCK_K, BLOCK_N)
        b = tl.load(w_tile, mask=(k < d_in)[:, None] & (cols < d_out)[None, :], other=0.0)
        if UPCAST:  # mixed input dtypes: tl.dot needs one operand dtype
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _round_half_even(v):
    """Round fp32 to the nearest integer, ties to even (``torch.round``), as fp32.

    Casting to int truncates and libdevice's rint has no interpreter fallback, hence floor + fix-up.
    """
    r = tl.floor(v + 0.5)
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(((r - v) == 0.5) & odd, r - 1.0, r)


@triton.jit
def _quantize_rows(acc, s_ptr, rows, row_ok, QMAX: tl.constexpr):
    """(BLOCK_M, BLOCK_N) fp32 -> int8-valued fp32; stores scales (BLOCK_M,). Spec: quantize_rows."""
    amax = tl.max(tl.abs(acc), axis=1)  # masked columns hold zeros: they never raise the max
    qmax = tl.full(amax.shape, QMAX, tl.float32)
    # div_rn: IEEE-rounded like torch (plain `/` is approximate on GPU); a zero row divides by 1
    inv = tl.where(amax > 0.0, tl.math.div_rn(qmax, tl.where(amax > 0.0, amax, 1.0)), 0.0)
    tl.store(s_ptr + rows, tl.math.div_rn(amax, qmax), mask=row_ok)
    q = _round_half_even(acc * inv[:, None])
    return tl.minimum(tl.maximum(q, -QMAX), QMAX)


@triton.jit
def _project_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    s_ptr,
    n_rows,
    d_in,
    d_out,
    stride_xm,
    stride_xk,
    stride_wk,
    stride_wn,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    QUANTIZE: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    EPSILON: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y[rows] = normalize(x[rows] @ w + b): (BLOCK_M, d_in) -> (BLOCK_M, d_out), one program.

    With QUANTIZE, y is int8 and s[rows] receives the per-row scales (``s_ptr`` unused otherwise).
    """
    # int64 offsets: a gallery of 1e7 x 768 already overflows int32 element offsets
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    acc = _accumulate(
        x_ptr,
        w_ptr,
        rows,
        cols,
        n_rows,
        d_in,
        d_out,
        stride_xm,
        stride_xk,
        stride_wk,
        stride_wn,
        UPCAST,
        PRECISION,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
    )
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < d_out, other=0.0).to(tl.float32)[None, :]
    if NORMALIZE:  # masked columns hold exact zeros, so they do not change the norm
        norm = tl.sqrt(tl.sum(acc * acc, axis=1))  # (BLOCK_M,)
        acc = acc / tl.maximum(norm, EPSILON)[:, None]
    if QUANTIZE:
        acc = _quantize_rows(acc, s_ptr, rows, rows < n_rows, INT8_MAX)
    mask = (rows < n_rows)[:, None] & (cols < d_out)[None, :]
    y = y_ptr + rows[:, None] * stride_ym + cols[None, :] * stride_yn
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask)


def _config(d_out: int, elem_size: int) -> dict[str, int]:
    """Tile sizes: full-width BLOCK_N; BLOCK_M, BLOCK_K bounded by registers and shared memory.

    tl.dot needs every tile dimension >= 16 on NVIDIA; ``tl.arange`` extents are powers of 2.
    """
    block_n = max(16, triton.next_power_of_2(d_out))
    block_m = max(16, min(64, 16384 // block_n))  # fp32 accumulator <= 64 KiB per program
    block_k = max(16, min(64, 32768 // (block_n * elem_size)))  # weight tile ~32 KiB
    w_tile = block_k * block_n * elem_size
    return {
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_K": block_k,
        "num_warps": 8 if block_m * block_n >= 16384 else 4,
        "num_stages": 3 if w_tile <= 32768 else 2,
    }


def _check_domain(x: Tensor, weight: Tensor, out_dtype: torch.dtype) -> None:
    d_out = weight.shape[1]
    if d_out > TRITON_MAX_D_OUT:
        raise InvalidInputError(
            f"the Triton projection kernel supports d_out <= {TRITON_MAX_D_OUT}, got {d_out}",
            fix="use kernels.project, which routes wider outputs to torch",
        )
    dtypes = {x.dtype, weight.dtype, out_dtype}
    if not dtypes <= TRITON_DTYPES:
        raise InvalidInputError(
            f"the Triton projection kernel takes fp32/fp16/bf16, got {sorted(map(str, dtypes))}"
        )


def project_triton(
    x: Tensor, weight: Tensor, bias: Tensor | None, normalize: bool, out_dtype: torch.dtype
) -> Tensor:
    """Launch ``_project_kernel``: (N, d_in) @ (d_in, d_out) [+ (d_out,)] -> (N, d_out).

    Inputs are assumed validated by ``kernels.project``; no copies, any strides. Forward only.
    """
    _check_domain(x, weight, out_dtype)
    y = torch.empty((x.shape[0], weight.shape[1]), dtype=out_dtype, device=x.device)
    _launch(x, weight, bias, normalize, y, None)
    return y


def project_int8_triton(
    x: Tensor, weight: Tensor, bias: Tensor | None, normalize: bool
) -> tuple[Tensor, Tensor]:
    """The int8 epilogue: (N, d_in) -> values (N, d_out) int8, scales (N,) fp32 (see quantize_rows)."""
    _check_domain(x, weight, torch.float32)
    y = torch.empty((x.shape[0], weight.shape[1]), dtype=torch.int8, device=x.device)
    scales = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)  # stays 0 when d_out=0
    _launch(x, weight, bias, normalize, y, scales)
    return y, scales


def _launch(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    normalize: bool,
    y: Tensor,
    scales: Tensor | None,
) -> None:
    """Fill ``y`` (N, d_out) [and ``scales`` (N,) when quantizing] from one kernel launch."""
    (n_rows, d_in), d_out = x.shape, weight.shape[1]
    if n_rows == 0 or d_out == 0:
        return
    upcast = x.dtype != weight.dtype
    fp32_dot = upcast or x.dtype == torch.float32
    cfg = _config(d_out, 4 if upcast else x.element_size())
    grid = (triton.cdiv(n_rows, cfg["BLOCK_M"]),)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _project_kernel[grid](
            x,
            weight,
            weight if bias is None else bias,
            y,
            y if scales is None else scales,
            n_rows,
            d_in,
            d_out,
            x.stride(0),
            x.stride(1),
            weight.stride(0),
            weight.stride(1),
            y.stride(0),
            y.stride(1),
            HAS_BIAS=bias is not None,
            NORMALIZE=normalize,
            QUANTIZE=scales is not None,
            UPCAST=upcast,
            PRECISION="ieee" if fp32_dot else None,
            EPSILON=EPS,
            **cfg,
        )
