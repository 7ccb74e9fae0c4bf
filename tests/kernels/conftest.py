"""The Triton switch shared by the kernel tests: force the Triton path and count its launches."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def force_triton(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], list[int]]:
    """``force_triton(module, launcher)`` sets HOTSWAP_KERNELS=triton and wraps ``module.launcher``
    so each launch appends to the returned list (a test can check the kernel really ran)."""

    def force(module_name: str, launcher: str) -> list[int]:
        # Justified skips: without triton (the extra is optional) or without a GPU or the
        # interpreter, the kernels cannot run at all; the torch paths are tested regardless.
        pytest.importorskip(
            "triton", reason="triton is not installed (pip install 'hotswap[triton]')"
        )
        from kernels import dispatch

        reason = dispatch.triton_unavailable_reason()
        if reason is not None:
            pytest.skip(f"Triton cannot run here: {reason}")
        monkeypatch.setenv("HOTSWAP_KERNELS", "triton")
        module = importlib.import_module(module_name)
        real = getattr(module, launcher)
        launches: list[int] = []

        def counting(*args: Any, **kwargs: Any) -> Any:
            launches.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, launcher, counting)
        return launches

    return force
