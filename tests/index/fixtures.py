"""A small real deployment for index tests: SQLite catalog, FAISS spaces, seeded vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compat.adapters import build_adapter
from index import galleries, versions
from index.context import Context, open_context
from models.encoders import MLPEncoderConfig, build_encoder

OLD_DIM, NEW_DIM = 6, 10


def new_deployment(root: Path) -> Context:
    """v1 (6-d) with an empty space, v2 (10-d) with an empty space, a backward adapter v2 -> v1."""
    torch.manual_seed(0)
    ctx = open_context(root, create=True)
    with ctx.transaction() as session:
        v1 = versions.register_version(ctx, session, "v1", _encoder(OLD_DIM))
        v2 = versions.register_version(ctx, session, "v2", _encoder(NEW_DIM))
        adapter = build_adapter("orthogonal", {"dim_in": NEW_DIM, "dim_out": OLD_DIM})
        versions.register_adapter(ctx, session, adapter, v2, v1)
        galleries.create_space(session, v1)
        galleries.create_space(session, v2)
    return ctx


def _encoder(dim: int):
    return build_encoder("mlp", MLPEncoderConfig(input_dim=4, hidden_dims=(8,), embed_dim=dim))


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# The 40-item gallery most index tests migrate: v1 vectors seeded 8, v2 ones seeded 9.
N_ITEMS = 40
OLD_VECTORS = unit_vectors(N_ITEMS, OLD_DIM, seed=8)
NEW_VECTORS = unit_vectors(N_ITEMS + 1, NEW_DIM, seed=9)  # row = item id (ids start at 1)


def reembed(ids: np.ndarray) -> torch.Tensor:
    """The 'new encoder' of the index tests: item id -> its seeded v2 vector."""
    return torch.from_numpy(NEW_VECTORS[ids])


def seeded_deployment(root: Path) -> Context:
    """``new_deployment`` with the 40 items ingested into v1 as ``item-0`` ... ``item-39``."""
    ctx = new_deployment(root)
    galleries.ingest(ctx, "v1", [f"item-{i}" for i in range(N_ITEMS)], OLD_VECTORS)
    return ctx
