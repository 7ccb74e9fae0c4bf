"""Every metric against a brute-force reference written from its definition."""

import numpy as np
import pytest
import torch

from compat.metrics import (
    chain_metrics,
    compatibility_tax,
    compatible,
    cosine_scores,
    curve_area,
    gain_fraction,
    negative_flip_rate,
    per_query_correct,
    ranking_metrics,
    score_metrics,
    self_retrieval_metrics,
    truncate_to_common_width,
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


def test_compatibility_tax() -> None:
    # openBCT ImageNet: independent new/new 66.3, BCT new/new 55.6: an ~11-point tax
    assert compatibility_tax(66.3, 55.6) == pytest.approx(10.7)


def brute_chain(c: np.ndarray) -> tuple[float, float]:
    t = len(c)
    pairs = [(i, j) for i in range(t) for j in range(t) if i > j]
    fails = sum(1 for i, j in pairs if c[i][j] <= c[j][j])
    lower = [c[i][j] for i in range(t) for j in range(t) if j <= i]
    return 1 - fails / (t * (t - 1) / 2), sum(lower) / len(lower)


@pytest.mark.parametrize("seed", range(6))
def test_chain_metrics_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = 2 + seed % 5
    c = np.round(rng.uniform(0.5, 0.9, size=(t, t)), 1)  # rounding makes ties, which must fail
    c[np.triu_indices(t, 1)] = np.nan  # queries on a newer gallery: not part of AC/AM
    got = chain_metrics(c.tolist())
    ac, am = brute_chain(c)
    assert (got.ac, got.am, got.versions) == (pytest.approx(ac), pytest.approx(am), t)


def test_chain_metrics_known_values_and_errors() -> None:
    # 3 versions: C[1][0] beats C[0][0]; C[2][0] ties C[0][0] (fails); C[2][1] is below C[1][1].
    c = [[0.5, 0, 0], [0.6, 0.7, 0], [0.5, 0.65, 0.8]]
    got = chain_metrics(torch.tensor(c))
    assert got.ac == pytest.approx(1 - 2 / 3)
    assert got.am == pytest.approx((0.5 + 0.6 + 0.7 + 0.5 + 0.65 + 0.8) / 6)
    with pytest.raises(InvalidInputError, match="T >= 2"):
        chain_metrics([[0.5]])
    with pytest.raises(InvalidInputError, match="lower triangle"):
        chain_metrics([[0.5, 0.0], [float("nan"), 0.6]])


@pytest.mark.parametrize("k", [1, 3])
def test_per_query_correct_and_flips_match_brute_force(k: int) -> None:
    rng = np.random.default_rng(k)
    labels = rng.integers(0, 3, size=25)
    before = np.round(rng.normal(size=(25, 25)), 1).astype(np.float32)
    after = np.round(rng.normal(size=(25, 25)), 1).astype(np.float32)

    def correct(scores: np.ndarray) -> list[bool]:
        out = []
        for q in range(25):
            order = sorted((j for j in range(25) if j != q), key=lambda j: (-scores[q, j], j))
            out.append(any(labels[j] == labels[q] for j in order[:k]))
        return out

    t_labels, exclude = torch.from_numpy(labels), torch.arange(25)
    got_before = per_query_correct(
        torch.from_numpy(before), t_labels, t_labels, exclude=exclude, k=k
    )
    got_after = per_query_correct(torch.from_numpy(after), t_labels, t_labels, exclude=exclude, k=k)
    assert got_before.tolist() == correct(before) and got_after.tolist() == correct(after)
    flips = sum(b and not a for b, a in zip(correct(before), correct(after), strict=True)) / 25
    assert negative_flip_rate(got_before, got_after) == pytest.approx(flips)


def test_negative_flip_rate_definition_and_errors() -> None:
    before = torch.tensor([True, True, False, False])
    after = torch.tensor([True, False, True, False])
    assert negative_flip_rate(before, after) == 0.25  # one of four queries went right -> wrong
    with pytest.raises(InvalidInputError, match=r"\(Q,\)"):
        negative_flip_rate(before, after[:3])
    with pytest.raises(InvalidInputError, match="zero queries"):
        negative_flip_rate(before[:0], after[:0])


def test_widths_differ_only_through_the_explicit_truncation() -> None:
    q, g = torch.randn(4, 12), torch.randn(6, 8)
    with pytest.raises(InvalidInputError, match="truncate_to_common_width"):
        cosine_scores(q, g)
    tq, tg = truncate_to_common_width(q, g)
    assert tq.shape == (4, 8) and tg.shape == (6, 8)
    torch.testing.assert_close(tq, q[:, :8] / q[:, :8].norm(dim=1, keepdim=True))
    torch.testing.assert_close(tg, g / g.norm(dim=1, keepdim=True))
    torch.testing.assert_close(cosine_scores(tq, tg), tq @ tg.T)
