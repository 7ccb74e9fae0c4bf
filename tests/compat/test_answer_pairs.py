"""Pairs from the source model's own answers: brute-force checked, and never a held-out anchor."""

import pytest
import torch
import torch.nn.functional as F

from compat.answer_pairs import answer_recall, answers, with_answers
from compat.fitting import fit_adapter, select_adapter
from kernels.errors import InvalidInputError


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_answers_are_each_querys_top_cosine_item_in_every_chunk() -> None:
    queries, items = 3 * unit(37, 6, 0), 0.5 * unit(50, 6, 1)  # lengths must not matter
    brute = (F.normalize(queries, dim=1) @ F.normalize(items, dim=1).T).argmax(1)
    assert torch.equal(answers(queries, items, chunk=8), brute)
    # an item answers itself
    assert torch.equal(answers(items[[4, 9]], items), torch.tensor([4, 9]))


def test_with_answers_appends_one_pair_per_query_labelled_by_its_answer() -> None:
    x, y, labels = unit(20, 6, 2), unit(20, 4, 3), torch.arange(20) % 5
    queries = x[[3, 17]] + 0.01 * unit(2, 6, 4)  # nearest to anchors 3 and 17
    fx, fy, fl = with_answers(x, y, queries, labels)
    assert torch.equal(fx, torch.cat([x, queries])) and torch.equal(fy, torch.cat([y, y[[3, 17]]]))
    assert fl is not None and fl[-2:].tolist() == [3, 2]
    assert with_answers(x, y, None, labels) == (x, y, labels)
    assert with_answers(x, y, queries)[2] is None


def test_queries_in_the_target_space_add_their_own_pairs_but_never_answer() -> None:
    x, y = unit(20, 6, 2), unit(20, 4, 3)
    queries, queries_target = x[[3, 17]] + 0.01 * unit(2, 6, 4), unit(2, 4, 5)
    fx, fy, fl = with_answers(x, y, queries, queries_target=queries_target)
    assert torch.equal(fx, torch.cat([x, queries, queries]))
    assert torch.equal(fy, torch.cat([y, y[[3, 17]], queries_target])) and fl is None
    for kwargs, message in [
        ({"queries_target": queries_target[:1]}, "2 queries but 1"),
        ({"queries_target": unit(2, 5, 6)}, "width 5"),
        ({"queries_target": queries_target, "labels": torch.arange(20)}, "labels cover"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            with_answers(x, y, queries, **kwargs)
    with pytest.raises(InvalidInputError, match="without the queries"):
        with_answers(x, y, None, queries_target=queries_target)


@pytest.mark.parametrize(
    ("queries", "items", "message"),
    [
        (unit(3, 5, 0), unit(10, 6, 1), "width 5"),
        (torch.full((2, 6), float("nan")), unit(10, 6, 1), "NaN"),
        (unit(2, 6, 0), torch.empty(0, 6), "no anchor items"),
        (unit(2, 6, 0), torch.full((3, 6), float("inf")), "anchor items .* NaN or Inf"),
    ],
)
def test_bad_queries_or_items_are_refused(queries, items, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        answers(queries, items)


def test_selection_answers_from_the_training_anchors_only() -> None:
    """Queries that copy held-out anchors: if those anchors could answer, the fit would differ.
    The held-out fifth of the queries scores each candidate instead (answer_recall@10)."""
    x, y = unit(100, 6, 5), unit(100, 6, 6)
    seeded = lambda n: torch.randperm(n, generator=torch.Generator().manual_seed(0))  # noqa: E731
    order = seeded(100)  # select_adapter's split of the pairs, seed 0
    held, train = order[:20], order[20:]
    queries = x[held[:10]]
    asked = seeded(10)  # and of the queries: 2 held out, 8 fitted
    chosen = select_adapter(x, y, ["procrustes"], direction="backward", queries=queries)
    report = chosen.reports["procrustes"]
    assert report.train.n == 80 + 8 and chosen.anchors == 80  # answer pairs beside the anchors
    assert chosen.criterion == "answer_recall@10" and report.held_out is not None
    fitted = queries[asked[2:]]
    expected = fit_adapter("procrustes", *with_answers(x[train], y[train], fitted)[:2],
                           direction="backward").adapter  # fmt: skip
    leaked = fit_adapter("procrustes", torch.cat([x[train], fitted]),
                         torch.cat([y[train], y[held[:10]][asked[2:]]]),
                         direction="backward").adapter  # fmt: skip
    probe = unit(5, 6, 7)
    assert torch.allclose(report.adapter.transform(probe), expected.transform(probe), atol=1e-6)
    assert not torch.allclose(report.adapter.transform(probe), leaked.transform(probe), atol=1e-3)
    scored = answer_recall(expected.transform, queries[asked[:2]], x[held], y[held])
    assert report.held_out.answer_recall == pytest.approx(scored)


def test_answer_recall_is_the_share_of_queries_whose_answer_maps_into_the_top_k() -> None:
    items_source, items_target = unit(30, 6, 8), unit(30, 4, 9)
    queries = items_source[:6] + 0.01 * unit(6, 6, 10)  # answered by items 0..5
    perfect = lambda q: items_target[answers(q, items_source)]  # noqa: E731
    assert answer_recall(perfect, queries, items_source, items_target, k=1) == 1.0
    # a map that sends every query to item 29's target finds only its own answer, none of these
    constant = lambda q: items_target[[29]].expand(len(q), -1)  # noqa: E731
    assert answer_recall(constant, queries, items_source, items_target, k=1) == 0.0


def test_selection_needs_enough_queries_and_queries_for_their_criterion() -> None:
    x, y = unit(50, 6, 11), unit(50, 6, 12)
    with pytest.raises(InvalidInputError, match="4 queries cannot be split"):
        select_adapter(x, y, ["procrustes"], direction="backward", queries=x[:4])
    with pytest.raises(InvalidInputError, match="answer_recall@10"):
        select_adapter(x, y, ["procrustes"], direction="backward", criterion="answer_recall@10")
