"""The report's ECC rule: a failing row passes the issue's target only with its measured reason."""

from __future__ import annotations

import pytest

from compat.protocol_report import ECC_DIAGNOSES, ecc_failures, render_tables, targets
from tests.compat.test_protocol import _cells, _results


def _ecc_target(results: dict) -> dict:
    return next(t for t in targets(results) if t["target"].startswith("every compatible row"))


def _with_rows(rows: dict) -> dict:
    from compat.protocol_summary import summarise

    results = _results(0.81, 1.0, 0.05)
    results["summary"] = summarise([{"independent": _cells(0.7, 0.1, 0.9), **rows}])
    return results


def test_failing_rows_with_a_diagnosis_are_listed_with_it_and_meet_the_target() -> None:
    results = _with_rows({"bct": _cells(0.7, 0.65, 0.9), "posthoc:selected": _cells(0.7, 0.8, 0.9)})
    assert ecc_failures(results["summary"]) == {"bct": ECC_DIAGNOSES["bct"]}
    target = _ecc_target(results)
    assert target["met"] and target["value"] == 1
    assert target["best"] == "1 rows fail, 0 without a diagnosis"
    table = render_tables(results).split("### Rows failing ECC, and why")[1]
    assert f"| bct | 0/1 ✗ | 0/1 ✗ | — | {ECC_DIAGNOSES['bct']} |" in table
    assert "posthoc:selected" not in table.split("###")[0]  # it passes: not a failure


def test_a_failing_row_without_a_diagnosis_misses_the_target() -> None:
    # posthoc:selected has no recorded reason to fail: a new failure must be diagnosed first
    results = _with_rows(
        {"bct@monarch": _cells(0.7, 0.6, 0.9), "posthoc:selected": _cells(0.7, 0.6, 0.9)}
    )
    failures = ecc_failures(results["summary"])
    assert failures == {"bct@monarch": ECC_DIAGNOSES["bct"], "posthoc:selected": None}
    target = _ecc_target(results)
    assert (
        not target["met"]
        and target["best"] == "2 rows fail, 1 without a diagnosis (posthoc:selected)"
    )
    assert "| posthoc:selected | 0/1 ✗ | 0/1 ✗ | — | **not diagnosed** |" in render_tables(results)


def test_a_failing_row_shows_its_margin_interval_per_seed() -> None:
    from compat.protocol_summary import summarise

    results = _results(0.81, 1.0, 0.05)
    seeds = [
        {"independent": _cells(0.7, 0.1, 0.9), "ract": {**_cells(0.7, 0.69, 0.9), "top1 margin interval": span}}
        for span in ((-0.021, 0.004), (-0.03, -0.002))
    ]  # fmt: skip
    results["summary"] = summarise(seeds)
    table = render_tables(results).split("### Rows failing ECC, and why")[1]
    assert "| ract | 0/2 ✗✗ | 0/2 ✗✗ | [-0.021, +0.004] / [-0.030, -0.002] |" in table


def test_the_independent_baselines_are_never_counted() -> None:
    results = _with_rows({"independent@monarch": _cells(0.7, 0.1, 0.9)})
    assert ecc_failures(results["summary"]) == {}
    assert _ecc_target(results)["met"]


def test_the_backfill_target_never_counts_the_label_oracle() -> None:
    """The oracle reads the test labels: its margin is quoted as the ceiling, never as the best."""
    from compat.protocol_backfill import ORACLE

    results = _results(0.81, 1.0, 0.01)
    orders = results["backfill"]["posthoc:procrustes"]
    orders[ORACLE] = {**orders["uncertainty"], "margin_over_random": (0.06, 0.0)}
    target = next(t for t in targets(results) if t["target"].startswith("backfill"))
    assert target["value"] == 0.01 and not target["met"]
    assert target["best"] == "posthoc:procrustes / uncertainty (the label oracle's best: +0.060)"
    assert f"| posthoc:procrustes | {ORACLE} |" in render_tables(results)


def test_a_target_met_on_the_mean_shows_the_seeds_below_it() -> None:
    from compat.protocol_summary import summarise

    results = _results(0.81, 1.0, 0.05)
    results["summary"] = summarise(
        [  # post-hoc gains 1.0 and 0.85 per seed: the mean meets the target, one seed does not
            {"independent": _cells(0.7, 0.1, 0.9), "posthoc:selected": _cells(0.7, 0.9, 0.9)},
            {"independent": _cells(0.7, 0.1, 0.9), "posthoc:selected": _cells(0.7, 0.87, 0.9)},
        ]
    )
    target = next(t for t in targets(results) if t["target"].startswith("post-hoc adapter"))
    assert target["met"] and target["per_seed"] == pytest.approx([1.0, 0.85])
    assert target["seeds_reaching"] == 1
    row = next(r for r in render_tables(results).splitlines() if r.startswith("| post-hoc"))
    assert row.endswith("| 0.925 (per seed 1.00 / 0.85) | met on the mean (1 of 2 seeds) |")


def test_the_chain_target_shows_each_seeds_ac() -> None:
    results = _results(0.81, 1.0, 0.05)
    results["chains"]["extend+posthoc"] = {
        **results["chains"]["posthoc"],
        "ac": (7 / 9, 0.16),
        "ac_per_seed": [1.0, 2 / 3, 2 / 3],
    }
    results["chains"]["posthoc"] = {**results["chains"]["posthoc"], "ac": (2 / 3, 0.0)}
    target = next(t for t in targets(results) if t["target"].startswith("3-step chain"))
    assert target["best"] == "extend+posthoc" and not target["met"]
    assert target["seeds_reaching"] == 1
    row = next(r for r in render_tables(results).splitlines() if r.startswith("| 3-step"))
    assert row.endswith("| 0.778 (per seed 1.00 / 0.67 / 0.67) | **MISSED** |")


def test_the_chain_tables_say_what_each_pair_chose_seed_by_seed() -> None:
    results = _results(0.81, 1.0, 0.05)
    results["chain_choices"] = [
        {"posthoc": {"v2→v1": "affine", "v3→v1": "lambda_orthogonal_nca"}},
        {"posthoc": {"v2→v1": "procrustes", "v3→v1": "lambda_orthogonal_nca"}},
    ]
    text = render_tables(results)
    assert (
        "Chosen on held-out images per pair (seed by seed): v2→v1 affine / procrustes, "
        "v3→v1 lambda_orthogonal_nca / lambda_orthogonal_nca." in text
    )
    del results["chain_choices"]  # results written before choices were recorded: no line
    assert "Chosen on held-out images" not in render_tables(results)
