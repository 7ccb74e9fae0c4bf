"""Fused Triton kernel for ``apply_monarch``: both block-diagonal factors, the stride permutation
in registers, bias, normalize and cast in one launch. The specification is
``kernels.monarch.project_monarch_ref``.

One program owns BLOCK_M full rows. x is loaded as a (BLOCK_M, k, p) tile (zero padding of d_in
and of p by masks), the first factor is a batched dot over the k blocks, the (k, q) middle grid is
re-read as (r, l) and transposed with ``tl.reshape``/``tl.permute`` (no trip through memory), the
second factor is a batched dot over the l blocks, and the (BLOCK_M, s, l) result is stored at
column ss*l + ll, cropped to d_out by the store mask. The register reshape needs the middle grid
unpadded: k, q, l, r powers of 2 (p, s, d_in and d_out are free). Block-diagonal maps (no w2)
take any shape (k and q padded by masks). Other shapes are refused here and run on the torch
path (``supports``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from kernels.errors import InvalidInputError
from kernels.monarch import EPS, MonarchMap
from kernels.optional import require

triton = require("triton", "triton")
tl = require("triton.language", "triton")

# One program holds BLOCK_M x (padded d_out) fp32 accumulators: keep it within ~64 KiB.
MAX_TILE = 16384


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def supports(m: MonarchMap) -> bool:
    """Whether the kernel takes this map: a power-of-2 middle grid and a full row per program."""
    k, q, _ = m.w1.shape
    l, _, r = m.w2.shape if m.w2 is not None else (1, 1, 1)  # noqa: E741
    middle = m.w2 is None or all(_pow2(v) for v in (k, q, l, r))
    return middle and _width(_grid_dims(m)) <= MAX_TILE


@triton.jit
def _bdot(a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):  # noqa: N803
    """(G, M, K) @ (G, K, N) -> (G, M, N) fp32; tl.dot needs M, N, K >= 16 on NVIDIA."""
    if USE_DOT:
        return tl.dot(a, b, input_precision=PRECISION, out_dtype=tl.float32)
    else:
        return tl.sum(a[:, :, :, None].to(tl.float32) * b[:, None, :, :].to(tl.float32), axis=2)


@triton.jit
def _monarch_kernel(
    x_ptr,
    w1_ptr,
    w2_ptr,
    b_ptr,
    y_ptr,
    n_rows,
    d_in,
    d_out,
    k,
    p,
    q,
    s,
    stride_xm,
    stride_xk,
    s1k,
    s1q,
    s1p,
    s2l,
    s2s,
    s2r,
    stride_ym,
    stride_yn,
    HAS_W2: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    UPCAST: tl.constexpr,
    USE_DOT: tl.constexpr,
    PRECISION1: tl.constexpr,
    EPSILON: tl.constexpr,
    BLOCK_M: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    Q: tl.constexpr,
    L: tl.constexpr,
    R: tl.constexpr,
    S: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: big galleries
    ks, ps, qs = tl.arange(0, K), tl.arange(0, P), tl.arange(0, Q)
    # x (BLOCK_M, K, P): column kk*p + pp, zero past d_in (the input padding) and past p
    col_in = ks[None, :, None] * p + ps[None, None, :]
    in_block = (ks < k)[None, :, None] & (ps < p)[None, None, :]
    x_mask = (rows < n_rows)[:, None, None] & in_block & (col_in < d_in)
    x = tl.load(
        x_ptr + rows[:, None, None] * stride_xm + col_in * stride_xk, mask=x_mask, other=0.0
    )
    # w1 as (K, P, Q): w1t[kk, pp, jj] = w1[kk, jj, pp]
    w1_off = ks[:, None, None] * s1k + ps[None, :, None] * s1p + qs[None, None, :] * s1q
    w1_mask = (ks < k)[:, None, None] & (ps < p)[None, :, None] & (qs < q)[None, None, :]
    w1 = tl.load(w1_ptr + w1_off, mask=w1_mask, other=0.0)
    if UPCAST:  # mixed input dtypes: tl.dot needs one operand dtype
        x = x.to(tl.float32)
        w1 = w1.to(tl.float32)
    # (K, BLOCK_M, P) @ (K, P, Q) -> (K, BLOCK_M, Q) -> (BLOCK_M, K, Q)
    h = tl.permute(_bdot(tl.permute(x, (1, 0, 2)), w1, USE_DOT, PRECISION1), (1, 0, 2))
    if HAS_W2:
        # the stride permutation in registers: the (K*Q) middle vector as (R, L), transposed
        h = tl.permute(tl.reshape(h, (BLOCK_M, R, L)), (2, 0, 1))  # (L, BLOCK_M, R)
        ls, rs, ss = tl.arange(0, L), tl.arange(0, R), tl.arange(0, S)
        w2_off = ls[:, None, None] * s2l + rs[None, :, None] * s2r + ss[None, None, :] * s2s
        w2 = tl.load(w2_ptr + w2_off, mask=(ss < s)[None, None, :], other=0.0)  # (L, R, S)
        # fp32 x fp32 (ieee, not TF32): the middle stays at accumulator precision
        z = tl.permute(_bdot(h, w2.to(tl.float32), USE_DOT, "ieee"), (1, 2, 0))
        # z (BLOCK_M, S, L): output column ss*l + ll
        col = ss[None, :, None] * L + ls[None, None, :]
        col_mask = (ss < s)[None, :, None] & (col < d_out)
    else:
        z = h  # (BLOCK_M, K, Q): output column kk*q + jj
        col = ks[None, :, None] * q + qs[None, None, :]
        col_mask = (ks < k)[None, :, None] & (qs < q)[None, None, :] & (col < d_out)
    if HAS_BIAS:
        z += tl.load(b_ptr + col, mask=col_mask, other=0.0).to(tl.float32)
    z = tl.where(col_mask, z, 0.0)  # padded columns must not reach the norm
    if NORMALIZE:
        norm = tl.sqrt(tl.sum(tl.sum(z * z, axis=2), axis=1))  # (BLOCK_M,)
        z = z / tl.maximum(norm, EPSILON)[:, None, None]
    y = y_ptr + rows[:, None, None] * stride_ym + col * stride_yn
    tl.store(y, z.to(y_ptr.dtype.element_ty), mask=(rows < n_rows)[:, None, None] & col_mask)


def _grid_dims(m: MonarchMap) -> dict[str, int]:
    k, q, p = m.w1.shape
    l, s, r = m.w2.shape if m.w2 is not None else (1, 1, 1)  # noqa: E741
    p2 = triton.next_power_of_2
    return {"K": p2(k), "P": p2(p), "Q": p2(q), "L": l, "R": r, "S": p2(s)}


def _width(dims: dict[str, int]) -> int:
    """The widest per-row tile the program holds (input, middle or output grid)."""
    return max(dims["K"] * max(dims["P"], dims["Q"]), dims["L"] * max(dims["R"], dims["S"]))


def project_monarch_triton(
    x: Tensor, m: MonarchMap, normalize: bool, out_dtype: torch.dtype
) -> Tensor:
    """Launch ``_monarch_kernel``: x (N, d_in) -> (N, d_out). Inputs validated by the caller."""
    if not supports(m):
        raise InvalidInputError(
            f"the Triton Monarch kernel needs power-of-2 k, q, l, r; got w1 {tuple(m.w1.shape)}, "
            f"w2 {None if m.w2 is None else tuple(m.w2.shape)}",
            fix="use kernels.monarch.apply_monarch, which routes other shapes to torch",
        )
    n_rows = x.shape[0]
    y = torch.empty((n_rows, m.d_out), dtype=out_dtype, device=x.device)
    if n_rows == 0:
        return y
    dims = _grid_dims(m)
    width = _width(dims)
    block_m = max(16, min(64, MAX_TILE // width))
    # tl.dot needs every dot dimension >= 16 on NVIDIA: smaller blocks take the FMA path
    small = min(dims["P"], dims["Q"]) < 16 or (m.w2 is not None and min(dims["R"], dims["S"]) < 16)
    upcast = x.dtype != m.w1.dtype
    w2 = m.w2 if m.w2 is not None else m.w1
    k, q, p = m.w1.shape
    s = m.w2.shape[1] if m.w2 is not None else 1
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _monarch_kernel[(triton.cdiv(n_rows, block_m),)](
            x,
            m.w1,
            w2,
            m.w1 if m.bias is None else m.bias,
            y,
            n_rows,
            x.shape[1],
            m.d_out,
            k,
            p,
            q,
            s,
            x.stride(0),
            x.stride(1),
            *m.w1.stride(),
            *w2.stride(),
            y.stride(0),
            y.stride(1),
            HAS_W2=m.w2 is not None,
            HAS_BIAS=m.bias is not None,
            NORMALIZE=normalize,
            UPCAST=upcast,
            USE_DOT=not small,
            PRECISION1="ieee" if upcast or x.dtype == torch.float32 else None,
            EPSILON=EPS,
            BLOCK_M=block_m,
            num_warps=8 if block_m * width >= 16384 else 4,
            **dims,
        )
    return y
