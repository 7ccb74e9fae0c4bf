"""Frozen reference features for objectives whose loss compares the new model with another one.

``train`` hands an objective only ``encoder(x)``. BT² (1 − cos(φ_old, b), the teacher term),
d-Simplex's HOC and RACT also need the old (or teacher) model's features of the *same* inputs, so
:class:`WithReferences` runs those frozen models beside the encoder and appends their L2-normalized
features: (N, embed_dim + d_1 + ... + d_r). The objective cuts them apart with ``Objective.split``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WithReferences(nn.Module):
    """encoder(x) followed by each frozen reference's unit-norm features of x.

    The references never train: gradients are off, and ``train()`` leaves them in eval mode (their
    dropout or normalization statistics must not change while the new model trains).
    """

    def __init__(self, encoder: nn.Module, references: Sequence[nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.references = nn.ModuleList(references).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> WithReferences:
        super().train(mode)
        self.references.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:  # (N, ...) -> (N, embed_dim + sum(d_r))
        with torch.no_grad():
            refs = [F.normalize(r(x).float(), dim=1) for r in self.references]
        return torch.cat([self.encoder(x), *refs], dim=1)
