"""``block_step``: the bridge of a version that extends its predecessor (models/extended.py).

An extended version's first d_old dimensions *are* the old model's vectors, so the old space is
reached exactly by reading that block; a label-aware map B (``lambda_orthogonal_nca`` started at
the block, ``init="identity"``) can do better, since the new version also saw what the old one
never did. The full map over-corrects from a predecessor that never saw some classes (stop 20,
docs/results/compat.md: seed 1's v2 → v1 test top-1 0.708 at α = 1, 0.784 at α = 0.3, 0.759 at 0),
so queries move from the block towards B by a step α:

    bridge(x) = (1 − α)·normalize(x[:, :d_old]) + α·normalize(x W + b)        (N, d_new) -> (N, d_old)

α is not trained: :func:`compat.extension.fit_block_step` chooses it on held-out pairs (α = 0 is
the predecessor's own retrieval, which the choice can always keep). Two normalizations make it
nonlinear, so it serves through its module like the MLP adapters. It reads a block, so it only
narrows, and it is never a default candidate between unrelated encoders (``reads_block``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from compat.adapters import ADAPTERS
from compat.linear_adapters import (
    Init,
    NeighbourhoodLambdaOrthogonalAdapter,
    NeighbourhoodLambdaOrthogonalConfig,
)
from models.config import check


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockStepConfig(NeighbourhoodLambdaOrthogonalConfig):
    init: Init = "identity"  # the block: the map starts as the predecessor's own retrieval
    step: float = 1.0  # α, set by compat.extension.fit_block_step's held-out choice

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.dim_in >= self.dim_out,
            f"block_step reads the first {self.dim_out} of {self.dim_in} dimensions: it needs "
            f"dim_in >= dim_out (an extended version's vectors into its predecessor's)",
        )
        check(0.0 <= self.step <= 1.0, f"step must be in [0, 1], got {self.step}")


@ADAPTERS.register("block_step")
class BlockStepAdapter(NeighbourhoodLambdaOrthogonalAdapter):
    """(1 − α)·block + α·B(x): training fits B alone (the inherited NCA loss); α is the config's."""

    key = "block_step"
    config_class = BlockStepConfig
    config: BlockStepConfig
    reads_block: ClassVar[bool] = True

    def stepped(self, x: Tensor, step: float) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        block = F.normalize(x[:, : self.dim_out], dim=1)
        return (1 - step) * block + step * F.normalize(self.linear(x), dim=1)

    def forward(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        return self.stepped(x, self.config.step)

    # The one subclass of a linear adapter that is not one projection (two normalizations), so it
    # narrows the inherited return type: it serves through its module like the MLP adapters.
    def serving_form(self) -> None:  # type: ignore[override]
        return None
