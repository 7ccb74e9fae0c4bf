"""What runs inside Ray workers for the migration engine: ledger page reads and encoder actors.

Light on purpose (numpy, SQLAlchemy, the catalog's tables): every new actor and worker process
imports this module, and on a busy machine importing torch and FAISS there costs seconds per
process. Heavy modules load only where they are used (an encoder factory, an error path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine

from index.ledger import Key, page

EncoderFactory = Callable[[], Callable[[np.ndarray], Any]]  # () -> (item ids (n,) -> (n, d))


def read_pages(
    batch: dict[str, np.ndarray], *, url: str, run_id: int, bounds: list[Key]
) -> dict[str, np.ndarray]:
    """Ray task: page numbers (b,) -> their pending item ids, in migration order. A plain
    engine: reading needs none of the writer settings index.db gives SQLite."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            ids = [
                item
                for number in batch["data"].tolist()
                for item in connection.scalars(page(run_id, bounds, int(number)))
            ]
    finally:
        engine.dispose()
    return {"item_id": np.array(ids, dtype=np.int64)}


class Embedder:
    """One actor of the pool: builds its encoder once, then embeds batch after batch."""

    def __init__(self, encoder: EncoderFactory) -> None:
        self.reembed = encoder()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["item_id"].astype(np.int64)  # (b,)
        out = self.reembed(ids)
        if hasattr(out, "detach"):  # a torch tensor, possibly on a GPU
            out = out.detach().float().cpu().numpy()
        vectors = np.asarray(out, dtype=np.float32)  # (b, d); migrate.run checks width, values
        if vectors.ndim != 2 or len(vectors) != len(ids):
            _invalid(f"re-embedding {len(ids)} items returned an array of shape {vectors.shape}")
        return {"item_id": ids, "vector": vectors}


@dataclasses.dataclass(frozen=True)
class ItemVectors:
    """An encoder factory for precomputed vectors: row ``rows[j]`` of ``vectors`` (an array, or
    a .npy path each actor memory-maps, so a cluster reads it from shared storage) is item
    ``item_ids[j]``'s new vector. ``item_ids`` (n,) ascending int64, ``rows`` (n,) int64."""

    item_ids: np.ndarray
    rows: np.ndarray
    vectors: np.ndarray | Path

    def __call__(self) -> Callable[[np.ndarray], np.ndarray]:
        table = self.vectors
        if isinstance(table, Path):
            table = np.load(table, mmap_mode="r", allow_pickle=False)

        def reembed(ids: np.ndarray) -> np.ndarray:
            at = np.minimum(np.searchsorted(self.item_ids, ids), len(self.item_ids) - 1)
            missing = ids[self.item_ids[at] != ids] if len(self.item_ids) else ids
            if len(missing):
                _invalid(
                    f"no new vector for {len(missing)} item(s) in this wave "
                    f"(item ids {missing[:3].tolist()})",
                    fix="add them to the vectors file and resume",
                )
            return np.asarray(table[self.rows[at]], dtype=np.float32)

        return reembed


def _invalid(message: str, fix: str | None = None) -> None:
    from kernels.errors import InvalidInputError  # imports torch: only on this path

    raise InvalidInputError(message, fix=fix)
