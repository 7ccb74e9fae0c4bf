"""A small convolutional image encoder with a structured-layer MLP head (registry key ``conv``).

Input rows are flattened images, (N, prod(image_shape)), the layout :mod:`models.datasets` and the
vector stores use, so the encoder slots in wherever the MLP does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from torch import Tensor, nn

from kernels.errors import InvalidInputError
from models.config import Config, check
from models.encoders import ENCODERS, Encoder, MLPEncoderConfig, mlp_modules


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvEncoderConfig(Config):
    """Stages of conv3x3 -> [BatchNorm] -> ReLU -> maxpool2, an adaptive average pool to
    ``pool_size`` x ``pool_size``, then an MLP head whose every layer is ``layer``."""

    image_shape: tuple[int, ...]  # (H, W) or (C, H, W)
    channels: tuple[int, ...] = (32, 64)
    pool_size: int = 4
    hidden_dims: tuple[int, ...] = (256,)
    embed_dim: int = 64
    layer: str = "monarch"
    nblocks: int = 4
    batch_norm: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("image_shape", "channels", "hidden_dims"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check(
            len(self.image_shape) in (2, 3) and all(_positive(d) for d in self.image_shape),
            f"image_shape must be (H, W) or (C, H, W) of positive ints, got {self.image_shape!r}",
        )
        check(
            len(self.channels) >= 1 and all(_positive(c) for c in self.channels),
            f"channels must be >= 1 positive ints, got {self.channels!r}",
        )
        side = min(self.image_shape[-2:]) >> len(self.channels)
        check(
            _positive(self.pool_size) and self.pool_size <= side,
            f"pool_size must be in [1, {side}] (the smallest side after "
            f"{len(self.channels)} 2x poolings of {self.image_shape[-2:]}), got {self.pool_size!r}",
        )
        self.head_config()  # validates the head's widths, layer and nblocks

    @property
    def in_channels(self) -> int:
        return self.image_shape[0] if len(self.image_shape) == 3 else 1

    def head_config(self) -> MLPEncoderConfig:
        return MLPEncoderConfig(
            input_dim=self.channels[-1] * self.pool_size**2,
            hidden_dims=self.hidden_dims,
            embed_dim=self.embed_dim,
            layer=self.layer,
            nblocks=self.nblocks,
            dropout=self.dropout,
            input_layer=self.layer,
        )


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@ENCODERS.register("conv")
class ConvEncoder(Encoder):
    """(N, prod(image_shape)) flattened images -> (N, embed_dim) raw features."""

    key: ClassVar[str] = "conv"
    config_class: ClassVar[type[Config]] = ConvEncoderConfig
    config: ConvEncoderConfig

    def __init__(self, config: ConvEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        modules: list[nn.Module] = []
        c_in = config.in_channels
        for c_out in config.channels:
            modules.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not config.batch_norm))
            modules.extend([nn.BatchNorm2d(c_out)] if config.batch_norm else [])
            modules.extend([nn.ReLU(), nn.MaxPool2d(2)])
            c_in = c_out
        modules.extend([nn.AdaptiveAvgPool2d(config.pool_size), nn.Flatten()])
        self.features = nn.Sequential(*modules)
        self.head = nn.Sequential(*mlp_modules(config.head_config()))

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C*H*W) -> (N, C, H, W) -> conv stages -> (N, channels[-1]*pool²) -> (N, embed_dim)."""
        shape = (self.config.in_channels, *self.config.image_shape[-2:])
        if x.ndim != 2 or x.shape[1] != math.prod(shape):
            raise InvalidInputError(
                f"conv encoder expects (N, {math.prod(shape)}) flattened {shape} images, "
                f"got shape {tuple(x.shape)}"
            )
        return self.head(self.features(x.reshape(-1, *shape)))
