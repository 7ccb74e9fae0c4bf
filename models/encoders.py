"""Small trainable encoders, looked up by stable key in :data:`ENCODERS`, and batched embedding.

An encoder maps inputs to raw (N, embed_dim) features; :func:`embed` turns them into the fp32,
L2-normalized rows that cosine retrieval indexes. The catalog stores ``(key, config_json)`` and
rebuilds encoders with :func:`build_encoder`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.errors import InvalidInputError
from models.config import Config, check
from models.layers import LAYERS, make_linear, structure_kwargs
from models.registry import Registry


class Encoder(nn.Module):
    """Contract of every encoder: a stable ``key``, its ``config``, its output ``embed_dim``."""

    key: ClassVar[str]
    config_class: ClassVar[type[Config]]
    config: Config
    embed_dim: int


ENCODERS: Registry[type[Encoder]] = Registry("encoder")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLPEncoderConfig(Config):
    """An MLP: dense input layer, then ``layer``-structured hidden and output layers."""

    input_dim: int
    hidden_dims: tuple[int, ...] = (256,)
    embed_dim: int = 64
    layer: str = "dense"
    nblocks: int = 4
    layer_norm: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # JSON has no tuples: from_dict hands us a list, which would make the config unhashable.
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        widths = (self.input_dim, *self.hidden_dims, self.embed_dim)
        check(
            all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths),
            f"widths must be positive integers, got input_dim={self.input_dim!r}, "
            f"hidden_dims={self.hidden_dims!r}, embed_dim={self.embed_dim!r}",
        )
        LAYERS.get(self.layer)  # unknown layer -> NotFoundError with "did you mean"
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(self.nblocks >= 1, f"nblocks must be >= 1, got {self.nblocks!r}")
        if self.hidden_dims and structure_kwargs(self.layer, nblocks=self.nblocks):
            narrowest = min(widths[1:])
            check(
                self.nblocks <= narrowest,
                f"nblocks={self.nblocks} exceeds the narrowest structured width {narrowest}",
            )


@ENCODERS.register("mlp")
class MLPEncoder(Encoder):
    """(N, input_dim) -> (N, embed_dim) raw features (not normalized: see :func:`embed`).

    Blocks are Linear -> [LayerNorm] -> ReLU -> [Dropout]; the last layer is a plain projection.
    """

    key: ClassVar[str] = "mlp"
    config_class: ClassVar[type[Config]] = MLPEncoderConfig

    def __init__(self, config: MLPEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        self.net = nn.Sequential(*_mlp_modules(config))

    def forward(self, x: Tensor) -> Tensor:
        """x (N, input_dim) -> (N, embed_dim)."""
        return self.net(x)


def _mlp_modules(config: MLPEncoderConfig) -> list[nn.Module]:
    widths = (config.input_dim, *config.hidden_dims, config.embed_dim)
    structure = structure_kwargs(config.layer, nblocks=config.nblocks)
    last = len(widths) - 2
    modules: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        # The input layer is always dense: raw input widths (784 pixels, 64 for digits) are awkward
        # for block structure, and it is where most of the feature mixing has to happen.
        kind, kw = ("dense", {}) if i == 0 else (config.layer, structure)
        modules.append(make_linear(kind, w_in, w_out, **kw))
        if i < last:  # the output projection has no nonlinearity
            modules.extend(_activation(config, w_out))
    return modules


def _activation(config: MLPEncoderConfig, width: int) -> list[nn.Module]:
    """[LayerNorm] -> ReLU -> [Dropout] after a hidden layer of ``width`` units."""
    norm: list[nn.Module] = [nn.LayerNorm(width)] if config.layer_norm else []
    drop: list[nn.Module] = [nn.Dropout(config.dropout)] if config.dropout > 0 else []
    return [*norm, nn.ReLU(), *drop]


def build_encoder(key: str, config: Config | dict[str, Any]) -> Encoder:
    """Rebuild an encoder from its registry key and config (a Config or its ``to_dict`` form)."""
    cls = ENCODERS.get(key)
    if isinstance(config, dict):
        config = cls.config_class.from_dict(config)
    if not isinstance(config, cls.config_class):
        raise InvalidInputError(
            f"encoder {key!r} needs a {cls.config_class.__name__}, got {type(config).__name__}"
        )
    return cls(config)


def embed(
    encoder: nn.Module, x: Tensor, *, batch_size: int = 4096, normalize: bool = True
) -> Tensor:
    """Embed x (N, ...) in batches, in eval mode and without autograd -> fp32 (N, d) on x's device.

    Rows are L2-normalized unless ``normalize=False``. The modules' train/eval modes are restored.
    """
    check(batch_size > 0, f"batch_size must be positive, got {batch_size}")
    if x.ndim < 2 or (x.is_floating_point() and not torch.isfinite(x).all()):
        raise InvalidInputError(f"embed needs finite (N, ...) input, got shape {tuple(x.shape)}")
    modes = {m: m.training for m in encoder.modules()}
    device = next(encoder.parameters()).device
    encoder.eval()
    try:
        with torch.inference_mode():
            parts = [encoder(b.to(device)).float() for b in x.split(batch_size)]
    finally:
        for module, training in modes.items():
            module.training = training
    out = torch.cat(parts) if parts else torch.empty(0, int(getattr(encoder, "embed_dim", 0)))
    if normalize:
        out = F.normalize(out, dim=1)
    return out.to(x.device)
