"""The protocol's backfilling curves: top-1 of a partly re-embedded gallery, per backfill ordering.

For each bridge row named in ``ProtocolConfig.backfill_bridges`` (e.g. the independent model with its
selected post-hoc adapter, or BT²), the first ``backfill_items`` test images are both queries and
gallery (self-match removed). The mixed gallery is scored by :mod:`compat.backfill_curves` (migrated
items: new query vs new vector; the rest: bridged query vs old vector), the bridged scores
calibrated per backfill fraction as serving calibrates them per migration wave
(:func:`compat.backfill_curves.wave_calibration`: a monotone map fitted on the migrated items, no
labels). The metric is MRR@1 with label relevance, which is exactly CMC top-1.

The bridge ``fastfill`` is FastFill's own setting: no backward map at all. The old gallery is
transformed *forward* into the independent new model's space by a ``forward_mlp`` with the
uncertainty head (fitted old → new on the training images' paired features), and plain new queries
search it; migrated items replace their transformed vector by the real new one. Every score lives
in the new space, so the merge needs no calibration. Orderings:

- ``random`` (seeded), the baseline;
- ``distance_to_mean``: farthest from their k-means mean in the old space first;
- ``uncertainty``: FastFill's σ, from a ``forward_mlp`` (old → new, uncertainty head) fitted on the
  training images' paired features, evaluated on the old gallery vectors (most uncertain first;
  for ``fastfill`` the very map that transforms the gallery);
- ``oracle_culprits`` (a reference, not an ordering a user can run: it reads the test labels):
  the gallery items that are some query's wrong top-1 answer at β = 0 first
  (:func:`compat.backfill_curves.order_culprits_first`). It shows how much *any* ordering could
  add over random on this protocol; the report's target leaves it out.

The area is FastFill's M̃ (mean over β in [0, 1]); ``fraction_to_target`` is where the curve first
reaches 95% of the full re-index's top-1.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from torch import Tensor

from compat.backfill_curves import (
    Relevance,
    backfill_curve,
    cosine,
    evaluate,
    order_by_uncertainty,
    order_culprits_first,
    order_distance_to_mean,
    order_random,
    wave_calibration,
)
from compat.fitting import FitOptions, fit_adapter
from compat.mlp_adapters import ForwardMLPAdapter
from compat.objectives import new_space_model
from models.encoders import embed

if TYPE_CHECKING:
    from compat.protocol import Run

METRIC = "mrr@1"  # with label relevance and the self-match removed: CMC top-1
FASTFILL = "fastfill"  # the forward-transformed gallery's bridge row (no backward map)
ORACLE = "oracle_culprits"  # a reference ceiling that reads the labels, not a deployable ordering


def _source(row: str) -> str:
    """The trained new model a bridge row's new space comes from."""
    return "independent" if row.startswith("posthoc") or row == FASTFILL else row.split("+")[0]


def forward_map(run: Run, source: str) -> ForwardMLPAdapter:
    """FastFill's map old → ``source``'s new space: forward_mlp + uncertainty head, training pairs."""
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
    assert isinstance(report.adapter, ForwardMLPAdapter)  # the key above builds one
    return report.adapter


def _orders(
    run: Run, sigma: Tensor, bridged_scores: Tensor, relevance: Relevance
) -> dict[str, Tensor]:
    """Every ordering of the gallery (G items); ``sigma`` (G,) is FastFill's σ, the bridge-only
    scores and the relevance feed the label oracle."""
    items = len(sigma)
    return {
        "random": order_random(items, seed=run.seed),
        "distance_to_mean": order_distance_to_mean(run.old_test[:items], seed=run.seed),
        "uncertainty": order_by_uncertainty(sigma),
        ORACLE: order_culprits_first(bridged_scores, relevance),
    }


def _scores(
    run: Run, row: str, items: int, fmap: ForwardMLPAdapter
) -> tuple[Tensor, Tensor, Tensor]:
    """(new/new scores (G, G), scores of the un-migrated items (G, G), σ (G,)) for one bridge row.

    Backward rows: bridged queries against the old vectors. ``fastfill``: plain new queries
    against the old vectors transformed by ``fmap`` (the forward map into the row's new space).
    """
    old = run.old_test[:items]
    sigma = fmap.uncertainty(old)
    if row == FASTFILL:
        new = run.spaces[_source(row)][1][:items]
        return cosine(new, new), cosine(new, fmap.transform(old)), sigma
    bridged, new = (t[:items] for t in run.spaces[row])
    return cosine(new, new), cosine(bridged, old), sigma


def backfill_curves(run: Run, say: Any = None) -> dict[str, Any]:
    """Per bridge row and ordering: the curve (fractions, top-1 values), its area and 95% fraction."""
    c = run.config
    items = min(c.backfill_items, len(run.x_test))
    labels = run.y_test[:items]
    relevance = Relevance.labels(labels, labels, self_match=True)
    out: dict[str, Any] = {}
    maps: dict[str, ForwardMLPAdapter] = {}  # one forward map per new space, shared by its rows
    for row in c.backfill_bridges:
        source = _source(row)
        if (source if row == FASTFILL else row) not in run.spaces:
            continue  # its method was not run
        if source not in maps:
            maps[source] = forward_map(run, source)
        new_scores, bridged_scores, sigma = _scores(run, row, items, maps[source])
        full = evaluate(new_scores, relevance, (1,))[METRIC]
        orders = _orders(run, sigma, bridged_scores, relevance)
        # one space for fastfill; backward rows merge two scales, calibrated as serving does
        calibration = (
            None if row == FASTFILL else wave_calibration(new_scores, bridged_scores, seed=run.seed)
        )
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
                    calibration=calibration,
                )
            )
            for name in orders
        }
        if say:
            areas = ", ".join(f"{k} {v['area']:.3f}" for k, v in out[row].items())
            say(f"seed {run.seed} backfill {row}: {areas}")
    return out


def summarise_backfill(curves: list[dict[str, Any]]) -> dict[str, Any]:
    """Per bridge row and ordering: area mean ± std, the mean curve, and the margin over random."""
    from compat.protocol_summary import mean_std

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
