"""Precomputed vectors from files: for users whose embeddings come from an API, not an encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kernels.errors import CorruptArtifactError, InvalidInputError, NotFoundError


def load_vectors(path: Path) -> np.ndarray:
    """A float32 (N, d) array from a ``.npy`` file (loaded without pickle: never executes code)."""
    if not path.is_file():
        raise NotFoundError(f"vectors file {path} does not exist")
    if path.suffix != ".npy":
        raise InvalidInputError(
            f"unsupported vectors file {path.name!r}: use a .npy float32 (N, d) array"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise CorruptArtifactError(f"cannot read {path}: {e}") from e
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError(
            f"{path} must hold a float (N, d) array, got {array.dtype} {array.shape}"
        )
    return array.astype(np.float32, copy=False)


def load_labels(path: Path) -> np.ndarray:
    """Class labels, an integer (N,) array from a ``.npy`` file (no pickle), one per vector row."""
    if not path.is_file() or path.suffix != ".npy":
        raise NotFoundError(f"labels file {path} is not an existing .npy file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise CorruptArtifactError(f"cannot read {path}: {e}") from e
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise InvalidInputError(
            f"{path} must hold an integer (N,) array of class ids, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int64, copy=False)


def load_ids(path: Path) -> list[str]:
    """External ids, one per line (UTF-8); blank lines are an error, not skipped, to keep rows aligned."""
    if not path.is_file():
        raise NotFoundError(f"ids file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    blank = [n for n, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        raise InvalidInputError(f"{path} has blank lines at {blank[:5]}: one external id per line")
    return [line.strip() for line in lines]
