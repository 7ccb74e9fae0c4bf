"""The adapter contract, over every registered adapter, plus the orthogonal adapter's properties."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compat.adapters import (
    ADAPTERS,
    AdapterConfig,
    OrthogonalConfig,
    ServingForm,
    build_adapter,
    load_adapter,
    no_decay_parameters,
    save_adapter,
)
from compat.closed_form import ProcrustesConfig
from kernels.errors import CorruptArtifactError, DirectionError, InvalidInputError, NotFoundError

SHAPES = [(16, 16), (23, 10), (10, 23)]  # square, narrowing, widening; non-powers of 2


@pytest.fixture(params=ADAPTERS.keys())
def key(request: pytest.FixtureRequest) -> str:
    return request.param


def refuses_widening(key: str, dim_in: int, dim_out: int) -> bool:
    """True (after checking the clear refusal) where ``key`` reads a block and cannot widen."""
    if not (ADAPTERS.get(key).reads_block and dim_in < dim_out):
        return False
    with pytest.raises(InvalidInputError, match="dim_in >= dim_out"):
        build_adapter(key, {"dim_in": dim_in, "dim_out": dim_out})
    return True


def perturb(adapter: torch.nn.Module) -> None:
    """Move every parameter and float buffer off its (often identity or zero) initial value."""
    with torch.no_grad():
        for t in [*adapter.parameters(), *adapter.buffers()]:
            if t.is_floating_point():
                t.add_(0.1 * torch.randn_like(t))


@pytest.mark.parametrize(("dim_in", "dim_out"), SHAPES)
def test_serving_form_equals_forward(key: str, dim_in: int, dim_out: int) -> None:
    """A linear adapter's serving form, or a nonlinear one's module bridge, is its forward."""
    if refuses_widening(key, dim_in, dim_out):
        return
    torch.manual_seed(0)
    adapter = build_adapter(key, {"dim_in": dim_in, "dim_out": dim_out})
    perturb(adapter)
    x = torch.nn.functional.normalize(torch.randn(29, dim_in), dim=1)
    form = adapter.serving_form()
    expected = adapter(x).detach()
    if form is None or form.normalize:  # nonlinear adapters always serve normalized rows
        expected = torch.nn.functional.normalize(expected, dim=1)
    if form is not None:
        torch.testing.assert_close(form(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapter.transform(x), expected, rtol=1e-5, atol=1e-5)
    bridge = adapter.bridge()
    assert isinstance(bridge, ServingForm) == (form is not None)
    torch.testing.assert_close(bridge(x), expected, rtol=1e-5, atol=1e-5)


def test_bridge_is_a_frozen_snapshot(key: str) -> None:
    torch.manual_seed(4)
    adapter = build_adapter(key, {"dim_in": 12, "dim_out": 9})
    x = torch.randn(5, 12)
    bridge = adapter.bridge()
    before = bridge(x)
    perturb(adapter)  # later training must not change what serving already holds
    torch.testing.assert_close(bridge(x), before)
    assert not before.requires_grad


def test_transform_refuses_the_wrong_width(key: str) -> None:
    adapter = build_adapter(key, {"dim_in": 12, "dim_out": 9})
    with pytest.raises(InvalidInputError, match=r"\(N, 12\) inputs"):
        adapter.transform(torch.randn(5, 9))


@pytest.mark.parametrize(("dim_in", "dim_out"), SHAPES)
def test_save_load_round_trip(key: str, dim_in: int, dim_out: int, tmp_path) -> None:
    if refuses_widening(key, dim_in, dim_out):
        return
    torch.manual_seed(1)
    adapter = build_adapter(key, {"dim_in": dim_in, "dim_out": dim_out, "direction": "forward"})
    digest = save_adapter(adapter, tmp_path / "a.safetensors")
    loaded = load_adapter(tmp_path / "a.safetensors", digest)
    assert loaded.direction == "forward" and loaded.config == adapter.config
    perturb(adapter)  # a round trip of the initial values alone would prove little
    digest = save_adapter(adapter, tmp_path / "b.safetensors")
    loaded = load_adapter(tmp_path / "b.safetensors", digest)
    x = torch.randn(7, dim_in)
    torch.testing.assert_close(loaded(x), adapter(x))


def test_tampered_artifact_is_refused(tmp_path) -> None:
    path = tmp_path / "a.safetensors"
    digest = save_adapter(build_adapter("orthogonal", {"dim_in": 8, "dim_out": 4}), path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="sha256"):
        load_adapter(path, digest)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptArtifactError):
        load_adapter(path)


def test_orthogonal_widening_preserves_inner_products() -> None:
    torch.manual_seed(2)
    adapter = build_adapter("orthogonal", {"dim_in": 12, "dim_out": 20})
    x, y = torch.randn(5, 12), torch.randn(5, 12)
    with torch.no_grad():
        torch.testing.assert_close(
            (adapter(x) * adapter(y)).sum(1), (x * y).sum(1), atol=1e-5, rtol=1e-5
        )
    assert not adapter.serving_form().normalize  # isometric: the normalize epilogue is skipped


@pytest.mark.parametrize("parametrization", ["matrix_exp", "cayley", "householder"])
@pytest.mark.parametrize(("dim_in", "dim_out"), SHAPES)
def test_every_orthogonal_parametrization_is_orthogonal(
    parametrization: str, dim_in: int, dim_out: int
) -> None:
    torch.manual_seed(5)
    config = {"dim_in": dim_in, "dim_out": dim_out, "parametrization": parametrization}
    adapter = build_adapter("orthogonal", config)
    # Train a little (householder's free matrix keeps ±1 signs on its diagonal: random noise there
    # is not a state training can reach, so move it the way training does).
    opt = torch.optim.Adam(adapter.parameters(), lr=0.1)
    x, target = torch.randn(32, dim_in), torch.randn(32, dim_out)
    for _ in range(10):
        opt.zero_grad()
        ((adapter(x) - target) ** 2).mean().backward()
        opt.step()
    w = adapter.serving_form().weight  # (dim_in, dim_out)
    gram = w.T @ w if dim_in >= dim_out else w @ w.T  # on the smaller side
    torch.testing.assert_close(gram, torch.eye(min(dim_in, dim_out)), atol=1e-5, rtol=0)


def test_orthogonality_survives_training_without_decay_on_its_parameters() -> None:
    torch.manual_seed(3)
    adapter = build_adapter("orthogonal", {"dim_in": 32, "dim_out": 16})
    exempt = {id(p) for p in no_decay_parameters(adapter)}
    assert exempt == {id(p) for p in adapter.parameters()}
    opt = torch.optim.AdamW([{"params": list(adapter.parameters()), "weight_decay": 0.0}], lr=1e-2)
    x, target = torch.randn(64, 32), torch.randn(64, 16)
    for _ in range(30):
        loss = ((adapter(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = adapter.serving_form().weight  # (32, 16), orthonormal columns
    torch.testing.assert_close(w.T @ w, torch.eye(16), atol=1e-4, rtol=0)


def test_direction_and_width_checks() -> None:
    adapter = build_adapter("orthogonal", {"dim_in": 8, "dim_out": 4})
    adapter.expect("backward", 8, 4)
    with pytest.raises(DirectionError, match="backward map"):
        adapter.expect("forward", 8, 4)
    with pytest.raises(DirectionError, match="8->4"):
        adapter.expect("backward", 4, 8)


def test_bad_configs_are_clear_errors() -> None:
    with pytest.raises(NotFoundError, match="did you mean 'orthogonal'"):
        build_adapter("orthogonl", {"dim_in": 8, "dim_out": 4})
    with pytest.raises(InvalidInputError, match="no field 'dims'"):
        build_adapter("orthogonal", {"dims": 8})
    with pytest.raises(InvalidInputError, match="direction"):
        build_adapter("orthogonal", {"dim_in": 8, "dim_out": 4, "direction": "sideways"})


def test_any_key_builds_from_a_plain_adapter_config(key: str) -> None:
    adapter = build_adapter(key, AdapterConfig(dim_in=6, dim_out=5, direction="forward"))
    assert isinstance(adapter.config, ADAPTERS.get(key).config_class)
    assert (adapter.dim_in, adapter.dim_out, adapter.direction) == (6, 5, "forward")
    foreign = ProcrustesConfig if key != "procrustes" else OrthogonalConfig
    with pytest.raises(InvalidInputError, match=f"adapter '{key}' takes a"):
        build_adapter(key, foreign(dim_in=6, dim_out=5))


@pytest.mark.parametrize(
    "module",
    [
        "linear_adapters",
        "mlp_adapters",
        "label_terms",
        "contrastive_adapter",
        "closed_form",
        "step_adapter",
        "extension",
    ],
)
def test_any_adapter_module_imports_first(module: str) -> None:
    """A fresh interpreter entering compat through an adapter module (not compat.adapters) works."""
    done = subprocess.run(
        [sys.executable, "-c", f"import compat.{module}"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
