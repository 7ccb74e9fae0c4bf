"""``ip_topk``: reference vs fp64 brute force, chunked torch path vs reference (ties included),
Triton kernel (interpreter on CPU) by the precision rule, typed errors."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

from kernels.errors import InvalidInputError
from kernels.topk import TopK, chunk_rows, ip_topk, ip_topk_ref

topk_mod = importlib.import_module("kernels.topk")
ATOL = {torch.float32: 1e-6, torch.float16: 1e-4}


def _floats(
    q: int, n: int, d: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded unit-scale queries (q, d) and gallery (n, d): distinct scores, almost surely."""
    g = torch.Generator().manual_seed(seed)
    return (
        (torch.randn(q, d, generator=g) / d**0.5).to(dtype),
        (torch.randn(n, d, generator=g) / d**0.5).to(dtype),
    )


def _ints(q: int, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries in {-1, 0, 1}: scores are small integers, exact in every dtype; ties everywhere."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(-1, 2, (q, d), generator=g).float(),
        torch.randint(-1, 2, (n, d), generator=g).float(),
    )


def _check_valid(out: TopK, queries: torch.Tensor, gallery: torch.Tensor, tol: float) -> None:
    """Tie-aware: the scores equal the fp64 reference's best k, and each index has its score."""
    k = out.scores.shape[1]
    full = queries.double() @ gallery.double().T  # (Q, N)
    best = full.sort(dim=1, descending=True).values[:, :k]
    assert (out.scores.double() - best).abs().max().item() <= tol
    assert (full.gather(1, out.indices) - out.scores.double()).abs().max().item() <= tol
    assert all(len(set(row)) == k for row in out.indices.tolist())  # no index twice


# --- reference -----------------------------------------------------------------------------------


def test_ref_hand_checked_ties_go_to_the_lower_index() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    gallery = torch.tensor([[0.5, 1.0], [2.0, 0.0], [0.5, -3.0], [2.0, 5.0], [-0.0, 0.0]])
    out = ip_topk_ref(queries, gallery, 4)
    # query 0 scores: 0.5, 2, 0.5, 2, -0  -> 2 (1), 2 (3), 0.5 (0), 0.5 (2)
    assert out.indices.tolist()[0] == [1, 3, 0, 2]
    # query 1 scores: -1, -0, 3, -5, -0  -> 3 (2), 0 (1), 0 (4), -1 (0): -0.0 ties with 0.0
    assert out.indices.tolist()[1] == [2, 1, 4, 0]
    assert out.scores.tolist() == [[2.0, 2.0, 0.5, 0.5], [3.0, 0.0, 0.0, -1.0]]
    assert out.scores.dtype == torch.float32 and out.indices.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_ref_matches_fp64_brute_force(dtype: torch.dtype) -> None:
    queries, gallery = _floats(7, 300, 24, dtype)
    out = ip_topk_ref(queries, gallery, 10)
    assert out.scores.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _check_valid(out, queries, gallery, 1e-5)


# --- torch path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 7, 64, 299, 300])
@pytest.mark.parametrize("k", [1, 5, 37])
def test_torch_path_is_exact_with_ties(k: int, chunk: int | None) -> None:
    """Integer data: every path computes identical scores, so indices must match exactly."""
    queries, gallery = _ints(9, 300, 6, seed=k)
    out = topk_mod._topk_torch(queries, gallery, k, chunk)
    ref = ip_topk_ref(queries, gallery, k)
    assert torch.equal(out.indices, ref.indices) and torch.equal(out.scores, ref.scores)


def test_torch_path_ties_across_chunks() -> None:
    """A row equal to an earlier one in a later chunk never displaces it; k cuts inside the tie."""
    queries, gallery = _floats(3, 40, 8)
    gallery[33] = gallery[5]
    gallery[21] = gallery[5]
    scores = queries @ gallery.T
    top_row = int(scores[0].argmax())
    gallery[[12, 38]] = gallery[top_row].clone()  # a three-way tie for the top score of query 0
    out = topk_mod._topk_torch(queries, gallery, 2, chunk=10)
    ref = ip_topk_ref(queries, gallery, 2)
    assert torch.equal(out.indices, ref.indices)
    assert out.indices[0].tolist() == sorted({top_row, 12, 38})[:2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("q", "n", "d", "k", "chunk"), [(1, 5, 3, 5, None), (17, 1000, 33, 20, 128)]
)
def test_torch_path_equals_ref(
    q: int, n: int, d: int, k: int, chunk: int | None, dtype: torch.dtype
) -> None:
    queries, gallery = _floats(q, n, d, dtype, seed=n)
    out = topk_mod._topk_torch(queries, gallery, k, chunk)
    ref = ip_topk_ref(queries, gallery, k)
    assert out.scores.dtype == ref.scores.dtype and out.scores.shape == (q, k)
    torch.testing.assert_close(out.scores, ref.scores, rtol=1e-6, atol=1e-6)
    _check_valid(out, queries, gallery, 1e-5)


def test_torch_path_query_blocks_and_default_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many queries over a gallery larger than one default chunk: blocks and chunks both split."""
    monkeypatch.setenv("HOTSWAP_KERNELS", "torch")
    monkeypatch.setattr(topk_mod, "QUERY_BLOCK", 100)
    monkeypatch.setattr(topk_mod, "SCORE_TILE", 100 * 1500)  # -> 1500-row chunks
    queries, gallery = _ints(250, 5000, 5, seed=3)
    assert chunk_rows(250, 5, 10) == 1500
    out = ip_topk(queries, gallery, 10)
    ref = ip_topk_ref(queries, gallery, 10)
    assert torch.equal(out.indices, ref.indices) and torch.equal(out.scores, ref.scores)


def test_chunk_rows_bounds_both_temporaries() -> None:
    rows = chunk_rows(4096, 768, 10)
    assert rows * min(4096, topk_mod.QUERY_BLOCK) <= topk_mod.SCORE_TILE
    assert rows * 768 * 4 <= topk_mod.CHUNK_BYTES
    assert chunk_rows(1, 768, 100_000) == 100_000  # never fewer rows than k
    # an fp32 gallery is sliced, not copied: only the score tile bounds the chunk
    assert chunk_rows(1, 768, 10, upcast=False) == topk_mod.SCORE_TILE


def test_empty_query_batch() -> None:
    _, gallery = _floats(1, 10, 4)
    out = ip_topk(torch.zeros(0, 4), gallery, 3)
    assert out.scores.shape == (0, 3) and out.indices.shape == (0, 3)


def test_no_autograd_graph() -> None:
    queries, gallery = _floats(2, 10, 4)
    out = ip_topk(queries.requires_grad_(), gallery, 3)
    assert not out.scores.requires_grad


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queries", "gallery", "k", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(5, 4), 1, r"\(2, 3\).*\(5, 4\)"),
        (torch.zeros(3), torch.zeros(5, 3), 1, r"queries must be \(Q, d\)"),
        (torch.zeros(2, 3), torch.zeros(5, 3), 6, "N=5"),
        (torch.zeros(2, 3), torch.zeros(5, 3), 0, "1 <= k"),
        (torch.zeros(2, 3), torch.zeros(5, 3), True, "k must be an int"),
        (torch.zeros(2, 3), torch.zeros(0, 3), 1, "add vectors"),
        (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(5, 3), 1, "floating"),
        (torch.zeros(2, 3), torch.zeros(5, 3, device="meta"), 1, "meta"),
    ],
)
@pytest.mark.parametrize("fn", [ip_topk, ip_topk_ref])
def test_bad_input_raises(
    fn: Any, queries: torch.Tensor, gallery: torch.Tensor, k: Any, match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        fn(queries, gallery, k)


# --- Triton kernel (interpreter on CPU, real kernel on GPU) --------------------------------------


@pytest.fixture
def triton_on(force_triton: Callable[[str, str], list[int]]) -> list[int]:
    """Force the Triton path (skipped where it cannot run); the list counts launches."""
    return force_triton("kernels.topk", "_launch_triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("q", "n", "d", "k"), [(5, 40, 20, 7), (18, 45, 33, 1)])
def test_triton_precision_rule(
    triton_on: list[int], q: int, n: int, d: int, k: int, dtype: torch.dtype
) -> None:
    """err(kernel scores vs fp64) <= 2 * err(same-precision reference) + atol; indices valid."""
    queries, gallery = _floats(q, n, d, dtype, seed=q + n)
    out = ip_topk(queries, gallery, k)
    assert triton_on == [1] and out.scores.shape == (q, k) and out.indices.dtype == torch.int64
    ref = ip_topk_ref(queries, gallery, k)
    best64 = ip_topk_ref(queries.double(), gallery.double(), k).scores
    ref_err = (ref.scores.double() - best64).abs().max().item()
    assert (out.scores.double() - best64).abs().max().item() <= 2 * ref_err + ATOL[dtype]
    _check_valid(out, queries, gallery, 2 * ref_err + ATOL[dtype])


def test_triton_ties_exact_across_splits(triton_on: list[int]) -> None:
    """Integer scores (exact in fp16), k not a power of 2, several splits and tiles each.

    fp32 ties are covered by the strided test below.
    """
    dtype = torch.float16
    from kernels._triton_topk import ip_topk_triton

    queries, gallery = _ints(6, 50, 5, seed=1)
    queries, gallery = queries.to(dtype), gallery.to(dtype)
    ref = ip_topk_ref(queries, gallery, 10)
    scores, indices = ip_topk_triton(queries, gallery, 10, splits=3)
    assert torch.equal(indices, ref.indices) and torch.equal(scores, ref.scores)


def test_triton_strided_gallery_and_negative_zero(triton_on: list[int]) -> None:
    queries, wide = _ints(3, 16, 10, seed=2)
    gallery = wide[:, ::2]  # (16, 5) view with stride (10, 2): read in place
    gallery[7] = -0.0  # a -0.0 score ties with 0.0 scores: lower index first
    gallery[3] = 0.0
    out = ip_topk(queries[:, :5], gallery, 16)
    ref = ip_topk_ref(queries[:, :5], gallery, 16)
    assert triton_on == [1] and torch.equal(out.indices, ref.indices)


def test_triton_mixed_dtypes(triton_on: list[int]) -> None:
    queries, _ = _floats(3, 20, 9, torch.float16)
    _, gallery = _floats(3, 20, 9, torch.float32, seed=1)
    out = ip_topk(queries, gallery, 3)
    assert triton_on == [1] and out.scores.dtype == torch.float32
    _check_valid(out, queries, gallery, 1e-5)


def test_triton_domain(triton_on: list[int]) -> None:
    """fp64 or k > 256: the launcher refuses, ``ip_topk`` routes to torch."""
    from kernels._triton_topk import ip_topk_triton

    queries, gallery = _floats(2, 300, 4, torch.float64)
    with pytest.raises(InvalidInputError, match="float64"):
        ip_topk_triton(queries, gallery, 3)
    assert ip_topk(queries, gallery, 3).scores.dtype == torch.float64
    q32, g32 = queries.float(), gallery.float()
    with pytest.raises(InvalidInputError, match="k=257"):
        ip_topk_triton(q32, g32, 257)
    assert torch.equal(ip_topk(q32, g32, 257).indices, ip_topk_ref(q32, g32, 257).indices)
    assert triton_on == []
