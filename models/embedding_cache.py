"""Embeddings cached on disk per (encoder fingerprint, text chunk), so a rerun re-embeds nothing.

A long text list is cut into chunks of ``chunk`` texts; each chunk's (n, dim) float32 rows are
stored as ``<key>.npy`` beside ``<key>.json`` (the encoder seconds it took and the row count), with
``key = sha256(fingerprint JSON, texts)``. A run that is stopped keeps every finished chunk, and a
longer list whose prefix was embedded before (same chunk size) reuses it. The encoder's measured
time travels with the vectors, so a cost computed from a cache hit is still a measured cost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kernels.errors import CorruptArtifactError, InvalidInputError
from models.encoder_base import PretrainedEncoder

Report = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Embedded:
    """Rows for a text list, in order, and the encoder time they cost when they were computed."""

    vectors: Tensor  # (N, dim) float32, unit rows
    seconds: float  # summed encoder seconds over the chunks (measured when first embedded)
    cached_chunks: int  # chunks read back instead of embedded in this call

    @property
    def seconds_per_item(self) -> float:
        return self.seconds / max(1, len(self.vectors))


def chunk_key(fingerprint: dict, texts: Sequence[str]) -> str:
    """sha256 over the fingerprint (sorted JSON) and the texts (NUL-separated: no ambiguity)."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    return digest.hexdigest()


def cached_encode(
    encoder: PretrainedEncoder,
    texts: Sequence[str],
    cache_dir: Path,
    *,
    chunk: int = 1000,
    batch_size: int = 64,
    report: Report | None = None,
) -> Embedded:
    """``encoder.encode(texts)`` -> (N, dim), chunk by chunk, through the cache in ``cache_dir``."""
    if chunk <= 0:
        raise InvalidInputError(f"chunk must be positive, got {chunk}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    parts, seconds, hits = [], 0.0, 0
    for start in range(0, len(texts), chunk):
        block = list(texts[start : start + chunk])
        key = chunk_key(encoder.fingerprint, block)
        found = _read(cache_dir, key, len(block), encoder.dim)
        if found is None:
            began = time.perf_counter()
            rows = encoder.encode(block, batch_size=batch_size)
            found = (rows, time.perf_counter() - began)
            _write(cache_dir, key, *found)
        else:
            hits += 1
        parts.append(found[0])
        seconds += found[1]
        if report is not None:
            report(f"{encoder.name}: {start + len(block)}/{len(texts)} texts ({seconds:.0f} s)")
    vectors = torch.cat(parts) if parts else torch.empty(0, encoder.dim)
    return Embedded(vectors, seconds, hits)


def _read(cache_dir: Path, key: str, rows: int, dim: int) -> tuple[Tensor, float] | None:
    meta_path = cache_dir / f"{key}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        array = np.load(cache_dir / f"{key}.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CorruptArtifactError(
            f"embedding cache entry {key[:12]} in {cache_dir} is unreadable: {e}",
            fix=f"delete {cache_dir / key}.* and rerun",
        ) from e
    if array.shape != (rows, dim):
        raise CorruptArtifactError(
            f"embedding cache entry {key[:12]} holds {array.shape}, expected {(rows, dim)}",
            fix=f"delete {cache_dir / key}.* and rerun",
        )
    return torch.from_numpy(array.astype(np.float32, copy=False)), float(meta["seconds"])


def _write(cache_dir: Path, key: str, rows: Tensor, seconds: float) -> None:
    """The .npy first, then the .json that marks the entry complete (each via an atomic rename)."""
    tmp = cache_dir / f".{key}.{os.getpid()}.npy"
    np.save(tmp, rows.numpy().astype(np.float32))
    os.replace(tmp, cache_dir / f"{key}.npy")
    meta = cache_dir / f".{key}.{os.getpid()}.json"
    meta.write_text(json.dumps({"seconds": seconds, "rows": len(rows)}))
    os.replace(meta, cache_dir / f"{key}.json")
