"""Backfilling curves: quality of a partly re-embedded gallery, for several backfill orderings.

A mixed gallery holds, for each item, either its new-model vector (migrated) or only its old one.
It is scored densely, as mixed-version search serves it: a migrated item is scored by the new
query against its new vector, any other item by the bridged query (backward adapter applied to the
new query) against its old vector, and the two kinds are merged by score. At fraction 0 this is the
bridge alone; at fraction 1 it is the full re-index (new/new). The merge can be calibrated per
fraction as serving calibrates it per migration wave (:func:`wave_calibration`): bridged scores are
mapped onto the native scale by a monotone map fitted on the items migrated so far.

Orderings (which items to re-embed first), each a permutation of gallery positions:

- ``random``: a seeded shuffle (the baseline every paper reports);
- ``distance_to_mean``: farthest from their k-means cluster mean in the old space first (items the
  old model places oddly, and where a map fitted on typical pairs is least reliable; λ-orth's
  ordering, computed before any item is re-embedded);
- ``uncertainty``: highest predicted uncertainty first (FastFill's σ from a forward map's head).

A reference, not an ordering anyone can run (:func:`order_culprits_first` reads the relevance
labels): the items that are some query's wrong top-1 answer before any migration go first. It
bounds what an ordering could gain where the deployable ones do not beat random.

Pure torch; no SQL, no FAISS.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from compat.calibration import rank_matched_calibration
from compat.metrics import curve_area
from compat.relevance_metrics import (
    mean_per_metric,
    per_query_relevance_metrics,
    ranked_relevance_metrics,
    relevance_metrics,
)
from kernels.errors import InvalidInputError
from kernels.topk import exact_topk

Ordering = Literal["random", "distance_to_mean", "uncertainty"]
# migrated (G,) bool -> a monotone map of bridged scores onto the native scale, fitted for that wave
WaveCalibration = Callable[[Tensor], Callable[[Tensor], Tensor]]
ORDERINGS: tuple[Ordering, ...] = ("random", "distance_to_mean", "uncertainty")


@dataclasses.dataclass(frozen=True)
class Relevance:
    """Which gallery items answer which query: (Q, G) gains, plus an optional excluded self-match."""

    gains: Tensor  # (Q, G) bool or float >= 0
    exclude: Tensor | None = None  # (Q,) gallery position removed from each query's ranking

    @classmethod
    def pairs(cls, n: int, gallery: int | None = None) -> Relevance:
        """Query i's one answer is gallery item i (synonyms -> their gloss); items n.. of a larger
        ``gallery`` answer no query (distractors, as most of a deployed gallery is)."""
        gallery = n if gallery is None else gallery
        if gallery < n:
            raise InvalidInputError(f"a gallery of {gallery} items cannot answer {n} queries")
        return cls(torch.eye(n, gallery, dtype=torch.bool))

    @classmethod
    def labels(cls, query_labels: Tensor, gallery_labels: Tensor, *, self_match: bool) -> Relevance:
        """Same label = relevant; ``self_match``: query i is gallery item i, removed from its ranking."""
        gains = query_labels[:, None] == gallery_labels[None, :]  # (Q, G)
        exclude = torch.arange(len(query_labels)) if self_match else None
        return cls(gains, exclude)

    def without_self(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """(Q, G) scores -> (float32 scores, float64 gains), each query's excluded self-match at
        -inf and gain 0, so no ranking counts it; copies, the inputs stay as they are."""
        s, gains = scores.float().clone(), self.gains.to(torch.float64).clone()
        if self.exclude is not None:
            rows = torch.arange(len(s))
            s[rows, self.exclude] = float("-inf")
            gains[rows, self.exclude] = 0.0
        return s, gains


def cosine(queries: Tensor, gallery: Tensor) -> Tensor:
    """(Q, d) x (G, d) -> (Q, G) cosine scores (rows re-normalised; widths must match)."""
    if queries.shape[1] != gallery.shape[1]:
        raise InvalidInputError(
            f"query width {queries.shape[1]} != gallery width {gallery.shape[1]}",
            fix="bridge the queries with an adapter into the gallery's space first",
        )
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    return q @ torch.nn.functional.normalize(gallery.float(), dim=1).T


def mixed_scores(
    new_scores: Tensor, bridged_scores: Tensor, migrated: Tensor
) -> Tensor:  # (Q, G), (Q, G), (G,) bool -> (Q, G)
    """Mixed-version scores: new/new where the item is migrated, bridged/old elsewhere."""
    return torch.where(migrated[None, :], new_scores, bridged_scores)


def wave_calibration(
    new_scores: Tensor,
    bridged_scores: Tensor,
    *,
    queries: int = 256,
    items: int = 2000,
    seed: int = 0,
) -> WaveCalibration:
    """Serving's per-wave calibration (``index.search.measure_calibration``) for a gallery that is
    its own query set: new_scores (G, G) new item vs new item, bridged_scores (G, G) bridged new
    item vs old item. For a wave, pseudo-queries and items are sampled among the migrated items
    (they have both vectors), a query's own item excluded; labels are never used.
    """
    if new_scores.shape != bridged_scores.shape or new_scores.shape[0] != new_scores.shape[1]:
        raise InvalidInputError(
            f"wave_calibration needs two (G, G) self-retrieval score matrices, got "
            f"{tuple(new_scores.shape)} and {tuple(bridged_scores.shape)}"
        )

    def for_wave(migrated: Tensor) -> Callable[[Tensor], Tensor]:
        moved = migrated.nonzero().flatten()
        g = torch.Generator().manual_seed(seed)
        shared = moved[torch.randperm(len(moved), generator=g)[:items]].sort().values
        probes = moved[torch.randperm(len(moved), generator=g)[:queries]].sort().values
        own = (probes[:, None] == shared[None, :]).numpy()
        native = new_scores[probes][:, shared].double().numpy()  # (P, I)
        bridged = bridged_scores[probes][:, shared].double().numpy()
        fitted = rank_matched_calibration(bridged, native, exclude=own)
        return lambda scores: torch.from_numpy(fitted(scores.double().numpy())).to(scores.dtype)

    return for_wave


def evaluate(scores: Tensor, relevance: Relevance, ks: Sequence[int] = (10,)) -> dict[str, float]:
    """Mean Recall/MRR/nDCG@k of a (Q, G) score matrix."""
    return relevance_metrics(scores, relevance.gains, ks=ks, exclude=relevance.exclude)


def evaluate_per_query(
    scores: Tensor, relevance: Relevance, ks: Sequence[int] = (10,)
) -> dict[str, Tensor]:
    """:func:`evaluate` before the mean over queries: ``{"recall@k": (Q,), ...}``."""
    return per_query_relevance_metrics(scores, relevance.gains, ks=ks, exclude=relevance.exclude)


def rerank_metrics(
    bridged_scores: Tensor,
    new_scores: Tensor,
    relevance: Relevance,
    depth: int,
    ks: Sequence[int] = (10,),
) -> dict[str, float]:
    """Mean metrics of the cascade (:func:`rerank_per_query`)."""
    return mean_per_metric(rerank_per_query(bridged_scores, new_scores, relevance, depth, ks))


def rerank_per_query(
    bridged_scores: Tensor,
    new_scores: Tensor,
    relevance: Relevance,
    depth: int,
    ks: Sequence[int] = (10,),
) -> dict[str, Tensor]:
    """Per-query metrics of the cascade: top-``depth`` by bridged score, re-ordered by new/new score.

    (Q, G) score matrices each; ties keep the bridged order (then ascending position). A ``depth``
    below k cuts the list short and is penalised, never rescaled.
    """
    if not 1 <= depth <= bridged_scores.shape[1]:
        raise InvalidInputError(
            f"rerank depth must be in 1..{bridged_scores.shape[1]}, got {depth}"
        )
    first, gains = relevance.without_self(bridged_scores)
    candidates = exact_topk(first, depth).indices
    rescored = new_scores.float().gather(1, candidates)  # (Q, depth)
    within = torch.sort(rescored, dim=1, descending=True, stable=True).indices
    ranked = candidates.gather(1, within)  # (Q, depth) gallery positions, best first
    return ranked_relevance_metrics(ranked, gains, ks)


def kmeans(x: Tensor, k: int, *, iters: int = 25, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding: x (N, d) -> centres (k, d), assignment (N,)."""
    if not 1 <= k <= len(x):
        raise InvalidInputError(f"k-means needs 1 <= k <= {len(x)} items, got k={k}")
    g = torch.Generator().manual_seed(seed)
    x = x.float()
    centres = x[torch.randint(len(x), (1,), generator=g)]
    for _ in range(k - 1):  # k-means++: next centre drawn in proportion to squared distance
        d2 = torch.cdist(x, centres).pow(2).min(dim=1).values
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        centres = torch.cat([centres, x[torch.multinomial(weights, 1, generator=g)]])
    assign = torch.cdist(x, centres).argmin(dim=1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)[:, None]  # (k, 1)
        # an emptied cluster keeps its previous centre
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        new_assign = torch.cdist(x, centres).argmin(dim=1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return centres, assign


def order_random(n: int, *, seed: int = 0) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def order_distance_to_mean(
    old_gallery: Tensor, *, clusters: int | None = None, seed: int = 0
) -> Tensor:
    """Farthest from their cluster mean (old space, cosine geometry) first; ties by position."""
    x = torch.nn.functional.normalize(old_gallery.float(), dim=1)  # (G, d_old)
    k = clusters or max(1, min(len(x), round(math.sqrt(len(x) / 2))))
    centres, assign = kmeans(x, k, seed=seed)
    distance = (x - centres[assign]).norm(dim=1)  # (G,)
    return torch.sort(distance, descending=True, stable=True).indices


def order_by_uncertainty(uncertainty: Tensor) -> Tensor:
    """Most uncertain (highest σ) first; ties by position."""
    return torch.sort(uncertainty.float(), descending=True, stable=True).indices


def order_culprits_first(bridged_scores: Tensor, relevance: Relevance) -> Tensor:
    """A label oracle: items that are the wrong top-1 answer of the most queries at β = 0 first.

    bridged_scores (Q, G): the bridge-only scores. An item "answers wrongly" when it ranks first
    for a query it is not relevant to (self-matches excluded); migrating it replaces that score by
    the new model's. Reads the relevance, so it is a ceiling to compare deployable orderings with,
    never an ordering to run; the other items follow in position order.
    """
    scores, gains = relevance.without_self(bridged_scores)
    top = scores.argmax(dim=1)  # (Q,) the first position among tied best, as a stable sort ranks
    wrong = gains[torch.arange(len(scores)), top] <= 0
    blame = torch.bincount(top[wrong], minlength=scores.shape[1])  # (G,) wrong answers per item
    return torch.sort(blame, descending=True, stable=True).indices


@dataclasses.dataclass(frozen=True)
class Curve:
    """One ordering's backfilling curve: ``metric`` of the mixed gallery after each fraction."""

    ordering: str
    metric: str
    fractions: list[float]
    values: list[float]
    area: float  # FastFill's M̃: trapezoidal mean over fractions in [0, 1]
    fraction_to_target: (
        float | None
    )  # smallest backfill fraction reaching ``target`` (interpolated)
    target: float  # e.g. 0.95 × the full re-index's value


def fraction_reaching(
    fractions: Sequence[float], values: Sequence[float], target: float
) -> float | None:
    """The backfill fraction at which a curve first reaches ``target``, linearly interpolated.

    First crossing: the first point i with values[i] >= target; 0 when the curve starts there,
    else the interpolation between points i-1 and i. None when no point reaches it.
    """
    for i, (f, v) in enumerate(zip(fractions, values, strict=True)):
        if v >= target:
            if i == 0:
                return float(f)
            f0, v0 = fractions[i - 1], values[i - 1]
            return float(f0 + (f - f0) * (target - v0) / (v - v0))
    return None


def backfill_curve(
    new_scores: Tensor,
    bridged_scores: Tensor,
    relevance: Relevance,
    order: Tensor,
    *,
    ordering: str,
    metric: str = "recall@10",
    points: int = 11,
    target: float,
    calibration: WaveCalibration | None = None,
) -> Curve:
    """Score the mixed gallery after re-embedding the first β of ``order``, β on ``points`` even steps.

    new_scores (Q, G): new queries vs new gallery; bridged_scores (Q, G): bridged queries vs old.
    ``calibration``: bridged scores go through the map it fits for each β's migrated items
    (None: raw scores are merged).
    """
    if not 2 <= points <= 101:
        raise InvalidInputError(f"a backfilling curve takes 2..101 points, got {points}")
    k = _metric_k(metric)
    g = new_scores.shape[1]
    if sorted(order.tolist()) != list(range(g)):
        raise InvalidInputError(f"order must be a permutation of the {g} gallery positions")
    fractions = [i / (points - 1) for i in range(points)]
    values = []
    for beta in fractions:
        migrated = torch.zeros(g, dtype=torch.bool)
        migrated[order[: round(beta * g)]] = True
        bridged = bridged_scores if calibration is None else calibration(migrated)(bridged_scores)
        scores = mixed_scores(new_scores, bridged, migrated)
        values.append(evaluate(scores, relevance, (k,))[metric])
    reach = fraction_reaching(fractions, values, target)
    return Curve(ordering, metric, fractions, values, curve_area(fractions, values), reach, target)


def _metric_k(metric: str) -> int:
    name, _, k = metric.partition("@")
    if name not in ("recall", "mrr", "ndcg") or not k.isdigit():
        raise InvalidInputError(f"metric must be recall@k, mrr@k or ndcg@k, got {metric!r}")
    return int(k)
