"""Exact inner-product top-k: ``ip_topk(queries, gallery, k) -> TopK(scores, indices)``.

``ip_topk_ref`` is the specification: the full (Q, N) score matrix in fp32 (fp64 for fp64 inputs)
and a stable descending sort, so equal scores come out lower gallery index first. ``ip_topk`` is
the public op. Its torch path never holds more than one (query block x gallery chunk) score tile: it
keeps a running top-k per query and merges each chunk into it, exactly (ties included). The Triton
path (``kernels._triton_topk``) scans the gallery tile by tile in registers and writes only
per-split candidates, never a (Q, N) matrix.

Inputs are not scanned for NaN/Inf: that would be one more full pass over a gallery that may be
gigabytes, on every query; callers validate vectors once, when they enter the catalog. With NaN
scores the ranking is unspecified (the call still returns).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from kernels.dispatch import backend
from kernels.errors import InvalidInputError
from kernels.projection import TRITON_DTYPES, _as, _compute_dtype

# Torch path tiling: a query block and a gallery chunk bound both temporaries (score tile and the
# chunk's upcast copy) whatever Q and N are; measured on CPU, tiles of this size already run at
# full GEMM speed (bench/kernels.py).
QUERY_BLOCK = 1024
SCORE_TILE = 1 << 21  # elements per (query block x chunk) score tile: 8 MiB in fp32
CHUNK_BYTES = 32 << 20  # bytes of one upcast gallery chunk
# The Triton path packs (score, index) in one int64 key: indices must fit in 31 bits; its running
# top-k lives in registers, so k is bounded too.
TRITON_MAX_K = 256
TRITON_MAX_N = 1 << 31


class TopK(NamedTuple):
    """Best ``k`` per query: ``scores`` (Q, k) descending, ``indices`` (Q, k) int64 gallery rows."""

    scores: Tensor
    indices: Tensor


def _check_inputs(queries: Tensor, gallery: Tensor, k: int) -> None:
    """Types, shapes, ``k`` and devices; raises :class:`InvalidInputError`."""
    for name, t in (("queries", queries), ("gallery", gallery)):
        if not (isinstance(t, Tensor) and t.is_floating_point()):
            kind = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise InvalidInputError(f"{name} must be a floating-point tensor, got {kind}")
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise InvalidInputError(
            f"queries must be (Q, d) and gallery (N, d) with one d; got queries "
            f"{tuple(queries.shape)}, gallery {tuple(gallery.shape)}",
            fix="batch single vectors as v[None, :]; both sides must live in one embedding space",
        )
    n = gallery.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise InvalidInputError(
            f"k must be an int with 1 <= k <= N={n} (the gallery size), got {k!r}",
            fix=f"ask for at most k={n}" if n else "add vectors to the gallery first",
        )
    if gallery.device != queries.device:
        raise InvalidInputError(
            f"queries are on {queries.device} but the gallery is on {gallery.device}",
            fix="move both to one device, e.g. queries.to(gallery.device)",
        )


def ip_topk_ref(queries: Tensor, gallery: Tensor, k: int) -> TopK:
    """The specification: (Q, d) x (N, d) -> scores (Q, k), indices (Q, k); ties: lower index first."""
    _check_inputs(queries, gallery, k)
    ct = _compute_dtype(queries, gallery)
    scores = queries.to(ct) @ gallery.to(ct).T  # (Q, d) @ (d, N) -> (Q, N)
    # a stable sort keeps equal scores in index order: the tie rule, by construction
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    return TopK(values[:, :k], order[:, :k])


def _ordered(values: Tensor, indices: Tensor) -> TopK:
    """Reorder each row of (m, k) candidates by (score descending, index ascending)."""
    indices, perm = indices.sort(dim=1)
    values = values.gather(1, perm)
    values, perm = values.sort(dim=1, descending=True, stable=True)
    return TopK(values, indices.gather(1, perm))


def exact_topk(scores: Tensor, k: int) -> TopK:
    """Exact top-k of a (m, C) score matrix under the tie rule; column indices, ordered.

    ``torch.topk`` picks an unspecified subset among values equal to the k-th; asking for k+1
    shows where that can matter (the (k+1)-th equals the k-th) and only those rows are re-ranked
    by a stable sort.
    """
    if k >= scores.shape[1]:
        values, order = torch.sort(scores, dim=1, descending=True, stable=True)
        return TopK(values, order)
    values, indices = torch.topk(scores, k + 1, dim=1)  # (m, k+1), descending
    tied = values[:, k - 1] == values[:, k]
    values, indices = values[:, :k], indices[:, :k]
    if bool(tied.any()):
        exact, order = torch.sort(scores[tied], dim=1, descending=True, stable=True)
        values[tied], indices[tied] = exact[:, :k], order[:, :k]
    return _ordered(values, indices)


def _merge(best: TopK, new: TopK, k: int) -> TopK:
    """Running top-k (m, k) + a later chunk's ordered candidates (m, k') -> top-k (m, k).

    Every index in ``new`` is larger than every index in ``best``, so a stable sort of the
    concatenation by score keeps the tie rule.
    """
    if bool((new.scores[:, 0] <= best.scores[:, -1]).all()):
        return best  # nothing in this chunk beats (or out-ties) the current k-th: the common case
    values = torch.cat([best.scores, new.scores], dim=1)
    indices = torch.cat([best.indices, new.indices], dim=1)
    values, perm = values.sort(dim=1, descending=True, stable=True)
    return TopK(values[:, :k], indices.gather(1, perm[:, :k]))


def chunk_rows(n_queries: int, d: int, k: int, *, upcast: bool = True) -> int:
    """Gallery rows per chunk for the torch path: a bounded score tile (and upcast copy), >= k.

    Without an upcast a chunk is a view of the gallery: only the score tile bounds it.
    """
    rows = SCORE_TILE // max(1, min(n_queries, QUERY_BLOCK))
    if upcast:
        rows = min(rows, CHUNK_BYTES // (4 * max(1, d)))
    return max(k, rows)


def _topk_torch(queries: Tensor, gallery: Tensor, k: int, chunk: int | None = None) -> TopK:
    """The chunked torch path: (Q, d) x (N, d) -> TopK (Q, k); peak memory O(block x chunk)."""
    ct = _compute_dtype(queries, gallery)
    n = gallery.shape[0]
    upcast = gallery.dtype != ct
    chunk = max(k, chunk or chunk_rows(queries.shape[0], gallery.shape[1], k, upcast=upcast))
    parts: list[TopK] = []
    with torch.no_grad():
        for q0 in range(0, queries.shape[0], QUERY_BLOCK):
            qb = _as(queries[q0 : q0 + QUERY_BLOCK], ct)  # (b, d)
            best: TopK | None = None
            for n0 in range(0, n, chunk):
                scores = qb @ _as(gallery[n0 : n0 + chunk], ct).T  # (b, d) @ (d, c) -> (b, c)
                top = exact_topk(scores, min(k, scores.shape[1]))
                top = TopK(top.scores, top.indices + n0)
                best = top if best is None else _merge(best, top, k)
            assert best is not None  # k >= 1 implies n >= 1: the loop ran
            parts.append(best)
    if not parts:  # Q == 0
        empty = torch.empty((0, k), dtype=ct, device=queries.device)
        return TopK(empty, torch.empty((0, k), dtype=torch.int64, device=queries.device))
    return TopK(torch.cat([p.scores for p in parts]), torch.cat([p.indices for p in parts]))


def _kernel_takes(queries: Tensor, gallery: Tensor, k: int) -> bool:
    """Inputs inside the Triton kernel's domain: 16/32-bit, k <= 256, N < 2^31."""
    return (
        {queries.dtype, gallery.dtype} <= TRITON_DTYPES
        and k <= TRITON_MAX_K
        and gallery.shape[0] < TRITON_MAX_N
    )


def _launch_triton(queries: Tensor, gallery: Tensor, k: int) -> TopK:
    from kernels._triton_topk import ip_topk_triton  # imports triton: only on this path

    return TopK(*ip_topk_triton(queries, gallery, k))


def ip_topk(queries: Tensor, gallery: Tensor, k: int) -> TopK:
    """Exact inner-product top-k: (Q, d) x (N, d) -> scores (Q, k) fp32, indices (Q, k) int64.

    Rows sorted by score descending, equal scores by gallery index ascending (as ``ip_topk_ref``).
    Scores accumulate in fp32 (fp64 inputs: fp64). Forward only. Runs the Triton kernel where
    ``HOTSWAP_KERNELS`` and the machine allow it and the inputs are in its domain.
    """
    _check_inputs(queries, gallery, k)
    if backend(queries.device) == "triton" and _kernel_takes(queries, gallery, k):
        return _launch_triton(queries, gallery, k)
    return _topk_torch(queries, gallery, k)
