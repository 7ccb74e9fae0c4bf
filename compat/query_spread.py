"""How much of a verdict is the query sample? A paired bootstrap over the evaluated queries.

Every cell of a bridge-or-backfill report (old/old, bridged, new/new, the cascade) is a mean over
the same Q queries, and the figures a decision rests on — the gain over the status quo, retention,
the share of the upgrade's gain — are differences and ratios of those means. With a few thousand
queries they are far less certain than their three decimals suggest: on WordNet's 2,000 test
synsets one bridge's share of the gain is 0.41 with a 95% interval of about [0.24, 0.58]
(docs/results/text_upgrade.md, round 5), so a 50% threshold cannot be decided there.

:func:`query_spread` resamples the queries with replacement ``resamples`` times, the *same* draw
for every cell (the cells share their queries, so their errors are correlated and a paired draw
keeps that), recomputes each figure and the verdict rule on every draw, and reports percentile
intervals and how often each decision comes out. Resampling the queries measures what a different
sample of queries from the same traffic would have said; it says nothing about the gallery, the
adapter's fit or a larger deployed gallery (compat/gallery_scaling.py reads that).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from kernels.errors import InvalidInputError

RESAMPLES = 1000
LEVEL = 0.95
CELLS = ("old_old", "bridged", "new_new", "rerank")
# Decision rule: (old_old, bridged, rerank | None, kept, kept_rerank | None, target) -> decision;
# compat.verdict.rule, passed in so this module does not import the verdict built on it
Rule = Callable[[float, float, float | None, float, float | None, float], str]


@dataclasses.dataclass(frozen=True)
class QuerySpread:
    """Percentile intervals over query resamples, and how often each decision comes out."""

    resamples: int
    level: float  # the intervals' coverage, e.g. 0.95
    queries: int
    # figure -> (low, high): "gain" (bridged − old/old), "retention" (bridged / new/new),
    # "gain_fraction" ((bridged − old/old) / (new/new − old/old)), and with the cascade
    # "rerank_retention", "rerank_gain_fraction"
    intervals: dict[str, tuple[float, float]]
    decisions: dict[str, float]  # decision -> share of the resamples that reach it

    def share(self, decision: str) -> float:
        return self.decisions.get(decision, 0.0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuerySpread:
        d = dict(data)
        d["intervals"] = {name: (lo, hi) for name, (lo, hi) in d["intervals"].items()}
        return cls(**d)


def resampled_means(
    per_query: Mapping[str, Tensor], resamples: int = RESAMPLES, *, seed: int = 0
) -> dict[str, Tensor]:
    """Each cell's mean over ``resamples`` paired bootstrap draws: {cell: (Q,)} -> {cell: (B,)}.

    Draw b picks Q query positions with replacement, the same positions for every cell.
    """
    lengths = {len(v) for v in per_query.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise InvalidInputError(
            f"every cell needs one value per query, the same queries: got lengths {sorted(lengths)}"
        )
    (q,) = lengths
    g = torch.Generator().manual_seed(seed)
    means: dict[str, list[Tensor]] = {name: [] for name in per_query}
    chunk = max(1, 2_000_000 // q)  # (chunk, Q) positions at a time: bounded memory
    for start in range(0, resamples, chunk):
        picks = torch.randint(q, (min(chunk, resamples - start), q), generator=g)  # (b, Q)
        for name, values in per_query.items():
            means[name].append(values.double()[picks].mean(dim=1))
    return {name: torch.cat(parts) for name, parts in means.items()}


def paired_interval(
    before: Tensor,
    after: Tensor,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of mean(after) − mean(before) over paired query resamples; (Q,) each
    (e.g. per-query top-1 correctness of new/old and of old/old: how sure an ECC margin is)."""
    m = resampled_means({"before": before, "after": after}, resamples, seed=seed)
    tail = (1 - level) / 2
    difference = m["after"] - m["before"]
    return _quantile(difference, tail), _quantile(difference, 1 - tail)


def query_spread(
    per_query: Mapping[str, Tensor],
    rule: Rule,
    target_retention: float,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> QuerySpread:
    """Intervals of the verdict's figures and the rule's decisions over paired query resamples.

    per_query: the verdict metric's per-query values, {"old_old", "bridged", "new_new"[, "rerank"]}
    each (Q,), the same queries in the same order.
    """
    missing = {"old_old", "bridged", "new_new"} - set(per_query)
    if missing or set(per_query) - set(CELLS):
        raise InvalidInputError(
            f"per_query needs old_old, bridged, new_new (and optionally rerank), got {sorted(per_query)}"
        )
    if resamples < 1 or not 0 < level < 1:
        raise InvalidInputError(
            f"resamples must be >= 1 and level in (0, 1), got {resamples}, {level}"
        )
    m = resampled_means(per_query, resamples, seed=seed)
    old, new = m["old_old"], m["new_new"]
    figures = {
        "gain": m["bridged"] - old,
        "retention": _ratio(m["bridged"], new),
        "gain_fraction": _ratio(m["bridged"] - old, new - old),
    }
    if "rerank" in m:
        figures["rerank_retention"] = _ratio(m["rerank"], new)
        figures["rerank_gain_fraction"] = _ratio(m["rerank"] - old, new - old)
    tail = (1 - level) / 2
    intervals = {
        name: (_quantile(values, tail), _quantile(values, 1 - tail))
        for name, values in figures.items()
    }
    return QuerySpread(
        resamples,
        level,
        len(per_query["old_old"]),
        intervals,
        _decisions(m, rule, target_retention),
    )


def _decisions(m: dict[str, Tensor], rule: Rule, target: float) -> dict[str, float]:
    """Share of resamples per decision of ``rule`` (undefined retentions count as 0)."""
    counts: dict[str, int] = {}
    rerank = m.get("rerank")
    for b in range(len(m["old_old"])):
        old, bridged, new = (float(m[c][b]) for c in ("old_old", "bridged", "new_new"))
        rr = None if rerank is None else float(rerank[b])
        kept = bridged / new if new > 0 else 0.0
        kept_rr = None if rr is None else (rr / new if new > 0 else 0.0)
        decision = rule(old, bridged, rr, kept, kept_rr, target)
        counts[decision] = counts.get(decision, 0) + 1
    total = len(m["old_old"])
    return {d: n / total for d, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def _ratio(a: Tensor, b: Tensor) -> Tensor:
    """a / b, NaN where b is 0 (a resample whose denominator vanished has no such figure)."""
    return torch.where(b != 0, a / torch.where(b != 0, b, 1.0), torch.nan)


def _quantile(values: Tensor, q: float) -> float:
    """NaN-ignoring quantile (NaN when every resample is undefined)."""
    return float(torch.nanquantile(values, q))
