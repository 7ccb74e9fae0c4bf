"""Procrustes and least-squares adapters recover the maps that generated seeded synthetic pairs."""

import pytest
import torch

from compat.adapters import build_adapter
from compat.solvers import least_squares_map, procrustes_map
from kernels.errors import InvalidInputError


def random_orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    """(rows, cols) with orthonormal columns (rows >= cols) or rows (rows < cols), fp64."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(
        torch.randn(max(rows, cols), max(rows, cols), generator=g, dtype=torch.float64)
    )
    return q[:rows, :cols] if rows >= cols else q[:cols, :rows].T


def fitted(key: str, x: torch.Tensor, y: torch.Tensor, **config) -> torch.nn.Module:
    adapter = build_adapter(key, {"dim_in": x.shape[1], "dim_out": y.shape[1], **config})
    adapter.prepare(x, y)
    return adapter


@pytest.mark.parametrize(("d_in", "d_out"), [(16, 16), (10, 23)])
def test_procrustes_recovers_a_rotation_and_offset(d_in: int, d_out: int) -> None:
    g = torch.Generator().manual_seed(0)
    rotation = random_orthonormal(d_in, d_out, seed=1)  # orthonormal rows when widening
    offset = torch.randn(d_out, generator=g, dtype=torch.float64)
    x = torch.randn(200, d_in, generator=g, dtype=torch.float64)
    y = x @ rotation + offset
    adapter = fitted("procrustes", x, y)
    torch.testing.assert_close(adapter.weight.double(), rotation, atol=1e-5, rtol=0)
    x_new = torch.randn(7, d_in, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        adapter(x_new.float()).double(), x_new @ rotation + offset, atol=1e-4, rtol=0
    )


def test_procrustes_narrowing_recovers_a_contained_space() -> None:
    # The wide space holds the narrow one isometrically (x = y Qᵀ): R = Q exactly.
    g = torch.Generator().manual_seed(2)
    q = random_orthonormal(23, 10, seed=3)  # (23, 10), orthonormal columns
    y = torch.randn(150, 10, generator=g, dtype=torch.float64)
    adapter = fitted("procrustes", y @ q.T, y)
    torch.testing.assert_close(adapter.weight.double(), q, atol=1e-5, rtol=0)
    w = adapter.serving_form().weight
    torch.testing.assert_close(w.T @ w, torch.eye(10), atol=1e-5, rtol=0)


def test_procrustes_truncate_mode_fits_the_leading_coordinates() -> None:
    g = torch.Generator().manual_seed(4)
    rotation = random_orthonormal(8, 8, seed=5)
    x = torch.randn(100, 12, generator=g, dtype=torch.float64)
    y = x[:, :8] @ rotation
    adapter = fitted("procrustes", x, y, rectangular="truncate", center=False)
    expected = torch.zeros(12, 8, dtype=torch.float64)
    expected[:8] = rotation
    torch.testing.assert_close(adapter.weight.double(), expected, atol=1e-5, rtol=0)


def test_uncentred_widening_procrustes_is_an_isometry() -> None:
    x = torch.randn(50, 6, dtype=torch.float64)
    adapter = fitted("procrustes", x, x @ random_orthonormal(6, 9, seed=6), center=False)
    form = adapter.serving_form()
    assert form.bias is None and not form.normalize


def test_procrustes_map_is_orthonormal_on_noise() -> None:
    g = torch.Generator().manual_seed(7)
    r = procrustes_map(torch.randn(40, 23, generator=g), torch.randn(40, 10, generator=g))
    torch.testing.assert_close(r.T @ r, torch.eye(10, dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.parametrize(("d_in", "d_out"), [(16, 16), (23, 10), (10, 23)])
def test_least_squares_recovers_an_affine_map(d_in: int, d_out: int) -> None:
    g = torch.Generator().manual_seed(8)
    weight = torch.randn(d_in, d_out, generator=g, dtype=torch.float64)
    bias = torch.randn(d_out, generator=g, dtype=torch.float64)
    x = torch.randn(120, d_in, generator=g, dtype=torch.float64)
    adapter = fitted("affine", x, x @ weight + bias)
    torch.testing.assert_close(adapter.weight.double(), weight, atol=1e-4, rtol=1e-4)
    form = adapter.serving_form()
    torch.testing.assert_close(form.bias.double(), bias, atol=1e-4, rtol=1e-4)
    assert form.normalize


def test_ridge_matches_its_normal_equations_and_shrinks() -> None:
    g = torch.Generator().manual_seed(9)
    x = torch.randn(30, 12, generator=g, dtype=torch.float64)
    y = torch.randn(30, 5, generator=g, dtype=torch.float64)
    w = least_squares_map(x, y, ridge=3.0)
    reference = torch.linalg.inv(x.T @ x + 3.0 * torch.eye(12, dtype=torch.float64)) @ x.T @ y
    torch.testing.assert_close(w, reference)
    assert torch.linalg.norm(w) < torch.linalg.norm(least_squares_map(x, y))


def test_fewer_anchors_than_dims_gives_the_minimum_norm_fit() -> None:
    g = torch.Generator().manual_seed(10)
    x = torch.randn(5, 12, generator=g, dtype=torch.float64)
    y = torch.randn(5, 4, generator=g, dtype=torch.float64)
    w = least_squares_map(x, y)
    torch.testing.assert_close(x @ w, y)  # interpolates
    torch.testing.assert_close(w, torch.linalg.pinv(x) @ y)


def test_closed_form_refuses_mismatched_pairs() -> None:
    adapter = build_adapter("procrustes", {"dim_in": 4, "dim_out": 3})
    with pytest.raises(InvalidInputError, match="pairs"):
        adapter.prepare(torch.randn(5, 4), torch.randn(6, 3))
    with pytest.raises(InvalidInputError, match="ridge"):
        build_adapter("affine", {"dim_in": 4, "dim_out": 3, "ridge": -1.0})
