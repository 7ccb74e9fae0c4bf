"""``HOTSWAP_KERNELS``: validation, the choice per machine, one fallback warning, lazy triton."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from kernels import backend, dispatch, project, project_ref
from kernels.errors import InvalidInputError

# the module, to patch its launchers
project_mod = importlib.import_module("kernels.projection")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_warning_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_warned", False)


@pytest.fixture
def no_triton_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> torch.Tensor:
        raise AssertionError("the Triton launcher must not be called")

    monkeypatch.setattr(project_mod, "_launch_triton", fail)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 6, generator=g), torch.randn(6, 3, generator=g)


def test_invalid_value_names_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTSWAP_KERNELS", "tritn")
    with pytest.raises(InvalidInputError, match="auto, torch, triton") as info:
        backend()
    assert "'triton'" in str(info.value)  # did-you-mean
    with pytest.raises(InvalidInputError):
        project(*_data())


@pytest.mark.parametrize("value", ["", "auto", " Torch "])
def test_values_are_normalized(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HOTSWAP_KERNELS", value)
    assert dispatch.requested() == (value.strip().lower() or "auto")


def test_torch_value_uses_torch(monkeypatch: pytest.MonkeyPatch, no_triton_launch: None) -> None:
    monkeypatch.setenv("HOTSWAP_KERNELS", "torch")
    monkeypatch.setattr(dispatch, "triton_unavailable_reason", lambda: None)
    assert backend() == "torch"
    x, w = _data()
    torch.testing.assert_close(project(x, w), project_ref(x, w))


def test_auto_is_torch_without_cuda(
    monkeypatch: pytest.MonkeyPatch, no_triton_launch: None
) -> None:
    monkeypatch.delenv("HOTSWAP_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "_cuda_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert backend() == "torch"
        project(*_data())


def test_auto_is_torch_for_cpu_tensors_on_a_gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTSWAP_KERNELS", "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(dispatch, "_cuda_available", lambda: True)
    monkeypatch.setattr(dispatch, "triton_unavailable_reason", lambda: None)
    assert backend(torch.device("cuda")) == "triton"
    assert backend(torch.device("cpu")) == "torch"


def test_fallback_warns_once_per_process(
    monkeypatch: pytest.MonkeyPatch, no_triton_launch: None
) -> None:
    monkeypatch.setenv("HOTSWAP_KERNELS", "triton")
    monkeypatch.setattr(dispatch, "triton_unavailable_reason", lambda: "simulated: no triton")
    x, w = _data()
    with pytest.warns(dispatch.KernelFallbackWarning, match="simulated: no triton") as record:
        for _ in range(3):
            torch.testing.assert_close(project(x, w), project_ref(x, w))
        assert backend() == "torch"
    assert len(record) == 1
    assert record[0].filename == __file__  # points at the caller of project()


def test_forced_triton_with_cpu_tensors_and_no_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTSWAP_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(dispatch, "triton_unavailable_reason", lambda: None)  # as on a GPU machine
    with pytest.warns(dispatch.KernelFallbackWarning, match="on cpu"):
        assert backend(torch.device("cpu")) == "torch"
    assert backend(torch.device("cuda")) == "triton"


def test_unavailable_reason_without_gpu_or_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(dispatch, "_cuda_available", lambda: False)
    probe = dispatch.triton_unavailable_reason.__wrapped__  # uncached
    assert "TRITON_INTERPRET" in probe()


def test_light_imports() -> None:
    """``import kernels`` and ``project`` on CPU under auto never import triton."""
    code = (
        "import sys, torch, kernels\n"
        "kernels.project(torch.ones(2, 3), torch.ones(3, 4), normalize=True)\n"
        "assert kernels.backend() == 'torch'\n"
        "assert 'triton' not in sys.modules, 'auto on CPU imported triton'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HOTSWAP_KERNELS", "TRITON_INTERPRET")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


def _fresh_python(code: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HOTSWAP_KERNELS", "TRITON_INTERPRET")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


def test_errors_import_without_torch() -> None:
    """The CLI imports kernels.errors to map errors to exit codes: that must not import torch."""
    _fresh_python(
        "import sys, kernels.errors, kernels.dispatch, kernels.optional\n"
        "assert 'torch' not in sys.modules, 'kernels.errors imported torch'\n"
    )


def test_project_is_the_op_whichever_import_comes_first() -> None:
    """The module imported first: the package attribute ``kernels.project`` is still the op."""
    _fresh_python(
        "import torch\n"
        "from kernels.projection import project_ref\n"
        "import kernels\n"
        "x, w = torch.ones(2, 3), torch.arange(12.0).view(3, 4)\n"
        "ref = project_ref(x, w, normalize=True)\n"
        "assert torch.equal(kernels.project(x, w, normalize=True), ref)\n"
        "from kernels import project\n"
        "assert torch.equal(project(x, w, normalize=True), ref)\n"
    )
