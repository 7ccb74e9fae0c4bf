"""Training pairs from the new model's own answers: a bridge taught where new queries should land.

A bridge fitted on same-text pairs (new(t) -> old(t)) learns to *imitate* the old model text by
text; what it gains over old/old comes only from how the new model's neighbourhoods survive the
map. The new model can say more: asked a query, it ranks the anchor items, and its first answer is
where that query should land in the old space. So each query (embedded by the new model only)
becomes one more pair, new(query) -> old(the anchor item the new model ranks first for it).

No relevance label is read: which item answers which query is the new model's judgement, right or
wrong. On WordNet (MiniLM -> MPNet) these pairs took the bridge's share of the upgrade's gain from
0.41 to 0.50 (docs/results/text_upgrade.md, round 15); the same construction with MiniLM as its
own teacher gives nothing (it can only teach what the old model already answers).

The items must be items (the gallery's kind of text), not queries: retrieval among texts of the
query's own kind finds its near-duplicates, whose pairs teach nothing new (measured: 0.36 there).
Queries embedded by both models add their own same-text pairs, which the bridge needs beside the
items' (WordNet, seed 0: items + answers 0.37, + the queries' own pairs 0.47), but they are never
answers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from compat.vectors import check_vectors
from kernels.errors import InvalidInputError


def answers(queries: Tensor, items: Tensor, *, chunk: int = 4096) -> Tensor:
    """(Q, d), (N, d) in one model's space -> (Q,) the item each query ranks first, by cosine."""
    items = check_vectors(items, None, "anchor items (source-space vectors)")
    queries = check_vectors(queries, items.shape[1], "queries (source-space vectors)")
    if len(items) == 0:
        raise InvalidInputError("there are no anchor items to answer the queries from")
    items = F.normalize(items, dim=1)  # (N, d)
    return torch.cat(
        [(F.normalize(part, dim=1) @ items.T).argmax(1) for part in queries.split(chunk)]
    )


def with_answers(
    x: Tensor,
    y: Tensor,
    queries: Tensor | None,
    labels: Tensor | None = None,
    queries_target: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Anchor pairs (x (N, d_s) -> y (N, d_t)) plus one pair per query: (queries (Q, d_s), the
    y row of the anchor x ranks first for it). The answered anchor's label labels its pair.
    ``queries_target`` (Q, d_t): the same queries embedded by the target model, if known: their
    same-text pairs join the fit too, but never answer a query (only the anchor items do).
    -> (x (N + Q [+ Q], d_s), y (..., d_t), labels or None); unchanged when no queries."""
    if queries is None:
        if queries_target is not None:
            raise InvalidInputError("target-space query vectors were given without the queries")
        return x, y, labels
    if queries_target is not None and labels is not None:
        raise InvalidInputError(
            "class labels cover the anchors, and the queries' own pairs have none",
            fix="drop the labels or the target-space query vectors",
        )
    first = answers(queries, x)
    xs, ys = [x, queries.float()], [y, y[first]]
    if queries_target is not None:
        xs.append(queries.float())
        ys.append(target_queries(queries, queries_target, y.shape[1]))
    extra_labels = None if labels is None else torch.cat([labels, labels[first]])
    return torch.cat(xs), torch.cat(ys), extra_labels


def target_queries(queries: Tensor, queries_target: Tensor, dim: int) -> Tensor:
    """The queries' target-space rows, checked: (Q, dim), finite, one per query."""
    queries_target = check_vectors(queries_target, dim, "target-space query vectors")
    if len(queries_target) != len(queries):
        raise InvalidInputError(
            f"{len(queries)} queries but {len(queries_target)} target-space query vectors: "
            "the same queries, row by row"
        )
    return queries_target


def answer_recall(
    transform: Callable[[Tensor], Tensor],
    queries: Tensor,
    items_source: Tensor,
    items_target: Tensor,
    k: int = 10,
) -> float:
    """Label-free held-out score of a bridge on the task it serves: the share of queries whose
    mapped vector ranks, among the items' target rows, the item the source model answers first
    within the top ``k`` (ties fail). queries (Q, d_s), items (N, d_s) and (N, d_t)."""
    first = answers(queries, items_source)  # (Q,)
    mapped = F.normalize(transform(F.normalize(queries.float(), dim=1)).float(), dim=1)
    scores = mapped @ F.normalize(items_target.float(), dim=1).T  # (Q, N)
    above = (scores >= scores.gather(1, first[:, None])).sum(dim=1) - 1
    return float((above < k).float().mean())
