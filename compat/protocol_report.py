"""Render the protocol's results: markdown tables, the issue's targets (met / missed), two plots.

Input is the dict of :func:`compat.protocol.run_protocol` (or its JSON). Plots need matplotlib
(imported lazily, Agg backend): the chain matrices as heatmaps and the backfilling curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compat.protocol import METRICS, TRAINING_TIME
from compat.protocol_backfill import ORACLE

CELLS = ("old/old", "new/old", "new/new")
MAX_TAX = 0.01  # issue 3: tax <= 1 point top-1
_CLASS_MEANS = (
    "the class-mean influence term pulls bridged queries onto old class means; for classes 5-9, "
    "unknown to the old model, those sit among other classes' items: mAP up, top-1 down (as BCT "
    "in the BT² paper; probe: old class means as queries drop top-1 0.809 → 0.705)"
)
_MSE = (
    "fitted by MSE to the old features: reproducing the old embedding reproduces the old model's "
    "mistakes (top-1 below old/old, mAP passes; the label-aware NCA map fixes this)"
)
# Why a row fails the empirical compatibility criterion, from the diagnostics recorded in
# docs/results/compat.md ("Reading"); issue 3 accepts a failing row when the table says why.
# Keyed by row name ("@monarch" variants share their method's entry); a row not listed here that
# fails stays undiagnosed and the target is missed: a new row needs its own measured reason.
ECC_DIAGNOSES = {
    "bct": _CLASS_MEANS,
    "oca": _CLASS_MEANS,
    "bt2": f"{_CLASS_MEANS}; with λ2 = 1 instead of 10 top-1 rises 0.736 → 0.760 (bt2_light)",
    "bt2_light": "the class-mean term at λ2 = 1 still costs top-1 (0.760 vs old/old 0.767): a "
    "seed with less margin fails",
    "bct_paper": "the paper's old classifier (trained rows for classes 0-4, class means for 5-9): "
    "the two kinds of row lie at different places on the sphere, so the influence term pulls "
    "seen-class queries away from where the old gallery lies (docs/results/demo.md)",
    "simplex": "one fixed-simplex space, no adapter: the old model (classes 0-4) puts its gallery "
    "items of classes 5-9 next to vertices 0-4 (seed 0: all 1,458, 1,029 at vertex 2) while new "
    "queries of 5-9 go to their own vertices; seen-class queries then hit those items (seed 0 "
    "new/old top-1 0.53 vs old/old 0.70 on classes 0-4, 0.30 vs 0.55 on 5-9)",
    "ract": "its contrastive term matches each item's own old vector, so new/old lands on old/old "
    "(0.765 vs 0.767) and fails on the seeds where it falls a hair below",
    "ract+posthoc": "RACT's bridge already is the old geometry: the held-out choice keeps "
    "Procrustes, new/old stays at old/old level",
    "posthoc:affine": _MSE,
    "posthoc:lambda_orthogonal": _MSE,
    "posthoc:low_rank_affine": _MSE,
    "posthoc:residual_mlp": _MSE,
    "posthoc:forward_mlp": _MSE,
    # passed while post-hoc fits ran 15 epochs (0.774 / 0.764 / 0.781 vs old/old 0.772 / 0.758 /
    # 0.771, stop 21): short of convergence it had not yet reached the old geometry
    "posthoc:orthogonal": _MSE + "; fitted for 15 epochs it stopped short of the old geometry "
    "and passed, at 30 it reaches it (every seed's margin interval spans 0)",
    "posthoc:orthogonal_monarch": "started from the block Procrustes solve (`procrustes_monarch`), "
    "then " + _MSE,
    "posthoc:procrustes_monarch": "Procrustes restricted to 8 orthogonal blocks of 16 and "
    "permutations keeps its mAP (0.584 vs 0.587) but not all of its top-1 (stop 18: 0.765 / "
    "0.758 / 0.760 vs 0.785 / 0.790 / 0.775 per seed), which lands at old/old level",
    "posthoc:contrastive_affine": "issue 7's map: trained for pair retrieval (find the same item's "
    "old vector), not class retrieval",
    "posthoc:contrastive_residual": "issue 7's map: trained for pair retrieval (find the same item's "
    "old vector), not class retrieval",
    "posthoc:lambda_orthogonal_supcon": "the paper's SupCon pulls a query towards all of its class "
    "(its mean): mAP rises, top-1 stays at old/old level",
    "posthoc:paired": "chosen by held-out paired recall@10, which prefers the MSE maps: " + _MSE,
}


def _pm(value: tuple[float, float] | list[float], digits: int = 3) -> str:
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def _ecc(flags: list[bool]) -> str:
    marks = "".join("✓" if f else "✗" for f in flags)
    return f"{sum(flags)}/{len(flags)} {marks}"


def cells_table(results: dict[str, Any], metric: str, label: str) -> list[str]:
    seeds = results["seeds_done"]
    lines = [
        f"### {label} (mean ± std over {seeds} seeds; ECC per seed ✓/✗)",
        "",
        "| row | old/old | new/old | new/new | ECC | gain fraction | tax | bridge |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, s in results["summary"].items():
        cells = " | ".join(_pm(s[f"{c} {metric}"]) for c in CELLS)
        lines.append(
            f"| {row} | {cells} | {_ecc(s[f'ecc {metric}'])} | {_pm(s[f'gain {metric}'], 2)} | "
            f"{_pm(s[f'tax {metric}'])} | {s['bridge']} |"
        )
    return [*lines, ""]


def chain_tables(results: dict[str, Any]) -> list[str]:
    lines = [
        "### Chains (top-1; rows = query version, columns = gallery version; mean over seeds)",
        "",
    ]
    for method, chain in results["chains"].items():
        per_seed = ", ".join(f"{a:.2f}" for a in chain["ac_per_seed"])
        lines += [
            f"**{method}**: AC {_pm(chain['ac'], 2)} (per seed {per_seed}), AM {_pm(chain['am'])}",
            "",
        ]
        t = len(chain["mean_matrix_top1"])
        lines += ["| query \\ gallery | " + " | ".join(f"v{j + 1}" for j in range(t)) + " |"]
        lines += ["|---" * (t + 1) + "|"]
        for i, row in enumerate(chain["mean_matrix_top1"]):
            cells = " | ".join("" if v is None else f"{v:.3f}" for v in row)
            lines.append(f"| v{i + 1} | {cells} |")
        lines += ["", *_chain_choices(results.get("chain_choices", []), method)]
    return lines


def _chain_choices(per_seed: list[dict[str, dict[str, str]]], method: str) -> list[str]:
    """One line: what held-out images chose for each pair of the chain, seed by seed."""
    chosen = [seed.get(method, {}) for seed in per_seed]
    if not any(chosen):  # none recorded (results written before stop 21)
        return []
    pairs = ", ".join(
        f"{pair} " + " / ".join(seed.get(pair, "—") for seed in chosen) for pair in chosen[0]
    )
    return [f"Chosen on held-out images per pair (seed by seed): {pairs}.", ""]


def backfill_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "### Backfilling (top-1 area over β ∈ [0, 1]; margin = area − random's, same seed)",
        "",
        "β = 0: the bridge alone; β = 1: the full re-index (mean curves). `fastfill`: the old",
        "gallery transformed forward into the new space, searched by plain new queries.",
        f"`{ORACLE}` is a reference, not an ordering a user can run: it reads the test labels and",
        "migrates first the items that are some query's wrong top-1 answer at β = 0. Its margin",
        "bounds what an ordering could add here; the target counts only the other orderings.",
        "",
        "| bridge | ordering | area | margin over random | β = 0 | β = 1 "
        "| β reaching 95% of new/new (per seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, orders in results["backfill"].items():
        for name, s in orders.items():
            reach = ", ".join("never" if r is None else f"{r:.2f}" for r in s["fraction_to_target"])
            ends = " | ".join(f"{v:.3f}" for v in _ends(s["mean_values"]))
            lines.append(
                f"| {row} | {name} | {_pm(s['area'])} | {_pm(s['margin_over_random'])} | {ends} "
                f"| {reach} |"
            )
    return [*lines, ""]


def _ends(values: list[float]) -> tuple[float, float]:
    return (values[0], values[-1]) if values else (math.nan, math.nan)


def _cheapest_gain(summary: dict[str, Any], rows: list[str], name: str) -> list[dict[str, Any]]:
    """The row with the best top-1 gain among ``rows`` within the tax budget (else among all)."""
    cheap = [r for r in rows if summary[r]["tax top1"][0] <= MAX_TAX]
    best = max(cheap or rows, key=lambda r: summary[r]["gain top1"][0], default=None)
    if best is None:
        return []
    g, tax = summary[best]["gain top1"][0], summary[best]["tax top1"][0]
    return [_target(name, best, g, g >= 0.5 and tax <= MAX_TAX, _seeds_at(summary[best], 0.5))]


def _posthoc_target(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """``posthoc:selected`` (chosen per seed on held-out training images, never on the test set)
    when it ran; else the best ``posthoc:<key>`` row."""
    posthoc = [r for r in summary if r.startswith("posthoc:")]
    best = "posthoc:selected" if "posthoc:selected" in summary else None
    best = best or max(posthoc, key=lambda r: summary[r]["gain top1"][0], default=None)
    if best is None:
        return []
    g = summary[best]["gain top1"][0]
    picks = summary[best].get("selected")
    label = f"{best} ({', '.join(picks)})" if picks else best
    name = "post-hoc adapter (independent models) gain fraction >= 0.9"
    return [_target(name, label, g, g >= 0.9, _seeds_at(summary[best], 0.9))]


def _seeds_at(row: dict[str, Any], threshold: float) -> tuple[Sequence[float], int]:
    """A row's per-seed top-1 gains and how many reach ``threshold`` (none from older JSON)."""
    gains = row.get("gain top1 per seed", [])
    return gains, sum(g >= threshold for g in gains)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value, the best row and met / missed."""
    summary, out = results["summary"], []
    out += _cheapest_gain(
        summary,
        [r for r in summary if r in TRAINING_TIME],
        "training-time gain fraction >= 0.5 (tax <= 1 pt top-1)",
    )
    out += _cheapest_gain(
        summary,
        [r for r in summary if r.endswith("+posthoc")],
        "training-time + post-hoc refinement: gain >= 0.5 (tax <= 1 pt top-1)",
    )
    out += _posthoc_target(summary)
    chains = results["chains"]
    best_c = max(chains, key=lambda m: chains[m]["ac"][0], default=None)
    if best_c:
        ac, per_seed = chains[best_c]["ac"][0], chains[best_c]["ac_per_seed"]
        seeds = (per_seed, sum(a == 1.0 for a in per_seed))
        out.append(_target("3-step chain AC = 1.0", best_c, ac, ac == 1.0, seeds))
    margins = [
        (f"{row} / {name}", s["margin_over_random"][0])
        for row, orders in results["backfill"].items()
        for name, s in orders.items()
        if name not in ("random", ORACLE)
    ]
    if margins:
        name, margin = max(margins, key=lambda p: p[1])
        ceilings = [o[ORACLE]["margin_over_random"][0] for o in results["backfill"].values()
                    if ORACLE in o]  # fmt: skip
        if ceilings:
            name += f" (the label oracle's best: {max(ceilings):+.3f})"
        out.append(
            _target(
                "backfill: best ordering − random >= +0.045 top-1 area",
                name,
                margin,
                margin >= 0.045,
            )
        )
    failing = ecc_failures(summary)
    unexplained = [row for row, why in failing.items() if why is None]
    out.append(
        _target(
            "every compatible row passes ECC top-1 and mAP on every seed, or the table says why not",
            f"{len(failing)} rows fail, {len(unexplained)} without a diagnosis"
            + (f" ({', '.join(unexplained)})" if unexplained else ""),
            len(failing),
            not unexplained,
        )
    )
    return out


def ecc_failures(summary: dict[str, Any]) -> dict[str, str | None]:
    """Rows (all but the independent baselines) failing ECC on any seed -> their diagnosis or None."""
    marketed = [r for r in summary if not r.startswith("independent")]
    failing = [r for r in marketed if not all(summary[r]["ecc top1"] + summary[r]["ecc ap"])]
    return {row: ECC_DIAGNOSES.get(row.split("@")[0]) for row in failing}


def _target(
    name: str, row: str, value: float, met: bool, seeds: tuple[Sequence[float], int] = ((), 0)
) -> dict[str, Any]:
    """One target; ``seeds``: (the row's per-seed values, how many of them reach the target)."""
    per_seed, reaching = seeds
    return {
        "target": name,
        "best": row,
        "value": value,
        "met": bool(met),
        "per_seed": per_seed,
        "seeds_reaching": reaching,
    }


def _verdict(t: dict[str, Any]) -> str:
    if not t["met"]:
        return "**MISSED**"
    n = len(t["per_seed"])
    return (
        f"met on the mean ({t['seeds_reaching']} of {n} seeds)"
        if t["seeds_reaching"] < n
        else "met"
    )


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "### Targets (issue 3)",
        "",
        "| target | best / failing rows | value | |",
        "|---|---|---|---|",
    ]
    for t in targets(results):
        spread = " / ".join(f"{v:.2f}" for v in t["per_seed"])
        value = f"{t['value']:.3f}" + (f" (per seed {spread})" if spread else "")
        lines.append(f"| {t['target']} | {t['best']} | {value} | {_verdict(t)} |")
    return [*lines, ""]


def ecc_table(results: dict[str, Any]) -> list[str]:
    """Every row failing ECC on some seed, where it fails and the measured reason why."""
    summary = results["summary"]
    lines = [
        "### Rows failing ECC, and why",
        "",
        "Top-1 margin: new/old − old/old, its 95% interval over 1,000 paired resamples of the test",
        "queries per seed (compat/query_spread.py); an interval across 0 is a tie the choice of",
        "queries decides, one wholly below 0 a failure that 95% of query samples would confirm.",
        "",
        "| row | top-1 ECC | mAP ECC | top-1 margin, 95% interval per seed | why |",
        "|---|---|---|---|---|",
    ]
    for row, why in ecc_failures(summary).items():
        flags = (_ecc(summary[row][f"ecc {metric}"]) for metric in METRICS)
        spans = " / ".join(
            f"[{lo:+.3f}, {hi:+.3f}]"
            for lo, hi in summary[row].get("top1 margin interval per seed", [])
        )
        lines.append(
            f"| {row} | {' | '.join(flags)} | {spans or '—'} | {why or '**not diagnosed**'} |"
        )
    return [*lines, ""]


def render_tables(results: dict[str, Any]) -> str:
    """Markdown: targets, one cells table per metric, ECC failures, chains, backfilling areas."""
    lines = targets_table(results)
    lines += cells_table(results, "top1", "top-1") + cells_table(results, "ap", "mAP")
    lines += ecc_table(results)
    lines += chain_tables(results) + backfill_table(results)
    return "\n".join(lines)


def save_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """compat_chains.png (chain heatmaps) and compat_backfill.png (mean curves); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    chains = results["chains"]
    if chains:
        fig, axes = plt.subplots(1, len(chains), figsize=(3.2 * len(chains), 3.0), squeeze=False)
        for ax, (method, chain) in zip(axes[0], chains.items(), strict=True):
            m = [[math.nan if v is None else v for v in row] for row in chain["mean_matrix_top1"]]
            ax.imshow(m, vmin=0.3, vmax=0.9, cmap="viridis")
            for i, row in enumerate(m):
                for j, v in enumerate(row):
                    if not math.isnan(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
            names = [f"v{k + 1}" for k in range(len(m))]
            ax.set_xticks(range(len(m)), names)
            ax.set_yticks(range(len(m)), names)
            ax.set_title(f"{method}: AC {chain['ac'][0]:.2f}", fontsize=9)
            ax.set_xlabel("gallery version")
            ax.set_ylabel("query version")
        fig.tight_layout()
        paths.append(out / "compat_chains.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if results["backfill"]:
        fig, axes = plt.subplots(
            1,
            len(results["backfill"]),
            figsize=(4.2 * len(results["backfill"]), 3.2),
            squeeze=False,
        )
        for ax, (row, orders) in zip(axes[0], results["backfill"].items(), strict=True):
            for name, s in orders.items():
                ax.plot(
                    s["fractions"],
                    s["mean_values"],
                    marker=".",
                    label=f"{name} ({s['area'][0]:.3f})",
                )
            ax.set_title(f"backfilling, bridge {row}", fontsize=9)
            ax.set_xlabel("fraction of gallery re-embedded")
            ax.set_ylabel("top-1")
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "compat_backfill.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def write_outputs(results: dict[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    """results.json (every number), tables.md and, with ``plots``, the two PNGs, under ``out``."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "compat.json", out / "compat_tables.md"]
    written[0].write_text(json.dumps(results, indent=1))
    written[1].write_text(render_tables(results))
    return written + (save_plots(results, out) if plots else [])
