"""Recall@k, MRR@k and nDCG@k against brute-force references written from their definitions."""

import math

import numpy as np
import pytest
import torch

from compat.relevance_metrics import (
    gain_over_status_quo,
    ranked_relevance_metrics,
    relevance_matrix,
    relevance_metrics,
    retention,
)
from kernels.errors import InvalidInputError
from kernels.topk import exact_topk


def brute_force(
    scores: np.ndarray, gains: np.ndarray, k: int, self_match: bool
) -> dict[str, float]:
    """One query at a time: ties by gallery index, the self-match (q == j) dropped if asked."""
    out: dict[str, list[float]] = {"recall": [], "mrr": [], "ndcg": []}
    q_count, g_count = scores.shape
    for q in range(q_count):
        items = [j for j in range(g_count) if not (self_match and j == q)]
        order = sorted(items, key=lambda j: (-scores[q, j], j))[:k]
        relevant = {j for j in items if gains[q, j] > 0}
        out["recall"].append(len(relevant & set(order)) / len(relevant))
        first = next((r for r, j in enumerate(order, start=1) if j in relevant), None)
        out["mrr"].append(0.0 if first is None else 1 / first)
        dcg = sum(gains[q, j] / math.log2(r + 1) for r, j in enumerate(order, start=1))
        ideal = sorted((gains[q, j] for j in items), reverse=True)[:k]
        out["ndcg"].append(dcg / sum(g / math.log2(r + 1) for r, g in enumerate(ideal, start=1)))
    return {name: float(np.mean(v)) for name, v in out.items()}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 5, 10])
def test_dense_scores_match_brute_force(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(19, 19)), 1).astype(np.float32)  # ties on purpose
    graded = seed % 2 == 1
    gains = rng.integers(0, 4, size=(19, 19)) * (rng.random((19, 19)) < 0.3)
    gains = gains if graded else (gains > 0).astype(np.int64)
    gains[np.arange(19), (np.arange(19) + 1) % 19] = 2 if graded else 1  # every query has one
    self_match = seed < 2
    got = relevance_metrics(
        torch.from_numpy(scores),
        torch.from_numpy(gains) if graded else torch.from_numpy(gains > 0),
        ks=(k,),
        exclude=torch.arange(19) if self_match else None,
    )
    want = brute_force(scores, gains, k, self_match)
    for name in ("recall", "mrr", "ndcg"):
        assert got[f"{name}@{k}"] == pytest.approx(want[name]), name


@pytest.mark.parametrize("seed", range(3))
def test_exact_topk_is_the_head_of_the_stable_sort_even_with_ties(seed: int) -> None:
    """A few distinct scores over a wide gallery: the k-th best is tied with many others."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (40, 300), generator=g).float()
    scores[0, :] = 1.0  # a row that is one tie
    scores[1, 5:] = float("-inf")  # a row with fewer finite scores than k
    full = torch.sort(scores, dim=1, descending=True, stable=True).indices
    for k in (1, 10, 37, 299, 300, 400):
        assert torch.equal(exact_topk(scores, k).indices, full[:, :k])


def test_wide_tied_galleries_match_brute_force() -> None:
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(25, 120)).astype(np.float32)
    gains = (rng.random((25, 120)) < 0.05).astype(np.int64)
    gains[np.arange(25), np.arange(25) + 30] = 1  # every query has one, never its own item
    for self_match in (False, True):
        got = relevance_metrics(
            torch.from_numpy(scores), torch.from_numpy(gains > 0), ks=(1, 10),
            exclude=torch.arange(25) if self_match else None,
        )  # fmt: skip
        for k in (1, 10):
            want = brute_force(scores, gains, k, self_match)
            for name in ("recall", "mrr", "ndcg"):
                assert got[f"{name}@{k}"] == pytest.approx(want[name]), (name, k, self_match)


def test_ranked_lists_with_padding_are_penalised_not_rescaled() -> None:
    relevance = relevance_matrix([{0, 3}, {2}], gallery_size=5)
    ranked = torch.tensor([[3, -1, -1], [1, 4, 2]])  # query 0's list is cut short after one item
    out = ranked_relevance_metrics(ranked, relevance, ks=(3,))
    assert out["recall@3"].tolist() == [0.5, 1.0]
    assert out["mrr@3"].tolist() == pytest.approx([1.0, 1 / 3])
    ideal_0 = 1 + 1 / math.log2(3)
    assert out["ndcg@3"].tolist() == pytest.approx([1 / ideal_0, (1 / math.log2(4)) / 1])


def test_queries_without_relevant_items_and_bad_inputs_are_errors() -> None:
    relevance = torch.tensor([[True, False], [False, False]])
    with pytest.raises(InvalidInputError, match=r"queries \[1\] have no relevant item"):
        relevance_metrics(torch.randn(2, 2), relevance)
    with pytest.raises(InvalidInputError, match="outside"):
        relevance_matrix([{5}], gallery_size=3)
    with pytest.raises(InvalidInputError, match="must both be"):
        relevance_metrics(torch.randn(2, 3), relevance)
    with pytest.raises(InvalidInputError, match="reach 7"):
        ranked_relevance_metrics(torch.tensor([[7], [0]]), relevance)


def test_retention_and_gain_over_status_quo() -> None:
    # the WordNet check: old/old 0.660, Procrustes bridge 0.664, full re-index 0.744
    assert retention(0.664, 0.744) == pytest.approx(0.8925, abs=1e-4)
    assert gain_over_status_quo(0.664, 0.660) == pytest.approx(0.004)
    with pytest.raises(InvalidInputError):
        retention(0.5, 0.0)
