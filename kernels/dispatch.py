"""The one switch between the pure-torch path and the Triton kernels.

``HOTSWAP_KERNELS=auto|torch|triton`` is read at call time:

- ``auto`` (default): Triton only on CUDA tensors, with a CUDA device, triton importable and the
  interpreter off. On CPU, torch beats Triton's interpreter by ~10^3, so ``auto`` means torch there.
- ``torch``: always the reference-grade torch path.
- ``triton``: force the kernels. On a machine without a GPU this works only under
  ``TRITON_INTERPRET=1`` (the tests). Where Triton cannot run, fall back to torch with one
  :class:`KernelFallbackWarning` per process that says why.

Nothing here imports triton: availability is probed by importing ``kernels._triton_project``
(the only module that does), and only once the Triton path is actually being considered.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from typing import TYPE_CHECKING, Literal

from kernels.errors import InvalidInputError, did_you_mean

if TYPE_CHECKING:
    import torch

ENV_VAR = "HOTSWAP_KERNELS"
OPTIONS = ("auto", "torch", "triton")
Backend = Literal["torch", "triton"]

# Triton's own parsing of TRITON_INTERPRET (triton.knobs: getenv_bool).
_TRUTHY = frozenset({"1", "true", "on", "yes"})
_warned = False


class KernelFallbackWarning(RuntimeWarning):
    """``HOTSWAP_KERNELS=triton`` was asked for but Triton cannot run here; torch is used."""


def requested() -> str:
    """The validated value of ``HOTSWAP_KERNELS`` (``auto`` when unset or empty)."""
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if value not in OPTIONS:
        raise InvalidInputError(
            f"{ENV_VAR}={value!r} is not one of {', '.join(OPTIONS)}",
            fix=did_you_mean(value, list(OPTIONS)),
        )
    return value


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


@functools.cache
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.cache
def triton_unavailable_reason() -> str | None:
    """Why the Triton kernels cannot run in this process, or ``None`` when they can (cached)."""
    if not (_cuda_available() or interpreting()):
        return "no CUDA device, and TRITON_INTERPRET=1 (Triton's CPU interpreter) is not set"
    try:
        importlib.import_module("kernels._triton_project")
    except Exception as e:  # a missing or broken triton install can raise anything
        return f"the Triton kernels cannot be imported: {e}"
    return None


def triton_available() -> bool:
    """Whether the Triton kernels can run in this process (cached: the probe imports triton)."""
    return triton_unavailable_reason() is None


def _device_reason(device: torch.device | None) -> str | None:
    if device is None or device.type == "cuda" or interpreting():
        return None
    return f"the tensors are on {device.type}; Triton needs CUDA tensors (or TRITON_INTERPRET=1)"


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"{ENV_VAR}=triton but {reason}; using the torch path instead",
            KernelFallbackWarning,
            stacklevel=4,
        )


def backend(device: torch.device | None = None) -> Backend:
    """The path to run on: ``"torch"`` or ``"triton"``, for tensors on ``device`` if given."""
    choice = requested()
    if choice == "torch":
        return "torch"
    if choice == "auto":
        # Short-circuit order matters: probe (and import) triton only on a machine with a GPU.
        on_gpu = _cuda_available() and not interpreting() and _device_reason(device) is None
        return "triton" if on_gpu and triton_available() else "torch"
    reason = triton_unavailable_reason() or _device_reason(device)
    if reason is None:
        return "triton"
    _warn_once(reason)
    return "torch"
