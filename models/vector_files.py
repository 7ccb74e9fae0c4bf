"""Precomputed vectors from files: for users whose embeddings come from an API, not an encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from kernels.errors import CorruptArtifactError, InvalidInputError, NotFoundError


def _load_npy(path: Path, what: str, ndim: int, kind: DTypeLike, shape: str) -> np.ndarray:
    """A ``.npy`` array (loaded without pickle: never executes code) of ``ndim`` dims and ``kind``."""
    if not path.is_file():
        raise NotFoundError(f"{what} file {path} does not exist")
    if path.suffix != ".npy":
        raise InvalidInputError(f"unsupported {what} file {path.name!r}: use a .npy {shape} array")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise CorruptArtifactError(f"cannot read {path}: {e}") from e
    if array.ndim != ndim or not np.issubdtype(array.dtype, kind):
        raise InvalidInputError(
            f"{path} must hold a {shape} array, got {array.dtype} {array.shape}"
        )
    return array


def load_vectors(path: Path) -> np.ndarray:
    """A float32 (N, d) array from a ``.npy`` file."""
    array = _load_npy(path, "vectors", 2, np.floating, "float (N, d)")
    return array.astype(np.float32, copy=False)


def load_labels(path: Path) -> np.ndarray:
    """Class labels, one per vector row: an int64 (N,) array from a ``.npy`` file."""
    return _load_npy(path, "labels", 1, np.integer, "integer (N,) class-id").astype(
        np.int64, copy=False
    )


def load_ids(path: Path) -> list[str]:
    """External ids, one per line (UTF-8); blank lines are an error, not skipped, to keep rows aligned."""
    if not path.is_file():
        raise NotFoundError(f"ids file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    blank = [n for n, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        raise InvalidInputError(f"{path} has blank lines at {blank[:5]}: one external id per line")
    return [line.strip() for line in lines]
