"""Embedding spaces: create them, ingest vectors, and commit index snapshots with the catalog.

The commit protocol, shared by ingest and migration waves (see index/store.py):
1. write the new file (atomic, checksummed) — the catalog still points at the old state;
2. in one SQL transaction: record items/embeddings/tasks AND point the space at the new file;
3. delete the superseded files.
A crash before 2 leaves an orphan file and no catalog change (the work is redone, nothing is
duplicated); a crash after 2 leaves stale files that ``doctor`` removes.

The new file is a full snapshot, or -- for a write that only adds vectors (a migration wave) --
a delta file holding just those rows (index/deltas.py), appended to the space's list in step 2.
A space is its snapshot plus its deltas in order. Deltas are folded into a new full snapshot
once their rows would outnumber the snapshot's (so the snapshots written grow geometrically and a
run writes O(N) bytes, not O(N^2 / W)) or there are ``MAX_DELTAS`` of them; any other write
(ingest, rebuild, rollback, repair) folds them too.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from compat.vectors import check_vectors
from index.catalog import EmbeddingSpace, Item, ItemEmbedding, ModelVersion
from index.context import Context
from index.deltas import DeltaEntry, dump_entries, parse_entries, read_delta, write_delta
from index.store import STORE_KINDS, GalleryStore, store_config
from kernels.errors import (
    ConflictError,
    CorruptArtifactError,
    InvalidInputError,
    NotFoundError,
    did_you_mean,
)
from kernels.optional import require

SQL_CHUNK = 5000  # bound parameters per IN (...) clause: SQLite caps them
MAX_DELTAS = 64  # delta files per space before a fold: bounds the files a reader opens


def create_space(
    session: Session,
    version: ModelVersion,
    name: str | None = None,
    *,
    kind: str = "Flat",
    params: dict[str, Any] | None = None,
) -> EmbeddingSpace:
    """A new, empty space for ``version`` (one FAISS index per space, never mixed), searched by
    a store of ``kind`` (a key of ``STORE_KINDS``) configured by ``params``."""
    name = name or version.name
    config = STORE_KINDS.get(kind).config_type.from_dict(params or {})
    if session.scalar(select(EmbeddingSpace).where(EmbeddingSpace.name == name)):
        raise ConflictError(f"embedding space {name!r} already exists")
    space = EmbeddingSpace(
        name=name, model_version_id=version.id, index_factory=kind, index_params=config.to_json()
    )
    session.add(space)
    session.flush()
    return space


def get_space(session: Session, name: str, *, lock: bool = False) -> EmbeddingSpace:
    """The space named ``name``; ``lock`` takes its row lock (``SELECT ... FOR UPDATE``) so two
    writers of one space serialize on PostgreSQL (SQLite's ``BEGIN IMMEDIATE`` already does)."""
    query = select(EmbeddingSpace).where(EmbeddingSpace.name == name)
    space = session.scalar(query.with_for_update() if lock else query)
    if space is None:
        known = list(session.scalars(select(EmbeddingSpace.name)))
        raise NotFoundError(f"unknown embedding space {name!r}", fix=did_you_mean(name, known))
    return space


def load_store(ctx: Context, space: EmbeddingSpace) -> GalleryStore:
    """The space's current snapshot plus its deltas, every file verified against the catalog
    (an empty store if none yet)."""
    deltas = space_deltas(space)
    if space.index_path is None:
        if deltas:
            raise CorruptArtifactError(
                f"space {space.name!r} lists delta files but no snapshot", fix="run: hotswap doctor"
            )
        return empty_store(space)
    store = GalleryStore.load(
        ctx.path(space.index_path),
        space.checksum,
        None if deltas else space.ntotal,  # with deltas, the total is checked after them
        factory=space.index_factory,
        config=store_config(space.index_factory, space.index_params),
    )
    for entry in deltas:
        store.add(*read_delta(ctx.path(entry.path), entry, store.dim))
    if store.ntotal != space.ntotal:
        raise CorruptArtifactError(
            f"space {space.name!r}: its snapshot and {len(deltas)} deltas hold {store.ntotal} "
            f"vectors, the catalog says {space.ntotal}",
            fix="run: hotswap doctor",
        )
    return store


def space_deltas(space: EmbeddingSpace) -> list[DeltaEntry]:
    """The delta files that follow the space's snapshot, in the order they were added."""
    return parse_entries(space.index_deltas, f"space {space.name!r}")


def space_files(ctx: Context, space: EmbeddingSpace) -> list[Path]:
    """Every file the space is made of: its snapshot, then its deltas (paths checked to stay
    inside the data directory)."""
    relative = [] if space.index_path is None else [space.index_path]
    return [ctx.path(p) for p in relative + [e.path for e in space_deltas(space)]]


def empty_store(space: EmbeddingSpace) -> GalleryStore:
    """An empty store of the space's kind and parameters."""
    config = store_config(space.index_factory, space.index_params)
    return GalleryStore.create(space.model_version.dim, space.index_factory, config)


Added = tuple[np.ndarray, np.ndarray]  # ids (n,) int64, vectors (n, dim) float32


@dataclasses.dataclass(frozen=True)
class StagedSnapshot:
    """A snapshot or delta written to disk but not yet current (step 1 of the commit protocol)."""

    path: Path
    checksum: str
    ntotal: int  # the space's vectors once this is current
    seq: int
    delta_rows: int | None = None  # None: a full snapshot; else a delta of that many rows


def stage_snapshot(
    ctx: Context, space: EmbeddingSpace, store: GalleryStore, added: Added | None = None
) -> StagedSnapshot:
    """Write ``store`` (the space's state after this write) as a full snapshot, or -- when the
    write only ``added`` rows to the space's current state and no fold is due -- just those rows
    as a delta."""
    seq = space.snapshot_seq + 1
    ctx.path("indexes").mkdir(parents=True, exist_ok=True)
    if added is not None and _delta_fits(space, len(added[0])):
        path = ctx.path(f"indexes/{space.name}.{seq}.delta")
        return StagedSnapshot(path, write_delta(path, *added), store.ntotal, seq, len(added[0]))
    path = ctx.path(f"indexes/{space.name}.{seq}.faiss")
    return StagedSnapshot(path, store.save(path), store.ntotal, seq)


def _delta_fits(space: EmbeddingSpace, rows: int) -> bool:
    """Append rather than fold: the space has a snapshot, fewer than ``MAX_DELTAS`` deltas, and
    its deltas' rows would still not outnumber the snapshot's."""
    if space.index_path is None:
        return False
    deltas = space_deltas(space)
    appended = sum(e.rows for e in deltas)
    in_snapshot = space.ntotal - appended  # a replaced vector counts twice: a lower bound
    return len(deltas) < MAX_DELTAS and appended + rows <= in_snapshot


@contextmanager
def staged_for(
    ctx: Context, space: EmbeddingSpace, store: GalleryStore, added: Added | None = None
) -> Iterator[StagedSnapshot]:
    """Stage a snapshot (or delta, see :func:`stage_snapshot`) for the enclosing transaction;
    delete it again if that transaction fails before commit (a crash instead leaves an orphan,
    which is harmless)."""
    staged = stage_snapshot(ctx, space, store, added)
    try:
        yield staged
    except BaseException:
        staged.path.unlink(missing_ok=True)
        raise


def point_space_at(ctx: Context, space: EmbeddingSpace, staged: StagedSnapshot) -> list[Path]:
    """Step 2 (inside the caller's transaction): make ``staged`` current; return the files it
    supersedes (none for a delta; the old snapshot and its deltas for a full snapshot)."""
    if staged.delta_rows is not None:
        entry = DeltaEntry(ctx.relative(staged.path), staged.checksum, staged.delta_rows)
        space.index_deltas = dump_entries([*space_deltas(space), entry])
        previous = []
    else:
        previous = _superseded(ctx, space)
        space.index_path = ctx.relative(staged.path)
        space.checksum = staged.checksum
        space.index_deltas = "[]"
    space.ntotal = staged.ntotal
    space.snapshot_seq = staged.seq
    return previous


def _superseded(ctx: Context, space: EmbeddingSpace) -> list[Path]:
    """The files a full snapshot replaces; with a malformed delta list (a repair is replacing it)
    only the old snapshot: doctor finds the unlisted deltas as orphans."""
    try:
        return space_files(ctx, space)
    except CorruptArtifactError:
        return [] if space.index_path is None else [ctx.path(space.index_path)]


def discard(paths: Path | Sequence[Path] | None) -> None:
    """Step 3: remove superseded files (a reader that loaded them keeps its copy in memory)."""
    for path in [paths] if isinstance(paths, Path) else paths or []:
        path.unlink(missing_ok=True)


def ingest(
    ctx: Context, space_name: str, external_ids: Sequence[str], vectors: np.ndarray | torch.Tensor
) -> list[int]:
    """Add new items with their vectors to a space; they become authoritative there.

    Refuses, changing nothing: wrong width, NaN/Inf, empty or duplicate external ids (within the
    batch or already in the catalog). Returns the new item ids (= FAISS ids).
    """
    with ctx.transaction() as session:
        space = get_space(session, space_name, lock=True)
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


def rebuild_space(
    ctx: Context, space_name: str, *, kind: str | None = None, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Rebuild a space's index from its own vectors, as one new snapshot (same commit protocol).

    It retrains an IVF store and drops an HNSW store's tombstones. With ``kind`` and/or ``params``
    the space moves to that store kind/configuration (``params`` alone: the current kind; ``kind``
    alone: that kind's defaults). Bad kinds or parameters change nothing.
    """
    with ctx.transaction() as session:
        space = get_space(session, space_name, lock=True)
        new_kind = kind or space.index_factory
        if kind is None and params is None:
            config = store_config(space.index_factory, space.index_params)
        else:
            config = STORE_KINDS.get(new_kind).config_type.from_dict(params or {})
        store = load_store(ctx, space)
        ids = store.ids()
        rebuilt = GalleryStore.create(store.dim, new_kind, config)
        rebuilt.add(ids, store.vectors(ids))
        space.index_factory, space.index_params = new_kind, config.to_json()
        with staged_for(ctx, space, rebuilt) as staged:
            superseded = point_space_at(ctx, space, staged)
            session.flush()
    discard(superseded)
    return {"space": space_name, "kind": new_kind, "params": config.to_dict(), "vectors": len(ids)}


def read_parquet(
    path: Path, id_column: str = "id", vector_column: str = "embedding"
) -> tuple[list[str], np.ndarray]:
    """External ids and (N, d) float32 vectors from a Parquet file: an id column (string or
    integer) and a vector column (list<float> or fixed_size_list<float>), no nulls, one width."""
    pq = require("pyarrow.parquet", "parquet")
    if not path.is_file():
        raise NotFoundError(f"vectors file {path} does not exist")
    try:
        names = list(pq.read_schema(path).names)
        missing = [c for c in (id_column, vector_column) if c not in names]
        if missing:
            raise InvalidInputError(
                f"{path.name} has no column {missing[0]!r}", fix=did_you_mean(missing[0], names)
            )
        table = pq.read_table(path, columns=[id_column, vector_column])
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        if isinstance(e, InvalidInputError):
            raise
        raise CorruptArtifactError(f"cannot read {path} as Parquet: {e}") from e
    return _parquet_ids(table.column(id_column), id_column), _parquet_vectors(
        table.column(vector_column), vector_column
    )


def _parquet_ids(column: Any, name: str) -> list[str]:
    import pyarrow as pa

    kind = column.type
    if not (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
    ):
        raise InvalidInputError(f"id column {name!r} must hold strings or integers, not {kind}")
    if column.null_count:
        raise InvalidInputError(f"id column {name!r} has {column.null_count} null(s)")
    return [str(v) for v in column.to_pylist()]


def _parquet_vectors(column: Any, name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if not (is_list or pa.types.is_fixed_size_list(kind)) or not pa.types.is_floating(
        kind.value_type
    ):
        raise InvalidInputError(
            f"vector column {name!r} must be list<float> or fixed_size_list<float>, not {kind}"
        )
    if column.null_count:
        raise InvalidInputError(f"vector column {name!r} has {column.null_count} null row(s)")
    n = len(column)
    if n == 0:
        return np.empty((0, kind.list_size if not is_list else 0), dtype=np.float32)
    widths = np.unique(pc.list_value_length(column).to_numpy())
    if len(widths) != 1:
        raise InvalidInputError(f"vector column {name!r} mixes widths {widths[:5].tolist()}")
    values = pc.list_flatten(column)
    if values.null_count:
        raise InvalidInputError(f"vector column {name!r} has null values inside vectors")
    flat = values.to_numpy().astype(np.float32)  # a writable copy (torch refuses read-only)
    return flat.reshape(n, int(widths[0]))


def ingest_parquet(
    ctx: Context,
    space_name: str,
    path: Path,
    id_column: str = "id",
    vector_column: str = "embedding",
) -> list[int]:
    """:func:`ingest` from a Parquet file (same validation, all or nothing)."""
    external_ids, vectors = read_parquet(path, id_column, vector_column)
    return ingest(ctx, space_name, external_ids, vectors)


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
