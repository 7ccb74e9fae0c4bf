"""`hotswap bench compat --quick`: the protocol benchmark end to end on real Fashion-MNIST."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from models.datasets import fashion_mnist_available


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST is not installed")
def test_bench_compat_quick_writes_every_number(tmp_path) -> None:
    chains = "bct,posthoc,extend+posthoc"  # an opt-in method too, chosen from the command line
    result = CliRunner().invoke(
        app,
        ["bench", "compat", "--quick", "--threads", "1", "--chain-methods", chains, "--json"]
        + ["--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    summary = results["summary"]
    for row in ("bt2", "ract", "posthoc:procrustes", "posthoc:selected", "bt2+posthoc"):
        assert row in summary
        assert len(summary[row]["ecc top1"]) == 1 and len(summary[row]["ecc ap"]) == 1
    for cells in results["per_seed"][0].values():
        for cell in ("old/old", "new/old", "new/new"):
            assert 0.0 <= cells[cell]["top1"] <= 1.0 and 0.0 <= cells[cell]["ap"] <= 1.0
        # ECC's top-1 margin sits inside its interval over resampled queries
        lo, hi = cells["top1 margin interval"]
        assert lo <= cells["new/old"]["top1"] - cells["old/old"]["top1"] <= hi and lo < hi
    # a fitted bridge of the independent model must beat its silent truncation by far
    assert (
        summary["posthoc:selected"]["new/old top1"][0]
        > summary["independent"]["new/old top1"][0] + 0.3
    )
    assert (
        set(results["chains"]) == set(results["config"]["chain_methods"]) == set(chains.split(","))
    )
    for chain in results["chains"].values():
        assert 0.0 <= chain["ac"][0] <= 1.0
    (choices,) = results["chain_choices"]  # one seed: what each pair of each chain chose
    assert set(choices) == {"posthoc", "extend+posthoc"}
    assert all(v.startswith("step ") for v in choices["extend+posthoc"].values())
    for orders in results["backfill"].values():
        assert set(orders) == {"random", "distance_to_mean", "uncertainty", "oracle_culprits"}
        for curve in orders.values():  # the curve runs from the bridge alone to the full re-index
            assert curve["fractions"][0] == 0.0 and curve["fractions"][-1] == 1.0
    written = {p.name for p in tmp_path.iterdir()}
    assert {
        "compat.json",
        "compat_tables.md",
        "compat_chains.png",
        "compat_backfill.png",
    } <= written
    assert json.loads((tmp_path / "compat.json").read_text())["seeds_done"] == 1


def test_bench_compat_refuses_an_unknown_chain_method() -> None:
    result = CliRunner().invoke(app, ["bench", "compat", "--quick", "--chain-methods", "bct,nce"])
    assert result.exit_code != 0
    message = str(result.exception)
    assert "unknown chain methods ['nce']" in message and "extend+posthoc" in message
