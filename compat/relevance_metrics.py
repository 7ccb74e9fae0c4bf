"""Relevance-labelled retrieval: Recall@k, MRR@k, nDCG@k (text / instance retrieval, BEIR-style).

A query may have several relevant items, with binary or graded relevance: ``relevance[q, g]`` is the
gain of gallery item g for query q (0 = not relevant). Rankings are by descending score, ties broken
by ascending gallery index, as in :mod:`compat.metrics`.

- Recall@k = |relevant ∩ top k| / |relevant| (an item is relevant when its gain is > 0);
- MRR@k = 1 / rank of the first relevant item within the top k, 0 if none;
- nDCG@k = DCG@k / ideal DCG@k, DCG@k = Σ_{r ≤ k} gain_r / log2(r + 1) (linear gains, as trec_eval).

A query with no relevant item has no defined Recall or nDCG: it is an error, never a silent 0 or a
silent skip. Also here: retention (bridged / full re-index) and gain over the status quo.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor

from kernels.errors import InvalidInputError
from kernels.topk import exact_topk

DEFAULT_KS = (10,)


def relevance_matrix(relevant: Sequence[Collection[int]], gallery_size: int) -> Tensor:
    """(Q, G) bool from one collection of relevant gallery positions per query."""
    out = torch.zeros(len(relevant), gallery_size, dtype=torch.bool)
    for q, items in enumerate(relevant):
        bad = [g for g in items if not 0 <= g < gallery_size]
        if bad:
            raise InvalidInputError(
                f"query {q}: relevant positions {bad[:5]} outside 0..{gallery_size - 1}"
            )
        out[q, list(items)] = True
    return out


def ranked_relevance_metrics(
    ranked: Tensor, relevance: Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, Tensor]:
    """Per-query metrics of ranked lists: ranked (Q, L) gallery positions best first, -1 = padding.

    relevance (Q, G) gains (bool or float >= 0) over the whole gallery: the ideal ranking and the
    Recall denominator come from it, so a list cut short is penalised, never rescaled.
    Returns ``{"recall@k": (Q,), "mrr@k": (Q,), "ndcg@k": (Q,)}`` (float64) for each k.
    """
    gains = _check(ranked, relevance)
    padded = torch.cat([gains, torch.zeros(len(gains), 1, dtype=torch.float64)], dim=1)
    # -1 padding reads the appended zero column
    ranked_gains = padded.gather(
        1, torch.where(ranked < 0, gains.shape[1], ranked).long()
    )  # (Q, L)
    # the best gains a list of max(ks) could hold (values only, so ties do not matter)
    ideal = torch.topk(gains, min(max(ks), gains.shape[1]), dim=1).values  # (Q, <= max k)
    out: dict[str, Tensor] = {}
    for k in ks:
        top = ranked_gains[:, :k]
        hit = top > 0
        out[f"recall@{k}"] = hit.sum(dim=1) / (gains > 0).sum(dim=1)
        first = torch.where(hit.any(dim=1), hit.float().argmax(dim=1) + 1, 0)  # 1-based, 0 = none
        out[f"mrr@{k}"] = torch.where(first > 0, 1.0 / first.clamp(min=1).double(), 0.0)
        out[f"ndcg@{k}"] = _dcg(top) / _dcg(ideal[:, :k])
    return out


def relevance_metrics(
    scores: Tensor,
    relevance: Tensor,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    exclude: Tensor | None = None,
) -> dict[str, float]:
    """Mean Recall/MRR/nDCG@k of a dense (Q, G) score matrix against (Q, G) gains.

    exclude: (Q,) gallery position removed from each query's ranking and relevance (the query's own
    entry when the query set is the gallery), or None.
    """
    return mean_per_metric(per_query_relevance_metrics(scores, relevance, ks=ks, exclude=exclude))


def mean_per_metric(per_query: dict[str, Tensor]) -> dict[str, float]:
    """``{"recall@k": (Q,), ...}`` -> ``{"recall@k": mean over the queries, ...}``."""
    return {name: float(values.mean()) for name, values in per_query.items()}


def per_query_relevance_metrics(
    scores: Tensor,
    relevance: Tensor,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    exclude: Tensor | None = None,
) -> dict[str, Tensor]:
    """:func:`relevance_metrics` before the mean: ``{"recall@k": (Q,), ...}`` float64, one value
    per query (what a bootstrap over the queries resamples, compat/query_spread.py)."""
    if scores.shape != relevance.shape:
        raise InvalidInputError(
            f"scores {tuple(scores.shape)} and relevance {tuple(relevance.shape)} must both be (Q, G)"
        )
    s = scores.to(torch.float32).clone()
    rel = relevance.to(torch.float64).clone()
    if exclude is not None:
        rows = torch.arange(len(s))
        s[rows, exclude] = float("-inf")
        rel[rows, exclude] = 0.0
    # the excluded entry scores -inf: it would come last, so it is never among the counted ones
    counted = s.shape[1] - (0 if exclude is None else 1)
    # only each row's best k count: exact top-k, never a whole-row sort (20,000-item galleries)
    order = exact_topk(s, min(max(ks), counted)).indices
    return ranked_relevance_metrics(order, rel, ks)


def retention(bridged: float, full_reindex: float) -> float:
    """Share of the full re-index's quality a bridge keeps: bridged / full re-index."""
    if full_reindex == 0:
        raise InvalidInputError("retention undefined: the full re-index scores 0")
    return bridged / full_reindex


def gain_over_status_quo(bridged: float, old_old: float) -> float:
    """What bridging adds over staying on the old model: bridged − old/old (can be negative)."""
    return bridged - old_old


def _dcg(gains: Tensor) -> Tensor:  # (Q, k) -> (Q,)
    discounts = torch.log2(torch.arange(2, gains.shape[1] + 2, dtype=torch.float64))
    return (gains / discounts).sum(dim=1)


def _check(ranked: Tensor, relevance: Tensor) -> Tensor:
    if ranked.ndim != 2 or relevance.ndim != 2 or len(ranked) != len(relevance):
        raise InvalidInputError(
            f"ranked must be (Q, L) and relevance (Q, G), got {tuple(ranked.shape)} "
            f"and {tuple(relevance.shape)}"
        )
    if ranked.numel() and int(ranked.max()) >= relevance.shape[1]:
        raise InvalidInputError(
            f"ranked positions reach {int(ranked.max())}, the gallery has {relevance.shape[1]}"
        )
    gains = relevance.to(torch.float64)
    if bool((gains < 0).any()) or not bool(torch.isfinite(gains).all()):
        raise InvalidInputError("relevance gains must be finite and >= 0")
    empty = ((gains > 0).sum(dim=1) == 0).nonzero().flatten()
    if len(empty):
        raise InvalidInputError(
            f"queries {empty[:5].tolist()} have no relevant item: Recall and nDCG are undefined",
            fix="drop those queries before evaluating",
        )
    return gains
