"""The protocol's numbers as one JSON-ready dict: per-seed cells summarised over seeds.

:func:`results` is what :func:`compat.protocol.run_protocol` returns (and compat.json holds);
:func:`summarise` turns each row's per-seed cells into mean ± std, ECC per seed, gain fraction and
tax. Kept apart from compat/protocol.py, which trains and measures: this half only arranges the
numbers it measured.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from compat.metrics import compatibility_tax, compatible, gain_fraction
from models.config import Config

Cells = dict[str, Any]  # cell name -> metric -> value, plus "bridge"


def results(
    config: Config,
    per_seed: list[dict[str, Cells]],
    chains: list[Any],
    curves: list[Any],
    start: float,
    chain_choices: list[Any] | None = None,
) -> dict[str, Any]:
    """Every number of a run: the config, per-seed cells, chain matrices and backfilling curves as
    measured, and their summaries over seeds; ``start`` is the run's perf_counter at its start.

    ``chain_choices``: per seed, each chain method's per-pair choices (None: not recorded, as in
    results written before stop 21).
    """
    from compat.chain import summarise_chains
    from compat.protocol_backfill import summarise_backfill

    return {
        "config": config.to_dict(),
        "seeds_done": len(per_seed),
        "per_seed": per_seed,
        "chain_matrices": chains,
        "chain_choices": chain_choices or [],
        "backfill_curves": curves,
        "summary": summarise(per_seed),
        "chains": summarise_chains(chains),
        "backfill": summarise_backfill(curves),
        "seconds": round(time.perf_counter() - start, 1),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def reference_row(row: str) -> str:
    """The unconstrained new model a row's gain and tax are measured against."""
    return "independent@monarch" if row.endswith("@monarch") else "independent"


def summarise(per_seed: list[dict[str, Cells]]) -> dict[str, Any]:
    """Per row: mean ± std of every cell, ECC per seed, gain fraction and tax (per seed, then mean)."""
    out: dict[str, Any] = {}
    for row in per_seed[0]:
        seeds = [s[row] for s in per_seed]
        ref = reference_row(row)
        summary: dict[str, Any] = {"bridge": seeds[0]["bridge"]}
        if "selected" in seeds[0]:
            summary["selected"] = [s["selected"] for s in seeds]
        if "top1 margin interval" in seeds[0]:  # absent from results written before stop 21
            summary["top1 margin interval per seed"] = [s["top1 margin interval"] for s in seeds]
        for m in ("top1", "top5", "ap"):
            for cell in ("old/old", "new/old", "new/new"):
                summary[f"{cell} {m}"] = mean_std([s[cell][m] for s in seeds])
            old = [s["old/old"][m] for s in seeds]
            cross = [s["new/old"][m] for s in seeds]
            star = [p[ref]["new/new"][m] if ref in p else float("nan") for p in per_seed]
            summary[f"ecc {m}"] = [compatible(a, b) for a, b in zip(cross, old, strict=True)]
            gains = [gain_fraction(a, b, s) for a, b, s in zip(cross, old, star, strict=True)]
            summary[f"gain {m}"] = mean_std(gains)
            summary[f"gain {m} per seed"] = gains  # targets are met by the mean: show the spread
            summary[f"tax {m}"] = mean_std(
                [compatibility_tax(s, c["new/new"][m]) for s, c in zip(star, seeds, strict=True)]
            )
        out[row] = summary
    return out
