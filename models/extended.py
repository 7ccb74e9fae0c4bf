"""``extended``: a new version that keeps its predecessor whole, frozen, beside extra dimensions.

v_new(x) = [normalize(v_old(x)), normalize(extra(x))] / √2 (d_old + d_extra): the predecessor's own
vectors come first, so reading the first d_old dimensions of a new vector gives back the old
model's embedding exactly, and a later version still encodes everything the earlier one separated,
classes it never saw included (BT²'s extra dimensions without its influence term; the protocol's
``extend+posthoc`` chain, docs/results/compat.md). Each block is unit-normalized: raw extra
dimensions would otherwise outweigh the predecessor's in the version's cosine. The whole row is
then unit, as serving stores it, so a map trained jointly on these features (the protocol's
``nca_extended`` bridge, affine) serves on the stored vectors unchanged.

The config nests both parts as ``(key, config)``, so a checkpoint is self-contained and a chain of
extensions (v3 extends v2 extends v1) nests further; the predecessor's weights are saved with it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import Config, check
from models.encoders import ENCODERS, Encoder, build_encoder


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtendedConfig(Config):
    previous_key: str
    previous_config: dict[str, Any]
    extra_key: str
    extra_config: dict[str, Any]

    def __post_init__(self) -> None:
        for key in (self.previous_key, self.extra_key):
            ENCODERS.get(key)  # unknown key -> NotFoundError with "did you mean"
        for name in ("previous_config", "extra_config"):
            value = getattr(self, name)
            check(isinstance(value, dict), f"{name} must be a JSON object, got {value!r}")
            # in JSON form (tuples as lists), so a config equals itself read back from a checkpoint
            object.__setattr__(self, name, json.loads(json.dumps(value)))


@ENCODERS.register("extended")
class ExtendedEncoder(Encoder):
    """(N, ...) -> (N, d_previous + d_extra): [previous (frozen), extra], each block unit rows."""

    key: ClassVar[str] = "extended"
    config_class: ClassVar[type[Config]] = ExtendedConfig
    config: ExtendedConfig

    def __init__(
        self,
        config: ExtendedConfig,
        previous: Encoder | None = None,
        extra: Encoder | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        if previous is None:
            previous = build_encoder(config.previous_key, config.previous_config)
        self.previous = previous.eval().requires_grad_(False)
        self.extra = (
            extra if extra is not None else build_encoder(config.extra_key, config.extra_config)
        )
        self.embed_dim = self.previous.embed_dim + self.extra.embed_dim

    @classmethod
    def around(cls, previous: Encoder, extra: Encoder) -> ExtendedEncoder:
        """Extend the trained ``previous`` (its weights kept, frozen) with the untrained ``extra``."""
        config = ExtendedConfig(
            previous_key=previous.key,
            previous_config=previous.config.to_dict(),
            extra_key=extra.key,
            extra_config=extra.config.to_dict(),
        )
        return cls(config, previous, extra)

    def train(self, mode: bool = True) -> ExtendedEncoder:
        super().train(mode)
        self.previous.eval()  # frozen: its batch statistics must not move while the extra dims train
        return self

    def forward(self, x: Tensor) -> Tensor:  # (N, ...) -> (N, d_previous + d_extra)
        with torch.no_grad():
            kept = F.normalize(self.previous(x), dim=1)
        return torch.cat([kept, F.normalize(self.extra(x), dim=1)], dim=1) * 0.5**0.5
