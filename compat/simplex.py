"""d-Simplex fixed classifier (Pernici et al.) with the HOC term for sequential updates (iamcl2r).

The classifier is not learned: its rows are the K vertices of a regular simplex, unit vectors in
R^{K−1} with pairwise cosine −1/(K−1). A learnable junction maps encoder features to R^{K−1}, the
embedding space. Every model version built for the same K shares the same fixed classifier, so its
features are pulled toward the same vertices: compatibility for the classes both versions share
(not for classes an older version never saw), without any adapter (``bridge_module`` is None).

For a sequential update, HOC adds a contrastive term between the new features and the frozen
previous model's features of the same batch (supplied by ``compat.references.WithReferences``).
Our reading of it: supervised-contrastive, anchor = new feature i, candidates = all previous
features j in the batch, positives = those of i's class, temperature ``hoc_tau``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compat.objectives import OBJECTIVES, Objective, ObjectiveConfig
from models.config import check


def simplex_vertices(classes: int) -> Tensor:
    """(K, K−1) float32: unit rows, pairwise cosine −1/(K−1); deterministic (Helmert basis)."""
    check(classes >= 2, f"a simplex needs >= 2 vertices, got {classes}")
    k = classes
    centred = torch.eye(k, dtype=torch.float64) - 1.0 / k  # one-hots minus their centroid
    basis = torch.zeros(k - 1, k, dtype=torch.float64)  # orthonormal basis of 1⊥ (Helmert rows)
    for i in range(1, k):
        basis[i - 1, :i] = 1.0
        basis[i - 1, i] = -float(i)
        basis[i - 1] /= (i * (i + 1)) ** 0.5
    return F.normalize(centred @ basis.T, dim=1).float()  # (K, K) @ (K, K−1)


class SimplexClassifier(nn.Module):
    """Logits = z @ Vᵀ with V the fixed simplex vertices (a buffer, never trained)."""

    vertices: Tensor

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.register_buffer("vertices", simplex_vertices(classes))

    def forward(self, z: Tensor) -> Tensor:  # (N, K−1) -> (N, K)
        return z @ self.vertices.T


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimplexConfig(ObjectiveConfig):
    hoc: bool = False  # add the HOC term: needs the previous model's (N, K−1) features
    hoc_weight: float = 1.0
    hoc_tau: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.hoc_weight >= 0 and self.hoc_tau > 0, f"bad hoc_weight/hoc_tau in {self}")


def hoc_loss(new: Tensor, previous: Tensor, labels: Tensor, tau: float) -> Tensor:
    """Supervised contrastive new -> previous: (N, d) unit rows each, (N,) labels -> scalar."""
    logits = new @ previous.T / tau  # (N, N)
    positive = (labels[:, None] == labels[None, :]).float()  # includes j = i
    log_prob = logits.log_softmax(dim=1)
    return -((log_prob * positive).sum(dim=1) / positive.sum(dim=1)).mean()


@OBJECTIVES.register("simplex")
class Simplex(Objective):
    key = "simplex"

    def __init__(self, config: SimplexConfig) -> None:
        super().__init__()
        self.config = config
        self.junction = nn.Linear(config.embed_dim, config.classes - 1)
        self.head = SimplexClassifier(config.classes)

    def reference_dims(self) -> tuple[int, ...]:
        return (self.config.classes - 1,) if self.config.hoc else ()

    def embedding(self) -> nn.Module:
        return self.junction

    def loss(self, features: Tensor, labels: Tensor) -> Tensor:
        c = self.config
        own, refs = self.split(features)
        z = self.junction(own)  # (N, K−1)
        loss = self._ce(self.head(z), labels, c.label_smoothing)
        if c.hoc:
            loss = loss + c.hoc_weight * hoc_loss(F.normalize(z, dim=1), refs[0], labels, c.hoc_tau)
        return loss
