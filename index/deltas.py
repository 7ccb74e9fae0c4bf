"""Append-only delta files: one wave's vectors, stored beside a space's full snapshot.

A migration wave only adds vectors to its target space. Rewriting the whole index for it costs
O(N) bytes per wave, O(N^2 / W) over a run; a delta file holds just the wave's rows. A space is
then its snapshot (``embedding_space.index_path``) plus the deltas listed, in order, in
``embedding_space.index_deltas``; a reader loads the snapshot and adds each delta's rows, as the
writer added them (insert-or-replace, so order matters and is kept). index/galleries.py decides
when the deltas are folded into a new full snapshot.

A delta is written like a snapshot (temporary file, fsync, rename) and becomes part of the space
only in the catalog transaction that records its path, sha256 and row count, the transaction
that moves the wave's authority: a crash before it leaves an orphan file, never a wrong one.

File format (little-endian): ``b"HSDELTA1"``, int64 n, int64 d, ids (n,) int64, vectors (n, d)
float32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from kernels.errors import CorruptArtifactError, InvalidInputError
from models.checkpoint import atomic_write_bytes

MAGIC = b"HSDELTA1"
HEADER = struct.Struct("<8sqq")  # magic, rows, width


@dataclasses.dataclass(frozen=True)
class DeltaEntry:
    """One delta as the catalog records it."""

    path: str  # relative to the data directory, like index_path
    sha256: str
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_entries(text: str | None, subject: str) -> list[DeltaEntry]:
    """The catalog's JSON list of deltas (``None`` or empty: none); malformed JSON is corrupt."""
    try:
        raw = json.loads(text or "[]")
        entries = [DeltaEntry(str(e["path"]), str(e["sha256"]), int(e["rows"])) for e in raw]
    except (ValueError, TypeError, KeyError) as e:
        raise CorruptArtifactError(
            f"the catalog's delta list for {subject} is malformed: {e}",
            fix="run: hotswap doctor",
        ) from e
    return entries


def dump_entries(entries: list[DeltaEntry]) -> str:
    return json.dumps([e.to_dict() for e in entries])


def write_delta(path: Path, ids: np.ndarray, vectors: np.ndarray) -> str:
    """Write ids (n,) and vectors (n, d) atomically at ``path``; return the file's sha256."""
    ids = np.ascontiguousarray(ids, dtype="<i8").ravel()
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise InvalidInputError(f"{len(ids)} ids for vectors of shape {vectors.shape}")
    data = b"".join(
        (HEADER.pack(MAGIC, len(ids), vectors.shape[1]), ids.tobytes(), vectors.tobytes())
    )
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_delta(path: Path, entry: DeltaEntry, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """ids (n,) int64 and vectors (n, dim) float32 of a delta the catalog lists, refusing a file
    that is missing or disagrees with its entry (checksum, rows, width)."""
    if not path.is_file():
        raise CorruptArtifactError(f"delta file {path} is missing", fix="run: hotswap doctor")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise CorruptArtifactError(
            f"delta file {path} does not match the checksum in the catalog",
            fix="the file was changed or truncated: run hotswap doctor to rebuild the index",
        )
    magic, n, d = HEADER.unpack_from(data) if len(data) >= HEADER.size else (b"", -1, -1)
    if magic != MAGIC or n != entry.rows or d != dim or len(data) != HEADER.size + n * (8 + 4 * d):
        raise CorruptArtifactError(
            f"delta file {path} holds {n} rows of width {d}, the catalog says {entry.rows} of "
            f"width {dim}"
        )
    ids = np.frombuffer(data, dtype="<i8", count=n, offset=HEADER.size)
    vectors = np.frombuffer(data, dtype="<f4", count=n * d, offset=HEADER.size + 8 * n)
    return ids.astype(np.int64), vectors.reshape(n, d).astype(np.float32)
