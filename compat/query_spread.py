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
from collections import Counter
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
    values = {name: v.double() for name, v in per_query.items()}
    means: dict[str, list[Tensor]] = {name: [] for name in values}
    chunk = max(1, 2_000_000 // q)  # (chunk, Q) positions at a time: bounded memory
    for start in range(0, resamples, chunk):
        picks = torch.randint(q, (min(chunk, resamples - start), q), generator=g)  # (b, Q)
        for name, v in values.items():
            means[name].append(v[picks].mean(dim=1))
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
    return _interval(m["after"] - m["before"], level)


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
    intervals = {name: _interval(values, level) for name, values in figures.items()}
    decisions = _decisions(m, figures, rule, target_retention)
    return QuerySpread(resamples, level, len(per_query["old_old"]), intervals, decisions)


def _decisions(
    m: dict[str, Tensor], figures: dict[str, Tensor], rule: Rule, target: float
) -> dict[str, float]:
    """Share of resamples per decision of ``rule`` (an undefined retention counts as 0)."""
    columns = [m["old_old"], m["bridged"], torch.nan_to_num(figures["retention"], nan=0.0)]
    if "rerank" in m:
        columns += [m["rerank"], torch.nan_to_num(figures["rerank_retention"], nan=0.0)]
    counts: Counter[str] = Counter()
    for row in torch.stack(columns, dim=1).tolist():  # (B, 3 or 5): one resample per row
        old, bridged, kept, *cascade = row
        rerank, kept_rr = cascade if cascade else (None, None)
        counts[rule(old, bridged, rerank, kept, kept_rr, target)] += 1
    total = len(m["old_old"])
    return {d: n / total for d, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def _ratio(a: Tensor, b: Tensor) -> Tensor:
    """a / b, NaN where b is 0 (a resample whose denominator vanished has no such figure)."""
    return torch.where(b != 0, a / torch.where(b != 0, b, 1.0), torch.nan)


def _interval(values: Tensor, level: float) -> tuple[float, float]:
    """Central percentile interval of the resampled values, NaNs ignored (NaN when all are)."""
    tail = (1 - level) / 2
    return float(torch.nanquantile(values, tail)), float(torch.nanquantile(values, 1 - tail))
