"""Precomputed vectors as an encoder: for users whose embeddings come from an API, not a model."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kernels.errors import InvalidInputError, MissingExtraError, NotFoundError
from models.encoder_base import PretrainedEncoder, fingerprint, weights_sha256
from models.vector_files import load_ids, load_vectors


def load_vectors_encoder(path: str | Path, *, id_column: str = "id") -> PretrainedEncoder:
    """Precomputed vectors as a lookup encoder: external id -> its (dim,) row.

    ``.npy`` float (N, d), ids from a sibling ``<name>.ids.txt`` (one per line) or else the row
    numbers "0".."N-1"; or ``.parquet`` with an ``id_column`` and one list-of-floats column.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        ids, vectors, library = *_read_parquet(path, id_column), "pyarrow"
        sha = weights_sha256(path)
    else:
        vectors, library = load_vectors(path), "numpy"
        sidecar = path.with_suffix(".ids.txt")
        ids = load_ids(sidecar) if sidecar.is_file() else [str(i) for i in range(len(vectors))]
        sha = weights_sha256(path) + (weights_sha256(sidecar) if sidecar.is_file() else "")
        sha = hashlib.sha256(sha.encode()).hexdigest()
    if len(ids) != len(vectors) or len(set(ids)) != len(ids):
        raise InvalidInputError(
            f"{path}: need one unique id per row, got {len(ids)} ids for {len(vectors)} rows"
        )
    rows, table = {external: i for i, external in enumerate(ids)}, torch.from_numpy(vectors)

    def lookup(batch: Sequence[str]) -> Tensor:
        unknown = [x for x in batch if x not in rows]
        if unknown:
            raise NotFoundError(
                f"ids {unknown[:5]} are not in {path.name}",
                fix=f"it holds {len(rows)} ids such as {ids[:3]}",
            )
        return table[[rows[x] for x in batch]]

    dim = int(vectors.shape[1])
    fp = fingerprint(sha, dim, "precomputed", library)
    return PretrainedEncoder(path.stem, dim, "vectors", fp, lookup)


def _read_parquet(path: Path, id_column: str) -> tuple[list[str], np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingExtraError(
            "reading Parquet vectors needs pyarrow", fix="install it with: pip install pyarrow"
        ) from e
    if not path.is_file():
        raise NotFoundError(f"vectors file {path} does not exist")
    table = pq.read_table(path)
    others = [c for c in table.column_names if c != id_column]
    if id_column not in table.column_names or len(others) != 1:
        raise InvalidInputError(
            f"{path} must hold an {id_column!r} column and one vector column, has {table.column_names}"
        )
    ids = [str(x) for x in table.column(id_column).to_pylist()]
    return ids, np.asarray(table.column(others[0]).to_pylist(), dtype=np.float32).reshape(
        len(ids), -1
    )
