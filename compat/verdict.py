"""Bridge or backfill? A measured answer for one model upgrade, from vectors (pure torch).

Given the same queries and gallery embedded by the old and the new model, relevance labels and a
backward adapter (new -> old), :func:`bridge_or_backfill` measures every option a deployment has:

- ``old_old``: stay on the old model (the status quo);
- ``bridged``: new-model queries through the adapter, against the untouched old gallery;
- ``new_new``: the full re-index (every gallery item re-embedded);
- ``rerank`` (optional cascade): the bridged top-R candidates re-scored by new/new similarity. On an
  un-migrated gallery the candidates' new vectors do not exist yet, so it costs R new-model
  embeddings per query (unless cached) — reported as seconds per query;
- backfilling curves (see :mod:`compat.backfill_curves`), the fraction of backfill after which the
  mixed gallery reaches ``target_retention`` × new/new, and its cost in encoder seconds. A mixed
  gallery merges bridged and new/new scores, which live on different scales; ``calibration`` (a
  monotone map of bridged scores onto the new/new scale, e.g. ``compat.calibration.rank_matched_calibration``
  fitted on anchor pairs) is applied to the bridged scores before they are merged. It changes no
  ranking of the bridge alone, only how bridged and migrated items interleave.

The verdict rule (``metric``, default recall@10; ``target`` = ``target_retention``, default 0.95):

1. **bridge** when the bridge passes the compatibility criterion, bridged > old/old (strict, ECC),
   and retention = bridged / new_new >= target;
2. **bridge+rerank** otherwise, when the cascade was measured, beats old/old and the bridge
   (strictly) and its retention >= target;
3. **backfill** otherwise. When bridged <= old/old the reason says "do not bridge, backfill":
   bridging does not even beat staying on the old model, so serve the old model until the backfill
   is done. When the bridge does beat old/old, serving it (mixed) during the backfill is safe.

The rule is applied to what was measured. A bridge's share shrinks as the gallery grows
(:mod:`compat.gallery_scaling`), so when the deployed gallery (``backfill_items``) is larger than
the evaluated one, the rule is applied again to the retentions extrapolated to that size; where
the answer differs, ``Verdict.at_deployed`` holds it and the reason says so. Every figure is also
a mean over a sample of queries: :mod:`compat.query_spread` resamples them, the report carries the
intervals and how often each decision comes out, and when another sample of queries would decide
otherwise in more than 5% of draws, the reason says so too.

The report is a frozen dataclass that round-trips through JSON (:meth:`BridgeReport.to_json`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from torch import Tensor

from compat.adapters import Adapter
from compat.backfill_curves import (
    Curve,
    Relevance,
    backfill_curve,
    cosine,
    evaluate_per_query,
    order_by_uncertainty,
    order_distance_to_mean,
    order_random,
    rerank_per_query,
)
from compat.gallery_scaling import CHECKED_REACH, GalleryScaling, gallery_scaling, per_doubling
from compat.query_spread import RESAMPLES, QuerySpread, query_spread
from compat.relevance_metrics import gain_over_status_quo, mean_per_metric, retention
from compat.vectors import check_vectors
from kernels.errors import InvalidInputError

Decision = Literal["bridge", "bridge+rerank", "backfill"]
UncertaintyModel = Any  # anything with ``uncertainty(old_vectors (G, d_old)) -> (G,)``


@dataclasses.dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str  # one sentence with the numbers behind the decision
    metric: str
    target_retention: float
    # the rule re-applied at the deployed gallery's size (extrapolated retentions), when larger
    at_deployed: Decision | None = None


@dataclasses.dataclass(frozen=True)
class Rerank:
    """The bridge + rerank cascade: bridged top-``depth`` candidates re-scored new/new."""

    depth: int
    metrics: dict[str, float]
    retention: dict[str, float]
    gain: dict[str, float]
    new_embeddings_per_query: int  # the candidates' new vectors, when none is migrated yet
    seconds_per_query: float | None  # new_embeddings_per_query x the new encoder's s/item


@dataclasses.dataclass(frozen=True)
class BackfillCost:
    seconds_per_item: float | None  # the new encoder, measured by the caller
    items: int  # gallery size the cost is for (may exceed the evaluated gallery)
    full_seconds: float | None  # items x seconds_per_item
    seconds_to_target: dict[str, float | None]  # per ordering: fraction_to_target x full_seconds


@dataclasses.dataclass(frozen=True)
class BridgeReport:
    metric: str
    queries: int
    gallery: int
    adapter: str | None  # the adapter's registry key, when it has one
    old_old: dict[str, float]
    bridged: dict[str, float]
    new_new: dict[str, float]
    retention: dict[str, float]  # bridged / new_new, per metric
    gain: dict[str, float]  # bridged - old_old, per metric
    rerank: Rerank | None
    curves: list[Curve]
    backfill: BackfillCost
    verdict: Verdict
    scaling: GalleryScaling | None = None  # the cells on nested subsets of the gallery
    spread: QuerySpread | None = None  # the verdict's figures over resampled queries

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BridgeReport:
        d = dict(data)
        d["rerank"] = None if d["rerank"] is None else Rerank(**d["rerank"])
        d["curves"] = [Curve(**c) for c in d["curves"]]
        d["backfill"] = BackfillCost(**d["backfill"])
        d["verdict"] = Verdict(**d["verdict"])
        if d.get("scaling") is not None:
            d["scaling"] = GalleryScaling.from_dict(d["scaling"])
        if d.get("spread") is not None:
            d["spread"] = QuerySpread.from_dict(d["spread"])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> BridgeReport:
        return cls.from_dict(json.loads(text))


def rule(
    old_old: float,
    bridged: float,
    rerank: float | None,
    kept: float,
    kept_rerank: float | None,
    target_retention: float,
) -> Decision:
    """The decision of this module's docstring; ``kept``/``kept_rerank``: retentions of new/new."""
    if bridged > old_old and kept >= target_retention:
        return "bridge"
    if (
        rerank is not None
        and kept_rerank is not None
        and rerank > max(bridged, old_old)
        and kept_rerank >= target_retention
    ):
        return "bridge+rerank"
    return "backfill"


def decide(
    old_old: float,
    bridged: float,
    new_new: float,
    rerank: float | None = None,
    *,
    metric: str = "recall@10",
    target_retention: float = 0.95,
    backfill_note: str = "",
) -> Verdict:
    """The rule in this module's docstring, on one metric's values, with its reason."""
    kept = retention(bridged, new_new)
    kept_rr = None if rerank is None else retention(rerank, new_new)
    decision = rule(old_old, bridged, rerank, kept, kept_rr, target_retention)
    numbers = f"{metric}: old/old {old_old:.3f}, bridged {bridged:.3f}, new/new {new_new:.3f}"
    if decision == "bridge":
        reason = f"bridge: it beats the old model and keeps {kept:.1%} of the re-index ({numbers})"
    elif decision == "bridge+rerank":
        reason = (
            f"bridge+rerank: the cascade ({rerank:.3f}) keeps {kept_rr:.1%} of the re-index, "
            f"the bridge alone {kept:.1%} ({numbers})"
        )
    elif bridged <= old_old:
        reason = (
            f"do not bridge, backfill: bridging does not beat staying on the old model; serve the "
            f"old model until the backfill is done ({numbers}){backfill_note}"
        )
    else:
        reason = (
            f"backfill: the bridge beats the old model but keeps only {kept:.1%} of the re-index "
            f"(< {target_retention:.0%}); serve it mixed while the backfill runs ({numbers})"
            f"{backfill_note}"
        )
    return Verdict(decision, reason, metric, target_retention)


def with_query_spread(verdict: Verdict, spread: QuerySpread) -> Verdict:
    """``verdict`` with a warning in its reason when resampled queries often decide otherwise."""
    held = spread.share(verdict.decision)
    if held >= spread.level:
        return verdict
    others = ", ".join(f"{d} {share:.0%}" for d, share in spread.decisions.items())
    note = (
        f"; other samples of {spread.queries:,} queries reach this decision in only {held:.0%} of "
        f"{spread.resamples:,} resamples ({others}): evaluate on more queries before relying on it"
    )
    return dataclasses.replace(verdict, reason=verdict.reason + note)


def at_deployed_size(verdict: Verdict, scaling: GalleryScaling, cells: dict[str, float]) -> Verdict:
    """``verdict`` with the rule re-applied to the retentions extrapolated to the deployed size.

    ``cells``: the measured old_old, bridged and (optional) rerank values of the verdict's metric;
    they keep the rule's "beats the old model" and "beats the bridge" tests on measured numbers,
    only the retentions are extrapolated. Unchanged when the deployed gallery is not larger.
    """
    kept, evaluated = scaling.at_deployed, scaling.points[-1].gallery if scaling.points else 0
    deployed = scaling.deployed_items
    if deployed <= evaluated or "bridged" not in kept:
        return verdict
    at = rule(
        cells["old_old"], cells["bridged"], cells.get("rerank"), kept["bridged"],
        kept.get("rerank"), verdict.target_retention,
    )  # fmt: skip
    far = deployed > CHECKED_REACH * evaluated
    if at == verdict.decision and not far:
        return dataclasses.replace(verdict, at_deployed=at)
    trend = ", ".join(f"{name} {kept[name]:.1%} ({per_doubling(scaling, name)})" for name in kept)
    note = (
        f"; at the deployed {deployed:,} items it would "
        + ("still be" if at == verdict.decision else "be")
        + f" {at}: retention extrapolated from galleries of {scaling.points[0].gallery:,}-"
        f"{evaluated:,} items, {trend} (a log-linear trend"
    )
    if far:  # the trend has been checked against a measurement only this far out
        note += (
            f", read {deployed / evaluated:,.0f}x past the evaluated gallery where it is "
            f"unchecked: evaluate on {math.ceil(deployed / CHECKED_REACH):,}+ items (unlabelled "
            "gallery items as distractors will do) before relying on it)"
        )
    else:
        note += ": measure on a larger gallery before relying on either)"
    return dataclasses.replace(verdict, reason=verdict.reason + note, at_deployed=at)


def bridge_or_backfill(
    old_queries: Tensor,
    new_queries: Tensor,
    old_gallery: Tensor,
    new_gallery: Tensor,
    relevance: Relevance,
    adapter: Adapter | Callable[[Tensor], Tensor],
    *,
    metric: str = "recall@10",
    ks: Sequence[int] = (10,),
    target_retention: float = 0.95,
    rerank_depth: int | None = 50,
    orderings: Sequence[str] = ("random", "distance_to_mean"),
    uncertainty: Tensor | UncertaintyModel | None = None,
    points: int = 11,
    new_seconds_per_item: float | None = None,
    backfill_items: int | None = None,
    seed: int = 0,
    calibration: Callable[[Tensor], Tensor] | None = None,
    resamples: int = RESAMPLES,
) -> BridgeReport:
    """Measure old/old, bridged, new/new, the cascade and the backfilling curves; decide.

    Shapes: old_queries (Q, d_old), new_queries (Q, d_new), old_gallery (G, d_old), new_gallery
    (G, d_new); relevance (Q, G). ``adapter`` maps new -> old (a registered :class:`Adapter` must be
    a backward map of those widths). ``uncertainty``: a (G,) σ per gallery item, or a model whose
    ``uncertainty(old_gallery)`` gives it (FastFill's forward map); adds the "uncertainty" ordering.
    ``backfill_items``: the real gallery's size for the cost estimate (default G). ``resamples``:
    query bootstrap draws for :attr:`BridgeReport.spread` (0: none).
    """
    oq, nq, og, ng = _check(old_queries, new_queries, old_gallery, new_gallery, relevance)
    orders = _orders(orderings, og, uncertainty, seed)
    bridge = _as_bridge(adapter, nq.shape[1], og.shape[1])
    bridged_q = bridge(nq)  # (Q, d_new) -> (Q, d_old)
    new_scores, bridged_scores = cosine(nq, ng), cosine(bridged_q, og)  # (Q, G) each
    old_scores = cosine(oq, og)
    per_query = {
        "old_old": evaluate_per_query(old_scores, relevance, ks),
        "bridged": evaluate_per_query(bridged_scores, relevance, ks),
        "new_new": evaluate_per_query(new_scores, relevance, ks),
    }
    if metric not in per_query["new_new"]:
        raise InvalidInputError(f"metric {metric!r} is not among {sorted(per_query['new_new'])}")
    cells = {name: mean_per_metric(values) for name, values in per_query.items()}
    if rerank_depth is not None:
        per_query["rerank"] = rerank_per_query(
            bridged_scores, new_scores, relevance, rerank_depth, ks
        )
    rr = _rerank(per_query.get("rerank"), rerank_depth, cells, new_seconds_per_item)
    target = target_retention * cells["new_new"][metric]
    mixed = bridged_scores if calibration is None else calibration(bridged_scores)  # (Q, G)
    curves = [
        backfill_curve(
            new_scores,
            mixed,
            relevance,
            order,
            ordering=name,
            metric=metric,
            points=points,
            target=target,
        )
        for name, order in orders.items()
    ]
    cost = _cost(curves, new_seconds_per_item, backfill_items or len(og))
    measured = {name: cells[name][metric] for name in ("old_old", "bridged", "new_new")}
    if rr is not None:
        measured["rerank"] = rr.metrics[metric]
    verdict = decide(
        measured["old_old"], measured["bridged"], measured["new_new"], measured.get("rerank"),
        metric=metric, target_retention=target_retention,
        backfill_note=_backfill_note(curves, cost),
    )  # fmt: skip
    spread = None
    if resamples:
        spread = query_spread(
            {name: values[metric] for name, values in per_query.items()}, rule,
            target_retention, resamples=resamples, seed=seed,
        )  # fmt: skip
        verdict = with_query_spread(verdict, spread)
    scaling = gallery_scaling(
        old_scores, bridged_scores, new_scores, relevance, metric=metric, ks=ks,
        rerank_depth=rerank_depth, deployed_items=cost.items, seed=seed,
    )  # fmt: skip
    verdict = at_deployed_size(verdict, scaling, measured)
    return BridgeReport(
        metric=metric, queries=len(oq), gallery=len(og), adapter=getattr(adapter, "key", None),
        old_old=cells["old_old"], bridged=cells["bridged"], new_new=cells["new_new"],
        retention=_per_metric(retention, cells["bridged"], cells["new_new"]),
        gain=_per_metric(gain_over_status_quo, cells["bridged"], cells["old_old"]),
        rerank=rr, curves=curves, backfill=cost, verdict=verdict, scaling=scaling, spread=spread,
    )  # fmt: skip


def _check(
    oq: Tensor, nq: Tensor, og: Tensor, ng: Tensor, relevance: Relevance
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    oq, nq = check_vectors(oq, None, "old_queries"), check_vectors(nq, None, "new_queries")
    og = check_vectors(og, oq.shape[1], "old_gallery")
    ng = check_vectors(ng, nq.shape[1], "new_gallery")
    if len(oq) != len(nq) or len(og) != len(ng):
        raise InvalidInputError(
            f"old and new embeddings must cover the same items row by row: queries {len(oq)} vs "
            f"{len(nq)}, gallery {len(og)} vs {len(ng)}"
        )
    if tuple(relevance.gains.shape) != (len(oq), len(og)):
        raise InvalidInputError(
            f"relevance is {tuple(relevance.gains.shape)}, expected (queries, gallery) = "
            f"{(len(oq), len(og))}"
        )
    return oq, nq, og, ng


def _as_bridge(adapter: Adapter | Callable[[Tensor], Tensor], d_new: int, d_old: int) -> Callable:
    if isinstance(adapter, Adapter):
        adapter.expect("backward", d_new, d_old)
        return adapter.bridge()
    return adapter


def _per_metric(fn: Callable[[float, float], float], a: dict, b: dict) -> dict[str, float]:
    return {name: fn(a[name], b[name]) for name in a}


def _rerank(
    per_query: dict[str, Tensor] | None,
    depth: int | None,
    cells: dict[str, dict[str, float]],
    seconds_per_item: float | None,
) -> Rerank | None:
    if per_query is None or depth is None:
        return None
    values = mean_per_metric(per_query)
    return Rerank(
        depth=depth,
        metrics=values,
        retention=_per_metric(retention, values, cells["new_new"]),
        gain=_per_metric(gain_over_status_quo, values, cells["old_old"]),
        new_embeddings_per_query=depth,
        seconds_per_query=None if seconds_per_item is None else depth * seconds_per_item,
    )


def _orders(
    orderings: Sequence[str], old_gallery: Tensor, uncertainty: Any, seed: int
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name in orderings:
        if name == "random":
            out[name] = order_random(len(old_gallery), seed=seed)
        elif name == "distance_to_mean":
            out[name] = order_distance_to_mean(old_gallery, seed=seed)
        elif name != "uncertainty":
            raise InvalidInputError(
                f"unknown ordering {name!r}",
                fix="use random, distance_to_mean or uncertainty",
            )
    if uncertainty is not None:
        sigma = (
            uncertainty if isinstance(uncertainty, Tensor) else uncertainty.uncertainty(old_gallery)
        )
        if tuple(sigma.shape) != (len(old_gallery),):
            raise InvalidInputError(
                f"uncertainty must be one value per gallery item, (G,) = ({len(old_gallery)},), "
                f"got {tuple(sigma.shape)}"
            )
        out["uncertainty"] = order_by_uncertainty(sigma)
    elif "uncertainty" in orderings:
        raise InvalidInputError(
            "the uncertainty ordering needs uncertainty= (a (G,) tensor or a model with .uncertainty)",
            fix="fit a forward_mlp with config {'uncertainty': True} on the paired data",
        )
    return out


def _cost(curves: list[Curve], seconds_per_item: float | None, items: int) -> BackfillCost:
    full = None if seconds_per_item is None else items * seconds_per_item
    to_target = {
        c.ordering: None
        if full is None or c.fraction_to_target is None
        else c.fraction_to_target * full
        for c in curves
    }
    return BackfillCost(seconds_per_item, items, full, to_target)


def _backfill_note(curves: list[Curve], cost: BackfillCost) -> str:
    reached = [c for c in curves if c.fraction_to_target is not None]
    if not reached:
        return ""
    best = min(reached, key=lambda c: (c.fraction_to_target, c.ordering))
    note = f"; {best.ordering} order reaches the target after {best.fraction_to_target:.0%} of the backfill"
    seconds = cost.seconds_to_target.get(best.ordering)
    return note + ("" if seconds is None else f" (~{seconds:.0f} s of new-encoder time)")
