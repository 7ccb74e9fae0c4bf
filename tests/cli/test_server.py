"""The real HTTP service: `hotswap serve` on a loopback port, queried with a real HTTP client."""

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from sqlalchemy import select

from index import galleries, migrate
from index.catalog import ItemAccess
from tests.index.fixtures import NEW_DIM, OLD_DIM, new_deployment, unit_vectors

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret"
N = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(data_dir: Path, token: str | None = TOKEN) -> Iterator[httpx.Client]:
    """A real `hotswap serve` process on a free loopback port, and a client for it."""
    port = free_port()
    command = "from cli.main import main; main()"
    args = ["serve", "--dir", str(data_dir), "--port", str(port)]
    args += ["--token", token] if token else []
    server = subprocess.Popen(
        [sys.executable, "-c", command, *args], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=headers)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {server.stderr.read()}") from None
                time.sleep(0.2)
        yield client
    finally:
        server.terminate()
        server.wait(timeout=10)
        client.close()


@pytest.fixture
def served(tmp_path):
    """A deployment with N items in v1, served by a real `hotswap serve` process."""
    ctx = new_deployment(tmp_path / "data")
    galleries.ingest(ctx, "v1", [f"doc-{i}" for i in range(N)], unit_vectors(N, OLD_DIM, seed=1))
    with running_server(ctx.data_dir) as client:
        yield ctx, client


def query(
    client: httpx.Client, vectors: np.ndarray, k: int = 5, version: str = "v2"
) -> httpx.Response:
    return client.post("/query", json={"version": version, "vectors": vectors.tolist(), "k": k})


def test_query_status_and_docs(served) -> None:
    ctx, client = served
    response = query(client, unit_vectors(3, NEW_DIM, seed=2))
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 3 and all(len(r) == 5 for r in results)
    assert {hit["space"] for r in results for hit in r} == {"v1"}
    status = client.get("/status").json()
    assert [s["authoritative"] for s in status["spaces"]] == [N, 0]
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/query", "/status", "/healthz"}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"version": "v9", "vectors": [[0.0] * NEW_DIM]}, 404, "unknown model version 'v9'"),
        ({"version": "v2", "vectors": [[0.0] * 3]}, 422, "width 3, the space expects 10"),
        ({"version": "v2", "vectors": [[1.0] * NEW_DIM, [1.0]]}, 422, "same width"),
        (
            {"version": "v2", "vectors": [[0.0] * NEW_DIM], "k": 0},
            422,
            "greater than or equal to 1",
        ),
        (
            {"version": "v2", "vectors": [[0.0] * NEW_DIM], "policy": "best"},
            404,
            "unknown merge policy",
        ),
        ({"version": "v1", "vectors": [[0.0] * OLD_DIM]}, 200, ""),
    ],
)
def test_bad_requests_get_clear_4xx(served, body, status, message) -> None:
    _, client = served
    response = client.post("/query", json=body)
    assert response.status_code == status and message in response.text


def test_token_and_size_limit(served) -> None:
    _, client = served
    anonymous = httpx.post(
        str(client.base_url.join("/query")), json={"version": "v2", "vectors": [[0.0]]}
    )
    assert anonymous.status_code == 401
    assert (
        httpx.get(str(client.base_url.join("/healthz"))).status_code == 200
    )  # health needs no token
    huge = client.post(
        "/query", content=b"x" * (9 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert huge.status_code == 413


def test_a_clean_stop_writes_the_pending_access_counts(tmp_path) -> None:
    """Counts are flushed every few seconds; the ones since the last flush are written at shutdown."""
    ctx = new_deployment(tmp_path / "data")
    galleries.ingest(ctx, "v1", [f"doc-{i}" for i in range(N)], unit_vectors(N, OLD_DIM, seed=1))
    with running_server(ctx.data_dir) as client:
        assert query(client, unit_vectors(4, NEW_DIM, seed=2), k=5).status_code == 200
    with ctx.transaction() as session:
        hits = session.scalars(select(ItemAccess.hits)).all()
    assert sum(hits) == 4 * 5


def test_queries_during_a_migration_never_fail_nor_repeat(served) -> None:
    ctx, client = served
    run_id = migrate.plan(ctx, "v1", "v2", seed=4)
    new_vectors = unit_vectors(N + 1, NEW_DIM, seed=5)
    queries = unit_vectors(4, NEW_DIM, seed=6)
    failures, answered = [], []
    done = threading.Event()

    def ask() -> None:
        while not done.is_set():
            response = query(client, queries, k=N)
            if response.status_code != 200:
                failures.append(response.text)
                continue
            for hits in response.json()["results"]:
                ids = [h["id"] for h in hits]
                answered.append(len(ids) == N and len(set(ids)) == N)

    worker = threading.Thread(target=ask)
    worker.start()
    migrate.run(
        ctx,
        run_id,
        lambda ids: torch.from_numpy(new_vectors[ids]),
        wave_size=10,
        on_wave=lambda w: time.sleep(0.05),
    )
    done.set()
    worker.join()
    assert failures == [] and len(answered) >= 8 and all(answered)
    final = query(client, queries, k=3).json()["results"]
    assert {hit["space"] for r in final for hit in r} == {"v2"}


def test_text_queries_through_a_pretrained_version(tmp_path) -> None:
    """MiniLM registered with `models add --encoder`; a gallery of real WordNet definitions."""
    from typer.testing import CliRunner

    from cli.main import app
    from index.context import open_context
    from models.loaders import load_pretrained
    from models.text_data import WORDNET_DIR, read_synsets

    data, cli = tmp_path / "data", CliRunner()
    spec = "sentence-transformers:all-MiniLM-L6-v2"
    assert cli.invoke(app, ["init", "--dir", str(data)]).exit_code == 0
    added = cli.invoke(app, ["models", "add", "mini", "--encoder", spec, "--dir", str(data)])
    assert added.exit_code == 0 and "384-d, pretrained" in added.output
    assert (
        cli.invoke(app, ["models", "add", "ext", "--dim", "384", "--dir", str(data)]).exit_code == 0
    )
    synsets = [s for _, s in zip(range(150), read_synsets(WORDNET_DIR / "data.adv"), strict=False)]
    definitions = [s.definition for s in synsets]
    ctx = open_context(data)
    galleries.ingest(
        ctx, "mini", [s.id for s in synsets], load_pretrained(spec).encode(definitions)
    )
    with running_server(data, token=None) as client:
        asked = [7, 42, 99]
        response = client.post(
            "/query", json={"version": "mini", "texts": [definitions[i] for i in asked], "k": 3}
        )
        assert response.status_code == 200, response.text
        top = [hits[0] for hits in response.json()["results"]]
        assert [h["id"] for h in top] == [synsets[i].id for i in asked]
        assert all(h["score"] == pytest.approx(1.0, abs=1e-4) for h in top)
        no_encoder = client.post("/query", json={"version": "ext", "texts": ["a dog"]})
        assert no_encoder.status_code == 422 and "no pretrained encoder" in no_encoder.text
        both = client.post("/query", json={"version": "mini", "texts": ["x"], "vectors": [[0.0]]})
        assert both.status_code == 422 and "exactly one" in both.text


@pytest.fixture(scope="module")
def served_once(tmp_path_factory):
    """One server for the tests that only read: malformed bodies, the float32 body, OpenAPI."""
    ctx = new_deployment(tmp_path_factory.mktemp("served") / "data")
    galleries.ingest(ctx, "v1", [f"doc-{i}" for i in range(N)], unit_vectors(N, OLD_DIM, seed=1))
    with running_server(ctx.data_dir) as client:
        yield client


def json_body(vectors: str, version: str = "v2") -> bytes:
    return f'{{"version": "{version}", "vectors": {vectors}, "k": 3}}'.encode()


ROW = ", ".join(["0.5"] * (NEW_DIM - 1))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (json_body(f"[[NaN, {ROW}]]"), "finite number"),
        (json_body(f"[[Infinity, {ROW}]]"), "finite number"),
        (json_body(f"[[1e400, {ROW}]]"), "finite number"),
        (json_body(f"[[1e39, {ROW}]]"), "must be finite"),  # finite as float64, not as float32
        (json_body(f'[["0.5", {ROW}]]'), "valid number"),
        (json_body(f"[[true, {ROW}]]"), "valid number"),
        (json_body(f"[{ROW}]"), "valid array"),
        (json_body("[" + ", ".join(["[0.5]"] * 4097) + "]"), "at most 4096 items"),
        (b'{"version": "v2", "vectors": [[0.5', "Invalid JSON"),
        (b'["v2"]', "Input should be an object"),
    ],
)
def test_malformed_json_bodies_get_422(served_once, raw, message) -> None:
    response = served_once.post("/query", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422 and message in response.text, response.text


def test_unknown_content_type_gets_415(served_once) -> None:
    response = served_once.post("/query", content=b"v2", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "application/octet-stream" in response.text


def post_float32(client: httpx.Client, vectors: np.ndarray, **params: object) -> httpx.Response:
    return client.post(
        "/query",
        params={"version": "v2", "k": 5, **params},
        content=vectors.astype("<f4").tobytes(),
        headers={"content-type": "application/octet-stream"},
    )


def test_float32_body_answers_like_json(served_once) -> None:
    queries = unit_vectors(4, NEW_DIM, seed=7)
    binary = post_float32(served_once, queries, dim=NEW_DIM)
    assert binary.status_code == 200, binary.text
    assert binary.json() == query(served_once, queries).json()


def test_a_float32_batch_answers_like_single_queries(served_once) -> None:
    queries = unit_vectors(2000, NEW_DIM, seed=8)
    batch = post_float32(served_once, queries, dim=NEW_DIM)
    assert batch.status_code == 200, batch.text
    rows = batch.json()["results"]
    assert len(rows) == len(queries)
    for i in (0, 1234, len(queries) - 1):
        assert rows[i] == query(served_once, queries[i : i + 1]).json()["results"][0]


@pytest.mark.parametrize(
    ("vectors", "params", "status", "message"),
    [
        (np.zeros(NEW_DIM + 1), {"dim": NEW_DIM}, 422, "not a whole number of float32 rows"),
        (np.zeros(0), {"dim": NEW_DIM}, 422, "not a whole number of float32 rows"),
        (np.zeros(NEW_DIM), {}, 422, "Field required"),
        (np.zeros(NEW_DIM), {"dim": 0}, 422, "greater than or equal to 1"),
        (np.zeros(NEW_DIM), {"dim": "ten"}, 422, "valid integer"),
        (np.full(NEW_DIM, np.nan), {"dim": NEW_DIM}, 422, "must be finite"),
        (np.zeros(4097), {"dim": 1}, 422, "4097 query rows, at most 4096"),
        (np.zeros(6), {"dim": 3}, 422, "width 3, the space expects 10"),
        (np.zeros(NEW_DIM), {"dim": NEW_DIM, "version": "v9"}, 404, "unknown model version"),
        (np.zeros(NEW_DIM), {"dim": NEW_DIM, "k": 0}, 422, "greater than or equal to 1"),
    ],
)
def test_bad_float32_bodies_get_clear_4xx(served_once, vectors, params, status, message) -> None:
    response = post_float32(served_once, vectors, **params)
    assert response.status_code == status and message in response.text, response.text


def test_float32_body_needs_the_token(served_once) -> None:
    response = httpx.post(
        str(served_once.base_url.join("/query")),
        params={"version": "v2", "dim": NEW_DIM},
        content=np.zeros(NEW_DIM, dtype="<f4").tobytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 401


def test_openapi_documents_both_bodies_and_the_response(served_once) -> None:
    operation = served_once.get("/openapi.json").json()["paths"]["/query"]["post"]
    content = operation["requestBody"]["content"]
    assert content["application/octet-stream"]["schema"]["format"] == "binary"
    fields = content["application/json"]["schema"]["properties"]
    assert fields.keys() == {"version", "vectors", "texts", "k", "policy"}
    assert {p["name"] for p in operation["parameters"]} == {"version", "dim", "k", "policy"}
    response = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert response == {"$ref": "#/components/schemas/QueryResponse"}
