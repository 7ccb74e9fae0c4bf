"""Where a migration gets new-model vectors: here, precomputed ones looked up by external id.

Users whose embeddings come from an API re-embed outside hotswap and hand over a file; a wave asks
for the vectors of its item ids, and a missing one fails the wave before anything changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sqlalchemy import select

from index.catalog import Item
from index.context import Context
from index.galleries import SQL_CHUNK, chunked
from kernels.errors import InvalidInputError


def precomputed_source(
    ctx: Context, external_ids: Sequence[str], vectors: np.ndarray
) -> Callable[[np.ndarray], torch.Tensor]:
    """A ``reembed(item_ids) -> (n, d)`` callable reading rows of ``vectors`` by external id.

    Item ids are resolved to rows once, here: a wave runs ``reembed`` while it holds the catalog's
    write transaction, so ``reembed`` itself must not need the database.
    """
    if len(external_ids) != len(vectors):
        raise InvalidInputError(f"{len(external_ids)} external ids for {len(vectors)} vectors")
    row_of_item = _rows_by_item_id(ctx, list(external_ids))

    def reembed(item_ids: np.ndarray) -> torch.Tensor:
        missing = [int(i) for i in item_ids if int(i) not in row_of_item]
        if missing:
            raise InvalidInputError(
                f"no new vector for {len(missing)} item(s) in this wave (item ids {missing[:3]})",
                fix="add them to the vectors file and resume",
            )
        return torch.from_numpy(vectors[[row_of_item[int(i)] for i in item_ids]])

    return reembed


def _rows_by_item_id(ctx: Context, external_ids: list[str]) -> dict[int, int]:
    row_of = {external: row for row, external in enumerate(external_ids)}
    with ctx.transaction() as session:
        return {
            item_id: row_of[external]
            for chunk in chunked(external_ids, SQL_CHUNK)
            for item_id, external in session.execute(
                select(Item.id, Item.external_id).where(Item.external_id.in_(chunk))
            )
        }
