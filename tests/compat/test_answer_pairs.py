"""Pairs from the source model's own answers: brute-force checked, and never a held-out anchor."""

import pytest
import torch
import torch.nn.functional as F

from compat.answer_pairs import answers, with_answers
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
    """Queries that copy held-out anchors: if those anchors could answer, the fit would differ."""
    x, y = unit(100, 6, 5), unit(100, 6, 6)
    # select_adapter's split of 100 pairs, seed 0
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    held, train = order[:20], order[20:]
    queries = x[held[:8]]
    chosen = select_adapter(x, y, ["procrustes"], direction="backward", queries=queries)
    report = chosen.reports["procrustes"]
    assert report.train.n == 80 + 8 and chosen.anchors == 80  # answer pairs beside the anchors
    expected = fit_adapter("procrustes", *with_answers(x[train], y[train], queries)[:2],
                           direction="backward").adapter  # fmt: skip
    leaked = fit_adapter("procrustes", torch.cat([x[train], queries]),
                         torch.cat([y[train], y[held[:8]]]), direction="backward").adapter  # fmt: skip
    probe = unit(5, 6, 7)
    assert torch.allclose(report.adapter.transform(probe), expected.transform(probe), atol=1e-6)
    assert not torch.allclose(report.adapter.transform(probe), leaked.transform(probe), atol=1e-3)
