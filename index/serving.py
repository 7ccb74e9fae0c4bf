"""Long-lived query serving: one consistent searcher per model version, refreshed on change.

Every change a reader must see (ingest, a migration wave, a rollback) commits a new snapshot of some
space, and a new adapter changes how spaces are reached; so the pair (space snapshot sequence
numbers, adapter ids) is a cheap generation key, read in one query per request. Readers keep the
searcher they started with: a request never mixes two snapshots.
"""

from __future__ import annotations

import threading

from sqlalchemy import select

from index.catalog import Adapter, EmbeddingSpace, ServingAlias
from index.context import Context
from index.search import MixedSearcher

Generation = tuple[tuple[tuple[int, int], ...], tuple[int, ...]]


class SearcherPool:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Generation, MixedSearcher]] = {}

    def generation(self) -> Generation:
        with self.ctx.transaction() as session:
            spaces = session.execute(
                select(EmbeddingSpace.id, EmbeddingSpace.snapshot_seq).order_by(EmbeddingSpace.id)
            ).all()
            adapters = session.scalars(select(Adapter.id).order_by(Adapter.id)).all()
        return tuple((int(i), int(s)) for i, s in spaces), tuple(adapters)

    def get(self, version: str) -> MixedSearcher:
        """The searcher for ``version`` (a model version name or a serving alias)."""
        version = self.resolve(version)
        current = self.generation()
        with self._lock:
            cached = self._cache.get(version)
            if cached is None or cached[0] != current:
                cached = (current, MixedSearcher.open(self.ctx, version))
                self._cache[version] = cached
            return cached[1]

    def resolve(self, name: str) -> str:
        """A serving alias names the version that encodes its queries; anything else is a version."""
        with self.ctx.transaction() as session:
            alias = session.get(ServingAlias, name)
            return alias.query_version.name if alias is not None else name
