"""The query bootstrap behind a verdict: against a plain-Python reference, and what it must say."""

import pytest
import torch

from compat.backfill_curves import Relevance, evaluate, evaluate_per_query
from compat.query_spread import QuerySpread, query_spread, resampled_means
from compat.verdict import BridgeReport, bridge_or_backfill, rule
from kernels.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hits(q: int, rate: float, seed: int) -> torch.Tensor:
    """(q,) 0/1 per-query recall values with about ``rate`` ones."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(q, generator=g) < rate).double()


def test_resampled_means_are_paired_draws_of_the_same_queries() -> None:
    a, b = hits(50, 0.5, 0), hits(50, 0.7, 1)
    m = resampled_means({"a": a, "b": b, "a_again": a.clone()}, 200, seed=3)
    assert m["a"].shape == (200,)
    assert torch.equal(m["a"], m["a_again"])  # the same positions for every cell
    # the same seeded draws, one resample at a time, in plain Python
    g = torch.Generator().manual_seed(3)
    picks = torch.randint(50, (200, 50), generator=g).tolist()
    expected = [sum(float(b[i]) for i in row) / 50 for row in picks]
    assert m["b"].tolist() == pytest.approx(expected)


def test_intervals_cover_the_reference_percentiles_and_shrink_with_more_queries() -> None:
    def spread(q: int) -> QuerySpread:
        cells = {
            "old_old": hits(q, 0.60, 0),
            "bridged": hits(q, 0.66, 1),
            "new_new": hits(q, 0.72, 2),
        }
        return query_spread(cells, rule, 0.95, resamples=400, seed=0)

    small, large = spread(200), spread(5000)
    for s in (small, large):
        lo, hi = s.intervals["gain"]
        assert lo < hi
        assert abs(sum(s.decisions.values()) - 1) < 1e-12
    width = lambda s, k: s.intervals[k][1] - s.intervals[k][0]  # noqa: E731
    for figure in ("gain", "retention", "gain_fraction"):
        assert width(large, figure) < width(small, figure) / 2  # ~1/sqrt(25) = 1/5 in theory


def test_gain_interval_against_a_brute_force_bootstrap() -> None:
    q = 120
    cells = {"old_old": hits(q, 0.5, 4), "bridged": hits(q, 0.6, 5), "new_new": hits(q, 0.7, 6)}
    s = query_spread(cells, rule, 0.95, resamples=300, seed=7, level=0.9)
    g = torch.Generator().manual_seed(7)
    picks = torch.randint(q, (300, q), generator=g).tolist()
    gains = sorted(
        sum(float(cells["bridged"][i] - cells["old_old"][i]) for i in row) / q for row in picks
    )

    # torch.nanquantile's linear interpolation at 5% and 95% of 300 sorted values
    def linear(p: float) -> float:
        pos = p * (len(gains) - 1)
        lo = int(pos)
        return gains[lo] + (pos - lo) * (gains[lo + 1] - gains[lo])

    assert s.intervals["gain"] == pytest.approx((linear(0.05), linear(0.95)))


def test_constant_per_query_values_leave_no_doubt() -> None:
    cells = {name: torch.full((30,), v, dtype=torch.float64) for name, v in
             (("old_old", 0.5), ("bridged", 0.7), ("new_new", 0.72), ("rerank", 0.71))}  # fmt: skip
    s = query_spread(cells, rule, 0.95, resamples=50)
    assert s.decisions == {"bridge": 1.0}
    assert s.intervals["gain"] == pytest.approx((0.2, 0.2))
    assert s.intervals["rerank_retention"] == pytest.approx((0.71 / 0.72, 0.71 / 0.72))
    assert s.intervals["gain_fraction"] == pytest.approx((0.2 / 0.22, 0.2 / 0.22))


def test_bad_inputs_are_refused() -> None:
    good = {"old_old": hits(10, 0.5, 0), "bridged": hits(10, 0.5, 1), "new_new": hits(10, 0.5, 2)}
    with pytest.raises(InvalidInputError, match="same queries"):
        query_spread({**good, "bridged": hits(9, 0.5, 1)}, rule, 0.95)
    with pytest.raises(InvalidInputError, match="needs old_old"):
        query_spread({"old_old": good["old_old"]}, rule, 0.95)
    with pytest.raises(InvalidInputError, match="resamples"):
        query_spread(good, rule, 0.95, resamples=0)


def world(q: int, gap: float, seed: int = 0):
    """A pairs task where the bridged queries are worse than new/new by ``gap`` noise."""
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(q, 16, generator=g), dim=1)
    noisy = lambda s: z + s * torch.randn(q, 16, generator=g) / 4  # noqa: E731
    return noisy(1.2), noisy(0.8), noisy(1.2), noisy(0.8 + gap)


def test_the_verdict_warns_when_another_query_sample_would_decide_otherwise() -> None:
    # few queries, a bridge near the 95% line: the decision is a coin toss over query samples
    oq, nq, og, ng = world(60, 0.0)
    bridged = world(60, 0.15, seed=0)[3]  # the new queries plus extra noise, "through the adapter"
    report = bridge_or_backfill(
        oq, nq, og, ng, Relevance.pairs(60), lambda x: bridged, rerank_depth=None, seed=1
    )
    s = report.spread
    assert s is not None and s.queries == 60 and s.resamples == 1000
    held = s.share(report.verdict.decision)
    assert held < 0.95, s.decisions
    assert f"reach this decision in only {held:.0%}" in report.verdict.reason
    # the report's cells are the per-query values' means
    per_query = evaluate_per_query(torch.cosine_similarity(oq[:, None], og[None], dim=2),
                                   Relevance.pairs(60))  # fmt: skip
    assert report.old_old["recall@10"] == pytest.approx(float(per_query["recall@10"].mean()))
    assert BridgeReport.from_json(report.to_json()) == report


def test_a_clear_verdict_carries_no_warning() -> None:
    oq, nq, og, ng = world(400, 0.0, seed=2)
    # bridged queries equal to their own answers: every answer found, on every resample
    report = bridge_or_backfill(oq, nq, og, ng, Relevance.pairs(400), lambda x: og.clone(),
                                rerank_depth=None, resamples=200)  # fmt: skip
    assert report.verdict.decision == "bridge"
    assert report.spread is not None and report.spread.decisions == {"bridge": 1.0}
    assert "resamples" not in report.verdict.reason


def test_no_resamples_no_spread() -> None:
    oq, nq, og, ng = world(50, 0.0)
    report = bridge_or_backfill(oq, nq, og, ng, Relevance.pairs(50), lambda x: x,
                                rerank_depth=None, resamples=0)  # fmt: skip
    assert report.spread is None
    assert report.bridged == evaluate(torch.nn.functional.normalize(nq, dim=1) @
                                      torch.nn.functional.normalize(og, dim=1).T,
                                      Relevance.pairs(50))  # fmt: skip
