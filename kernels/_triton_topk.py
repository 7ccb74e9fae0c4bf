"""Fused Triton kernel for ``ip_topk``: tiled inner products with a running top-k in registers.

Stage 1 (the kernel): the grid is (query blocks, gallery splits). Each program walks its split of
the gallery BLOCK_N rows at a time, computes the (BLOCK_Q, BLOCK_N) fp32 score tile with
``tl.dot`` and merges it into a running top-K_PAD kept in registers; only the K_PAD best per query
and split are written, never a (Q, N) score matrix. Stage 2 (torch): one ``topk`` over the
(Q, splits * K_PAD) candidates.

Each (score, index) pair is packed into one int64 key, order-preserving: the fp32 bits mapped to a
signed int that sorts like the float, in the high word, and ``2^31 - 1 - index`` in the low word,
so a larger key is a better score or, on equal scores, a lower index: the tie rule of
``kernels.topk.ip_topk_ref`` falls out of one integer comparison, and every key is unique.
Tiles whose best key cannot enter the running top-k are skipped without sorting: after the first
few tiles of a large gallery that is nearly all of them, and the kernel is bound by reading it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from kernels.dispatch import interpreting
from kernels.errors import InvalidInputError
from kernels.optional import require
from kernels.projection import TRITON_DTYPES
from kernels.topk import TRITON_MAX_K, TRITON_MAX_N

triton = require("triton", "triton")
tl = require("triton.language", "triton")

LOW_MASK = 0xFFFFFFFF
INDEX_TOP = TRITON_MAX_N - 1  # low word = INDEX_TOP - index: lower index -> larger key
EMPTY_KEY = -(1 << 63)  # below every real key: padding never outranks a gallery row


@triton.jit
def _pack(scores, cols, INDEX_MAX: tl.constexpr):
    """(BQ, BN) fp32 scores and (BN,) int64 indices -> (BQ, BN) int64 keys, order-preserving."""
    scores = tl.where(scores == 0.0, 0.0, scores)  # -0.0 == 0.0 must share one key prefix
    bits = scores.to(tl.int32, bitcast=True)
    # negative floats sort backwards as ints: flip their magnitude bits (sign bit kept)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) | (INDEX_MAX - cols)[None, :]


@triton.jit
def _scores(
    q_ptr,
    g_ptr,
    qs,
    cols,
    n_q,
    stop,
    d,
    sqm,
    sqk,
    sgn,
    sgk,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BQ: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
):
    """(BQ, d) @ (d, BN) -> (BQ, BN) fp32 inner products of queries ``qs`` and gallery ``cols``."""
    ks = tl.arange(0, BD)
    acc = tl.zeros((BQ, BN), dtype=tl.float32)
    for k0 in range(0, d, BD):
        k = k0 + ks
        q = tl.load(
            q_ptr + qs[:, None] * sqm + k[None, :] * sqk,
            mask=(qs < n_q)[:, None] & (k < d)[None, :],
            other=0.0,
        )  # (BQ, BD)
        g = tl.load(
            g_ptr + cols[None, :] * sgn + k[:, None] * sgk,
            mask=(k < d)[:, None] & (cols < stop)[None, :],
            other=0.0,
        )  # (BD, BN): the gallery tile, transposed by addressing
        if UPCAST:  # mixed input dtypes: tl.dot needs one operand dtype
            q = q.to(tl.float32)
            g = g.to(tl.float32)
        acc = tl.dot(q, g, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _ip_topk_kernel(
    q_ptr,
    g_ptr,
    out_ptr,
    n_q,
    n_g,
    d,
    rows_per_split,
    sqm,
    sqk,
    sgn,
    sgk,
    sos,
    soq,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    INDEX_MAX: tl.constexpr,
    EMPTY: tl.constexpr,
    K_PAD: tl.constexpr,
    BQ: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
):
    """out[split, qs, :] = the K_PAD best keys of queries ``qs`` over rows of this split."""
    # int64 offsets: a 1e7 x 768 gallery overflows int32 element offsets
    qs = tl.program_id(0).to(tl.int64) * BQ + tl.arange(0, BQ)
    split = tl.program_id(1).to(tl.int64)
    start = split * rows_per_split
    stop = tl.minimum(start + rows_per_split, n_g)
    best = tl.full((BQ, K_PAD), EMPTY, tl.int64)  # descending
    for n0 in range(start, stop, BN):
        cols = n0 + tl.arange(0, BN)
        acc = _scores(
            q_ptr, g_ptr, qs, cols, n_q, stop, d, sqm, sqk, sgn, sgk, UPCAST, PRECISION, BQ, BN, BD
        )
        keys = tl.where((cols < stop)[None, :], _pack(acc, cols, INDEX_MAX), EMPTY)
        kth = tl.min(best, axis=1)  # (BQ,): the key a candidate must beat
        if tl.max(tl.max((keys > kth[:, None]).to(tl.int32), axis=1), axis=0) > 0:
            top = tl.topk(keys, K_PAD, dim=1)  # (BQ, K_PAD) of this tile
            best = tl.topk(tl.interleave(best, top), K_PAD, dim=1)
    out = out_ptr + split * sos + qs[:, None] * soq + tl.arange(0, K_PAD)[None, :]
    tl.store(out, best, mask=(qs < n_q)[:, None])


def unpack(keys: Tensor) -> tuple[Tensor, Tensor]:
    """int64 keys -> (fp32 scores, int64 indices), inverting ``_pack``."""
    ordered = (keys >> 32).to(torch.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return bits.view(torch.float32), INDEX_TOP - (keys & LOW_MASK)


def _config(n_q: int, k_pad: int, elem_size: int) -> dict[str, int]:
    """Tile sizes. tl.dot needs every tile dimension >= 16 on NVIDIA; extents are powers of 2.

    Few queries (memory-bound): a small query block, so one pass over the gallery serves them all.
    Many queries: 64-query blocks keep the tensor cores busy; the gallery is re-read once per block
    but from L2 across the programs of one split. The interpreter gets the smallest legal tiles.
    """
    if interpreting():
        return {"BQ": 16, "BN": max(16, k_pad), "BD": 16, "num_warps": 4, "num_stages": 1}
    bq = 16 if n_q <= 16 else 32 if n_q <= 32 else 64
    bn = max(128, k_pad)
    bd = 64 if elem_size == 2 else 32
    return {"BQ": bq, "BN": bn, "BD": bd, "num_warps": 8 if bq * bn >= 8192 else 4, "num_stages": 3}


def _splits(n_q_blocks: int, n_g: int, bn: int, device: torch.device) -> int:
    """Gallery splits so that (query blocks x splits) programs fill every SM a few times over."""
    tiles = triton.cdiv(n_g, bn)
    if device.type != "cuda":
        return min(tiles, 4)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, triton.cdiv(4 * sms, n_q_blocks)))


def _check_domain(queries: Tensor, gallery: Tensor, k: int) -> None:
    dtypes = {queries.dtype, gallery.dtype}
    if not dtypes <= TRITON_DTYPES:
        raise InvalidInputError(
            f"the Triton top-k kernel takes fp32/fp16/bf16, got {sorted(map(str, dtypes))}",
            fix="use kernels.ip_topk, which routes other dtypes to torch",
        )
    if k > TRITON_MAX_K or gallery.shape[0] >= TRITON_MAX_N:
        raise InvalidInputError(
            f"the Triton top-k kernel supports k <= {TRITON_MAX_K} and N < 2^31, got k={k}, "
            f"N={gallery.shape[0]}",
            fix="use kernels.ip_topk, which routes these to torch",
        )


def ip_topk_triton(
    queries: Tensor, gallery: Tensor, k: int, *, splits: int | None = None
) -> tuple[Tensor, Tensor]:
    """(Q, d) x (N, d) -> scores (Q, k) fp32, indices (Q, k) int64. Inputs validated by ip_topk."""
    _check_domain(queries, gallery, k)
    (n_q, d), n_g = queries.shape, gallery.shape[0]
    k_pad = max(2, triton.next_power_of_2(k))  # tl.topk: a power of 2
    upcast = queries.dtype != gallery.dtype
    cfg = _config(n_q, k_pad, 4 if upcast else gallery.element_size())
    q_blocks = triton.cdiv(max(n_q, 1), cfg["BQ"])
    splits = max(1, min(splits or _splits(q_blocks, n_g, cfg["BN"], gallery.device), n_g))
    rows_per_split = triton.cdiv(triton.cdiv(n_g, splits), cfg["BN"]) * cfg["BN"]
    splits = triton.cdiv(n_g, rows_per_split)  # no empty split after rounding up
    keys = torch.empty((splits, n_q, k_pad), dtype=torch.int64, device=queries.device)
    if n_q:
        with torch.cuda.device(queries.device) if queries.is_cuda else contextlib.nullcontext():
            _ip_topk_kernel[(q_blocks, splits)](
                queries,
                gallery,
                keys,
                n_q,
                n_g,
                d,
                rows_per_split,
                queries.stride(0),
                queries.stride(1),
                gallery.stride(0),
                gallery.stride(1),
                keys.stride(0),
                keys.stride(1),
                UPCAST=upcast,
                PRECISION="ieee" if upcast or queries.dtype == torch.float32 else None,
                INDEX_MAX=INDEX_TOP,
                EMPTY=EMPTY_KEY,
                K_PAD=k_pad,
                **cfg,
            )
    # stage 2: keys are unique, so topk's order is total: (score desc, index asc)
    best = keys.permute(1, 0, 2).reshape(n_q, splits * k_pad).topk(k, dim=1).values
    return unpack(best)
