"""Retrieval metrics of the compatibility protocol (BCT / BT² / FastFill papers).

The protocol: the test split is both query set and gallery, each query's own entry removed; CMC top-k
("a correct label among the k nearest") and mAP over the full ranking; cosine similarity. Rankings are
by descending score with ties broken by ascending gallery position, so every metric is deterministic.

Two entry points share one core: :func:`score_metrics` ranks a dense score matrix (evaluation of one
space), :func:`ranking_metrics` scores rankings that came from elsewhere (a mixed-version search).
Relevance-labelled retrieval (Recall/MRR/nDCG@k) lives in :mod:`compat.relevance_metrics`.

Width rule: embeddings of different widths are never compared silently. Either map one side with
an explicit adapter, or call :func:`truncate_to_common_width`, whose name says what it does (the
BT²/OCA evaluations truncate without saying so). :func:`cosine_scores` refuses mismatched widths.

Beyond the cells: the compatibility criterion, gain fraction and tax, backfilling curve area,
negative flips, and the chain metrics AC/AM of a T-version upgrade sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from kernels.errors import InvalidInputError
from kernels.topk import exact_topk

DEFAULT_TOPK = (1, 5)


def ranking_metrics(
    relevant: Tensor, n_relevant: Tensor, topk: Sequence[int] = DEFAULT_TOPK
) -> dict[str, Tensor]:
    """Per-query CMC top-k hits and average precision of ranked lists.

    relevant: (Q, L) bool, ``relevant[q, i]`` = the i-th result of query q has the query's label.
    n_relevant: (Q,) how many relevant items the whole gallery holds for q (the AP denominator, so a
    list cut short of the full ranking is penalised, never silently rescaled). Queries with no
    relevant item get AP 0. Returns ``{"top1": (Q,) float, ..., "ap": (Q,) float}``.
    """
    if relevant.ndim != 2 or n_relevant.shape != relevant.shape[:1]:
        raise InvalidInputError(
            f"relevant must be (Q, L) and n_relevant (Q,), got {tuple(relevant.shape)} "
            f"and {tuple(n_relevant.shape)}"
        )
    rel = relevant.to(torch.float64)
    out = {f"top{k}": rel[:, :k].amax(dim=1) if rel.shape[1] else rel.sum(1) for k in topk}
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    precision_at_hits = rel.cumsum(dim=1) / ranks * rel  # precision@i where item i is relevant
    out["ap"] = precision_at_hits.sum(dim=1) / n_relevant.to(torch.float64).clamp(min=1)
    return out


def score_metrics(
    scores: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    *,
    exclude: Tensor | None = None,
    topk: Sequence[int] = DEFAULT_TOPK,
    chunk: int = 512,
) -> dict[str, float]:
    """Mean CMC top-k and mAP of a dense (Q, G) score matrix, ranked over the full gallery.

    exclude: (Q,) gallery position to drop from each query's ranking (its own entry when the query
    set is the gallery), or None.
    """
    sums: dict[str, float] = {}
    for start in range(0, scores.shape[0], chunk):
        rows = slice(start, start + chunk)
        s = scores[rows].to(torch.float32).clone()
        labels = query_labels[rows]
        keep = torch.ones_like(s, dtype=torch.bool)
        if exclude is not None:
            keep[torch.arange(s.shape[0]), exclude[rows]] = False
            s[~keep] = float("-inf")
        order = torch.sort(s, dim=1, descending=True, stable=True).indices
        order = order[:, : s.shape[1] - (0 if exclude is None else 1)]  # drop the excluded self
        relevant = gallery_labels[order] == labels[:, None]
        n_relevant = ((gallery_labels[None, :] == labels[:, None]) & keep).sum(dim=1)
        for name, values in ranking_metrics(relevant, n_relevant, topk).items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
    return {name: total / scores.shape[0] for name, total in sums.items()}


def cosine_scores(queries: Tensor, gallery: Tensor) -> Tensor:
    """(Q, d) x (G, d) -> (Q, G) cosine similarities. Widths must match: never truncated silently."""
    if queries.shape[1] != gallery.shape[1]:
        raise InvalidInputError(
            f"query width {queries.shape[1]} != gallery width {gallery.shape[1]}: compare different "
            "spaces through an explicit adapter",
            fix="or, knowingly, truncate_to_common_width(queries, gallery)",
        )
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    g = torch.nn.functional.normalize(gallery.float(), dim=1)
    return q @ g.T


def self_retrieval_metrics(
    queries: Tensor, gallery: Tensor, labels: Tensor, topk: Sequence[int] = DEFAULT_TOPK
) -> dict[str, float]:
    """The protocol cell: query i and gallery i are the same item, embedded (maybe) by two models."""
    exclude = torch.arange(queries.shape[0])
    return score_metrics(
        cosine_scores(queries, gallery), labels, labels, exclude=exclude, topk=topk
    )


def compatible(cross: float, old_old: float) -> bool:
    """Empirical compatibility criterion (ECC): new/old must beat old/old, strictly."""
    return cross > old_old


def gain_fraction(cross: float, old_old: float, new_new: float) -> float:
    """Share of the upgrade's benefit obtained without backfill: (new/old - old/old) / (new/new - old/old)."""
    if new_new == old_old:
        raise InvalidInputError("gain fraction undefined: new/new equals old/old")
    return (cross - old_old) / (new_new - old_old)


def curve_area(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Area under a backfilling curve (metric vs fraction of the gallery re-embedded), trapezoidal.

    FastFill's M̃ = E_{β~U[0,1]} M(β): the fractions must start at 0 and end at 1.
    """
    if len(fractions) != len(values) or len(fractions) < 2:
        raise InvalidInputError("a backfilling curve needs >= 2 points with one value each")
    if fractions[0] != 0.0 or fractions[-1] != 1.0 or list(fractions) != sorted(fractions):
        raise InvalidInputError(f"curve fractions must rise from 0 to 1, got {list(fractions)}")
    pairs = list(zip(fractions, values, strict=True))
    return sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(pairs, pairs[1:], strict=False))


def compatibility_tax(unconstrained_new_new: float, new_new: float) -> float:
    """What the compatibility constraint costs the new model itself: M_new*/new* − M_new/new."""
    return unconstrained_new_new - new_new


def truncate_to_common_width(queries: Tensor, gallery: Tensor) -> tuple[Tensor, Tensor]:
    """TRUNCATES both sides to their first min(d_q, d_g) dims and RE-NORMALIZES the rows.

    (Q, d_q), (G, d_g) -> (Q, m), (G, m), m = min(d_q, d_g). The BT²/OCA protocol for models of
    different widths; meaningful only where the narrower model's space is a prefix of the wider
    one (a compatible model trained that way, or Matryoshka embeddings). Never applied implicitly.
    """
    if queries.ndim != 2 or gallery.ndim != 2:
        raise InvalidInputError(
            f"expected (Q, d_q) and (G, d_g), got {tuple(queries.shape)} and {tuple(gallery.shape)}"
        )
    m = min(queries.shape[1], gallery.shape[1])
    normalize = torch.nn.functional.normalize
    return normalize(queries[:, :m].float(), dim=1), normalize(gallery[:, :m].float(), dim=1)


def per_query_correct(
    scores: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    *,
    exclude: Tensor | None = None,
    k: int = 1,
) -> Tensor:
    """(Q,) bool: does query q have a same-label item among its k best (ties: lower index first)?

    scores (Q, G); exclude (Q,) gallery position dropped from each ranking (the self-match) or None.
    """
    s = scores.to(torch.float32).clone()
    if exclude is not None:
        s[torch.arange(len(s)), exclude] = float("-inf")
    order = exact_topk(s, k).indices  # (Q, k)
    return (gallery_labels[order] == query_labels[:, None]).any(dim=1)


def negative_flip_rate(correct_before: Tensor, correct_after: Tensor) -> float:
    """Share of all queries right before the update and wrong after: (Q,) bool each."""
    if correct_before.shape != correct_after.shape or correct_before.ndim != 1:
        raise InvalidInputError(
            f"need two (Q,) per-query correctness vectors, got {tuple(correct_before.shape)} "
            f"and {tuple(correct_after.shape)}"
        )
    if len(correct_before) == 0:
        raise InvalidInputError("negative flip rate of zero queries is undefined")
    flips = correct_before.bool() & ~correct_after.bool()
    return float(flips.sum()) / len(flips)


@dataclasses.dataclass(frozen=True)
class ChainScores:
    """Compatibility of a sequence of T model versions (iamcl2r's AC / AM)."""

    ac: float  # share of strictly-below-diagonal cells (i > j) that beat C[j][j]; ties fail
    am: float  # mean of the lower triangle, diagonal included
    versions: int


def chain_metrics(matrix: Sequence[Sequence[float]] | Tensor) -> ChainScores:
    """AC and AM of a chain matrix C (T, T): C[i][j] = metric of version-i queries on version-j gallery.

    AC = 1 − #{i > j : C[i][j] ≤ C[j][j]} / (T(T−1)/2); AM = mean of C[i][j] over j ≤ i. Only the
    lower triangle is read (the upper one, queries on a newer gallery, may hold anything, NaN too).
    """
    c = torch.as_tensor(matrix, dtype=torch.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise InvalidInputError(f"a chain matrix is (T, T) with T >= 2, got {tuple(c.shape)}")
    t = c.shape[0]
    lower = torch.tril(torch.ones(t, t, dtype=torch.bool))
    if not bool(torch.isfinite(c[lower]).all()):
        raise InvalidInputError("the chain matrix's lower triangle (j <= i) has NaN or Inf cells")
    strict = torch.tril(torch.ones(t, t, dtype=torch.bool), diagonal=-1)
    failures = (c <= c.diagonal()[None, :]) & strict  # C[i][j] <= C[j][j]: compare to column j's
    ac = 1.0 - float(failures.sum()) / (t * (t - 1) / 2)
    return ChainScores(ac=ac, am=float(c[lower].mean()), versions=t)
