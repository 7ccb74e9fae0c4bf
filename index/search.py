"""Mixed-version search: one query batch over every space that holds part of the gallery.

Each space answers only for the items it is authoritative for, in its own embedding space: natively
when the query version owns it, through the backward adapter's serving form (executed by
``kernels.project``) otherwise. Every item is authoritative in exactly one space, so the merged list
never holds an item twice.

Performance: a searcher is a snapshot, so the authority filter is applied once, when it opens: a
space whose index holds non-authoritative vectors (the source of a migration) is copied into a
compact index of its authoritative vectors only. Filtering per query batch with an ``IDSelector``
instead costs building the selector every batch and, worse, takes FAISS off its BLAS path (it tests
every id one by one); see docs/results/serving.md.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from compat.adapters import Bridge
from compat.vectors import check_vectors
from index.catalog import EmbeddingSpace, Item, ItemAccess, ItemEmbedding, ModelVersion, utcnow
from index.context import Context
from index.galleries import SQL_CHUNK, chunked, load_store
from index.store import GalleryStore
from index.versions import get_version, query_adapter
from kernels.errors import CorruptArtifactError, InvalidInputError
from models.registry import Registry

RRF_K = 60  # the constant of reciprocal-rank fusion (Cormack et al. 2009)


@contextmanager
def read_only(ctx: Context) -> Iterator[Session]:
    """A read transaction that never waits for a writer: on SQLite ``BEGIN DEFERRED`` under WAL
    reads the last committed state while a migration wave holds the write lock."""
    engine = ctx.engine.execution_options(sqlite_begin="DEFERRED")
    with ctx.sessions(bind=engine) as session, session.begin():
        yield session


@dataclasses.dataclass(frozen=True)
class SpaceView:
    """One space as a query version sees it: its snapshot, the ids it answers for, the bridge."""

    name: str
    store: GalleryStore
    allowed: np.ndarray  # (n,) int64 item ids authoritative in this space
    bridge: Bridge | None  # None: the query version's own space; else the adapter's serving path

    def search(self, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.allowed) == 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        q = queries if self.bridge is None else self.bridge(queries)
        # Views built by MixedSearcher.open hold exactly their allowed ids: no selector needed.
        allowed = None if len(self.allowed) == self.store.ntotal else self.allowed
        return self.store.search(q.numpy(), k, allowed)


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Per-space results laid side by side: (Q, C) arrays, C = the sum of the spaces' k."""

    scores: np.ndarray
    ids: np.ndarray
    space: np.ndarray  # index into the views
    rank: np.ndarray  # rank within its own space's list, from 0
    native: np.ndarray  # bool: answered in the query version's own space


MergePolicy = Callable[[Candidates], np.ndarray]  # -> (Q, C) sort keys, larger is better
MERGE_POLICIES: Registry[MergePolicy] = Registry("merge policy")


@MERGE_POLICIES.register("score")
def merge_by_score(c: Candidates) -> np.ndarray:
    """Raw cosine across spaces: comparable when every space holds unit vectors (ours do)."""
    return c.scores.astype(np.float64)


@MERGE_POLICIES.register("rrf")
def merge_by_reciprocal_rank(c: Candidates) -> np.ndarray:
    """Reciprocal-rank fusion: ignores scores, so it is blind to how far a migration has gone."""
    return 1.0 / (RRF_K + c.rank + 1.0)


@MERGE_POLICIES.register("native_first")
def merge_native_first(c: Candidates) -> np.ndarray:
    """Every natively answered hit before any bridged one, each group by score."""
    return c.scores + np.where(c.native, 4.0, 0.0)  # cosines lie in [-1, 1]: +4 separates groups


@dataclasses.dataclass(frozen=True)
class SearchResult:
    ids: np.ndarray  # (Q, k) int64 item ids, -1 where fewer than k items exist
    scores: np.ndarray  # (Q, k) float32, in the answering space
    spaces: np.ndarray  # (Q, k) index into space_names, -1 for padding
    space_names: list[str]


def search_views(
    queries: torch.Tensor, views: list[SpaceView], k: int, policy: str = "score"
) -> SearchResult:
    """queries (Q, d) unit rows in the query version's space -> the merged top-k of all views."""
    merge = MERGE_POLICIES.get(policy)
    parts = [view.search(queries, k) for view in views]
    c = Candidates(
        scores=np.concatenate([s for s, _ in parts], axis=1),
        ids=np.concatenate([i for _, i in parts], axis=1),
        space=np.concatenate([np.full(i.shape, n) for n, (_, i) in enumerate(parts)], axis=1),
        rank=np.concatenate(
            [np.broadcast_to(np.arange(i.shape[1]), i.shape) for _, i in parts], axis=1
        ),
        native=np.concatenate(
            [np.full(i.shape, v.bridge is None) for v, (_, i) in zip(views, parts, strict=True)],
            axis=1,
        ),
    )
    keys = np.where(c.ids >= 0, merge(c), -np.inf)
    order = np.argsort(-keys, axis=1, kind="stable")[:, :k]
    valid = np.take_along_axis(c.ids, order, axis=1) >= 0

    def pick(values: np.ndarray, pad: float) -> np.ndarray:  # (Q, C) -> (Q, k), padded
        picked = np.where(valid, np.take_along_axis(values, order, axis=1), pad)
        return np.pad(picked, ((0, 0), (0, k - picked.shape[1])), constant_values=pad)

    return SearchResult(
        ids=pick(c.ids, -1).astype(np.int64),
        scores=pick(c.scores, -np.inf).astype(np.float32),
        spaces=pick(c.space, -1).astype(np.int64),
        space_names=[v.name for v in views],
    )


class AccessCounter:
    """How often search returned each item, counted in memory; :meth:`flush` adds the counts to
    the catalog (``item_access``) in one transaction, so queries never write. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[int] = Counter()

    def record(self, ids: np.ndarray) -> None:
        """ids (Q, k) as returned by search; -1 padding is ignored."""
        values, counts = np.unique(ids[ids >= 0], return_counts=True)
        with self._lock:
            self._counts.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))

    def pending(self) -> dict[int, int]:
        with self._lock:
            return dict(self._counts)

    def flush(self, ctx: Context) -> int:
        """Upsert the pending counts; return how many items were updated. On failure the counts
        stay pending for the next flush."""
        with self._lock:
            taken, self._counts = self._counts, Counter()
        try:
            with ctx.transaction() as session:
                return _add_access_counts(session, taken)
        except BaseException:
            with self._lock:
                self._counts.update(taken)
            raise


def _add_access_counts(session: Session, counts: Counter[int]) -> int:
    dialect = session.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise InvalidInputError(f"access counting supports SQLite and PostgreSQL, not {dialect}")
    existing = [  # items deleted since they were returned are skipped (foreign key)
        i
        for chunk in chunked(sorted(counts), SQL_CHUNK)
        for i in session.scalars(select(Item.id).where(Item.id.in_(chunk)))
    ]
    if not existing:
        return 0
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(ItemAccess)
    upsert = ins.on_conflict_do_update(
        index_elements=[ItemAccess.item_id],
        set_={
            "hits": ItemAccess.hits + ins.excluded.hits,
            "last_access_at": ins.excluded.last_access_at,
        },
    )
    now = utcnow()
    session.execute(
        upsert, [{"item_id": i, "hits": counts[i], "last_access_at": now} for i in existing]
    )
    return len(existing)


class MixedSearcher:
    """A consistent read-only snapshot of the gallery for one query version."""

    def __init__(
        self,
        ctx: Context,
        version: str,
        views: list[SpaceView],
        dim: int,
        counter: AccessCounter | None = None,
    ) -> None:
        self.ctx, self.version, self.views, self.dim = ctx, version, views, dim
        self.counter = counter

    @classmethod
    def open(
        cls, ctx: Context, version: str, attempts: int = 5, *, counter: AccessCounter | None = None
    ) -> MixedSearcher:
        """Snapshot the gallery for ``version`` queries; results are counted into ``counter``."""
        for attempt in range(attempts):
            try:
                with read_only(ctx) as session:
                    query_version = get_version(session, version)
                    views = _views(ctx, session, query_version)
                    return cls(ctx, version, views, query_version.dim, counter)
            except CorruptArtifactError:
                # A writer may have replaced the snapshot between our catalog read and the file
                # read; the catalog is then already newer, so read again.
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def search(self, queries: torch.Tensor, k: int = 10, policy: str = "score") -> SearchResult:
        q = check_vectors(torch.as_tensor(queries), self.dim, f"{self.version} queries")
        result = search_views(torch.nn.functional.normalize(q, dim=1), self.views, k, policy)
        if self.counter is not None:
            self.counter.record(result.ids)
        return result

    def external_ids(self, ids: np.ndarray) -> list[list[str | None]]:
        """Map a (Q, k) id array to external ids (None for padding)."""
        wanted = [int(i) for i in np.unique(ids) if i >= 0]
        with read_only(self.ctx) as session:
            names = {
                row.id: row.external_id
                for chunk in chunked(wanted, SQL_CHUNK)
                for row in session.execute(
                    select(Item.id, Item.external_id).where(Item.id.in_(chunk))
                )
            }
        return [[names.get(int(i)) for i in row] for row in ids]


def _views(ctx: Context, session: Session, query_version: ModelVersion) -> list[SpaceView]:
    views = []
    for space in session.scalars(select(EmbeddingSpace).order_by(EmbeddingSpace.id)):
        allowed = np.array(
            session.scalars(
                select(ItemEmbedding.item_id).where(
                    ItemEmbedding.space_id == space.id, ItemEmbedding.authoritative.is_(True)
                )
            ).all(),
            dtype=np.int64,
        )
        if len(allowed) == 0:
            continue
        native = space.model_version_id == query_version.id
        bridge = (
            None
            if native
            else query_adapter(ctx, session, query_version, space.model_version).bridge()
        )
        store = _authoritative_part(load_store(ctx, space), allowed, space.name)
        views.append(SpaceView(space.name, store, allowed, bridge))
    return views


def _authoritative_part(store: GalleryStore, allowed: np.ndarray, name: str) -> GalleryStore:
    """The store itself when it holds exactly ``allowed``, else a compact copy of those vectors."""
    held = store.ids()
    missing = np.setdiff1d(allowed, held)
    if len(missing):
        raise CorruptArtifactError(
            f"the index of space {name!r} lacks {len(missing)} of its authoritative items, e.g. "
            f"{missing[:5].tolist()}",
            fix="run: hotswap doctor",
        )
    if len(held) == len(allowed):
        return store
    return store.subset(allowed)
