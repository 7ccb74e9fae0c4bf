"""Extra InfoNCE negatives for a post-hoc bridge: a bank of every distinct training target.

MoCo keeps a queue of *stale* keys because its key encoder moves. A post-hoc bridge maps new-model
vectors onto frozen old-model vectors, so the targets never change: a bank of all of them is
exact, and an InfoNCE step can draw as many negatives from it as it can afford, beyond the batch.

Two draws per step (both seeded by the global RNG, which ``fit_adapter`` seeds):

- ``uniform(k)``: k bank rows at random, the same for every batch row (more, but mostly easy,
  negatives);
- ``near(targets, per_row)``: for each batch row, ``per_row`` bank rows from the old-space cluster
  of its own target (spherical k-means fitted once on the bank): hard negatives, the neighbours a
  bridged query is most likely to land on instead of its own target.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.errors import InvalidInputError


def distinct_rows(y: Tensor) -> Tensor:
    """(N, d) -> (M, d) unit rows, exact duplicates dropped (one definition paired with two texts)."""
    return torch.unique(F.normalize(y.detach().float(), dim=1), dim=0)


def spherical_kmeans(
    rows: Tensor, clusters: int, *, iterations: int = 10, chunk: int = 8192
) -> tuple[Tensor, Tensor]:
    """(M, d) unit rows -> (centroids (C, d), assignment (M,)), by cosine; seeded by the global RNG.

    Clusters left empty are dropped, so every returned centroid owns at least one row.
    """
    centroids = rows[torch.randperm(len(rows))[:clusters]].clone()
    for _ in range(iterations):
        assign = _nearest(rows, centroids, chunk)
        sums = torch.zeros_like(centroids).index_add_(0, assign, rows)
        empty = sums.norm(dim=1) == 0  # an empty cluster keeps its centroid this round
        centroids = torch.where(empty[:, None], centroids, F.normalize(sums, dim=1))
    assign = _nearest(rows, centroids, chunk)
    used = torch.bincount(assign, minlength=len(centroids)) > 0
    renumber = torch.cumsum(used, 0) - 1  # old centroid index -> index among the used ones
    return centroids[used], renumber[assign]


def _nearest(rows: Tensor, centroids: Tensor, chunk: int) -> Tensor:
    """(M, d), (C, d) -> (M,) index of each row's nearest centroid, ``chunk`` rows at a time."""
    return torch.cat([(part @ centroids.T).argmax(1) for part in rows.split(chunk)])


class NegativeBank:
    """Every distinct target of the fit, grouped by old-space cluster for the hard draw."""

    def __init__(self, y: Tensor, *, clusters: int = 0) -> None:
        rows = distinct_rows(y)  # (M, d)
        if len(rows) < 2:
            raise InvalidInputError(f"a negative bank needs >= 2 distinct targets, got {len(rows)}")
        count = clusters or max(1, round(math.sqrt(len(rows))))  # ~sqrt(M) clusters of ~sqrt(M)
        self.centroids, assign = spherical_kmeans(rows, min(count, len(rows)))
        order = torch.argsort(assign)
        self.rows = rows[order]  # (M, d), cluster by cluster
        sizes = torch.bincount(assign, minlength=len(self.centroids))
        self.sizes = sizes
        self.starts = torch.cumsum(sizes, 0) - sizes  # first row of each cluster in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def uniform(self, k: int) -> Tensor:
        """(k, d) bank rows drawn at random (with replacement)."""
        return self.rows[torch.randint(len(self.rows), (k,))]

    def near(self, targets: Tensor, per_row: int) -> Tensor:
        """(B, d) targets -> (B * per_row, d) bank rows from each target's own cluster."""
        cluster = (F.normalize(targets.detach(), dim=1) @ self.centroids.T).argmax(1)  # (B,)
        size = self.sizes[cluster][:, None].float()  # (B, 1), >= 1: no empty clusters
        offset = (torch.rand(len(targets), per_row) * size).long().clamp(max=size.long() - 1)
        return self.rows[(self.starts[cluster][:, None] + offset).ravel()]
