"""A small transformer encoder for token sequences (registry key ``transformer``).

Pre-norm blocks whose MLPs use the structured ``layer`` (the M2-BERT / Monarch-MLP pattern; the
attention projections stay dense), then mean pooling over the non-padding tokens.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.errors import InvalidInputError
from models.config import Config, check
from models.encoders import ENCODERS, Encoder
from models.layers import LAYERS, make_linear, structure_kwargs


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerEncoderConfig(Config):
    """Token ids (N, L <= max_len) in [0, vocab_size), ``pad_id`` marking padding."""

    vocab_size: int
    max_len: int = 128
    pad_id: int = 0
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    embed_dim: int = 64
    layer: str = "monarch"
    nblocks: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "max_len", "width", "depth", "heads", "mlp_ratio", "embed_dim")
        for name in sizes:
            value = getattr(self, name)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"{name} must be a positive integer, got {value!r}",
            )
        check(
            0 <= self.pad_id < self.vocab_size,
            f"pad_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_id!r}",
        )
        check(
            self.width % self.heads == 0,
            f"width={self.width} must be divisible by heads={self.heads}",
        )
        LAYERS.get(self.layer)  # unknown layer -> NotFoundError with "did you mean"
        check(self.nblocks >= 1, f"nblocks must be >= 1, got {self.nblocks!r}")
        if structure_kwargs(self.layer, nblocks=self.nblocks):
            check(
                self.nblocks <= self.width,
                f"nblocks={self.nblocks} exceeds the MLP's narrowest width {self.width}",
            )
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key mask: (N, L, w), keep (N, 1, 1, L) -> (N, L, w)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        n, length, width = x.shape
        # (N, L, 3w) -> (3, N, heads, L, w/heads)
        qkv = self.qkv(x).reshape(n, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(n, length, width))


class Block(nn.Module):
    """x + attn(LN(x)), then x + MLP(LN(x)) with a structured (w -> ratio*w -> w) MLP."""

    def __init__(self, config: TransformerEncoderConfig) -> None:
        super().__init__()
        width, hidden = config.width, config.mlp_ratio * config.width
        kw = structure_kwargs(config.layer, nblocks=config.nblocks)
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, config.heads, config.dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            make_linear(config.layer, width, hidden, **kw),
            nn.GELU(),
            make_linear(config.layer, hidden, width, **kw),
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), keep))
        return x + self.drop(self.mlp(self.norm2(x)))


@ENCODERS.register("transformer")
class TransformerEncoder(Encoder):
    """(N, L) int64 token ids -> (N, embed_dim) raw features (mean of the non-padding tokens).

    A row of padding only has no token to pool: it attends to every position (so attention stays
    finite) and pools to zeros, i.e. its embedding is the output projection's bias.
    """

    key: ClassVar[str] = "transformer"
    config_class: ClassVar[type[Config]] = TransformerEncoderConfig
    config: TransformerEncoderConfig

    def __init__(self, config: TransformerEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        self.tokens = nn.Embedding(config.vocab_size, config.width, padding_idx=config.pad_id)
        self.positions = nn.Parameter(torch.randn(config.max_len, config.width) * 0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.proj = make_linear("dense", config.width, config.embed_dim)

    def forward(self, ids: Tensor) -> Tensor:
        """ids (N, L) -> (N, L, width) -> blocks -> masked mean (N, width) -> (N, embed_dim)."""
        self._check(ids)
        present = ids != self.config.pad_id  # (N, L)
        keep = present | ~present.any(dim=1, keepdim=True)  # all-padding rows attend everywhere
        x = self.tokens(ids) + self.positions[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, keep[:, None, None, :])
        x = self.norm(x) * present[..., None]
        pooled = x.sum(dim=1) / present.sum(dim=1, keepdim=True).clamp(min=1)
        return self.proj(pooled)

    def _check(self, ids: Tensor) -> None:
        c = self.config
        if ids.ndim != 2 or ids.dtype != torch.int64 or not 1 <= ids.shape[1] <= c.max_len:
            raise InvalidInputError(
                f"transformer encoder expects (N, L <= {c.max_len}) int64 token ids, "
                f"got {ids.dtype} of shape {tuple(ids.shape)}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size):
            raise InvalidInputError(
                f"token ids must be in [0, {c.vocab_size}), "
                f"got [{int(ids.min())}, {int(ids.max())}]"
            )
