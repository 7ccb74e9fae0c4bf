"""Does a bridge's share of the upgrade hold as the gallery grows? Nested subsets, then a trend.

A bridged query lands near its old-space answer, not on it; the more items a gallery holds, the
more of them sit inside that error, while each model's own queries keep their ranking. Measured on
WordNet (docs/results/text_upgrade.md, round 6), one bridge recovers 45% of the gain on 1,000
items, 42% on 2,000, 23% on 5,000 and 17% on 10,000. An evaluation gallery is usually far smaller
than the one deployed, so a verdict taken on it alone flatters the bridge.

:func:`gallery_scaling` re-measures old/old, bridged, new/new and the rerank cascade on nested
random subsets of the evaluation gallery (G/8, G/4, G/2, G; never below ``min_items``), keeping
the queries whose answers are in the subset, and fits retention (cell / new/new) against log2 of
the gallery size by least squares. Small subsets hold few queries, so each size is drawn
``draws`` times (independent nested sequences); the points are the draws' means, the slope is the
mean of the per-draw slopes and its standard error their spread. Extrapolating that line to the
deployed size is a crude model, reported as one: it says which way the verdict moves with scale,
not where it lands. On WordNet the line fitted on 250-2,000 items predicts 85% (bridge) and 99%
(cascade) retention at 1,000,000 items, while 20,000 items already measure 86% and 96%
(docs/results/text_upgrade.md): the fall steepens beyond the evaluated range. The remedy is a
larger evaluation gallery: items no query asks for (distractors) are enough, so the verdict says
so when the deployed gallery is more than :data:`CHECKED_REACH` times the evaluated one.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from compat.backfill_curves import Relevance, evaluate, rerank_metrics
from compat.relevance_metrics import retention
from kernels.errors import InvalidInputError

SUBSETS = (8, 4, 2, 1)  # gallery sizes measured: G/8, G/4, G/2, G
MIN_ITEMS = 100
DRAWS = 5  # nested subset sequences averaged
# How far past the evaluated gallery a trend has been checked against a measurement: WordNet's
# 2,000-item line read at 20,000 items (2,000 queries plus 18,000 distractor definitions) put
# the bridge 5 points and the cascade 3 points too high, with neither decision changed
# (docs/results/text_upgrade.md, round 7). Beyond this factor nothing has been checked.
CHECKED_REACH = 10


@dataclasses.dataclass(frozen=True)
class ScalePoint:
    gallery: int
    queries: int  # queries with an answer among the subset's items
    old_old: float
    bridged: float
    new_new: float
    rerank: float | None  # None when the cascade is off or deeper than the subset

    def retention(self, cell: str) -> float | None:
        """``cell`` ("bridged" or "rerank") / new_new; None when unmeasured or new_new is 0."""
        value = getattr(self, cell)
        return None if value is None or self.new_new == 0 else retention(value, self.new_new)


@dataclasses.dataclass(frozen=True)
class GalleryScaling:
    metric: str
    points: list[ScalePoint]  # smallest gallery first; the last is the whole evaluation gallery
    deployed_items: int
    # retention change per doubling of the gallery (least squares over the points), per cell:
    # "bridged" and, when measured, "rerank"; empty with fewer than two points
    per_doubling: dict[str, float]
    # retention at deployed_items on that line, floored at 0 (the measured value when deployed <= G)
    at_deployed: dict[str, float]
    draws: int = 1
    # standard error of per_doubling over the draws (absent with one draw)
    per_doubling_se: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GalleryScaling:
        """The inverse of ``dataclasses.asdict`` (JSON reports)."""
        return cls(**{**data, "points": [ScalePoint(**p) for p in data["points"]]})


def nested_subsets(
    items: int, seed: int = 0, min_items: int = MIN_ITEMS, sizes: Sequence[int] | None = None
) -> list[Tensor]:
    """Gallery positions of G/8, G/4, G/2 and G items (or of ``sizes``, each <= G): prefixes of one
    seeded permutation, so each subset holds the smaller ones (by default sizes below
    ``min_items`` are left out and G itself is always kept)."""
    if sizes is None:
        sizes = sorted({items // d for d in SUBSETS if items // d >= min_items} | {items})
    elif not all(1 <= n <= items for n in sizes):
        raise InvalidInputError(f"gallery sizes must be in 1..{items}, got {list(sizes)}")
    order = torch.randperm(items, generator=torch.Generator().manual_seed(seed))
    return [order[:n].sort().values for n in sorted(sizes)]


def restrict(relevance: Relevance, items: Tensor) -> tuple[Tensor, Relevance]:
    """(kept query rows, the relevance of those queries over ``items`` only).

    A query is kept when an answer it may count is among ``items``; with a self-match, the query
    is the item ``exclude`` names, so that item must be among them too (its position is remapped).
    """
    gains = relevance.gains[:, items]  # (Q, n)
    exclude = relevance.exclude
    if exclude is None:
        keep = (gains > 0).any(dim=1)
        return keep.nonzero().flatten(), Relevance(gains[keep])
    position = torch.full((len(relevance.gains[0]),), -1, dtype=torch.long)
    position[items] = torch.arange(len(items))
    remapped = position[exclude]  # (Q,) -1 where the query's own item is not in the subset
    counted = gains.clone()
    inside = remapped >= 0
    counted[inside.nonzero().flatten(), remapped[inside]] = False
    keep = inside & (counted > 0).any(dim=1)
    return keep.nonzero().flatten(), Relevance(gains[keep], remapped[keep])


def gallery_scaling(
    old_scores: Tensor,
    bridged_scores: Tensor,
    new_scores: Tensor,
    relevance: Relevance,
    *,
    metric: str,
    ks: Sequence[int] = (10,),
    rerank_depth: int | None = None,
    deployed_items: int | None = None,
    seed: int = 0,
    min_items: int = MIN_ITEMS,
    sizes: Sequence[int] | None = None,
    draws: int = DRAWS,
) -> GalleryScaling:
    """Old/old, bridged, new/new (and the cascade) on nested gallery subsets, and the trend.

    Score matrices (Q, G) each: old queries vs old gallery, bridged new queries vs old gallery,
    new vs new. ``deployed_items``: the real gallery's size (default G); ``sizes``: the subset
    sizes to measure instead of G/8 … G; ``draws``: nested sequences averaged (seeds seed, seed+1…).
    """
    if not old_scores.shape == bridged_scores.shape == new_scores.shape:
        raise InvalidInputError(
            f"score matrices differ in shape: {tuple(old_scores.shape)}, "
            f"{tuple(bridged_scores.shape)}, {tuple(new_scores.shape)}"
        )
    if draws < 1:
        raise InvalidInputError(f"draws must be >= 1, got {draws}")
    items = old_scores.shape[1]
    scores = (old_scores, bridged_scores, new_scores)
    by_size: dict[int, list[ScalePoint]] = {}  # the whole gallery is the same in every draw
    for d in range(draws):
        for subset in nested_subsets(items, seed + d, min_items, sizes):
            n = len(subset)
            if n == items and by_size.get(n):
                by_size[n].append(by_size[n][0])
            elif point := _measure(scores, relevance, subset, metric, ks, rerank_depth):
                by_size.setdefault(n, []).append(point)
    # a size kept only where every draw found queries with answers in it
    runs = [
        [by_size[n][d] for n in sorted(by_size) if len(by_size[n]) == draws] for d in range(draws)
    ]
    points = [_mean_point(by_size[n]) for n in sorted(by_size) if len(by_size[n]) == draws]
    deployed = deployed_items or items
    per_doubling: dict[str, float] = {}
    at_deployed: dict[str, float] = {}
    se: dict[str, float] = {}
    for name in ("bridged", "rerank"):
        lines = [_trend(run, name) for run in runs]
        if any(line is None for line in lines):
            continue  # fewer than two sizes, or the cascade deeper than a subset
        slopes = [line[0] for line in lines if line is not None]
        slope = sum(slopes) / draws
        intercept = sum(line[1] for line in lines if line is not None) / draws
        per_doubling[name] = slope
        if draws > 1:
            se[name] = statistics.stdev(slopes) / math.sqrt(draws)
        # a line falls below zero far enough out; no retention does
        at_deployed[name] = (
            points[-1].retention(name) or 0.0
            if deployed <= items
            else max(0.0, slope * math.log2(deployed) + intercept)
        )
    return GalleryScaling(metric, points, deployed, per_doubling, at_deployed, draws, se)


def per_doubling(scaling: GalleryScaling, name: str) -> str:
    """``name``'s trend as text: "-0.7 ± 0.2 pt per doubling" (no ± with one draw)."""
    se = scaling.per_doubling_se.get(name)
    spread = "" if se is None else f" ± {se * 100:.1f}"
    return f"{scaling.per_doubling[name] * 100:+.1f}{spread} pt per doubling"


def _measure(
    scores: tuple[Tensor, Tensor, Tensor],
    relevance: Relevance,
    subset: Tensor,
    metric: str,
    ks: Sequence[int],
    rerank_depth: int | None,
) -> ScalePoint | None:
    """The cells on one gallery subset (None when no query has an answer there)."""
    rows, rel = restrict(relevance, subset)
    if len(rows) == 0:
        return None
    old, bridged, new = (s[rows][:, subset] for s in scores)
    rerank = None
    if rerank_depth is not None and rerank_depth <= len(subset):
        rerank = rerank_metrics(bridged, new, rel, rerank_depth, ks)[metric]
    o, b, n = (evaluate(s, rel, ks)[metric] for s in (old, bridged, new))
    return ScalePoint(len(subset), len(rows), o, b, n, rerank)


def _mean_point(same: Sequence[ScalePoint]) -> ScalePoint:
    """One size's draws averaged (their gallery sizes are equal)."""
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    reranks = [p.rerank for p in same]
    return ScalePoint(
        same[0].gallery,
        round(mean([p.queries for p in same])),
        mean([p.old_old for p in same]),
        mean([p.bridged for p in same]),
        mean([p.new_new for p in same]),
        None if None in reranks else mean([r for r in reranks if r is not None]),
    )


def _trend(points: Sequence[ScalePoint], name: str) -> tuple[float, float] | None:
    """Least-squares (slope, intercept) of ``name``'s retention on log2(gallery size)."""
    values = [(p.gallery, p.retention(name)) for p in points]
    if len(values) < 2 or any(r is None for _, r in values):
        return None
    return _line([math.log2(g) for g, _ in values], [r for _, r in values if r is not None])


def _line(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of y on x (two or more distinct x)."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
    return slope, my - slope * mx
