"""``hotswap eval`` from vector files alone: read, validate, fit or load the bridge, judge.

Inputs are .npy float arrays: old/new query vectors (Q, d_old)/(Q, d_new), old/new gallery vectors
(G, d_old)/(G, d_new), row-aligned (row i is the same query or item under both models). Relevance
is either class labels (one per line for the queries and for the gallery; ``self_match`` when
the queries are the gallery items themselves) or pairs (one "query_row gallery_row" per line).
The bridge is a saved adapter, or one fitted here (``fit``: a registry key or "auto" = selected by
held-out paired retrieval) on anchor pairs: the given anchor files, else the gallery's own pairs,
plus, with ``anchor_queries_new`` (other queries than the evaluated ones), one pair per such query
onto the new model's own first answer among those anchors (compat/answer_pairs.py), and with
``anchor_queries_old`` (the same queries, old model) their own pairs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from compat.adapters import load_adapter
from compat.answer_pairs import with_answers
from compat.backfill_curves import Relevance
from compat.fitting import fit_adapter, select_adapter
from compat.verdict import BridgeReport, bridge_or_backfill
from kernels.errors import InvalidInputError, NotFoundError
from models.vector_files import load_ids, load_vectors


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalFiles:
    old_queries: Path
    new_queries: Path
    old_gallery: Path
    new_gallery: Path
    query_labels: Path | None = None
    gallery_labels: Path | None = None
    pairs: Path | None = None
    self_match: bool = False
    adapter: Path | None = None
    fit: str = "auto"
    anchors_old: Path | None = None
    anchors_new: Path | None = None
    anchor_queries_new: Path | None = None
    anchor_queries_old: Path | None = None


def read_relevance(files: EvalFiles, queries: int, gallery: int) -> Relevance:
    """(Q, G) relevance from labels or pairs; exactly one of the two must be given."""
    labels = files.query_labels is not None or files.gallery_labels is not None
    if labels == (files.pairs is not None):
        raise InvalidInputError(
            "give relevance either as labels (--query-labels and --gallery-labels) or as --pairs",
        )
    if files.pairs is not None:
        return _pairs(files.pairs, queries, gallery)
    if files.query_labels is None or files.gallery_labels is None:
        raise InvalidInputError("labels need both --query-labels and --gallery-labels")
    q, g = load_ids(files.query_labels), load_ids(files.gallery_labels)
    if (len(q), len(g)) != (queries, gallery):
        raise InvalidInputError(
            f"labels: {len(q)} query and {len(g)} gallery lines for {queries} queries and "
            f"{gallery} gallery rows: one label per row"
        )
    if files.self_match and queries != gallery:
        raise InvalidInputError("--self-match needs the queries to be the gallery (Q == G)")
    names = {name: i for i, name in enumerate(sorted(set(q) | set(g)))}
    as_ids = lambda xs: torch.tensor([names[x] for x in xs])  # noqa: E731
    return Relevance.labels(as_ids(q), as_ids(g), self_match=files.self_match)


def _pairs(path: Path, queries: int, gallery: int) -> Relevance:
    gains = torch.zeros(queries, gallery, dtype=torch.bool)
    for number, line in enumerate(load_ids(path), start=1):
        fields = line.split()
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            raise InvalidInputError(
                f"{path}:{number}: expected 'query_row gallery_row', got {line!r}"
            )
        q, g = int(fields[0]), int(fields[1])
        if q >= queries or g >= gallery:
            raise InvalidInputError(
                f"{path}:{number}: row {q} or {g} is out of range ({queries} queries, {gallery} gallery)"
            )
        gains[q, g] = True
    return Relevance(gains)


def _tensor(path: Path) -> Tensor:
    return torch.from_numpy(load_vectors(Path(path)))


def evaluate_vector_files(files: EvalFiles, **options: object) -> BridgeReport:
    """Read ``files``, get the bridge (loaded or fitted) and return the bridge-or-backfill report.

    ``options`` go to :func:`compat.verdict.bridge_or_backfill` (ks, rerank_depth, orderings, ...).
    """
    oq, nq = _tensor(files.old_queries), _tensor(files.new_queries)
    og, ng = _tensor(files.old_gallery), _tensor(files.new_gallery)
    relevance = read_relevance(files, len(oq), len(og))
    if files.adapter is not None:
        if files.anchor_queries_new is not None or files.anchor_queries_old is not None:
            raise InvalidInputError(
                "anchor queries teach a bridge fitted here, and --adapter gives a fitted one",
                fix="drop one of the two",
            )
        if not files.adapter.is_file():
            raise NotFoundError(f"adapter file {files.adapter} does not exist")
        adapter = load_adapter(files.adapter)
    else:
        x, y = ng, og  # backward: new -> old, on the gallery's own pairs unless anchors are given
        if files.anchors_old is not None or files.anchors_new is not None:
            if files.anchors_old is None or files.anchors_new is None:
                raise InvalidInputError("anchors need both --anchors-old and --anchors-new")
            x, y = _tensor(files.anchors_new), _tensor(files.anchors_old)
        queries, queries_old = (
            None if path is None else _tensor(path)
            for path in (files.anchor_queries_new, files.anchor_queries_old)
        )
        if files.fit == "auto":
            adapter = select_adapter(
                x, y, direction="backward", queries=queries, queries_target=queries_old
            ).adapter
        else:
            x, y, _ = with_answers(x, y, queries, queries_target=queries_old)
            adapter = fit_adapter(files.fit, x, y, direction="backward").adapter
    return bridge_or_backfill(oq, nq, og, ng, relevance, adapter, **options)  # type: ignore[arg-type]
