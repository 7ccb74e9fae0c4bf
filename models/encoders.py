"""Small trainable encoders, looked up by stable key in :data:`ENCODERS`, and batched embedding.

An encoder maps inputs to raw (N, embed_dim) features; :func:`embed` turns them into the fp32,
L2-normalized rows that cosine retrieval indexes. The catalog stores ``(key, config_json)`` and
rebuilds encoders with :func:`build_encoder`. Keys: ``mlp`` and ``projection_head`` (here),
``conv`` (:mod:`models.conv_encoder`), ``transformer`` (:mod:`models.transformer_encoder`),
``extended`` (:mod:`models.extended`: a predecessor kept whole beside extra dimensions); the
last three are imported at the bottom of this module so every key is registered with ``ENCODERS``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

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
    """An MLP: an ``input_layer`` (dense unless set), then ``layer``-structured hidden and output
    layers. ``nblocks`` applies to every structured layer that takes it."""

    input_dim: int
    hidden_dims: tuple[int, ...] = (256,)
    embed_dim: int = 64
    layer: str = "dense"
    nblocks: int = 4
    layer_norm: bool = False
    dropout: float = 0.0
    input_layer: str = "dense"

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
        LAYERS.get(self.input_layer)
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(self.nblocks >= 1, f"nblocks must be >= 1, got {self.nblocks!r}")
        structured: list[int] = []
        if self.hidden_dims and structure_kwargs(self.layer, nblocks=self.nblocks):
            structured += widths[1:]
        if structure_kwargs(self.input_layer, nblocks=self.nblocks):
            structured += widths[:2]
        if structured:
            check(
                self.nblocks <= min(structured),
                f"nblocks={self.nblocks} exceeds the narrowest structured width {min(structured)}",
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
        self.net = nn.Sequential(*mlp_modules(config))

    def forward(self, x: Tensor) -> Tensor:
        """x (N, input_dim) -> (N, embed_dim)."""
        return self.net(x)


def mlp_modules(config: MLPEncoderConfig) -> list[nn.Module]:
    """The MLP's layers in order: linear -> [LayerNorm] -> ReLU -> [Dropout] ... -> linear."""
    widths = (config.input_dim, *config.hidden_dims, config.embed_dim)
    last = len(widths) - 2
    modules: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        # The input layer is dense by default: raw input widths (784 pixels, 64 for digits) are
        # awkward for block structure, and it is where most of the feature mixing has to happen.
        kind = config.input_layer if i == 0 else config.layer
        kw = structure_kwargs(kind, nblocks=config.nblocks)
        modules.append(make_linear(kind, w_in, w_out, **kw))
        if i < last:  # the output projection has no nonlinearity
            modules.extend(_activation(config, w_out))
    return modules


def _activation(config: MLPEncoderConfig, width: int) -> list[nn.Module]:
    """[LayerNorm] -> ReLU -> [Dropout] after a hidden layer of ``width`` units."""
    norm: list[nn.Module] = [nn.LayerNorm(width)] if config.layer_norm else []
    drop: list[nn.Module] = [nn.Dropout(config.dropout)] if config.dropout > 0 else []
    return [*norm, nn.ReLU(), *drop]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProjectionHeadConfig(Config):
    """A trainable head on a frozen encoder's (N, input_dim) vectors; every layer is ``layer``."""

    input_dim: int
    hidden_dims: tuple[int, ...] = ()
    embed_dim: int = 64
    layer: str = "monarch"
    nblocks: int = 4
    normalize_input: bool = True
    layer_norm: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        self.mlp_config()  # validates widths, layer and nblocks

    def mlp_config(self) -> MLPEncoderConfig:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del fields["normalize_input"]
        return MLPEncoderConfig(**fields, input_layer=self.layer)


@ENCODERS.register("projection_head")
class ProjectionHead(Encoder):
    """(N, input_dim) frozen-encoder vectors -> (N, embed_dim): [L2-normalize] -> structured MLP.

    Pretrained encoders' raw outputs vary in norm across models and layers; normalizing first makes
    the head see what cosine retrieval sees. With no ``hidden_dims`` the head is one linear map.
    """

    key: ClassVar[str] = "projection_head"
    config_class: ClassVar[type[Config]] = ProjectionHeadConfig
    config: ProjectionHeadConfig

    def __init__(self, config: ProjectionHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        self.net = nn.Sequential(*mlp_modules(config.mlp_config()))

    def forward(self, x: Tensor) -> Tensor:
        """x (N, input_dim) -> (N, embed_dim)."""
        if self.config.normalize_input:
            x = F.normalize(x, dim=-1)
        return self.net(x)


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
    Parametrized weights (the orthogonal layers' matrix exponentials) are computed once for all
    batches, not once per batch.
    """
    check(batch_size > 0, f"batch_size must be positive, got {batch_size}")
    if x.ndim < 2 or (x.is_floating_point() and not torch.isfinite(x).all()):
        raise InvalidInputError(f"embed needs finite (N, ...) input, got shape {tuple(x.shape)}")
    modes = {m: m.training for m in encoder.modules()}
    device = next(encoder.parameters()).device
    encoder.eval()
    try:
        with torch.inference_mode(), parametrize.cached():
            parts = [encoder(b.to(device)).float() for b in x.split(batch_size)]
    finally:
        for module, training in modes.items():
            module.training = training
    out = torch.cat(parts) if parts else torch.empty(0, int(getattr(encoder, "embed_dim", 0)))
    if normalize:
        out = F.normalize(out, dim=1)
    return out.to(x.device)


# Register the encoders that live in their own modules (they import the names above).
from models import conv_encoder, extended, transformer_encoder  # noqa: E402, F401
