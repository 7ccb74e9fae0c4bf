"""ingest, query, status and models list against a real deployment."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.index.fixtures import NEW_DIM, OLD_DIM, new_deployment, unit_vectors

runner = CliRunner()


@pytest.fixture
def deployment(tmp_path):
    data = tmp_path / "data"
    new_deployment(data)
    np.save(tmp_path / "old.npy", unit_vectors(20, OLD_DIM, seed=1))
    (tmp_path / "ids.txt").write_text("\n".join(f"doc-{i}" for i in range(20)) + "\n")
    return tmp_path, data


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_ingest_then_query_with_the_new_version(deployment) -> None:
    tmp, data = deployment
    out = invoke(
        "ingest",
        "--dir",
        str(data),
        "--space",
        "v1",
        "--vectors",
        str(tmp / "old.npy"),
        "--ids",
        str(tmp / "ids.txt"),
        "--json",
    )
    assert json.loads(out.stdout) == {"space": "v1", "ingested": 20}
    np.save(tmp / "q.npy", unit_vectors(3, NEW_DIM, seed=2))
    out = invoke(
        "query", "--dir", str(data), "--version", "v2", "--vectors", str(tmp / "q.npy"), "-k", "4"
    )
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["query"] for line in lines] == [0, 1, 2]
    for line in lines:
        assert len(line["hits"]) == 4 and {h["space"] for h in line["hits"]} == {"v1"}
        scores = [h["score"] for h in line["hits"]]
        assert scores == sorted(scores, reverse=True)


def test_status_and_models_list(deployment) -> None:
    tmp, data = deployment
    invoke(
        "ingest",
        "--dir",
        str(data),
        "--space",
        "v1",
        "--vectors",
        str(tmp / "old.npy"),
        "--ids",
        str(tmp / "ids.txt"),
    )
    s = json.loads(invoke("status", "--dir", str(data), "--json").stdout)
    assert [sp["authoritative"] for sp in s["spaces"]] == [20, 0]
    assert s["adapters"][0]["direction"] == "backward"
    assert "v2-to-v1" in invoke("status", "--dir", str(data)).stdout
    versions = json.loads(invoke("models", "list", "--dir", str(data), "--json").stdout)
    assert [v["name"] for v in versions] == ["v1", "v2"]


@pytest.mark.parametrize(
    ("vectors", "ids", "message"),
    [
        (unit_vectors(20, OLD_DIM + 1, 0), None, "width 7, the space expects 6"),
        (unit_vectors(19, OLD_DIM, 0), None, "20 external ids for 19 vectors"),
        (None, "doc-1\n\ndoc-2\n", "blank lines at [2]"),
        (np.array(["a", "b"]), None, "float (N, d) array"),
    ],
)
def test_bad_files_are_refused(deployment, vectors, ids, message) -> None:
    tmp, data = deployment
    if vectors is not None:
        np.save(tmp / "old.npy", vectors)
    if ids is not None:
        (tmp / "ids.txt").write_text(ids)
    result = runner.invoke(
        app,
        [
            "ingest",
            "--dir",
            str(data),
            "--space",
            "v1",
            "--vectors",
            str(tmp / "old.npy"),
            "--ids",
            str(tmp / "ids.txt"),
        ],
    )
    assert result.exit_code != 0 and message in str(result.exception)
    s = json.loads(invoke("status", "--dir", str(data), "--json").stdout)
    assert s["spaces"][0]["vectors"] == 0  # nothing was ingested


def fit_b_to_a(tmp_path, a: np.ndarray, b: np.ndarray) -> list[str]:
    """A data dir with versions a (8-d, with a space) and b (12-d), the anchors a.npy / b.npy
    saved: the ``hotswap fit`` arguments (b -> a, --json) for them."""
    data = tmp_path / "data"
    invoke("init", "--dir", str(data))
    invoke("models", "add", "a", "--dim", "8", "--dir", str(data))
    invoke("models", "add", "b", "--dim", "12", "--dir", str(data), "--no-space")
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    return [
        "fit", "--from", "b", "--to", "a", "--dir", str(data), "--json",
        "--source-vectors", str(tmp_path / "b.npy"), "--target-vectors", str(tmp_path / "a.npy"),
    ]  # fmt: skip


def test_fit_selects_registers_and_serves_an_adapter(tmp_path) -> None:
    """v3 is a rotated, widened copy of v1: the fitted bridge must send v3 queries to v1's items."""
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    old = unit_vectors(400, 8, seed=3)
    rotation = np.linalg.qr(rng.normal(size=(12, 12)))[0][:8]  # (8, 12) orthonormal rows
    out = json.loads(invoke(*fit_b_to_a(tmp_path, old, (old @ rotation).astype(np.float32))).stdout)
    assert out["direction"] == "backward" and out["pairs"] == 400
    assert max(s["recall@10"] for s in out["metrics"]["held_out"].values()) > 0.95
    (tmp_path / "ids.txt").write_text("\n".join(f"doc-{i}" for i in range(400)))
    invoke(
        "ingest",
        "--dir",
        str(data),
        "--space",
        "a",
        "--vectors",
        str(tmp_path / "a.npy"),
        "--ids",
        str(tmp_path / "ids.txt"),
    )
    np.save(tmp_path / "q.npy", (old[:5] @ rotation).astype(np.float32))
    hits = [
        json.loads(line)["hits"][0]["id"]
        for line in invoke(
            "query", "--dir", str(data), "--version", "b", "--vectors", str(tmp_path / "q.npy")
        ).stdout.splitlines()
    ]
    assert hits == [f"doc-{i}" for i in range(5)]


def test_fit_with_labels_chooses_by_class_top1_and_bad_labels_register_nothing(tmp_path) -> None:
    data = tmp_path / "data"
    rng = np.random.default_rng(1)
    labels = np.arange(300) % 3
    old = (3 * rng.normal(size=(3, 8))[labels] + rng.normal(size=(300, 8))).astype(np.float32)
    new = (3 * rng.normal(size=(3, 12))[labels] + rng.normal(size=(300, 12))).astype(np.float32)
    fit = fit_b_to_a(tmp_path, old, new)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "float.npy", labels.astype(np.float32))
    bad = runner.invoke(app, [*fit, "--labels", str(tmp_path / "float.npy")])
    assert bad.exit_code != 0 and "integer (N,) class-id array" in str(bad.exception)
    status = json.loads(invoke("status", "--dir", str(data), "--json").stdout)
    assert status["adapters"] == []  # the refused fit registered nothing
    out = json.loads(invoke(*fit, "--labels", str(tmp_path / "labels.npy")).stdout)
    metrics = out["metrics"]
    assert metrics["criterion"] == "class_top1" and metrics["labelled"] is True
    assert "lambda_orthogonal_nca" in metrics["held_out"]  # label-aware candidates were fitted
    best = max(s["class_top1"] for s in metrics["held_out"].values())
    assert metrics["held_out"][out["kind"]]["class_top1"] == best > 0.9  # separable classes


def test_fit_adapter_config_sets_the_named_adapters_fields(tmp_path) -> None:
    data = tmp_path / "data"
    fit = fit_b_to_a(tmp_path, unit_vectors(200, 8, seed=4), unit_vectors(200, 12, seed=5))
    for extra, message in [
        (["--adapter-config", '{"lam": 0.0}'], "no adapter was named"),
        (["--adapter", "lambda_orthogonal", "--adapter-config", "[1]"], "must be an object"),
        (["--adapter", "lambda_orthogonal", "--adapter-config", '{"no_such": 1}'], "no_such"),
    ]:
        bad = runner.invoke(app, [*fit, *extra])
        assert bad.exit_code != 0 and message in str(bad.exception), bad.output
    status = json.loads(invoke("status", "--dir", str(data), "--json").stdout)
    assert status["adapters"] == []  # every refused fit registered nothing
    out = json.loads(
        invoke(*fit, "--adapter", "lambda_orthogonal", "--adapter-config", '{"lam": 0.5}').stdout
    )
    assert out["kind"] == "lambda_orthogonal" and out["config"]["lam"] == 0.5


def test_fit_with_queries_records_them_and_refuses_the_wrong_width(tmp_path) -> None:
    """Queries embedded by --from add answer pairs; a query file of another width is refused."""
    data = tmp_path / "data"
    rng = np.random.default_rng(2)
    old = unit_vectors(300, 8, seed=6)
    rotation = np.linalg.qr(rng.normal(size=(12, 12)))[0][:8]  # (8, 12) orthonormal rows
    new = (old @ rotation).astype(np.float32)
    fit = fit_b_to_a(tmp_path, old, new)
    np.save(tmp_path / "q8.npy", old[:10])
    bad = runner.invoke(app, [*fit, "--queries", str(tmp_path / "q8.npy")])
    assert bad.exit_code != 0 and "b query vectors has width 8" in str(bad.exception), bad.output
    assert json.loads(invoke("status", "--dir", str(data), "--json").stdout)["adapters"] == []
    noisy = new[:50] + 0.05 * rng.normal(size=(50, 12)).astype(np.float32)
    np.save(tmp_path / "q.npy", noisy)
    np.save(tmp_path / "q_old.npy", old[:50])
    out = json.loads(invoke(*fit, "--queries", str(tmp_path / "q.npy"), "--target-queries",
                            str(tmp_path / "q_old.npy")).stdout)  # fmt: skip
    assert out["metrics"]["answer_queries"] == 50 and out["metrics"]["query_pairs"] is True
    assert out["pairs"] == 300 and out["metrics"]["criterion"] == "answer_recall@10"
    assert all("answer_recall@10" in scores for scores in out["metrics"]["held_out"].values())
    assert out["metrics"]["held_out"][out["kind"]]["recall@10"] > 0.95  # the rotation still found
