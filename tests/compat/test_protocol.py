"""The compatibility protocol benchmark's quick mode, end to end on real Fashion-MNIST."""

from __future__ import annotations

import math

import pytest
import torch

from bench.compat_protocol import METHODS, ProtocolConfig, render_tables, run_protocol
from kernels.errors import InvalidInputError
from models.datasets import fashion_mnist_available


def test_config_refuses_a_method_without_its_reference_model() -> None:
    with pytest.raises(InvalidInputError, match="independent"):
        ProtocolConfig(methods=("bt2",))
    with pytest.raises(InvalidInputError, match="unknown methods"):
        ProtocolConfig(methods=("bcd",))


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST is not installed")
def test_quick_mode_runs_end_to_end() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = run_protocol(ProtocolConfig.quick())
    finally:
        torch.set_num_threads(threads)
    assert list(results["summary"]) == list(METHODS)
    for cells in results["per_seed"][0].values():
        for cell in ("old/old", "new/old", "new/new"):
            assert 0.0 <= cells[cell]["top1"] <= 1.0 and 0.0 <= cells[cell]["ap"] <= 1.0
    # the post-hoc bridge of the independent model must beat its silent truncation by far
    summary = results["summary"]
    assert (
        summary["procrustes"]["new/old top1"][0] > summary["independent"]["new/old top1"][0] + 0.3
    )
    for chain in results["chains"].values():
        assert 0.0 <= chain["ac"][0] <= 1.0 and math.isfinite(chain["am"][0])
    tables = render_tables(results)
    assert "| bt2 |" in tables and "AC" in tables
