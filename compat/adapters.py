"""Compatibility adapters: small maps between two embedding spaces, with a recorded direction.

A **backward** adapter maps new-model vectors into the old space (a v2 query searches the untouched
v1 gallery); a **forward** adapter maps stored old vectors into the new space. Applying a map in the
wrong direction passes every shape check and destroys retrieval, so the direction is part of the
config, stored in the artifact and checked wherever an adapter is applied.

Each adapter exports a :class:`ServingForm` (a dense projection plus bias) that ``kernels.project``
executes, so serving never runs the training-time parametrization.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal, cast

import torch
from safetensors.torch import save
from torch import Tensor, nn

import kernels
from kernels.errors import CorruptArtifactError, DirectionError
from models.checkpoint import atomic_write_bytes, read_safetensors, sha256_file
from models.config import Config, check
from models.registry import Registry

Direction = Literal["backward", "forward"]
DIRECTIONS: tuple[Direction, ...] = ("backward", "forward")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdapterConfig(Config):
    dim_in: int
    dim_out: int
    direction: Direction = "backward"

    def __post_init__(self) -> None:
        check(self.dim_in > 0 and self.dim_out > 0, f"adapter widths must be > 0, got {self}")
        check(self.direction in DIRECTIONS, f"direction must be one of {DIRECTIONS}")


@dataclasses.dataclass(frozen=True)
class ServingForm:
    """``y = normalize?(x @ weight + bias)``: what kernels/ runs at query or backfill time."""

    weight: Tensor  # (dim_in, dim_out)
    bias: Tensor | None  # (dim_out,)
    normalize: bool

    def __call__(self, x: Tensor) -> Tensor:
        return kernels.project(x, self.weight, self.bias, normalize=self.normalize)


class Adapter(nn.Module):
    """Contract of every registered adapter: widths, direction, config, serving form."""

    key: str
    config_class: type[AdapterConfig] = AdapterConfig
    config: AdapterConfig

    @property
    def dim_in(self) -> int:
        return self.config.dim_in

    @property
    def dim_out(self) -> int:
        return self.config.dim_out

    @property
    def direction(self) -> Direction:
        return self.config.direction

    def serving_form(self) -> ServingForm:
        raise NotImplementedError  # each registered adapter defines its own

    def expect(self, direction: Direction, dim_in: int, dim_out: int) -> None:
        """Refuse use in another direction or between spaces of other widths."""
        if direction != self.direction:
            raise DirectionError(
                f"adapter {self.key!r} is a {self.direction} map ({self.dim_in}->{self.dim_out}) "
                f"but a {direction} map is needed",
                fix="fit or register an adapter in the needed direction",
            )
        if (dim_in, dim_out) != (self.dim_in, self.dim_out):
            raise DirectionError(
                f"adapter {self.key!r} maps {self.dim_in}->{self.dim_out} dims, the spaces need "
                f"{dim_in}->{dim_out}"
            )


ADAPTERS: Registry[type[Adapter]] = Registry("adapter")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrthogonalConfig(AdapterConfig):
    parametrization: Literal["matrix_exp", "cayley", "householder"] = "matrix_exp"
    bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        options = ("matrix_exp", "cayley", "householder")
        check(self.parametrization in options, f"parametrization must be one of {options}")


@ADAPTERS.register("orthogonal")
class OrthogonalAdapter(Adapter):
    """W with orthonormal rows or columns (exactly, by parametrization): an isometry when widening,
    an orthogonal projection when narrowing. Square and rectangular.

    Its parameters must be trained without weight decay: decay on the parametrization's free
    matrix breaks orthogonality of rectangular maps in torch 2.13 (‖WWᵀ−I‖ reaches 1); see
    :func:`no_decay_parameters`.
    """

    key = "orthogonal"
    config_class = OrthogonalConfig

    def __init__(self, config: OrthogonalConfig) -> None:
        super().__init__()
        self.config = config
        linear = nn.Linear(config.dim_in, config.dim_out, bias=config.bias)
        self.linear = nn.utils.parametrizations.orthogonal(
            linear, orthogonal_map=config.parametrization
        )

    def forward(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        return self.linear(x)

    def serving_form(self) -> ServingForm:
        with torch.no_grad():
            linear = cast(nn.Linear, self.linear)  # the parametrization computes .weight on access
            weight = linear.weight.detach().T.contiguous()  # (dim_in, dim_out)
            bias = None if linear.bias is None else linear.bias.detach().clone()
        # Widening orthonormal columns preserve norms: unit inputs stay unit, normalize is a no-op.
        isometric = self.dim_out >= self.dim_in and bias is None
        return ServingForm(weight=weight, bias=bias, normalize=not isometric)


def no_decay_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters that weight decay must not touch (those behind an orthogonal parametrization)."""
    return [p for name, p in module.named_parameters() if "parametrizations." in name]


def build_adapter(key: str, config: AdapterConfig | dict) -> Adapter:
    cls = ADAPTERS.get(key)
    if isinstance(config, dict):
        config = cls.config_class.from_dict(config)
    return cls(config)


def save_adapter(adapter: Adapter, path: Path) -> str:
    """Write weights + key + config (direction included) as safetensors; return the file's sha256."""
    tensors = {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}
    meta = {"key": adapter.key, "config": adapter.config.to_json()}
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return sha256_file(path)


def load_adapter(path: Path, expected_sha256: str | None = None) -> Adapter:
    """Rebuild an adapter from its artifact; a checksum mismatch or unreadable file is an error."""
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise CorruptArtifactError(
            f"adapter artifact {path} does not match its recorded sha256",
            fix="the file was changed or truncated: refit the adapter or restore the file",
        )
    meta, tensors = read_safetensors(path)
    try:
        adapter = build_adapter(meta["key"], json.loads(meta["config"]))
        adapter.load_state_dict(tensors)
    except (KeyError, json.JSONDecodeError, RuntimeError) as e:
        raise CorruptArtifactError(f"adapter artifact {path} is not a hotswap adapter: {e}") from e
    return adapter
