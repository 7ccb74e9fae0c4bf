"""Gallery scaling: nested subsets, the restricted relevance, the trend, and the verdict at scale."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from compat.backfill_curves import Relevance, cosine, evaluate
from compat.gallery_scaling import gallery_scaling, nested_subsets, restrict
from compat.verdict import BridgeReport, Verdict, at_deployed_size, bridge_or_backfill
from kernels.errors import InvalidInputError
from tests.compat.test_verdict import brute_recall_at_10, world

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_nested_subsets_are_prefixes_of_one_permutation() -> None:
    subsets = nested_subsets(1000, seed=3, min_items=100)
    assert [len(s) for s in subsets] == [125, 250, 500, 1000]
    for small, large in zip(subsets, subsets[1:], strict=False):
        assert set(small.tolist()) <= set(large.tolist())
    assert subsets[-1].tolist() == list(range(1000))
    assert [len(s) for s in nested_subsets(300, min_items=100)] == [150, 300]
    assert [len(s) for s in nested_subsets(50, min_items=100)] == [50]  # G itself always kept


def test_restrict_pairs_keeps_the_queries_whose_answer_is_in_the_subset() -> None:
    items = torch.tensor([1, 4, 6])
    rows, rel = restrict(Relevance.pairs(8), items)
    assert rows.tolist() == [1, 4, 6]
    assert rel.gains.tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    assert rel.exclude is None


def test_pairs_with_distractors_answer_no_query_and_subsets_keep_them() -> None:
    relevance = Relevance.pairs(3, gallery=5)  # items 3 and 4: distractors
    assert relevance.gains.tolist() == [
        [True, False, False, False, False],
        [False, True, False, False, False],
        [False, False, True, False, False],
    ]
    rows, rel = restrict(relevance, torch.tensor([0, 3, 4]))
    assert rows.tolist() == [0] and rel.gains.tolist() == [[True, False, False]]
    with pytest.raises(InvalidInputError, match="cannot answer"):
        Relevance.pairs(4, gallery=3)


def test_restrict_with_a_self_match_remaps_it_and_drops_queries_left_alone() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    relevance = Relevance.labels(labels, labels, self_match=True)
    items = torch.tensor([0, 2, 4, 5])
    rows, rel = restrict(relevance, items)
    # query 0 (label 0) keeps item 5; 2 and 4 have no other same-label item left; 1, 3 not items
    assert rows.tolist() == [0, 5]
    assert rel.exclude is not None and rel.exclude.tolist() == [0, 3]  # their own positions
    assert rel.gains.tolist() == [[True, False, False, True], [True, False, False, True]]


def test_cells_on_each_subset_match_brute_force() -> None:
    oq, nq, og, ng, r = world(1.5, 1.5, 0.3, n=400)
    bridged = nq @ r.T
    scaling = gallery_scaling(
        cosine(oq, og), cosine(bridged, og), cosine(nq, ng), Relevance.pairs(400),
        metric="recall@10", seed=1, draws=1,
    )  # fmt: skip
    subsets = nested_subsets(400, seed=1)
    assert [p.gallery for p in scaling.points] == [len(s) for s in subsets] == [100, 200, 400]
    for point, subset in zip(scaling.points, subsets, strict=True):
        assert point.queries == len(subset)
        assert point.bridged == pytest.approx(brute_recall_at_10(bridged[subset], og[subset]))
        assert point.old_old == pytest.approx(brute_recall_at_10(oq[subset], og[subset]))
        assert point.new_new == pytest.approx(brute_recall_at_10(nq[subset], ng[subset]))
        assert point.rerank is None  # no cascade asked for


def test_trend_is_the_least_squares_line_in_log2_size_and_is_extrapolated() -> None:
    oq, nq, og, ng, r = world(1.5, 1.5, 0.3, n=800)
    noisy = F.normalize(nq @ r.T + 0.6 * torch.randn(800, 32) / 32**0.5, dim=1)
    scores = cosine(oq, og), cosine(noisy, og), cosine(nq, ng)
    scaling = gallery_scaling(
        *scores, Relevance.pairs(800), metric="recall@10", rerank_depth=20,
        deployed_items=800 * 2**6,
    )  # fmt: skip
    x = [math.log2(p.gallery) for p in scaling.points]
    y = [p.bridged / p.new_new for p in scaling.points]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum(
        (a - mx) ** 2 for a in x
    )
    assert scaling.per_doubling["bridged"] == pytest.approx(slope)
    assert scaling.at_deployed["bridged"] == pytest.approx(my + slope * (math.log2(800 * 64) - mx))
    # a noisy bridge loses ground as distractors grow; the cascade (new vectors rerank) keeps it
    assert scaling.per_doubling["bridged"] < 0
    assert scaling.per_doubling["rerank"] > scaling.per_doubling["bridged"]
    assert all(p.rerank is not None for p in scaling.points)
    # far enough out the line crosses zero; retention is floored there
    far = gallery_scaling(*scores, Relevance.pairs(800), metric="recall@10", deployed_items=2**400)
    assert far.at_deployed["bridged"] == 0.0
    # nothing is extrapolated for a deployed gallery no larger than the evaluated one
    same = gallery_scaling(*scores, Relevance.pairs(800), metric="recall@10")
    assert same.at_deployed["bridged"] == pytest.approx(y[-1])


def test_draws_are_averaged_and_give_the_slope_a_standard_error() -> None:
    oq, nq, og, ng, r = world(1.5, 1.5, 0.3, n=800)
    noisy = F.normalize(nq @ r.T + 0.6 * torch.randn(800, 32) / 32**0.5, dim=1)
    scores = cosine(oq, og), cosine(noisy, og), cosine(nq, ng)
    singles = [
        gallery_scaling(*scores, Relevance.pairs(800), metric="recall@10", seed=s, draws=1)
        for s in range(4)
    ]
    pooled = gallery_scaling(*scores, Relevance.pairs(800), metric="recall@10", draws=4)
    assert pooled.draws == 4 and not singles[0].per_doubling_se
    for k, point in enumerate(pooled.points):
        assert point.bridged == pytest.approx(sum(x.points[k].bridged for x in singles) / 4)
    slopes = [x.per_doubling["bridged"] for x in singles]
    assert pooled.per_doubling["bridged"] == pytest.approx(sum(slopes) / 4)
    mean = sum(slopes) / 4
    sd = (sum((v - mean) ** 2 for v in slopes) / 3) ** 0.5
    assert pooled.per_doubling_se["bridged"] == pytest.approx(sd / 2)
    assert pooled.points[-1] == singles[0].points[-1]  # the whole gallery is every draw's
    with pytest.raises(Exception, match="draws must be >= 1"):
        gallery_scaling(*scores, Relevance.pairs(800), metric="recall@10", draws=0)


def test_mismatched_score_matrices_are_refused() -> None:
    with pytest.raises(Exception, match="differ in shape"):
        gallery_scaling(
            torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 5), Relevance.pairs(3),
            metric="recall@10",
        )  # fmt: skip


def test_verdict_at_deployed_size_changes_only_when_the_trend_crosses_the_target() -> None:
    oq, nq, og, ng, r = world(1.5, 1.5, 0.3, n=800)
    noisy = lambda x: F.normalize(x @ r.T + 0.3 * torch.randn(len(x), 32) / 32**0.5, dim=1)  # noqa: E731
    small = bridge_or_backfill(oq, nq, og, ng, Relevance.pairs(800), noisy, rerank_depth=None)
    assert small.scaling is not None and small.scaling.deployed_items == 800
    assert small.verdict.at_deployed is None  # evaluated = deployed: nothing to extrapolate
    large = bridge_or_backfill(
        oq, nq, og, ng, Relevance.pairs(800), noisy, rerank_depth=None, backfill_items=10**9
    )
    assert large.verdict.decision == small.verdict.decision  # the measured rule is unchanged
    kept = large.scaling.at_deployed["bridged"] if large.scaling else None
    assert kept is not None and kept < small.retention["recall@10"]
    assert large.verdict.at_deployed == ("bridge" if kept >= 0.95 else "backfill")
    if large.verdict.at_deployed != large.verdict.decision:
        assert "at the deployed 1,000,000,000 items it would be" in large.verdict.reason
    # the report, scaling included, survives JSON
    again = BridgeReport.from_json(large.to_json())
    assert again.scaling == large.scaling and again.verdict == large.verdict


def test_at_deployed_size_rule_uses_measured_cells_and_extrapolated_retentions() -> None:
    oq, nq, og, ng, r = world(1.5, 1.5, 0.3, n=400)
    report = bridge_or_backfill(
        oq, nq, og, ng, Relevance.pairs(400), lambda x: x @ r.T, rerank_depth=None
    )
    assert report.scaling is not None
    bridge = Verdict("bridge", "bridge: measured", "recall@10", 0.95)
    cells = {"old_old": 0.5, "bridged": 0.9, "rerank": 0.95}
    falling = dataclasses.replace(
        report.scaling, deployed_items=10**6, at_deployed={"bridged": 0.8, "rerank": 0.96},
        per_doubling={"bridged": -0.02, "rerank": -0.001},
        per_doubling_se={"bridged": 0.004, "rerank": 0.001},
    )  # fmt: skip
    moved = at_deployed_size(bridge, falling, cells)
    assert moved.at_deployed == "bridge+rerank" and moved.decision == "bridge"
    assert "bridged 80.0% (-2.0 ± 0.4 pt per doubling)" in moved.reason
    near = dataclasses.replace(falling, deployed_items=4_000, at_deployed={"bridged": 0.97})
    kept = at_deployed_size(bridge, near, cells)  # 10x the 400 evaluated items: checked reach
    assert kept.at_deployed == "bridge" and kept.reason == "bridge: measured"
    # the same answer 2,500x out is still said to be unchecked, with the gallery that would do
    far = at_deployed_size(
        bridge, dataclasses.replace(falling, at_deployed={"bridged": 0.97}), cells
    )
    assert far.at_deployed == "bridge" and "it would still be bridge" in far.reason
    assert "2,500x past the evaluated gallery" in far.reason and "100,000+ items" in far.reason
    assert "2,500x" in moved.reason  # a changed answer says it too
    # a bridge that does not beat the old model is never "bridge" at scale either
    worse = at_deployed_size(
        bridge, dataclasses.replace(falling, at_deployed={"bridged": 0.99}),
        {"old_old": 0.95, "bridged": 0.9},
    )  # fmt: skip
    assert worse.at_deployed == "backfill"


def test_evaluate_on_a_restricted_relevance_equals_evaluating_the_sub_problem() -> None:
    labels = torch.arange(60) % 2
    x = F.normalize(torch.randn(60, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    relevance = Relevance.labels(labels, labels, self_match=True)
    items = nested_subsets(60, seed=2, min_items=10)[0]
    rows, rel = restrict(relevance, items)
    sub = evaluate(cosine(x[rows], x[items]), rel)
    direct = evaluate(
        cosine(x[items], x[items]), Relevance.labels(labels[items], labels[items], self_match=True)
    )
    kept = torch.isin(items, rows)  # the subset's own queries that still have an answer
    assert kept.all()  # two labels over 15 items: every query keeps a same-label item
    assert sub == pytest.approx(direct)
