"""Retrieval quality: through the real search path, and bridge-or-backfill from catalog versions.

:func:`evaluate_searcher`: the compatibility protocol ranks the whole gallery for every query (mAP
over the full ranking), so the searcher is asked for every item, and each query's own entry is
dropped from its list.

:func:`evaluate_versions`: ``hotswap eval --old-version A --new-version B --query-set Q.json``. Both
versions must be registered with a pretrained encoder (``hotswap models add NAME --encoder SPEC``);
the labelled query set (:func:`load_query_set`) holds texts, so both encoders embed its queries and
documents here, the new encoder's measured time per document prices the backfill, and the bridge
is the catalog's backward adapter between the two versions, else a saved adapter file, else one
fitted on the documents' own pairs. The cells come from :func:`compat.verdict.bridge_or_backfill`.

Query set file (JSON)::

    {"documents": [{"id": "d1", "text": "...", "label": "x"}, ...],
     "queries": [{"text": "...", "relevant": ["d1", ...]}, {"text": "...", "label": "x"}, ...]}

Relevance is either ``relevant`` document ids on every query, or a ``label`` on every query and
every document (same label = relevant).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compat.backfill_curves import Relevance
from compat.metrics import DEFAULT_TOPK, ranking_metrics
from compat.verdict import BridgeReport
from index.context import Context
from index.search import MixedSearcher
from kernels.errors import InvalidInputError, NotFoundError


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


@dataclasses.dataclass(frozen=True)
class QuerySet:
    """Labelled texts: Q queries, G documents (the gallery), and (Q, G) relevance."""

    queries: list[str]
    documents: list[str]
    relevance: Relevance


def load_query_set(path: Path) -> QuerySet:
    """Read a query set file (format in the module docstring); every problem names the entry."""
    if not path.is_file():
        raise NotFoundError(f"query set file {path} does not exist")
    try:
        data = json.loads(path.read_text())
        docs, queries = data["documents"], data["queries"]
        texts = [str(d["text"]) for d in docs] + [str(q["text"]) for q in queries]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InvalidInputError(
            f"query set {path} is not {{'documents': [{{id, text}}], 'queries': [{{text, ...}}]}}: {e!r}",
            fix="see index/evaluation.py's docstring for the format",
        ) from e
    if not docs or not queries:
        raise InvalidInputError(f"query set {path} needs at least one document and one query")
    relevance = _relevance(path, docs, queries)
    return QuerySet(texts[len(docs) :], texts[: len(docs)], relevance)


def _relevance(path: Path, docs: list[dict], queries: list[dict]) -> Relevance:
    if all("relevant" in q for q in queries):
        column = {str(d.get("id")): j for j, d in enumerate(docs)}
        gains = torch.zeros(len(queries), len(docs), dtype=torch.bool)
        for i, q in enumerate(queries):
            for doc_id in q["relevant"]:
                if str(doc_id) not in column:
                    raise InvalidInputError(
                        f"{path}: query {i} lists unknown document id {doc_id!r}",
                        fix="every relevant id must be a documents[].id",
                    )
                gains[i, column[str(doc_id)]] = True
        return Relevance(gains)
    if all("label" in q for q in queries) and all("label" in d for d in docs):
        names = {n: k for k, n in enumerate(sorted({str(x["label"]) for x in [*docs, *queries]}))}
        ids = lambda xs: torch.tensor([names[str(x["label"])] for x in xs])  # noqa: E731
        return Relevance.labels(ids(queries), ids(docs), self_match=False)
    raise InvalidInputError(
        f"query set {path}: give every query 'relevant' document ids, or every query and document "
        "a 'label'"
    )


def evaluate_versions(
    ctx: Context,
    old_version: str,
    new_version: str,
    query_set: QuerySet,
    *,
    adapter: Path | None = None,
    fit: str = "auto",
    **options: Any,
) -> BridgeReport:
    """Bridge or backfill for two catalog versions on a labelled query set (module docstring).

    ``options`` go to :func:`compat.verdict.bridge_or_backfill` (ks, rerank_depth, ...); the new
    encoder's measured seconds per document is passed as ``new_seconds_per_item``.
    """
    from compat.verdict import bridge_or_backfill
    from index.versions import get_version, load_pretrained_version

    with ctx.transaction() as session:
        old, new = get_version(session, old_version), get_version(session, new_version)
        encoders = load_pretrained_version(old), load_pretrained_version(new)
        bridge = _registered_bridge(ctx, session, new, old) if adapter is None else None
    (oq, og, _), (nq, ng, seconds) = (_embed(e, query_set) for e in encoders)
    if bridge is None:
        bridge = _file_or_fitted(adapter, fit, ng, og)
    options.setdefault("new_seconds_per_item", seconds / len(query_set.documents))
    return bridge_or_backfill(oq, nq, og, ng, query_set.relevance, bridge, **options)


def _embed(encoder: Any, query_set: QuerySet) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(queries (Q, d), documents (G, d), seconds the documents took)."""
    began = time.perf_counter()
    documents = encoder.encode(query_set.documents)
    seconds = time.perf_counter() - began
    return encoder.encode(query_set.queries), documents, seconds


def _registered_bridge(ctx: Context, session: Any, new: Any, old: Any) -> Any:
    """The catalog's backward adapter new -> old, or None when none is registered."""
    from index.versions import query_adapter

    try:
        return query_adapter(ctx, session, new, old)
    except NotFoundError:
        return None


def _file_or_fitted(path: Path | None, fit: str, x: torch.Tensor, y: torch.Tensor) -> Any:
    """A saved adapter, or one fitted new -> old on the documents' pairs (x (G, d_new), y (G, d_old))."""
    from compat.adapters import load_adapter
    from compat.fitting import fit_adapter, select_adapter

    if path is not None:
        if not path.is_file():
            raise NotFoundError(f"adapter file {path} does not exist")
        return load_adapter(path)
    if fit == "auto":
        return select_adapter(x, y, direction="backward").adapter
    return fit_adapter(fit, x, y, direction="backward").adapter
