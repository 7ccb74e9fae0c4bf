"""Query fusion: when the old encoder still runs at query time, search with both models' views.

A different deployment from a bridge: each query is embedded by **both** encoders, and the old
gallery (untouched) is searched with

    q = normalize(α · normalize(φ_old(x)) + (1 − α) · normalize(B(φ_new(x))))

where B is a backward adapter (new -> old). On the unit sphere this is SLERP's path between the two
old-space views (a different parametrisation of the same arc); α = 1 is the status quo, α = 0 the
plain bridge. α is chosen on held-out labelled queries (:func:`choose_alpha`), never on the test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor

from compat.backfill_curves import Relevance, cosine, evaluate
from compat.vectors import check_vectors
from kernels.errors import InvalidInputError

Bridge = Callable[[Tensor], Tensor]  # (N, d_new) -> (N, d_old)
ALPHAS = tuple(i / 10 for i in range(11))  # 0.0, 0.1, ..., 1.0


def fuse(old_queries: Tensor, bridged_queries: Tensor, alpha: float) -> Tensor:
    """(Q, d_old), (Q, d_old) -> (Q, d_old) unit rows: α·old + (1 − α)·bridged, both unit first."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must be in [0, 1], got {alpha}")
    if old_queries.shape != bridged_queries.shape:
        raise InvalidInputError(
            f"old queries {tuple(old_queries.shape)} and bridged queries "
            f"{tuple(bridged_queries.shape)} must have the same shape (both in the old space)"
        )
    mixed = alpha * F.normalize(old_queries.float(), dim=1) + (1 - alpha) * F.normalize(
        bridged_queries.float(), dim=1
    )
    return F.normalize(mixed, dim=1)


@dataclasses.dataclass(frozen=True)
class QueryFusion:
    """A chosen α with the bridge it fuses; call with both models' query vectors."""

    bridge: Bridge
    alpha: float
    scores: dict[float, float]  # held-out metric per α tried (empty when α was given)

    def __call__(self, old_queries: Tensor, new_queries: Tensor) -> Tensor:
        """(Q, d_old), (Q, d_new) -> (Q, d_old) unit rows to search the old gallery with."""
        return fuse(old_queries, self.bridge(new_queries), self.alpha)


def choose_alpha(
    old_queries: Tensor,
    new_queries: Tensor,
    old_gallery: Tensor,
    relevance: Relevance,
    bridge: Bridge,
    *,
    alphas: Sequence[float] = ALPHAS,
    metric: str = "recall@10",
) -> QueryFusion:
    """The α with the best held-out ``metric`` (ties: the smaller α, i.e. more of the new model).

    Shapes: old_queries (Q, d_old), new_queries (Q, d_new), old_gallery (G, d_old); relevance (Q, G).
    """
    oq = check_vectors(old_queries, None, "old_queries")
    og = check_vectors(old_gallery, oq.shape[1], "old_gallery")
    nq = check_vectors(new_queries, None, "new_queries")
    if len(nq) != len(oq) or tuple(relevance.gains.shape) != (len(oq), len(og)):
        raise InvalidInputError(
            f"queries {len(oq)} old / {len(nq)} new and relevance {tuple(relevance.gains.shape)} "
            f"must agree with (queries, gallery) = {(len(oq), len(og))}"
        )
    if not alphas:
        raise InvalidInputError("choose_alpha needs at least one alpha to try")
    bridged = bridge(nq)  # (Q, d_new) -> (Q, d_old)
    scores: dict[float, float] = {}
    for alpha in sorted(alphas):
        cells = evaluate(cosine(fuse(oq, bridged, alpha), og), relevance)
        if metric not in cells:
            raise InvalidInputError(f"metric {metric!r} is not among {sorted(cells)}")
        scores[alpha] = cells[metric]
    best = max(scores, key=lambda a: (round(scores[a], 6), -a))
    return QueryFusion(bridge, best, scores)
