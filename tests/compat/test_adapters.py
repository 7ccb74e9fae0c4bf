"""The adapter contract, over every registered adapter, plus the orthogonal adapter's properties."""

import pytest
import torch

from compat.adapters import ADAPTERS, build_adapter, load_adapter, no_decay_parameters, save_adapter
from kernels.errors import CorruptArtifactError, DirectionError, InvalidInputError, NotFoundError

SHAPES = [(16, 16), (23, 10), (10, 23)]  # square, narrowing, widening; non-powers of 2


@pytest.fixture(params=ADAPTERS.keys())
def key(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize(("dim_in", "dim_out"), SHAPES)
def test_serving_form_equals_forward(key: str, dim_in: int, dim_out: int) -> None:
    torch.manual_seed(0)
    adapter = build_adapter(key, {"dim_in": dim_in, "dim_out": dim_out})
    x = torch.nn.functional.normalize(torch.randn(29, dim_in), dim=1)
    served = adapter.serving_form()(x)
    expected = adapter(x)
    if adapter.serving_form().normalize:
        expected = torch.nn.functional.normalize(expected, dim=1)
    torch.testing.assert_close(served, expected.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("dim_in", "dim_out"), SHAPES)
def test_save_load_round_trip(key: str, dim_in: int, dim_out: int, tmp_path) -> None:
    torch.manual_seed(1)
    adapter = build_adapter(key, {"dim_in": dim_in, "dim_out": dim_out, "direction": "forward"})
    digest = save_adapter(adapter, tmp_path / "a.safetensors")
    loaded = load_adapter(tmp_path / "a.safetensors", digest)
    assert loaded.direction == "forward" and loaded.config == adapter.config
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
