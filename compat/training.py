"""One training loop for every (encoder, objective) pair."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from compat.adapters import no_decay_parameters
from compat.objectives import Objective
from models.config import Config, check

Progress = Callable[[int, int], None]  # (steps done, steps in all)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    epochs: int = 5
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        check(
            self.epochs >= 1 and self.batch_size >= 1, f"epochs and batch_size must be >= 1: {self}"
        )
        check(self.lr > 0 and self.weight_decay >= 0, f"lr must be > 0, weight_decay >= 0: {self}")


def train(
    encoder: nn.Module,
    objective: Objective,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    progress: Progress | None = None,
) -> list[float]:
    """Train ``encoder`` (and the objective's head/adapter) with AdamW + one-cycle; return epoch losses.

    x: (N, input_dim) float32, y: (N,) int64. Deterministic for a given seed.
    """
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = _optimizer(encoder, objective, config)
    steps_per_epoch = max(1, len(x) // config.batch_size)  # drop the ragged last batch
    total = config.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=total)
    encoder.train()
    objective.train()
    losses = []
    for epoch in range(config.epochs):
        order = torch.randperm(len(x), generator=generator)
        running = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            loss = objective.loss(encoder(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item()
            if progress:
                progress(epoch * steps_per_epoch + step + 1, total)
        losses.append(running / steps_per_epoch)
    encoder.eval()
    objective.eval()
    return losses


def _optimizer(
    encoder: nn.Module, objective: Objective, config: TrainConfig
) -> torch.optim.Optimizer:
    """AdamW with weight decay everywhere except on orthogonal parametrizations (it breaks them)."""
    params = list(encoder.parameters()) + list(objective.parameters())
    exempt = {id(p) for p in no_decay_parameters(objective) + no_decay_parameters(encoder)}
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if id(p) not in exempt]},
        {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
