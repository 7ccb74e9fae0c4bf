"""Dataset loaders: the IDX parser on tiny files, real Fashion-MNIST if installed, digits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from kernels.errors import CorruptArtifactError, InvalidInputError, NotFoundError
from models.datasets import (
    FASHION_MNIST_ROOT,
    LabelledImages,
    fashion_mnist_available,
    load_dataset,
    load_digits_dataset,
    load_fashion_mnist,
    subset_classes,
)


def write_idx(path: Path, magic: int, dims: tuple[int, ...], data: bytes) -> None:
    """A gzip IDX file: big-endian magic and dims, then raw ubyte data."""
    header = struct.pack(f">{1 + len(dims)}I", magic, *dims)
    path.write_bytes(gzip.compress(header + data))


def write_tiny_fashion(root: Path, n_train: int = 6, n_test: int = 4) -> None:
    """Four valid IDX files of 3x2 images whose pixels count up, labels i % 3."""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = bytes(i % 256 for i in range(n * 6))
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", 0x803, (n, 3, 2), pixels)
        labels = bytes(i % 3 for i in range(n))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 0x801, (n,), labels)


def test_idx_parser_on_tiny_files(tmp_path: Path) -> None:
    write_tiny_fashion(tmp_path)
    data = load_fashion_mnist(tmp_path)
    assert data.train_x.shape == (6, 6) and data.test_x.shape == (4, 6)
    assert data.image_shape == (3, 2) and data.classes == 3 and data.dim == 6
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int64
    np.testing.assert_allclose(data.train_x[1], np.arange(6, 12) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.test_y, [0, 1, 2, 0])


@pytest.mark.parametrize(
    "damage",
    ["bad_magic", "short_data", "not_gzip", "truncated_gzip", "label_count", "short_header"],
)
def test_corrupt_idx_file_is_reported(tmp_path: Path, damage: str) -> None:
    write_tiny_fashion(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    if damage == "bad_magic":
        write_idx(images, 0x801, (6, 3, 2), bytes(36))
    elif damage == "short_data":
        write_idx(images, 0x803, (6, 3, 2), bytes(35))
    elif damage == "not_gzip":
        images.write_bytes(b"this is not a gzip file at all")
    elif damage == "truncated_gzip":
        images.write_bytes(images.read_bytes()[:-12])
    elif damage == "label_count":
        write_idx(labels, 0x801, (5,), bytes(5))
    else:
        labels.write_bytes(gzip.compress(b"\x00\x00"))
    with pytest.raises(CorruptArtifactError):
        load_fashion_mnist(tmp_path)


def test_missing_files_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path)


@pytest.fixture(scope="module")
def fashion() -> LabelledImages:
    if not fashion_mnist_available():
        pytest.skip(f"no Fashion-MNIST at {FASHION_MNIST_ROOT} (apt: dataset-fashion-mnist)")
    return load_fashion_mnist()


def test_real_fashion_mnist(fashion: LabelledImages) -> None:
    assert fashion.train_x.shape == (60000, 784) and fashion.test_x.shape == (10000, 784)
    assert fashion.train_y.shape == (60000,) and fashion.test_y.shape == (10000,)
    assert fashion.classes == 10 and fashion.image_shape == (28, 28)
    assert fashion.train_x.dtype == np.float32 and fashion.train_y.dtype == np.int64
    assert fashion.train_x.min() == 0.0 and fashion.train_x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(fashion.train_y), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(fashion.test_y), np.full(10, 1000))


def test_digits_split_is_seeded_and_stratified() -> None:
    data = load_digits_dataset()
    assert data.train_x.shape == (1257, 64) and data.test_x.shape == (540, 64)
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int64
    assert data.train_x.min() >= 0.0 and data.train_x.max() <= 1.0
    assert data.classes == 10 and data.image_shape == (8, 8)
    share = np.bincount(data.test_y) / len(data.test_y)
    assert np.abs(share - 0.1).max() < 0.015  # each class ~10% of the test split
    np.testing.assert_array_equal(load_digits_dataset().test_y, data.test_y)


def test_auto_falls_back_to_digits_with_one_warning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="dataset-fashion-mnist") as record:
        data = load_dataset("auto", root=tmp_path)
    assert data.name == "digits" and len(record) == 1


def test_auto_prefers_fashion_mnist_when_present(tmp_path: Path) -> None:
    write_tiny_fashion(tmp_path)
    assert load_dataset("auto", root=tmp_path).name == "fashion-mnist"


def test_unknown_dataset_suggests_names() -> None:
    with pytest.raises(NotFoundError, match="fashion-mnist"):
        load_dataset("fashion_mnist")


def test_subset_classes() -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10, dtype=np.int64) % 5
    sub_x, sub_y = subset_classes(x, y, range(2))
    np.testing.assert_array_equal(sub_y, [0, 1, 0, 1])
    np.testing.assert_array_equal(sub_x[:, 0], [0, 2, 10, 12])
    with pytest.raises(InvalidInputError):
        subset_classes(x, y, [])
    with pytest.raises(InvalidInputError):
        subset_classes(x, y[:3], [0])
