"""Ingest: bad input is refused with a clear error and changes nothing."""

import numpy as np
import pytest
from sqlalchemy import func, select

from index import galleries
from index.catalog import Item
from kernels.errors import ConflictError, InvalidInputError
from tests.index.fixtures import OLD_DIM, new_deployment, unit_vectors


@pytest.fixture
def ctx(tmp_path):
    ctx = new_deployment(tmp_path / "data")
    galleries.ingest(ctx, "v1", ["a", "b"], unit_vectors(2, OLD_DIM, seed=0))
    return ctx


def snapshot(ctx) -> tuple[int, list[str]]:
    with ctx.transaction() as session:
        count = session.scalar(select(func.count()).select_from(Item))
    return count, sorted(p.name for p in (ctx.data_dir / "indexes").iterdir())


@pytest.mark.parametrize(
    ("ids", "vectors", "error", "match"),
    [
        (["c"], unit_vectors(1, OLD_DIM + 1, 0), InvalidInputError, "width 7, the space expects 6"),
        (["c", "d"], np.full((2, OLD_DIM), np.inf, np.float32), InvalidInputError, "NaN or Inf"),
        (["c", "c"], unit_vectors(2, OLD_DIM, 0), InvalidInputError, "duplicate external ids"),
        (["a"], unit_vectors(1, OLD_DIM, 0), ConflictError, "already in the catalog: \\['a'\\]"),
        (["c"], unit_vectors(2, OLD_DIM, 0), InvalidInputError, "1 external ids for 2 vectors"),
        ([""], unit_vectors(1, OLD_DIM, 0), InvalidInputError, "non-empty strings"),
        (["c"], unit_vectors(1, OLD_DIM, 0)[0], InvalidInputError, "2-D"),
    ],
)
def test_bad_ingest_changes_nothing(ctx, ids, vectors, error, match) -> None:
    before = snapshot(ctx)
    with pytest.raises(error, match=match):
        galleries.ingest(ctx, "v1", ids, vectors)
    assert snapshot(ctx) == before


def test_sql_metacharacters_in_external_ids_are_data(ctx) -> None:
    nasty = ["x'); DROP TABLE item;--", 'quote"s', "percent%_"]
    galleries.ingest(ctx, "v1", nasty, unit_vectors(3, OLD_DIM, 1))
    with ctx.transaction() as session:
        stored = set(session.scalars(select(Item.external_id)))
    assert set(nasty) <= stored


def test_paths_outside_the_data_directory_are_refused(ctx) -> None:
    with pytest.raises(InvalidInputError, match="outside the data directory"):
        ctx.path("../escape.faiss")
