"""Real labelled image data that needs no model hub: Fashion-MNIST (Debian) and scikit-learn digits.

Arrays are numpy (callers convert to torch): images flattened to (N, D) float32 in [0, 1], labels
int64. Fashion-MNIST is parsed straight from its gzip IDX files, so no torchvision is needed.
"""

from __future__ import annotations

import dataclasses
import gzip
import warnings
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from kernels.errors import CorruptArtifactError, InvalidInputError, NotFoundError, did_you_mean

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_FASHION_MNIST = "install it with: sudo apt-get install dataset-fashion-mnist"
DATASET_NAMES = ("auto", "digits", "fashion-mnist")

_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801  # IDX: ubyte data, 3 dims / 1 dim


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class LabelledImages:
    """A train/test split: x (N, D) float32 in [0, 1], y (N,) int64 in [0, classes)."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: int
    image_shape: tuple[int, ...]

    @property
    def dim(self) -> int:
        """D, the flattened input width (e.g. 784 for 28x28)."""
        return int(self.train_x.shape[1])


def _read_gzip(path: Path) -> bytes:
    if not path.is_file():
        raise NotFoundError(f"dataset file {str(path)!r} does not exist", fix=INSTALL_FASHION_MNIST)
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise CorruptArtifactError(f"{str(path)!r} is not a readable gzip file: {e}") from e


def _header(raw: bytes, path: Path, magic: int, ndim: int) -> tuple[int, ...]:
    """Validate the big-endian IDX header -> the dims (count, [rows, cols])."""
    size = 4 * (1 + ndim)
    if len(raw) < size:
        raise CorruptArtifactError(f"{str(path)!r} is too short for an IDX header")
    fields = np.frombuffer(raw[:size], dtype=">u4")
    if int(fields[0]) != magic:
        raise CorruptArtifactError(
            f"{str(path)!r} has IDX magic {int(fields[0]):#010x}, expected {magic:#010x}"
        )
    dims = tuple(int(d) for d in fields[1:])
    if len(raw) != size + int(np.prod(dims)):
        raise CorruptArtifactError(
            f"{str(path)!r} holds {len(raw) - size} data bytes, header says {dims}"
        )
    return dims


def read_idx_images(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """An IDX3 ubyte image file -> ((N, rows*cols) float32 in [0, 1], (rows, cols))."""
    raw = _read_gzip(path)
    n, rows, cols = _header(raw, path, _IMAGES_MAGIC, 3)  # pixels start at byte 16
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols)
    return pixels.astype(np.float32) / np.float32(255.0), (rows, cols)


def read_idx_labels(path: Path) -> np.ndarray:
    """An IDX1 ubyte label file -> (N,) int64."""
    raw = _read_gzip(path)
    _header(raw, path, _LABELS_MAGIC, 1)  # labels start at byte 8
    return np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)


def _split(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    x, shape = read_idx_images(root / f"{prefix}-images-idx3-ubyte.gz")
    labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    y = read_idx_labels(labels_path)
    if len(y) != len(x):
        raise CorruptArtifactError(f"{str(labels_path)!r} has {len(y)} labels for {len(x)} images")
    return x, y, shape


def load_fashion_mnist(root: Path = FASHION_MNIST_ROOT) -> LabelledImages:
    """Fashion-MNIST: train (60000, 784), test (10000, 784), 10 classes, 28x28 images."""
    train_x, train_y, shape = _split(Path(root), "train")
    test_x, test_y, test_shape = _split(Path(root), "t10k")
    if test_shape != shape:
        raise CorruptArtifactError(f"train images are {shape}, test images are {test_shape}")
    classes = int(max(train_y.max(), test_y.max())) + 1
    return LabelledImages(
        name="fashion-mnist",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        classes=classes,
        image_shape=shape,
    )


def fashion_mnist_available(root: Path = FASHION_MNIST_ROOT) -> bool:
    """Whether the four Fashion-MNIST files exist under ``root`` (contents are not checked)."""
    return all(
        (Path(root) / f"{split}-{kind}-ubyte.gz").is_file()
        for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    )


def load_digits_dataset(*, test_fraction: float = 0.3, seed: int = 0) -> LabelledImages:
    """scikit-learn digits (1797 8x8 images): x / 16 -> [0, 1], seeded stratified 70/30 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y.astype(np.int64), test_size=test_fraction, random_state=seed, stratify=y
    )
    return LabelledImages(
        name="digits",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        classes=10,
        image_shape=(8, 8),
    )


def load_dataset(name: str = "fashion-mnist", *, root: Path = FASHION_MNIST_ROOT) -> LabelledImages:
    """``"fashion-mnist"``, ``"digits"`` or ``"auto"`` (Fashion-MNIST if installed, else digits)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(root)
    if name == "digits":
        return load_digits_dataset()
    if name == "auto":
        if fashion_mnist_available(root):
            return load_fashion_mnist(root)
        warnings.warn(
            f"Fashion-MNIST not found under {str(root)!r}; using scikit-learn digits instead "
            f"({INSTALL_FASHION_MNIST})",
            stacklevel=2,
        )
        return load_digits_dataset()
    raise NotFoundError(f"unknown dataset {name!r}", fix=did_you_mean(name, list(DATASET_NAMES)))


def subset_classes(
    x: np.ndarray, y: np.ndarray, classes: Iterable[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of x (N, D), y (N,) whose label is in ``classes``; labels are kept, not renumbered."""
    wanted = np.fromiter(classes, dtype=np.int64)
    if wanted.size == 0:
        raise InvalidInputError("subset_classes needs at least one class")
    if len(x) != len(y):
        raise InvalidInputError(f"x has {len(x)} rows but y has {len(y)} labels")
    mask = np.isin(y, wanted)
    return x[mask], y[mask]
