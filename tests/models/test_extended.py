"""The ``extended`` encoder: its predecessor kept whole, frozen, first; saved and nested."""

import pytest
import torch

from kernels.errors import NotFoundError
from models.checkpoint import load_encoder, save_encoder
from models.encoders import build_encoder, embed
from models.extended import ExtendedConfig, ExtendedEncoder


def mlp(embed_dim: int, seed: int):
    torch.manual_seed(seed)
    return build_encoder("mlp", {"input_dim": 20, "hidden_dims": [16], "embed_dim": embed_dim})


def test_the_predecessors_vectors_are_the_first_block() -> None:
    old = mlp(8, 0)
    new = ExtendedEncoder.around(old, mlp(5, 1))
    x = torch.randn(31, 20)
    vectors = embed(new, x)  # (31, 13), each half-block of norm 1/√2
    assert new.embed_dim == 13 and vectors.shape == (31, 13)
    torch.testing.assert_close(vectors[:, :8] * 2**0.5, embed(old, x), rtol=1e-5, atol=1e-5)
    # unnormalized, too: a jointly trained affine bridge sees what serving stores
    with torch.no_grad():
        torch.testing.assert_close(new(x), vectors, rtol=1e-5, atol=1e-6)


def test_training_moves_only_the_extra_dimensions() -> None:
    old = mlp(8, 0)
    before = {k: v.clone() for k, v in old.state_dict().items()}
    new = ExtendedEncoder.around(old, mlp(5, 1)).train()
    assert not old.training and all(not p.requires_grad for p in old.parameters())
    optimizer = torch.optim.AdamW([p for p in new.parameters() if p.requires_grad], lr=0.1)
    new(torch.randn(17, 20)).pow(2).sum().backward()
    optimizer.step()
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in before.items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in new.extra.parameters())


def test_save_load_round_trip_nests(tmp_path) -> None:
    """v3 extends v2 extends v1: one self-contained checkpoint that rebuilds the same vectors."""
    v2 = ExtendedEncoder.around(mlp(8, 0), mlp(4, 1))
    v3 = ExtendedEncoder.around(v2, mlp(4, 2))
    digest = save_encoder(v3, tmp_path / "v3.safetensors")
    loaded = load_encoder(tmp_path / "v3.safetensors", digest)
    assert isinstance(loaded, ExtendedEncoder) and loaded.config == v3.config
    assert loaded.config.previous_key == "extended" and loaded.embed_dim == 16
    x = torch.randn(9, 20)
    torch.testing.assert_close(embed(loaded, x), embed(v3, x))


def test_unknown_parts_are_refused() -> None:
    with pytest.raises(NotFoundError, match="did you mean"):
        ExtendedConfig(previous_key="mpl", previous_config={}, extra_key="mlp", extra_config={})
