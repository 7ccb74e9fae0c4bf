"""Does a bridge's share of the upgrade hold as the gallery grows? Nested subsets, then a trend.

A bridged query lands near its old-space answer, not on it; the more items a gallery holds, the
more of them sit inside that error, while each model's own queries keep their ranking. Measured on
WordNet (docs/results/text_upgrade.md, round 6), one bridge recovers 45% of the gain on 1,000
items, 42% on 2,000, 23% on 5,000 and 17% on 10,000. An evaluation gallery is usually far smaller
than the one deployed, so a verdict taken on it alone flatters the bridge.

:func:`gallery_scaling` re-measures old/old, bridged, new/new and the rerank cascade on nested
random subsets of the evaluation gallery (G/8, G/4, G/2, G; never below ``min_items``), keeping
the queries whose answers are in the subset, and fits retention (cell / new/new) against log2 of
the gallery size by least squares. Extrapolating that line to the deployed size is a crude model,
reported as one: it says which way the verdict moves with scale, not where it lands.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from compat.backfill_curves import Relevance, evaluate, rerank_metrics
from kernels.errors import InvalidInputError

SUBSETS = (8, 4, 2, 1)  # gallery sizes measured: G/8, G/4, G/2, G
MIN_ITEMS = 100


@dataclasses.dataclass(frozen=True)
class ScalePoint:
    gallery: int
    queries: int  # queries with an answer among the subset's items
    old_old: float
    bridged: float
    new_new: float
    rerank: float | None  # None when the cascade is off or deeper than the subset


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
) -> GalleryScaling:
    """Old/old, bridged, new/new (and the cascade) on nested gallery subsets, and the trend.

    Score matrices (Q, G) each: old queries vs old gallery, bridged new queries vs old gallery,
    new vs new. ``deployed_items``: the real gallery's size (default G); ``sizes``: the subset
    sizes to measure instead of G/8 … G.
    """
    if not old_scores.shape == bridged_scores.shape == new_scores.shape:
        raise InvalidInputError(
            f"score matrices differ in shape: {tuple(old_scores.shape)}, "
            f"{tuple(bridged_scores.shape)}, {tuple(new_scores.shape)}"
        )
    items = old_scores.shape[1]
    points = []
    for subset in nested_subsets(items, seed, min_items, sizes):
        rows, rel = restrict(relevance, subset)
        if len(rows) == 0:
            continue
        old, bridged, new = (s[rows][:, subset] for s in (old_scores, bridged_scores, new_scores))
        rerank = None
        if rerank_depth is not None and rerank_depth <= len(subset):
            rerank = rerank_metrics(bridged, new, rel, rerank_depth, ks)[metric]
        o, b, n = (evaluate(s, rel, ks)[metric] for s in (old, bridged, new))
        points.append(ScalePoint(len(subset), len(rows), o, b, n, rerank))
    deployed = deployed_items or items
    per_doubling: dict[str, float] = {}
    at_deployed: dict[str, float] = {}
    for name in ("bridged", "rerank"):
        values = [(p.gallery, _retention(getattr(p, name), p.new_new)) for p in points]
        measured = [(g, r) for g, r in values if r is not None]
        if len(measured) < 2 or len(measured) < len(points):
            continue
        slope, intercept = _line([math.log2(g) for g, _ in measured], [r for _, r in measured])
        per_doubling[name] = slope
        # a line falls below zero far enough out; no retention does
        at_deployed[name] = (
            measured[-1][1]
            if deployed <= items
            else max(0.0, slope * math.log2(deployed) + intercept)
        )
    return GalleryScaling(metric, points, deployed, per_doubling, at_deployed)


def _retention(value: float | None, new_new: float) -> float | None:
    return None if value is None or new_new == 0 else value / new_new


def _line(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of y on x (two or more distinct x)."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
    return slope, my - slope * mx
