"""Dense projection ``y = normalize(x @ W + b)``: the serving form of every adapter.

``project_ref`` is the specification (pure torch, fp32 accumulation); ``project`` is the public op:
it validates once, then runs the CPU-tuned torch path or the fused Triton kernel
(``kernels._triton_project``), as ``kernels.dispatch.backend`` decides.

``weight`` is (d_in, d_out), i.e. ``x @ weight``: the transpose of ``nn.Linear.weight``.
``project_int8`` is the same op with a symmetric per-row int8 output (:class:`Int8Rows`): half the
bytes of fp16 for a gallery held in memory, dequantized by one multiply per row.

The normalize epilogue is asked for, never inferred: an isometric map (orthonormal columns, no
bias) sends unit rows to unit rows, so its serving form passes ``normalize=False`` and the epilogue
is skipped (compat's ``ServingForm``; kernels.md section 3).

Inputs are not scanned for NaN/Inf here: callers check once at the boundary (a scan per call
would cost a full extra pass over the data). NaN/Inf inputs give unspecified (but finite-time) output.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.dispatch import backend
from kernels.errors import InvalidInputError

EPS = 1e-12
# The Triton kernel normalizes in its epilogue, so one program owns a full output row:
# BLOCK_N = next_power_of_2(d_out) must stay within what registers/shared memory can hold.
TRITON_MAX_D_OUT = 2048
TRITON_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
INT8_MAX = 127  # symmetric: -128 is never produced, so negation stays in range


class Int8Rows(NamedTuple):
    """Symmetric per-row int8 rows: ``row i ~= values[i] * scales[i]``.

    ``values`` (N, d) int8 in [-127, 127]; ``scales`` (N,) fp32 = max|row| / 127 (0 for a zero row).
    """

    values: Tensor
    scales: Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """(N, d) int8 * (N, 1) -> (N, d) in ``dtype``."""
        return self.values.to(dtype) * self.scales.to(dtype)[:, None]


def quantize_rows(y: Tensor) -> Int8Rows:
    """The int8 specification: (N, d) float -> :class:`Int8Rows`, computed in fp32.

    ``q = round_half_even(y * (127 / amax))`` clamped to [-127, 127], ``scale = amax / 127`` with
    ``amax = max|y[i]|``; the Triton epilogue performs the same fp32 operations in the same order.
    """
    return _quantize_rows_(y.to(torch.float32, copy=True))


def _quantize_rows_(y: Tensor) -> Int8Rows:
    """``quantize_rows`` of an (N, d) fp32 buffer the caller owns, overwritten on the way."""
    # the inf-norm is max|y| in one pass, without an |y| temporary
    amax = (
        torch.linalg.vector_norm(y, ord=float("inf"), dim=1)
        if y.shape[1]
        else y.new_zeros(y.shape[0])
    )
    inv = torch.where(amax > 0, INT8_MAX / amax, 0.0)  # 127/0 = inf is computed, then discarded
    q = y.mul_(inv[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return Int8Rows(q, amax / INT8_MAX)


def _check_inputs(
    x: Tensor, weight: Tensor, bias: Tensor | None, out_dtype: torch.dtype | None
) -> None:
    """Dtypes, shapes and devices, shared by every path; raises :class:`InvalidInputError`."""
    _check_dtypes(x, weight, bias, out_dtype)
    _check_shapes(x, weight, bias)
    _check_devices(x, weight, bias)


def _check_dtypes(
    x: Tensor, weight: Tensor, bias: Tensor | None, out_dtype: torch.dtype | None
) -> None:
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and not (isinstance(t, Tensor) and t.is_floating_point()):
            kind = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise InvalidInputError(f"{name} must be a floating-point tensor, got {kind}")
    if out_dtype is not None and not (
        isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point
    ):
        raise InvalidInputError(
            f"out_dtype must be a floating torch.dtype, got {out_dtype!r}",
            fix="for int8 rows with per-row scales use kernels.project_int8",
        )


def _check_shapes(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if x.dim() != 2 or weight.dim() != 2:
        raise InvalidInputError(
            f"x must be (N, d_in) and weight (d_in, d_out); got x {tuple(x.shape)}, "
            f"weight {tuple(weight.shape)}",
            fix="batch single vectors as x[None, :]",
        )
    if x.shape[1] != weight.shape[0]:
        raise InvalidInputError(
            f"width mismatch: x has d_in={x.shape[1]} but weight (d_in, d_out)="
            f"{tuple(weight.shape)} expects d_in={weight.shape[0]}",
            fix="weight is (d_in, d_out) as in x @ weight; for an nn.Linear pass linear.weight.T",
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[1],):
        raise InvalidInputError(
            f"bias must be (d_out,)=({weight.shape[1]},), got {tuple(bias.shape)}"
        )


def _check_devices(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise InvalidInputError(
                f"x is on {x.device} but {name} is on {t.device}",
                fix=f"move both to one device, e.g. {name}.to(x.device)",
            )


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """fp32 for 16-bit and fp32 inputs; fp64 stays fp64 (never accumulate below fp32)."""
    return torch.promote_types(torch.promote_types(x.dtype, weight.dtype), torch.float32)


def project_ref(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    normalize: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """The specification: (N, d_in) @ (d_in, d_out) [+ (d_out,)] -> (N, d_out) in fp32 or wider.

    Rows are L2-normalized (eps 1e-12) when ``normalize``; the result is cast to ``out_dtype``
    (default ``x.dtype``). Differentiable; no speed tricks.
    """
    _check_inputs(x, weight, bias, out_dtype)
    ct = _compute_dtype(x, weight)
    y = x.to(ct) @ weight.to(ct)  # (N, d_in) @ (d_in, d_out) -> (N, d_out)
    if bias is not None:
        y = y + bias.to(ct)  # (N, d_out) + (d_out,)
    if normalize:
        y = F.normalize(y, dim=1, eps=EPS)
    return y.to(out_dtype or x.dtype)


def _needs_grad(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    # a no-op Tensor.to still costs ~2 us of dispatch; four of them were ~10% of a B=1 projection
    return t if t.dtype == dtype else t.to(dtype)


def _normalize_(y: Tensor) -> Tensor:
    """L2-normalize the rows of (N, d) ``y`` in place (same result as ``F.normalize``)."""
    return y.div_(torch.linalg.vector_norm(y, dim=1, keepdim=True).clamp_min_(EPS))


def _project_torch(
    x: Tensor, weight: Tensor, bias: Tensor | None, normalize: bool, out_dtype: torch.dtype
) -> Tensor:
    """The torch path, tuned for CPU; equals ``project_ref`` up to fp32 rounding."""
    grad = _needs_grad(x, weight, bias)
    # no_grad, not inference_mode: inference tensors cannot be saved for backward, and projected
    # embeddings do feed trainable adapters; inference_mode measured no faster (B=1, d=768).
    with contextlib.nullcontext() if grad else torch.no_grad():
        ct = _compute_dtype(x, weight)
        xc, wc = _as(x, ct), _as(weight, ct)
        # (N, d_in) @ (d_in, d_out) -> (N, d_out); addmm fuses the bias add into the GEMM
        y = torch.addmm(_as(bias, ct), xc, wc) if bias is not None else xc @ wc
        if normalize:
            # y is a fresh buffer we own; in place only when autograd does not need it intact
            y = F.normalize(y, dim=1, eps=EPS) if grad else _normalize_(y)
        return _as(y, out_dtype)


def _kernel_takes(x: Tensor, weight: Tensor, bias: Tensor | None, out_dtype: torch.dtype) -> bool:
    """Inputs inside the Triton kernel's domain: forward only, 16/32-bit, d_out <= 2048."""
    return (
        weight.shape[1] <= TRITON_MAX_D_OUT
        and {x.dtype, weight.dtype, out_dtype} <= TRITON_DTYPES
        and not _needs_grad(x, weight, bias)
    )


def _launch_triton(
    x: Tensor, weight: Tensor, bias: Tensor | None, normalize: bool, out_dtype: torch.dtype
) -> Tensor:
    from kernels._triton_project import project_triton  # imports triton: only on this path

    return project_triton(x, weight, bias, normalize, out_dtype)


def _launch_triton_int8(
    x: Tensor, weight: Tensor, bias: Tensor | None, normalize: bool
) -> Int8Rows:
    from kernels._triton_project import project_int8_triton  # imports triton: only on this path

    return Int8Rows(*project_int8_triton(x, weight, bias, normalize))


def project(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    normalize: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """(N, d_in) @ (d_in, d_out) [+ bias (d_out,)] -> (N, d_out), rows L2-normalized if asked.

    Accumulates in fp32 whatever the input dtype; returns ``out_dtype`` (default ``x.dtype``).
    Runs the Triton kernel where ``HOTSWAP_KERNELS`` and the machine allow it and the inputs are in
    its domain (no autograd, fp32/fp16/bf16, d_out <= 2048); the torch path otherwise.
    """
    _check_inputs(x, weight, bias, out_dtype)
    out_dtype = out_dtype or x.dtype
    if backend(x.device) == "triton" and _kernel_takes(x, weight, bias, out_dtype):
        return _launch_triton(x, weight, bias, normalize, out_dtype)
    return _project_torch(x, weight, bias, normalize, out_dtype)


def project_int8_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, normalize: bool = False
) -> Int8Rows:
    """The specification: ``quantize_rows`` of the fp32 ``project_ref``; (N, d_in) -> (N, d_out)."""
    return quantize_rows(project_ref(x, weight, bias, normalize=normalize, out_dtype=torch.float32))


def project_int8(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, normalize: bool = False
) -> Int8Rows:
    """``project`` with a symmetric per-row int8 output: (N, d_in) -> values (N, d_out), scales (N,).

    The Triton kernel quantizes in its epilogue (the fp32 rows never reach memory); the torch path
    projects to fp32 and then quantizes. Never differentiable (int8 has no gradient).
    """
    _check_inputs(x, weight, bias, None)
    with torch.no_grad():
        if backend(x.device) == "triton" and _kernel_takes(x, weight, bias, torch.float32):
            return _launch_triton_int8(x, weight, bias, normalize)
        # the matmul's output is a fresh fp32 buffer nobody else holds: quantize it in place
        return _quantize_rows_(_project_torch(x, weight, bias, normalize, torch.float32))
