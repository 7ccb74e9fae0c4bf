"""Retrieval quality measured through the real search path (mixed-version search included).

The compatibility protocol ranks the whole gallery for every query (mAP over the full ranking), so
the searcher is asked for every item, and each query's own entry is dropped from its list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from compat.metrics import DEFAULT_TOPK, ranking_metrics
from index.search import MixedSearcher


def evaluate_searcher(
    searcher: MixedSearcher,
    queries: torch.Tensor,
    query_item_ids: np.ndarray,
    labels_by_item: dict[int, int],
    *,
    policy: str = "score",
    topk: Sequence[int] = DEFAULT_TOPK,
    chunk: int = 2000,
) -> dict[str, float]:
    """Mean CMC top-k and mAP of ``searcher`` for labelled queries that are themselves gallery items.

    queries (Q, d) in the searcher's version; query_item_ids (Q,) the item each query is (its self
    match is removed); labels_by_item maps every gallery item id to its class.
    """
    gallery_ids = np.fromiter(labels_by_item, dtype=np.int64)
    lookup = np.full(int(gallery_ids.max()) + 2, -1, dtype=np.int64)  # id -> label; -1 for padding
    lookup[gallery_ids] = [labels_by_item[int(i)] for i in gallery_ids]
    per_class = np.bincount(lookup[gallery_ids])
    sums: dict[str, float] = {}
    for start in range(0, len(queries), chunk):
        rows = slice(start, start + chunk)
        result = searcher.search(queries[rows], k=len(gallery_ids), policy=policy)
        own = query_item_ids[rows]
        keep = result.ids != own[:, None]
        ids = np.where(keep, result.ids, -1)
        ranked = np.stack(
            [row[mask][: len(gallery_ids) - 1] for row, mask in zip(ids, keep, strict=True)]
        )
        labels = lookup[own]
        relevant = torch.from_numpy((lookup[ranked] == labels[:, None]) & (ranked >= 0))
        n_relevant = torch.from_numpy(per_class[labels] - 1)
        for name, values in ranking_metrics(relevant, n_relevant, topk).items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
    return {name: total / len(queries) for name, total in sums.items()}
