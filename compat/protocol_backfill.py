"""The protocol's backfilling curves: top-1 of a partly re-embedded gallery, per backfill ordering.

For each bridge row named in ``ProtocolConfig.backfill_bridges`` (e.g. the independent model with its
selected post-hoc adapter, or BT²), the first ``backfill_items`` test images are both queries and
gallery (self-match removed). The mixed gallery is scored by :mod:`compat.backfill_curves` (migrated
items: new query vs new vector; the rest: bridged query vs old vector). The metric is MRR@1 with
label relevance, which is exactly CMC top-1. Orderings:

- ``random`` (seeded), the baseline;
- ``distance_to_mean``: farthest from their k-means mean in the old space first;
- ``uncertainty``: FastFill's σ, from a ``forward_mlp`` (old → new, uncertainty head) fitted on the
  training images' paired features, evaluated on the old gallery vectors.

The area is FastFill's M̃ (mean over β in [0, 1]); ``fraction_to_target`` is where the curve first
reaches 95% of the full re-index's top-1.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from torch import Tensor

from compat.backfill_curves import (
    ORDERINGS,
    Relevance,
    backfill_curve,
    cosine,
    evaluate,
    order_by_uncertainty,
    order_distance_to_mean,
    order_random,
)
from compat.fitting import FitOptions, fit_adapter
from compat.objectives import new_space_model
from models.encoders import embed

if TYPE_CHECKING:
    from compat.protocol import Run

METRIC = "mrr@1"  # with label relevance and the self-match removed: CMC top-1


def _uncertainty(run: Run, row: str, items: int) -> Tensor:
    """FastFill σ (items,) of the old gallery vectors, from a forward map old → ``row``'s new space."""
    source = "independent" if row.startswith("posthoc") else row.split("+")[0]
    encoder, objective = run.trained[source]
    new_train = embed(new_space_model(encoder, objective), run.x)
    report = fit_adapter(
        "forward_mlp",
        run.old_train,
        new_train,
        direction="forward",
        config={"uncertainty": True},
        seed=run.seed,
        options=FitOptions(epochs=run.config.adapter_epochs),
    )
    return report.adapter.uncertainty(run.old_test[:items])  # type: ignore[operator]


def _orders(run: Run, row: str, items: int) -> dict[str, Tensor]:
    old = run.old_test[:items]
    return {
        "random": order_random(items, seed=run.seed),
        "distance_to_mean": order_distance_to_mean(old, seed=run.seed),
        "uncertainty": order_by_uncertainty(_uncertainty(run, row, items)),
    }


def backfill_curves(run: Run, say: Any = None) -> dict[str, Any]:
    """Per bridge row and ordering: the curve (fractions, top-1 values), its area and 95% fraction."""
    c = run.config
    items = min(c.backfill_items, len(run.x_test))
    labels = run.y_test[:items]
    relevance = Relevance.labels(labels, labels, self_match=True)
    out: dict[str, Any] = {}
    for row in c.backfill_bridges:
        if row not in run.spaces:
            continue  # its method was not run
        bridged, new = (t[:items] for t in run.spaces[row])
        new_scores = cosine(new, new)  # (G, G)
        bridged_scores = cosine(bridged, run.old_test[:items])
        full = evaluate(new_scores, relevance, (1,))[METRIC]
        orders = _orders(run, row, items)
        out[row] = {
            name: dataclasses.asdict(
                backfill_curve(
                    new_scores,
                    bridged_scores,
                    relevance,
                    orders[name],
                    ordering=name,
                    metric=METRIC,
                    points=c.backfill_points,
                    target=0.95 * full,
                )
            )
            for name in ORDERINGS
        }
        if say:
            areas = ", ".join(f"{k} {v['area']:.3f}" for k, v in out[row].items())
            say(f"seed {run.seed} backfill {row}: {areas}")
    return out


def summarise_backfill(curves: list[dict[str, Any]]) -> dict[str, Any]:
    """Per bridge row and ordering: area mean ± std, the mean curve, and the margin over random."""
    from compat.protocol import mean_std

    out: dict[str, Any] = {}
    if not curves:
        return out
    for row, per_order in curves[0].items():
        out[row] = {}
        for name in per_order:
            seeds = [c[row][name] for c in curves]
            margin = [
                s["area"] - c[row]["random"]["area"] for s, c in zip(seeds, curves, strict=True)
            ]
            reach = [s["fraction_to_target"] for s in seeds]
            out[row][name] = {
                "area": mean_std([s["area"] for s in seeds]),
                "margin_over_random": mean_std(margin),
                "fractions": seeds[0]["fractions"],
                "mean_values": [
                    mean_std([s["values"][k] for s in seeds])[0]
                    for k in range(len(seeds[0]["values"]))
                ],
                "fraction_to_target": reach,
            }
    return out
