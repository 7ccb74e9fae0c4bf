"""Ingest: bad input is refused with a clear error and changes nothing."""

import json
import threading

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from index import galleries, migrate, versions
from index.catalog import Item
from index.context import open_context
from index.doctor import doctor
from index.search import MixedSearcher
from index.store import HNSWConfig, HNSWStore, IVFStore
from kernels.errors import (
    ConflictError,
    CorruptArtifactError,
    InvalidInputError,
    MissingExtraError,
    NotFoundError,
)
from tests.index.fixtures import NEW_DIM, OLD_DIM, new_deployment, unit_vectors
from tests.pg import database_url


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


# ---- Parquet ----------------------------------------------------------------------------------


def write_parquet(path, ids, vectors, *, fixed: bool = False, **columns) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    values = pa.array(np.asarray(vectors, dtype=np.float32).ravel())
    width = np.asarray(vectors).shape[1]
    if fixed:
        embedding = pa.FixedSizeListArray.from_arrays(values, width)
    else:
        embedding = pa.ListArray.from_arrays(pa.array(np.arange(len(ids) + 1) * width), values)
    table = pa.table({"id": ids, "embedding": embedding, **columns})
    pq.write_table(table, path)


@pytest.mark.parametrize("fixed", [False, True], ids=["list", "fixed_size_list"])
def test_parquet_ingest(ctx, tmp_path, fixed: bool) -> None:
    vectors = unit_vectors(4, OLD_DIM, seed=3)
    write_parquet(tmp_path / "v.parquet", ["p1", "p2", "p3", "p4"], vectors, fixed=fixed)
    new = galleries.ingest_parquet(ctx, "v1", tmp_path / "v.parquet")
    assert len(new) == 4
    with ctx.transaction() as session:
        store = galleries.load_store(ctx, galleries.get_space(session, "v1"))
        names = {i: e for i, e in session.execute(select(Item.id, Item.external_id))}
    assert [names[i] for i in new] == ["p1", "p2", "p3", "p4"]
    np.testing.assert_allclose(store.vectors(np.array(new)), vectors, rtol=1e-6)


def test_parquet_integer_ids_and_custom_columns(ctx, tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    vectors = unit_vectors(2, OLD_DIM, seed=4).astype(np.float64)  # float64 lists are accepted
    table = pa.table({"doc": [10, 11], "vec": [list(v) for v in vectors]})
    pq.write_table(table, tmp_path / "v.parquet")
    ids, x = galleries.read_parquet(tmp_path / "v.parquet", "doc", "vec")
    assert ids == ["10", "11"] and x.dtype == np.float32 and x.shape == (2, OLD_DIM)


def _bad_parquet(tmp_path, case: str):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / f"{case}.parquet"
    good = [list(map(float, v)) for v in unit_vectors(2, OLD_DIM, seed=5)]
    tables = {
        "no column": pa.table({"id": ["c", "d"], "embeding": good}),
        "null id": pa.table({"id": ["c", None], "embedding": good}),
        "null row": pa.table({"id": ["c", "d"], "embedding": [good[0], None]}),
        "mixed widths": pa.table({"id": ["c", "d"], "embedding": [good[0], good[1][:-1]]}),
        "null value": pa.table({"id": ["c", "d"], "embedding": [good[0], [None] * OLD_DIM]}),
        "strings": pa.table({"id": ["c", "d"], "embedding": [["x"] * OLD_DIM] * 2}),
        "float ids": pa.table({"id": [1.5, 2.5], "embedding": good}),
        "nan": pa.table({"id": ["c", "d"], "embedding": [good[0], [float("nan")] * OLD_DIM]}),
        "wide": pa.table({"id": ["c", "d"], "embedding": [g + [0.0] for g in good]}),
        "duplicate": pa.table({"id": ["c", "c"], "embedding": good}),
        "existing": pa.table({"id": ["c", "a"], "embedding": good}),
    }
    if case == "not parquet":
        path.write_bytes(b"PAR1 this is not a parquet file")
    else:
        pq.write_table(tables[case], path)
    return path


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("no column", InvalidInputError, "no column 'embedding'.*did you mean 'embeding'"),
        ("null id", InvalidInputError, "id column 'id' has 1 null"),
        ("null row", InvalidInputError, "1 null row"),
        ("mixed widths", InvalidInputError, "mixes widths"),
        ("null value", InvalidInputError, "null values inside vectors"),
        ("strings", InvalidInputError, "must be list<float>"),
        ("float ids", InvalidInputError, "strings or integers"),
        ("nan", InvalidInputError, "NaN or Inf"),
        ("wide", InvalidInputError, "width 7, the space expects 6"),
        ("duplicate", InvalidInputError, "duplicate external ids"),
        ("existing", ConflictError, "already in the catalog"),
        ("not parquet", CorruptArtifactError, "cannot read"),
    ],
)
def test_bad_parquet_changes_nothing(ctx, tmp_path, case: str, error, match: str) -> None:
    path = _bad_parquet(tmp_path, case)
    before = snapshot(ctx)
    with pytest.raises(error, match=match):
        galleries.ingest_parquet(ctx, "v1", path)
    assert snapshot(ctx) == before


def test_parquet_missing_file(ctx, tmp_path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        galleries.read_parquet(tmp_path / "nope.parquet")


def test_missing_pyarrow_names_the_extra(ctx, tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import now raises ImportError
    with pytest.raises(MissingExtraError, match=r"hotswap\[parquet\]"):
        galleries.read_parquet(tmp_path / "v.parquet")


# ---- store kinds per space --------------------------------------------------------------------


def test_space_kind_and_params_are_recorded_and_used(tmp_path) -> None:
    ctx = new_deployment(tmp_path / "data")
    with ctx.transaction() as session:
        version = versions.get_version(session, "v1")
        galleries.create_space(session, version, "v1-hnsw", kind="HNSW", params={"m": 8})
        with pytest.raises(InvalidInputError, match="nprobe must be >= 1"):
            galleries.create_space(session, version, "bad", kind="IVF", params={"nprobe": 0})
    galleries.ingest(ctx, "v1-hnsw", ["a", "b", "c"], unit_vectors(3, OLD_DIM, seed=0))
    with ctx.transaction() as session:
        space = galleries.get_space(session, "v1-hnsw")
        assert space.index_factory == "HNSW"
        assert json.loads(space.index_params) == HNSWConfig(m=8).to_dict()
        store = galleries.load_store(ctx, space)
    assert isinstance(store, HNSWStore) and store.config.m == 8 and store.ntotal == 3


def test_rebuild_space_switches_kind_and_drops_tombstones(tmp_path) -> None:
    ctx = new_deployment(tmp_path / "data")
    vectors = unit_vectors(300, OLD_DIM, seed=8)
    galleries.ingest(ctx, "v1", [f"i{n}" for n in range(300)], vectors)
    ivf = {"min_train": 200, "nprobe": 3}
    done = galleries.rebuild_space(ctx, "v1", kind="IVF", params=ivf)
    assert done["kind"] == "IVF" and done["vectors"] == 300
    with ctx.transaction() as session:
        space = galleries.get_space(session, "v1")
        store = galleries.load_store(ctx, space)
        assert (space.index_factory, space.ntotal, space.snapshot_seq) == ("IVF", 300, 2)
    assert isinstance(store, IVFStore) and store.trained and store.config.nprobe == 3
    assert len(list((ctx.data_dir / "indexes").iterdir())) == 1  # the old snapshot is gone
    galleries.rebuild_space(ctx, "v1", kind="HNSW")
    with ctx.transaction() as session:
        space = galleries.get_space(session, "v1")
        store = galleries.load_store(ctx, space)
        store.remove(store.ids()[:10])  # tombstones, saved like a migration wave would
        with galleries.staged_for(ctx, space, store) as staged:
            galleries.point_space_at(ctx, space, staged)
    galleries.rebuild_space(ctx, "v1")  # on demand, same kind and params
    with ctx.transaction() as session:
        store = galleries.load_store(ctx, galleries.get_space(session, "v1"))
    assert isinstance(store, HNSWStore) and store.tombstones == 0 and store.ntotal == 290
    before = snapshot(ctx)
    with pytest.raises(NotFoundError, match="unknown index kind 'IFV'"):
        galleries.rebuild_space(ctx, "v1", kind="IFV")
    with pytest.raises(InvalidInputError, match="has no field 'nprobe'"):
        galleries.rebuild_space(ctx, "v1", params={"nprobe": 2})
    assert snapshot(ctx) == before


@pytest.mark.postgres
def test_ingest_locks_its_space_row_on_postgresql(tmp_path) -> None:
    """Two ingests into one space must not both stage snapshot seq+1: the second waits for the
    first's row lock, then reads the committed state."""
    with database_url("postgresql", tmp_path) as url:
        ctx = open_context(tmp_path / "data", url, create=True)
        with ctx.transaction() as session:
            galleries.create_space(session, versions.register_external_version(session, "v1", 6))
        done: list[int] = []
        blocker = ctx.sessions()
        with blocker.begin():
            galleries.get_space(blocker, "v1", lock=True)  # a writer holding the row
            worker = threading.Thread(
                target=lambda: done.extend(
                    galleries.ingest(ctx, "v1", ["w"], unit_vectors(1, OLD_DIM, seed=1))
                )
            )
            worker.start()
            worker.join(timeout=1.0)
            assert worker.is_alive() and not done  # waiting on the lock, not racing
        blocker.close()
        worker.join(timeout=30)
        assert len(done) == 1
        threads = [
            threading.Thread(
                target=galleries.ingest,
                args=(ctx, "v1", [f"t{n}-{i}" for i in range(200)], unit_vectors(200, OLD_DIM, n)),
            )
            for n in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        with ctx.transaction() as session:
            space = galleries.get_space(session, "v1")
            store = galleries.load_store(ctx, space)  # checksum and ntotal agree with the catalog
        assert (space.ntotal, space.snapshot_seq) == (801, 5) and store.ntotal == 801
        ctx.engine.dispose()


def test_migration_search_and_doctor_keep_each_space_kind(tmp_path) -> None:
    """A migration into an HNSW space, searched while the IVF source holds the rest; doctor
    rebuilds a lost HNSW file with the space's own parameters."""
    ctx = new_deployment(tmp_path / "data")
    old = unit_vectors(120, OLD_DIM, seed=11)
    new = unit_vectors(120, NEW_DIM, seed=12)
    ids = np.array(galleries.ingest(ctx, "v1", [f"i{n}" for n in range(120)], old))
    galleries.rebuild_space(ctx, "v1", kind="IVF", params={"min_train": 78, "nprobe": 2})
    galleries.rebuild_space(ctx, "v2", kind="HNSW", params={"m": 8})
    run_id = migrate.plan(ctx, "v1", "v2", ordering="insertion")
    migrate.run(ctx, run_id, lambda b: torch.from_numpy(new[b - ids[0]]), wave_size=60, max_waves=1)
    result = MixedSearcher.open(ctx, "v2").search(torch.from_numpy(new[:5]), k=1)
    assert result.ids[:, 0].tolist() == ids[:5].tolist()  # migrated items answer natively
    with ctx.transaction() as session:
        path = ctx.path(galleries.get_space(session, "v2").index_path or "")
    path.unlink()
    report = doctor(ctx, repair=True, reembed={"v2": lambda b: torch.from_numpy(new[b - ids[0]])})
    assert any(f.repaired for f in report.findings)
    with ctx.transaction() as session:
        store = galleries.load_store(ctx, galleries.get_space(session, "v2"))
        source = galleries.load_store(ctx, galleries.get_space(session, "v1"))
    assert isinstance(store, HNSWStore) and store.config.m == 8 and store.ntotal == 60
    assert isinstance(source, IVFStore) and source.trained and source.config.nprobe == 2
