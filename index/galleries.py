"""Embedding spaces: create them, ingest vectors, and commit index snapshots with the catalog.

The commit protocol, shared by ingest and migration waves (see index/store.py):
1. write the new snapshot file (atomic, checksummed) — the catalog still points at the old one;
2. in one SQL transaction: record items/embeddings/tasks AND point the space at the new file;
3. delete the superseded file.
A crash before 2 leaves an orphan file and no catalog change (the work is redone, nothing is
duplicated); a crash after 2 leaves a stale file that ``doctor`` removes.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from compat.vectors import check_vectors
from index.catalog import EmbeddingSpace, Item, ItemEmbedding, ModelVersion
from index.context import Context
from index.store import GalleryStore
from kernels.errors import ConflictError, InvalidInputError, NotFoundError, did_you_mean

SQL_CHUNK = 5000  # bound parameters per IN (...) clause: SQLite caps them


def create_space(
    session: Session, version: ModelVersion, name: str | None = None
) -> EmbeddingSpace:
    """A new, empty space for ``version`` (one FAISS index per space, never mixed)."""
    name = name or version.name
    if session.scalar(select(EmbeddingSpace).where(EmbeddingSpace.name == name)):
        raise ConflictError(f"embedding space {name!r} already exists")
    space = EmbeddingSpace(name=name, model_version_id=version.id, index_factory="Flat")
    session.add(space)
    session.flush()
    return space


def get_space(session: Session, name: str) -> EmbeddingSpace:
    space = session.scalar(select(EmbeddingSpace).where(EmbeddingSpace.name == name))
    if space is None:
        known = list(session.scalars(select(EmbeddingSpace.name)))
        raise NotFoundError(f"unknown embedding space {name!r}", fix=did_you_mean(name, known))
    return space


def load_store(ctx: Context, space: EmbeddingSpace) -> GalleryStore:
    """The space's current snapshot, verified against the catalog (an empty store if none yet)."""
    if space.index_path is None:
        return GalleryStore.create(space.model_version.dim, space.index_factory)
    return GalleryStore.load(ctx.path(space.index_path), space.checksum, space.ntotal)


@dataclasses.dataclass(frozen=True)
class StagedSnapshot:
    """A snapshot written to disk but not yet current (step 1 of the commit protocol)."""

    path: Path
    checksum: str
    ntotal: int
    seq: int


def stage_snapshot(ctx: Context, space: EmbeddingSpace, store: GalleryStore) -> StagedSnapshot:
    seq = space.snapshot_seq + 1
    path = ctx.path(f"indexes/{space.name}.{seq}.faiss")
    path.parent.mkdir(parents=True, exist_ok=True)
    return StagedSnapshot(path, store.save(path), store.ntotal, seq)


@contextmanager
def staged_for(
    ctx: Context, space: EmbeddingSpace, store: GalleryStore
) -> Iterator[StagedSnapshot]:
    """Stage a snapshot for the enclosing transaction; delete it again if that transaction fails
    before commit (a crash instead leaves an orphan, which is harmless)."""
    staged = stage_snapshot(ctx, space, store)
    try:
        yield staged
    except BaseException:
        staged.path.unlink(missing_ok=True)
        raise


def point_space_at(ctx: Context, space: EmbeddingSpace, staged: StagedSnapshot) -> Path | None:
    """Step 2 (inside the caller's transaction): make ``staged`` current; return the file it supersedes."""
    previous = None if space.index_path is None else ctx.path(space.index_path)
    space.index_path = ctx.relative(staged.path)
    space.checksum = staged.checksum
    space.ntotal = staged.ntotal
    space.snapshot_seq = staged.seq
    return previous


def discard(path: Path | None) -> None:
    """Step 3: remove a superseded snapshot (a reader that loaded it keeps its copy in memory)."""
    if path is not None:
        path.unlink(missing_ok=True)


def ingest(
    ctx: Context, space_name: str, external_ids: Sequence[str], vectors: np.ndarray | torch.Tensor
) -> list[int]:
    """Add new items with their vectors to a space; they become authoritative there.

    Refuses, changing nothing: wrong width, NaN/Inf, empty or duplicate external ids (within the
    batch or already in the catalog). Returns the new item ids (= FAISS ids).
    """
    with ctx.transaction() as session:
        space = get_space(session, space_name)
        x = check_vectors(torch.as_tensor(vectors), space.model_version.dim, "ingested vectors")
        _check_new_external_ids(session, external_ids, len(x))
        items = [Item(external_id=e) for e in external_ids]
        session.add_all(items)
        session.flush()  # assigns the ids FAISS will use
        ids = np.array([item.id for item in items], dtype=np.int64)
        store = load_store(ctx, space)
        store.add(ids, torch.nn.functional.normalize(x, dim=1).numpy())
        with staged_for(ctx, space, store) as staged:
            session.add_all(
                ItemEmbedding(
                    item_id=int(i), space_id=space.id, produced_by="native", authoritative=True
                )
                for i in ids
            )
            superseded = point_space_at(ctx, space, staged)
            session.flush()
    discard(superseded)
    return ids.tolist()


def _check_new_external_ids(session: Session, external_ids: Sequence[str], n_vectors: int) -> None:
    if len(external_ids) != n_vectors:
        raise InvalidInputError(f"{len(external_ids)} external ids for {n_vectors} vectors")
    if any(not isinstance(e, str) or not e for e in external_ids):
        raise InvalidInputError("external ids must be non-empty strings")
    repeated = [e for e, count in Counter(external_ids).items() if count > 1]
    if repeated:
        raise InvalidInputError(f"duplicate external ids in the input: {repeated[:5]}")
    existing = [
        e
        for chunk in chunked(list(external_ids), SQL_CHUNK)
        for e in session.scalars(select(Item.external_id).where(Item.external_id.in_(chunk)))
    ]
    if existing:
        raise ConflictError(f"external ids already in the catalog: {list(existing)[:5]}")


def chunked(values: list, size: int) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
