"""The conv, transformer and projection-head encoders, structured MLP input layers, and every
registered layer inside every encoder (the demo's v2 encoder included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kernels.errors import InvalidInputError, NotFoundError
from models.checkpoint import load_encoder, save_encoder
from models.config import Config
from models.conv_encoder import ConvEncoderConfig
from models.encoders import ENCODERS, MLPEncoderConfig, ProjectionHeadConfig, build_encoder, embed
from models.layers import LAYERS, parameter_count
from models.transformer_encoder import TransformerEncoderConfig

VOCAB, PAD = 40, 0


# Small tensors: on a shared 2-core machine extra OpenMP threads only spin-wait (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config(key: str, layer: str = "monarch") -> Config:
    if key == "conv":
        return ConvEncoderConfig(
            image_shape=(12, 12), channels=(4, 8), pool_size=2, hidden_dims=(24,), layer=layer
        )
    if key == "transformer":
        return TransformerEncoderConfig(
            vocab_size=VOCAB, max_len=10, pad_id=PAD, width=16, depth=1, heads=2, layer=layer
        )
    return ProjectionHeadConfig(input_dim=20, hidden_dims=(32,), embed_dim=12, layer=layer)


def sample_input(key: str, rows: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if key == "conv":
        return torch.rand(rows, 144, generator=gen)
    if key == "transformer":
        ids = torch.randint(1, VOCAB, (rows, 8), generator=gen)
        ids[0, 5:] = PAD  # a padded row
        return ids
    return torch.randn(rows, 20, generator=gen)


def build(key: str, layer: str = "monarch", seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return build_encoder(key, small_config(key, layer))


KEYS = ["conv", "transformer", "projection_head"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("layer", LAYERS.keys())
def test_forward_shape_with_every_layer(key: str, layer: str) -> None:
    encoder = build(key, layer)
    out = encoder(sample_input(key))
    assert out.shape == (6, encoder.embed_dim) and torch.isfinite(out).all()
    assert encoder.key == key and type(encoder) is ENCODERS.get(key)
    out.sum().backward()  # every trainable tensor is reached
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


@pytest.mark.parametrize("key", KEYS)
def test_config_json_round_trip(key: str) -> None:
    config = small_config(key)
    back = type(config).from_json(config.to_json())
    assert back == config
    hash(back)  # tuples stay tuples through JSON lists
    encoder = build_encoder(key, config.to_dict())
    assert encoder.config == config and isinstance(encoder.config, ENCODERS.get(key).config_class)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("layer", ["monarch", "orthogonal_butterfly"])
def test_checkpoint_round_trip_is_exact(key: str, layer: str, tmp_path: Path) -> None:
    encoder = build(key, layer)
    encoder.train()(sample_input(key, rows=16, seed=1))  # move BatchNorm's running statistics
    path = tmp_path / "enc.safetensors"
    digest = save_encoder(encoder, path)
    loaded = load_encoder(path, expected_sha256=digest)
    assert loaded.config == encoder.config
    x = sample_input(key)
    assert torch.equal(embed(loaded, x), embed(encoder, x))


@pytest.mark.parametrize(
    ("cls", "bad"),
    [
        (ConvEncoderConfig, {"image_shape": (12,)}),
        (ConvEncoderConfig, {"image_shape": (12, 12), "pool_size": 4}),  # 12 >> 2 = 3 < 4
        (ConvEncoderConfig, {"image_shape": (12, 12), "channels": ()}),
        (ConvEncoderConfig, {"image_shape": (12, 12), "embed_dim": 2}),  # nblocks=4 > 2
        (TransformerEncoderConfig, {"vocab_size": 10, "pad_id": 10}),
        (TransformerEncoderConfig, {"vocab_size": 10, "width": 30, "heads": 4}),
        (TransformerEncoderConfig, {"vocab_size": 10, "depth": 0}),
        (ProjectionHeadConfig, {"input_dim": 3}),  # nblocks=4 > 3 with a monarch head
        (ProjectionHeadConfig, {"input_dim": 8, "dropout": -0.1}),
    ],
)
def test_configs_reject_bad_values(cls: type[Config], bad: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        cls(**bad)


def test_unknown_layer_suggests_close_name() -> None:
    with pytest.raises(NotFoundError, match="butterfly"):
        TransformerEncoderConfig(vocab_size=10, layer="butterfy")


def test_conv_rejects_wrong_image_width() -> None:
    with pytest.raises(InvalidInputError, match="144"):
        build("conv")(torch.rand(2, 143))


def test_transformer_ignores_padding_and_checks_ids() -> None:
    encoder = build("transformer").eval()
    ids = sample_input("transformer")
    padded = torch.cat([ids, torch.full((6, 2), PAD)], dim=1)  # more padding changes nothing
    torch.testing.assert_close(encoder(padded), encoder(ids))
    empty = encoder(torch.full((1, 4), PAD))  # no token at all: finite, the projection's bias
    torch.testing.assert_close(empty[0], encoder.proj.bias)
    for bad in (ids.float(), torch.full((2, 3), VOCAB), torch.ones(2, 11, dtype=torch.int64)):
        with pytest.raises(InvalidInputError):
            encoder(bad)


def test_projection_head_normalizes_its_input() -> None:
    head = build("projection_head").eval()
    x = sample_input("projection_head")
    torch.testing.assert_close(head(3.0 * x), head(x))
    assert all(type(m).__name__ == "MonarchLinear" for m in head.net if hasattr(m, "to_dense"))


def test_structured_input_layer_halves_the_linear_parameters() -> None:
    widths = {"input_dim": 784, "hidden_dims": (512, 512), "embed_dim": 128}
    dense = build_encoder("mlp", MLPEncoderConfig(**widths))
    monarch = build_encoder(
        "mlp", MLPEncoderConfig(**widths, layer="monarch", input_layer="monarch", nblocks=4)
    )
    assert type(monarch.net[0]).__name__ == "MonarchLinear"
    assert 2 * parameter_count(monarch) <= parameter_count(dense)
    with pytest.raises(InvalidInputError, match="nblocks"):
        MLPEncoderConfig(input_dim=3, input_layer="monarch", nblocks=4)


@pytest.mark.parametrize("layer", LAYERS.keys())
def test_demo_v2_encoder_builds_with_every_layer(layer: str) -> None:
    """index/demo.py builds v2 as below with ``layer=config.v2_layer``: every key must work."""
    config = MLPEncoderConfig(
        input_dim=784, hidden_dims=(512, 512), embed_dim=128, layer=layer, nblocks=4
    )
    encoder = build_encoder("mlp", config)
    assert embed(encoder, torch.rand(3, 784)).shape == (3, 128)
