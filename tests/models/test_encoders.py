"""MLP encoder config/forward/embed, and encoder checkpoints (round trip, tampering, truncation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kernels.errors import CorruptArtifactError, InvalidInputError, NotFoundError
from models.checkpoint import load_encoder, save_encoder, sha256_file
from models.encoders import ENCODERS, MLPEncoder, MLPEncoderConfig, build_encoder, embed
from models.layers import LAYERS

# Small tensors: on a shared 2-core machine extra OpenMP threads only spin-wait (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_encoder(layer: str = "monarch", *, seed: int = 0, **overrides: object) -> MLPEncoder:
    torch.manual_seed(seed)
    fields: dict[str, object] = {
        "input_dim": 30,
        "hidden_dims": (48, 40),
        "embed_dim": 24,
        "layer": layer,
        **overrides,
    }
    return MLPEncoder(MLPEncoderConfig(**fields))  # type: ignore[arg-type]


# --- config --------------------------------------------------------------------------------------


def test_config_json_round_trip_keeps_tuples() -> None:
    config = MLPEncoderConfig(input_dim=784, hidden_dims=(256, 128), layer="monarch", dropout=0.1)
    back = MLPEncoderConfig.from_json(config.to_json())
    assert back == config
    assert isinstance(back.hidden_dims, tuple)
    hash(back)  # frozen and hashable even after JSON turned the tuple into a list


def test_config_rejects_unknown_key_with_suggestion() -> None:
    with pytest.raises(InvalidInputError, match="embed_dim"):
        MLPEncoderConfig.from_dict({"input_dim": 4, "embed_dims": 3})


def test_unknown_layer_suggests_close_name() -> None:
    with pytest.raises(NotFoundError, match="did you mean 'monarch'"):
        MLPEncoderConfig(input_dim=4, layer="monarh")


@pytest.mark.parametrize(
    "bad",
    [
        {"input_dim": 0},
        {"hidden_dims": (16, -1)},
        {"embed_dim": 2.5},
        {"dropout": 1.0},
        {"nblocks": 0},
        {"layer": "monarch", "hidden_dims": (16,), "embed_dim": 3},  # nblocks=4 > 3
    ],
)
def test_config_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        MLPEncoderConfig(**{"input_dim": 8, **bad})  # type: ignore[arg-type]


# --- encoder -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS.keys())
@pytest.mark.parametrize("hidden_dims", [(), (48,), (48, 40)])
def test_forward_shapes(layer: str, hidden_dims: tuple[int, ...]) -> None:
    encoder = small_encoder(layer, hidden_dims=hidden_dims, layer_norm=True, dropout=0.1)
    out = encoder(torch.randn(5, 30))
    assert out.shape == (5, 24) and encoder.embed_dim == 24 and encoder.key == "mlp"
    assert type(encoder.net[0]) is LAYERS.get("dense")  # the input layer is always dense


def test_build_encoder_from_dict_and_errors() -> None:
    encoder = build_encoder("mlp", {"input_dim": 6, "hidden_dims": [8], "embed_dim": 4})
    assert isinstance(encoder, MLPEncoder) and isinstance(encoder.config, MLPEncoderConfig)
    assert encoder.config.hidden_dims == (8,)
    assert "mlp" in ENCODERS
    with pytest.raises(NotFoundError, match="mlp"):
        build_encoder("mpl", {"input_dim": 6})
    with pytest.raises(InvalidInputError):
        build_encoder("mlp", object())  # type: ignore[arg-type]


def test_embed_returns_unit_fp32_rows_and_restores_mode() -> None:
    encoder = small_encoder(dropout=0.5).train()
    x = torch.randn(37, 30)
    out = embed(encoder, x, batch_size=8)
    assert out.shape == (37, 24) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(37))
    assert encoder.training and all(m.training for m in encoder.modules())
    # eval mode inside embed: dropout is off, so batching does not change the result
    torch.testing.assert_close(out, embed(encoder, x, batch_size=4096))
    encoder.eval()
    raw = embed(encoder, x, normalize=False)
    assert not encoder.training
    torch.testing.assert_close(raw, encoder(x).detach())


def test_embed_rejects_bad_input() -> None:
    encoder = small_encoder()
    with pytest.raises(InvalidInputError):
        embed(encoder, torch.full((2, 30), float("nan")))
    with pytest.raises(InvalidInputError):
        embed(encoder, torch.randn(2, 30), batch_size=0)
    assert embed(encoder, torch.empty(0, 30)).shape == (0, 24)


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS.keys())
def test_checkpoint_round_trip_is_exact(layer: str, tmp_path: Path) -> None:
    encoder = small_encoder(layer, layer_norm=True)
    path = tmp_path / "enc.safetensors"
    digest = save_encoder(encoder, path)
    assert digest == sha256_file(path)
    assert [p.name for p in tmp_path.iterdir()] == ["enc.safetensors"]  # no temp file left
    loaded = load_encoder(path, expected_sha256=digest)
    assert loaded.config == encoder.config and not loaded.training
    x = torch.randn(11, 30)
    assert torch.equal(embed(loaded, x), embed(encoder, x))


def test_tampered_checkpoint_fails_checksum(tmp_path: Path) -> None:
    path = tmp_path / "enc.safetensors"
    digest = save_encoder(small_encoder(), path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="checksum"):
        load_encoder(path, expected_sha256=digest)


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_checkpoint_is_corrupt(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "enc.safetensors"
    save_encoder(small_encoder(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptArtifactError):
        load_encoder(path)


def test_checkpoint_with_unknown_key_or_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "alien.safetensors"
    metadata = {"hotswap.encoder_key": "vit-huge", "hotswap.config": "{}"}
    save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    with pytest.raises(NotFoundError, match="vit-huge"):
        load_encoder(path)
    save_file({"w": torch.zeros(2)}, str(path))  # a safetensors file, but not ours
    with pytest.raises(CorruptArtifactError, match="metadata"):
        load_encoder(path)
    with pytest.raises(NotFoundError):
        load_encoder(tmp_path / "missing.safetensors")


def test_checkpoint_whose_weights_disagree_with_config(tmp_path: Path) -> None:
    encoder = small_encoder()
    path = tmp_path / "enc.safetensors"
    wrong = {"input_dim": 30, "hidden_dims": [48], "embed_dim": 24, "layer": "monarch"}
    metadata = {"hotswap.encoder_key": "mlp", "hotswap.config": json.dumps(wrong)}
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path), metadata)
    with pytest.raises(CorruptArtifactError, match="does not match"):
        load_encoder(path)


def test_save_rejects_unregistered_module(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        save_encoder(nn.Linear(2, 2), tmp_path / "x.safetensors")  # type: ignore[arg-type]
