"""Long-lived query serving: one consistent searcher per model version, refreshed on change.

Every change a reader must see (ingest, a migration wave, a rollback) commits a new snapshot of some
space, and a new adapter changes how spaces are reached; so the pair (space snapshot sequence
numbers, adapter ids) is a cheap generation key, read in one query per request. Readers keep the
searcher they started with: a request never mixes two snapshots.

The pool also counts which items search returns (one :class:`AccessCounter` shared by all its
searchers) and adds the counts to ``item_access`` every ``flush_every_s`` seconds, in a background
thread so that no query waits for the catalog's write lock. That is the data the
``access_frequency`` migration ordering reads. A failed flush keeps its counts for the next one.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from index.catalog import Adapter, EmbeddingSpace, ServingAlias
from index.context import Context
from index.search import AccessCounter, MixedSearcher, read_only
from kernels.errors import HotswapError

Generation = tuple[tuple[tuple[int, int], ...], tuple[int, ...]]
FLUSH_EVERY_S = 30.0


class SearcherPool:
    def __init__(
        self,
        ctx: Context,
        *,
        counter: AccessCounter | None = None,
        flush_every_s: float = FLUSH_EVERY_S,
    ) -> None:
        self.ctx = ctx
        self.counter = counter if counter is not None else AccessCounter()
        self.flush_every_s = flush_every_s
        self.flush_error: Exception | None = None  # the last background flush's failure
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Generation, MixedSearcher]] = {}
        self._flushing = threading.Lock()
        self._flushed_at = time.monotonic()
        self._flusher: threading.Thread | None = None

    def generation(self) -> Generation:
        # A read: under SQLite's WAL it neither takes nor waits for the write lock.
        with read_only(self.ctx) as session:
            spaces = session.execute(
                select(EmbeddingSpace.id, EmbeddingSpace.snapshot_seq).order_by(EmbeddingSpace.id)
            ).all()
            adapters = session.scalars(select(Adapter.id).order_by(Adapter.id)).all()
        return tuple((int(i), int(s)) for i, s in spaces), tuple(adapters)

    def get(self, version: str) -> MixedSearcher:
        """The searcher for ``version`` (a model version name or a serving alias)."""
        self._maybe_flush()
        version = self.resolve(version)
        current = self.generation()
        with self._lock:
            cached = self._cache.get(version)
            if cached is None or cached[0] != current:
                searcher = MixedSearcher.open(self.ctx, version, counter=self.counter)
                cached = (current, searcher)
                self._cache[version] = cached
            return cached[1]

    def resolve(self, name: str) -> str:
        """A serving alias names the version that encodes its queries; anything else is a version."""
        with read_only(self.ctx) as session:
            alias = session.get(ServingAlias, name)
            return alias.query_version.name if alias is not None else name

    def flush(self) -> int:
        """Write the pending access counts now (waits for a background flush in progress);
        return how many items were updated. Call it on shutdown."""
        with self._flushing:
            self._flushed_at = time.monotonic()
            return self.counter.flush(self.ctx)

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._flushed_at < self.flush_every_s:
            return
        if not self._flushing.acquire(blocking=False):
            return  # one is running
        self._flushed_at = time.monotonic()
        self._flusher = threading.Thread(target=self._flush_in_background, daemon=True)
        self._flusher.start()

    def _flush_in_background(self) -> None:
        try:
            self.counter.flush(self.ctx)
            self.flush_error = None
        except (HotswapError, SQLAlchemyError) as e:  # counts stay pending; the next flush retries
            self.flush_error = e
        finally:
            self._flushing.release()

    def wait_for_flush(self, timeout: float | None = None) -> None:
        """Block until a background flush that is running has finished (tests, shutdown)."""
        if self._flusher is not None:
            self._flusher.join(timeout)
