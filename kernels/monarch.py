"""Monarch / block-diagonal projection ``y = normalize(crop(P_out B2 P_mid B1 pad(x)) + b)``.

The structured counterpart of :mod:`kernels.projection`, and the one implementation of the
Monarch product in hotswap (``models.layers`` and the orthogonal Monarch adapter run it):

- ``project_monarch_ref``: the specification (pure torch, einsum, fp32 accumulation);
- :class:`MonarchMap` + ``prepare_monarch``: the factors validated once and laid out for the CPU
  torch path (a layer or a serving form holds one instead of re-laying its weights per call);
- ``apply_monarch``: the public dispatching op on a prepared map (torch path or the fused Triton
  kernel of ``kernels._triton_monarch``, as ``kernels.dispatch.backend`` decides);
- ``project_monarch``: the same from raw factors, in one call.

Layout (the k, q, p / l, s, r names of research/kernels.md): w1 (k, q, p), w2 (l, s, r) with
l*r == k*q. x (N, d_in) is zero-padded to k*p, cut into k blocks of p, block i maps through
w1[i] (q, p); the (k*q) result read as an (r, l) grid and transposed (the stride permutation)
gives l blocks of r, block j maps through w2[j] (s, r); the (l, s) result is transposed again to
(s, l) and cropped to d_out. Without w2 the map is block-diagonal: (k*q) cropped to d_out.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.dispatch import backend
from kernels.errors import InvalidInputError
from kernels.projection import EPS, _as, _check_devices, _check_dtypes, _compute_dtype, _normalize_

# Rows per chunk on CPU. Unchunked Monarch at B=16384 is slower than dense: the permutation
# copies fall out of cache. At d=1024, 256 rows (1 MiB of fp32 per copy) measured best:
# 2.7-3.1x dense `project` against 2.0-2.5x with 1024 (docs/results/structured.md).
CPU_CHUNK_ROWS = 256
TRITON_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
# From this many rows the first product runs column-wise and the stride permutation becomes a
# view (see _product): at d=1024, 0.8-0.85x the time at B=32, ~1x at B=8, 1.3-1.6x at B=2.
COLUMN_ROWS = 16


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class MonarchMap:
    """Validated factors plus their torch-path layouts. Build with :func:`prepare_monarch`.

    ``w1t`` (k, p, q) and ``w2t`` (l, r, s) are the factors transposed and contiguous in the
    compute dtype (CPU bmm copies a transposed weight block by block on every call otherwise);
    ``bias_t`` is the bias padded and laid out as the second bmm's output, (l, 1, s), or (k, 1, q)
    without w2, so that ``baddbmm`` adds it for free. Built with autograd on, they stay
    differentiable functions of the factors (training goes through the same path). ``dims``
    (k, p, q, l, r, s), ``d_in_padded`` and ``requires_grad`` are read once here, not per call
    (an attribute read is ~0.1 us, a shape product ~0.3 us; l = r = s = 0 without w2).
    """

    w1: Tensor  # (k, q, p), as given (the Triton kernel reads any strides)
    w2: Tensor | None  # (l, s, r)
    bias: Tensor | None  # (d_out,)
    d_out: int
    w1t: Tensor  # (k, p, q)
    w2t: Tensor | None  # (l, r, s)
    bias_t: Tensor | None  # (l, 1, s) or (k, 1, q)
    dims: tuple[int, int, int, int, int, int]  # (k, p, q, l, r, s)
    requires_grad: bool  # any of w1t, w2t, bias_t
    d_in_padded: int  # k*p


def _check_factor_tensors(w1: Tensor, w2: Tensor | None, bias: Tensor | None) -> None:
    """Floating tensors on one device (named as the caller knows them)."""
    for name, t in (("w1", w1), ("w2", w2), ("bias", bias)):
        if t is None:
            continue
        if not (isinstance(t, Tensor) and t.is_floating_point()):
            kind = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise InvalidInputError(f"{name} must be a floating-point tensor, got {kind}")
        if t.device != w1.device:
            raise InvalidInputError(
                f"w1 is on {w1.device} but {name} is on {t.device}",
                fix=f"move both to one device, e.g. {name}.to(w1.device)",
            )


def _check_factors(w1: Tensor, w2: Tensor | None, bias: Tensor | None, d_out: int | None) -> int:
    """Shapes of the factors; returns the validated output width."""
    if w1.dim() != 3 or (w2 is not None and w2.dim() != 3):
        shapes = f"w1 {tuple(w1.shape)}" + ("" if w2 is None else f", w2 {tuple(w2.shape)}")
        raise InvalidInputError(
            f"Monarch factors must be (k, q, p) and (l, s, r) block stacks; got {shapes}"
        )
    k, q, _ = w1.shape
    full = k * q
    if w2 is not None:
        l, s, r = w2.shape  # noqa: E741 (the names of kernels.md)
        if l * r != k * q:
            raise InvalidInputError(
                f"w1 {tuple(w1.shape)} gives k*q={k * q} middle features but w2 "
                f"{tuple(w2.shape)} reads l*r={l * r}",
                fix="choose l, r with l*r == k*q (MonarchLinear uses l=k, r=q)",
            )
        full = l * s
    d_out = full if d_out is None else d_out
    if not 0 < d_out <= full:
        raise InvalidInputError(f"d_out={d_out} must be in [1, {full}] for these factors")
    if bias is not None and tuple(bias.shape) != (d_out,):
        raise InvalidInputError(f"bias must be (d_out,)=({d_out},), got {tuple(bias.shape)}")
    return d_out


def prepare_monarch(
    w1: Tensor, w2: Tensor | None = None, bias: Tensor | None = None, *, d_out: int | None = None
) -> MonarchMap:
    """Validate the factors and lay them out for the torch path (two small copies of the weights).

    w1 (k, q, p), w2 (l, s, r) or None (block-diagonal), bias (d_out,); d_out defaults to the full
    output width (l*s, or k*q without w2). Cheap next to one batch; hold on to the result.
    """
    _check_factor_tensors(w1, w2, bias)
    d_out = _check_factors(w1, w2, bias, d_out)
    ct = _compute_dtype(w1, w1 if w2 is None else w2)
    w1t = _as(w1, ct).transpose(1, 2).contiguous()
    w2t = None if w2 is None else _as(w2, ct).transpose(1, 2).contiguous()
    bias_t = None
    if bias is not None:
        # laid out as the last bmm's output: (l, B, s) is the (s, l) output grid transposed;
        # blocks alone give (k, B, q), the natural order
        k, q, _ = w1.shape
        full = k * q if w2 is None else w2.shape[0] * w2.shape[1]
        padded = F.pad(_as(bias, ct), (0, full - d_out))
        if w2 is None:
            bias_t = padded.view(k, 1, q)
        else:
            l, s, _ = w2.shape  # noqa: E741
            bias_t = padded.view(s, l).t().unsqueeze(1).contiguous()
    k, p, q = w1t.shape
    l, r, s = (0, 0, 0) if w2t is None else w2t.shape  # noqa: E741
    return MonarchMap(
        w1=w1,
        w2=w2,
        bias=bias,
        d_out=d_out,
        w1t=w1t,
        w2t=w2t,
        bias_t=bias_t,
        dims=(k, p, q, l, r, s),
        d_in_padded=k * p,
        requires_grad=any(t is not None and t.requires_grad for t in (w1t, w2t, bias_t)),
    )


def _check_x(x: Tensor, m: MonarchMap, out_dtype: torch.dtype | None) -> None:
    # the common case in a few attribute reads (this runs on every call, ~1 us at B=1 otherwise)
    if (
        out_dtype is None
        and isinstance(x, Tensor)
        and x.dim() == 2
        and 0 < x.shape[1] <= m.d_in_padded
        and x.is_floating_point()
        and x.device == m.w1.device
    ):
        return
    _check_dtypes(x, m.w1, None, out_dtype)
    _check_devices(x, m.w1, None)
    if x.dim() != 2 or not 0 < x.shape[1] <= m.d_in_padded:
        raise InvalidInputError(
            f"x must be (N, d_in) with 0 < d_in <= k*p={m.d_in_padded} for w1 "
            f"{tuple(m.w1.shape)}; got x {tuple(x.shape)}",
            fix="batch single vectors as x[None, :]",
        )


def project_monarch_ref(
    x: Tensor,
    w1: Tensor,
    w2: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    d_out: int | None = None,
    normalize: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """The specification: (N, d_in) -> (N, d_out), fp32 (or wider) accumulation, differentiable.

    Rows are L2-normalized (eps 1e-12) after the bias when ``normalize``; the result is cast to
    ``out_dtype`` (default ``x.dtype``). No speed tricks: einsum over the block grids.
    """
    m = prepare_monarch(w1, w2, bias, d_out=d_out)
    _check_x(x, m, out_dtype)
    ct = _compute_dtype(x, w1)
    ct = ct if w2 is None else torch.promote_types(ct, w2.dtype)
    n = x.shape[0]
    k, q, p = w1.shape
    xp = F.pad(x.to(ct), (0, k * p - x.shape[1])).view(n, k, p)
    h = torch.einsum("nkp,kqp->nkq", xp, w1.to(ct)).reshape(n, k * q)  # block-diagonal B1
    if w2 is not None:
        l, s, r = w2.shape  # noqa: E741
        # the stride permutation: feature rr*l + ll of h is entry rr of middle block ll;
        # output feature ss*l + ll is entry ss of output block ll
        h = torch.einsum("nrl,lsr->nsl", h.view(n, r, l), w2.to(ct)).reshape(n, s * l)
    y = h[:, : m.d_out]
    if bias is not None:
        y = y + bias.to(ct)
    if normalize:
        y = F.normalize(y, dim=1, eps=EPS)
    return y.to(out_dtype or x.dtype)


def _blocks(x: Tensor, k: int, p: int) -> Tensor:
    """(B, k*p) rows -> (k, B, p), a strided view: bmm reads rows of stride k*p without a copy."""
    s0, s1 = x.stride()
    return x.as_strided((k, x.shape[0], p), (p * s1, s0, s1))


def _product(x: Tensor, m: MonarchMap) -> Tensor:
    """Both products on (B, k*p) rows, bias included, left in the last bmm's layout.

    Returns (l, B, s) (output feature ss*l + ll at [ll, b, ss]), or (k, B, q) without w2.
    From COLUMN_ROWS rows on, the first product is taken per block as w1 (q, p) @ x^T (p, B):
    its (k, q, B) result holds middle feature f = kk*q + qq = rr*l + ll of row b at f*B + b,
    so the stride permutation is a strided view that bmm reads as is (no copy at all).
    Below that (where the narrow (q, p) @ (p, B) products cost more than the copy they save),
    x's blocks are read in place and the permutation is one copy.
    """
    k, p, q, l, r, _ = m.dims  # noqa: E741
    batch = x.shape[0]
    if m.w2t is None:  # (k, B, p) @ (k, p, q) [+ (k, 1, q)] -> (k, B, q)
        return _bmm(m.bias_t, _blocks(x, k, p), m.w1t)
    if batch < COLUMN_ROWS:
        h = _middle(torch.bmm(_blocks(x, k, p), m.w1t), m)  # (k, B, q) -> (l, B, r)
    else:
        s0, s1 = x.stride()
        xc = x.as_strided((k, p, batch), (p * s1, s1, s0))  # block kk of every row: (p, B)
        hc = torch.bmm(m.w1t.transpose(1, 2), xc)  # (k, q, p) @ (k, p, B) -> (k, q, B)
        h = hc.as_strided((l, batch, r), (batch, 1, l * batch))  # [ll, b, rr]: f = rr*l + ll
    return _bmm(m.bias_t, h, m.w2t)  # (l, B, r) @ (l, r, s) [+ (l, 1, s)] -> (l, B, s)


def _middle(h: Tensor, m: MonarchMap) -> Tensor:
    """The stride permutation: (k, B, q) -> (l, B, r), middle feature rr*l + ll to [ll, b, rr].

    One strided copy where the grids line up (always for one row, and when q is a multiple of l
    or l of q: MonarchLinear's q = d/nb, l = nb); otherwise two (transpose to rows, then permute).
    """
    k, _, q, l, r, _ = m.dims  # noqa: E741
    batch = h.shape[1]
    if batch == 1:  # (k, 1, q) is the (k*q) row itself
        return torch.as_strided_copy(h, (l, 1, r), (1, l * r, l))
    if q % l == 0:  # rr = rr1*c + rr2 lies in block rr1 at entry rr2*l + ll
        c = q // l
        grid = torch.as_strided_copy(h, (l, batch, k, c), (1, q, batch * q, l))
        return grid.view(l, batch, r)
    if l % q == 0:  # ll = ll1*q + ll2 lies in block rr*c + ll1 at entry ll2
        c = l // q
        grid = torch.as_strided_copy(h, (c, q, batch, r), (batch * q, 1, q, c * batch * q))
        return grid.view(l, batch, r)
    return h.transpose(0, 1).reshape(batch, r, l).permute(2, 0, 1).contiguous()


def _as_rows(z: Tensor, m: MonarchMap) -> Tensor:
    """(l, B, s) -> (B, s*l), or (k, B, q) -> (B, k*q); cropped to d_out. One copy (none at B=1
    without w2); a crop that keeps whole (s, l) rows is folded into it."""
    batch = z.shape[1]
    if m.w2t is None:
        k, _, q = z.shape
        y = z.view(1, k * q) if batch == 1 else z.transpose(0, 1).reshape(batch, k * q)
        return y if m.d_out == k * q else y[:, : m.d_out]
    l, _, s = z.shape  # noqa: E741
    rows = -(-m.d_out // l)  # output feature ss*l + ll: the rows ss that hold the crop
    # (l, B, s) read as (B, s, l): [b, ss, ll] = z[ll, b, ss]; an explicit width (B may be 0)
    y = torch.as_strided_copy(z, (batch, rows, l), (s, 1, batch * s)).view(batch, rows * l)
    return y if rows * l == m.d_out else y[:, : m.d_out]


def _rows(x: Tensor, m: MonarchMap) -> Tensor:
    """The torch path on one chunk: (B, d_in) -> (B, d_out) with bias, in the compute dtype."""
    if x.shape[1] != m.d_in_padded:
        x = F.pad(x, (0, m.d_in_padded - x.shape[1]))
    if x.shape[0] == 1 and m.w2t is not None:
        return _one_row(x, m, m.w2t)
    return _as_rows(_product(x, m), m)


def _one_row(x: Tensor, m: MonarchMap, w2t: Tensor) -> Tensor:
    """``_rows`` for one padded row in the fewest torch calls (each costs ~1-4 us of dispatch).

    Four: bmm, the stride permutation, baddbmm (bias added for free), the output permutation
    (plus a free view, and a slice only for a crop that cuts an (s, l) grid row). With one row
    every layout change is a single strided read: x (1, k*p) is already (k, 1, p), the middle
    (k*q) reads as (l, 1, r) and the output (l, s) as (s, l).
    """
    k, p, _, l, r, s = m.dims  # noqa: E741
    h = torch.bmm(x.view(k, 1, p), m.w1t)  # (k, 1, p) @ (k, p, q) -> (k, 1, q)
    h = torch.as_strided_copy(h, (l, 1, r), (1, l * r, l))
    b = m.bias_t
    z = torch.bmm(h, w2t) if b is None else torch.baddbmm(b, h, w2t)  # (l, 1, s)
    rows = -(-m.d_out // l)  # the output grid rows ss that hold d_out features
    y = torch.as_strided_copy(z, (rows, l), (1, s)).view(1, rows * l)
    return y if rows * l == m.d_out else y[:, : m.d_out]


def _rows_into(x: Tensor, m: MonarchMap, out: Tensor, normalize: bool) -> None:
    """``_rows`` (+ normalize) written straight into ``out`` (B, d_out), any dtype; no autograd.

    The chunk is normalized while it is still in cache, and the final layout copy doubles as
    the cast and as the write into the result (no torch.cat pass over the output).
    """
    if x.shape[1] != m.d_in_padded:
        x = F.pad(x, (0, m.d_in_padded - x.shape[1]))
    z = _product(x, m)
    if z.shape[0] * z.shape[2] != m.d_out:  # cropped: the crop needs the row layout first
        y = _as_rows(z, m)
        out.copy_(_normalize_(y) if normalize else y)
        return
    if normalize:  # the row norm over the whole (block, entry) grid of each row
        norm = torch.linalg.vector_norm(z, dim=(0, 2), keepdim=True).clamp_min_(EPS)
        z = z.div_(norm)
    if m.w2t is not None:
        out.view(z.shape[1], z.shape[2], z.shape[0]).copy_(z.permute(1, 2, 0))
    else:
        out.view(z.shape[1], z.shape[0], z.shape[2]).copy_(z.transpose(0, 1))


def _bmm(bias_t: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    return torch.bmm(a, b) if bias_t is None else torch.baddbmm(bias_t, a, b)


def _maybe(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


def _needs_grad(x: Tensor, m: MonarchMap) -> bool:
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or m.requires_grad


def _promote(x: Tensor, m: MonarchMap) -> tuple[Tensor, MonarchMap]:
    """x and the map in one compute dtype (e.g. fp64 rows through fp32 factors: fp64)."""
    ct = torch.promote_types(x.dtype, m.w1t.dtype)
    if ct != m.w1t.dtype:
        m = prepare_monarch(m.w1.to(ct), _maybe(m.w2, ct), _maybe(m.bias, ct), d_out=m.d_out)
    return x.to(ct), m


def _monarch_torch(
    x: Tensor, m: MonarchMap, normalize: bool, out_dtype: torch.dtype, chunk_rows: int
) -> Tensor:
    """The torch path, tuned for CPU, differentiable when autograd needs it."""
    if x.dtype != m.w1t.dtype:
        x, m = _promote(x, m)
    if _needs_grad(x, m):
        # split/cat are differentiable, so chunking keeps autograd intact
        chunked = x.is_cpu and x.shape[0] > chunk_rows
        y = torch.cat([_rows(c, m) for c in x.split(chunk_rows)]) if chunked else _rows(x, m)
        return _as(F.normalize(y, dim=1, eps=EPS) if normalize else y, out_dtype)
    # no_grad, not inference_mode: outputs may feed trainable modules (see kernels.projection);
    # skipped when autograd is already off (a context costs ~1 us at B=1)
    if torch.is_grad_enabled():
        with torch.no_grad():
            return _monarch_nograd(x, m, normalize, out_dtype, chunk_rows)
    return _monarch_nograd(x, m, normalize, out_dtype, chunk_rows)


def _monarch_nograd(
    x: Tensor, m: MonarchMap, normalize: bool, out_dtype: torch.dtype, chunk_rows: int
) -> Tensor:
    """Inference: CPU chunks written into one result; y is a fresh buffer, so normalized in place."""
    if x.is_cpu and x.shape[0] > chunk_rows:
        out = torch.empty(x.shape[0], m.d_out, dtype=out_dtype, device=x.device)
        for i in range(0, x.shape[0], chunk_rows):
            _rows_into(x[i : i + chunk_rows], m, out[i : i + chunk_rows], normalize)
        return out
    y = _rows(x, m)
    return _as(_normalize_(y) if normalize else y, out_dtype)


def _kernel_takes(x: Tensor, m: MonarchMap, out_dtype: torch.dtype) -> bool:
    """Inputs in the Triton kernel's domain: forward only, 16/32-bit, power-of-2 middle grid."""
    from kernels._triton_monarch import supports  # imports triton: only on this path

    dtypes = {x.dtype, m.w1.dtype, out_dtype} | ({m.w2.dtype} if m.w2 is not None else set())
    return dtypes <= TRITON_DTYPES and not _needs_grad(x, m) and supports(m)


def apply_monarch(
    x: Tensor,
    m: MonarchMap,
    *,
    normalize: bool = False,
    out_dtype: torch.dtype | None = None,
    chunk_rows: int = CPU_CHUNK_ROWS,
) -> Tensor:
    """(N, d_in) -> (N, d_out) through a prepared Monarch map, rows L2-normalized if asked.

    Accumulates in fp32 whatever the input dtype; returns ``out_dtype`` (default ``x.dtype``).
    Runs the fused Triton kernel where ``HOTSWAP_KERNELS`` and the machine allow it and the
    inputs are in its domain, the torch path otherwise (CPU rows in chunks of ``chunk_rows``).
    """
    w2t = m.w2t
    # One full-width row in the map's compute dtype, as served. These reads also validate it
    # (a (1, k*p) floating tensor on w1's device), so it skips _check_x and goes straight to
    # its 4 torch calls (_one_row is differentiable: right with or without autograd).
    one_row = (
        out_dtype is None
        and not normalize
        and w2t is not None
        and isinstance(x, Tensor)
        and x.dtype == w2t.dtype
        and x.shape == (1, m.d_in_padded)
        and x.device == m.w1.device
    )
    if not one_row:
        _check_x(x, m, out_dtype)
    out_dtype = out_dtype or x.dtype
    if backend(x.device) == "triton" and _kernel_takes(x, m, out_dtype):
        from kernels._triton_monarch import project_monarch_triton

        return project_monarch_triton(x, m, normalize, out_dtype)
    if one_row and w2t is not None:  # (w2t is not None in one_row; said again for mypy)
        return _one_row(x, m, w2t)
    return _monarch_torch(x, m, normalize, out_dtype, chunk_rows)


def project_monarch(
    x: Tensor,
    w1: Tensor,
    w2: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    d_out: int | None = None,
    normalize: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """``apply_monarch(x, prepare_monarch(w1, w2, bias, d_out=d_out), ...)`` in one call.

    x (N, d_in <= k*p), w1 (k, q, p), w2 (l, s, r) or None, bias (d_out,) -> (N, d_out).
    """
    m = prepare_monarch(w1, w2, bias, d_out=d_out)
    return apply_monarch(x, m, normalize=normalize, out_dtype=out_dtype)
