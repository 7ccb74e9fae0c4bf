"""Every metric against a brute-force reference written from its definition."""

import numpy as np
import pytest
import torch

from compat.metrics import (
    compatible,
    curve_area,
    gain_fraction,
    ranking_metrics,
    score_metrics,
    self_retrieval_metrics,
)
from kernels.errors import InvalidInputError


def brute_force(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, float]:
    """CMC top-k and mAP with the self-match removed, one query at a time, ties by gallery index."""
    hits, aps = [], []
    for q in range(len(scores)):
        order = sorted((j for j in range(len(scores)) if j != q), key=lambda j: (-scores[q, j], j))
        rel = [labels[j] == labels[q] for j in order]
        hits.append(float(any(rel[:k])))
        found, precisions = 0, []
        for rank, r in enumerate(rel, start=1):
            if r:
                found += 1
                precisions.append(found / rank)
        aps.append(sum(precisions) / max(1, sum(rel)))
    return float(np.mean(hits)), float(np.mean(aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_metrics_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=37)
    # Rounded scores create ties: the tie rule (lower gallery index first) must agree too.
    scores = np.round(rng.normal(size=(37, 37)), 1).astype(np.float32)
    got = score_metrics(
        torch.from_numpy(scores),
        torch.from_numpy(labels),
        torch.from_numpy(labels),
        exclude=torch.arange(37),
        topk=(1, 5),
        chunk=8,
    )
    for k in (1, 5):
        top, ap = brute_force(scores, labels, k)
        assert got[f"top{k}"] == pytest.approx(top)
        assert got["ap"] == pytest.approx(ap)


def test_perfect_and_worst_rankings() -> None:
    relevant = torch.tensor([[True, True, False, False], [False, False, True, True]])
    out = ranking_metrics(relevant, torch.tensor([2, 2]), topk=(1,))
    assert out["top1"].tolist() == [1.0, 0.0]
    assert out["ap"][0] == 1.0
    assert out["ap"][1] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_truncated_list_is_penalised_not_rescaled() -> None:
    # One relevant item retrieved at rank 1 out of 4 in the gallery: AP = 1/4, not 1.
    out = ranking_metrics(torch.tensor([[True, False]]), torch.tensor([4]))
    assert out["ap"][0] == pytest.approx(0.25)


def test_self_retrieval_refuses_different_widths() -> None:
    with pytest.raises(InvalidInputError, match="explicit adapter"):
        self_retrieval_metrics(
            torch.randn(5, 8), torch.randn(5, 4), torch.zeros(5, dtype=torch.long)
        )


def test_compatibility_criterion_is_strict() -> None:
    assert compatible(0.81, 0.80)
    assert not compatible(0.80, 0.80)


def test_gain_fraction_and_curve_area() -> None:
    assert gain_fraction(0.9, 0.8, 1.0) == pytest.approx(0.5)
    with pytest.raises(InvalidInputError):
        gain_fraction(0.9, 0.8, 0.8)
    assert curve_area([0.0, 0.5, 1.0], [0.0, 0.5, 1.0]) == pytest.approx(0.5)
    with pytest.raises(InvalidInputError, match="rise from 0 to 1"):
        curve_area([0.0, 0.5], [1.0, 1.0])
