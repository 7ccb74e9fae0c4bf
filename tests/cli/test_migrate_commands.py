"""hotswap migrate plan/start/status/pause/resume on a real deployment, driven through the CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from index import galleries
from tests.index.fixtures import NEW_DIM, OLD_DIM, new_deployment, unit_vectors

runner = CliRunner()
N = 30


@pytest.fixture
def deployment(tmp_path):
    data = tmp_path / "data"
    ctx = new_deployment(data)
    names = [f"doc-{i}" for i in range(N)]
    galleries.ingest(ctx, "v1", names, unit_vectors(N, OLD_DIM, seed=1))
    np.save(tmp_path / "new.npy", unit_vectors(N, NEW_DIM, seed=2))
    (tmp_path / "ids.txt").write_text("\n".join(names))
    return tmp_path, data


def cli(*args: str, ok: bool = True):
    result = runner.invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


def spaces(data) -> list[int]:
    return [
        s["authoritative"]
        for s in json.loads(cli("status", "--dir", str(data), "--json").stdout)["spaces"]
    ]


def test_plan_is_a_dry_run_without_yes(deployment) -> None:
    _, data = deployment
    out = json.loads(
        cli("migrate", "plan", "--from", "v1", "--to", "v2", "--dir", str(data), "--json").stdout
    )
    assert out == {"from": "v1", "to": "v2", "order": "random", "items": N}
    assert json.loads(cli("status", "--dir", str(data), "--json").stdout)["migrations"] == []


def test_plan_start_limit_status_resume(deployment) -> None:
    tmp, data = deployment
    d = ("--dir", str(data))
    plan = json.loads(
        cli("migrate", "plan", "--from", "v1", "--to", "v2", "--yes", "--json", *d).stdout
    )
    files = ("--vectors", str(tmp / "new.npy"), "--ids", str(tmp / "ids.txt"))
    cli(
        "migrate",
        "start",
        str(plan["run"]),
        *files,
        "--wave-size",
        "8",
        "--limit",
        "2",
        "--yes",
        *d,
    )
    assert spaces(data) == [N - 16, 16]
    status = json.loads(cli("migrate", "status", str(plan["run"]), "--json", *d).stdout)
    assert status["done"] == 16 and status["state"] == "running"
    cli("migrate", "resume", str(plan["run"]), *files, "--wave-size", "8", "--yes", *d)
    assert spaces(data) == [0, N]
    assert "completed" in cli("migrate", "status", str(plan["run"]), *d).stdout


def test_missing_new_vector_fails_the_wave_and_changes_nothing(deployment) -> None:
    tmp, data = deployment
    d = ("--dir", str(data))
    run = json.loads(
        cli("migrate", "plan", "--from", "v1", "--to", "v2", "--yes", "--json", *d).stdout
    )["run"]
    np.save(tmp / "short.npy", unit_vectors(N - 1, NEW_DIM, seed=2))
    (tmp / "short.txt").write_text("\n".join(f"doc-{i}" for i in range(N - 1)))
    result = cli(
        "migrate",
        "start",
        str(run),
        "--vectors",
        str(tmp / "short.npy"),
        "--ids",
        str(tmp / "short.txt"),
        "--wave-size",
        str(N),
        "--yes",
        *d,
        ok=False,
    )
    assert "no new vector for 1 item(s)" in str(result.exception)
    assert spaces(data) == [N, 0]


def test_pause_stops_a_run(deployment) -> None:
    tmp, data = deployment
    d = ("--dir", str(data))
    run = json.loads(
        cli("migrate", "plan", "--from", "v1", "--to", "v2", "--yes", "--json", *d).stdout
    )["run"]
    cli("migrate", "pause", str(run), *d)
    cli(
        "migrate",
        "start",
        str(run),
        "--vectors",
        str(tmp / "new.npy"),
        "--ids",
        str(tmp / "ids.txt"),
        "--yes",
        *d,
    )
    # start resumes a paused run: it sets the state back to running before its first wave
    assert spaces(data) == [0, N]


def test_cutover_rollback_and_doctor(deployment) -> None:
    tmp, data = deployment
    d = ("--dir", str(data))
    run = json.loads(
        cli("migrate", "plan", "--from", "v1", "--to", "v2", "--yes", "--json", *d).stdout
    )["run"]
    cli(
        "migrate",
        "start",
        str(run),
        "--vectors",
        str(tmp / "new.npy"),
        "--ids",
        str(tmp / "ids.txt"),
        "--wave-size",
        "8",
        "--limit",
        "2",
        "--yes",
        *d,
    )
    assert "dry run" in cli("migrate", "rollback", str(run), *d).stdout
    assert spaces(data) == [N - 16, 16]
    assert "16 items" in cli("migrate", "rollback", str(run), "--yes", *d).stdout
    assert spaces(data) == [N, 0]
    report = json.loads(cli("doctor", "--json", *d).stdout)
    assert report["clean"] is True
    run2 = json.loads(
        cli("migrate", "plan", "--from", "v1", "--to", "v2", "--yes", "--json", *d).stdout
    )["run"]
    cli(
        "migrate",
        "start",
        str(run2),
        "--vectors",
        str(tmp / "new.npy"),
        "--ids",
        str(tmp / "ids.txt"),
        "--yes",
        *d,
    )
    cli("migrate", "cutover", str(run2), "--yes", *d)
    assert "cutover" in cli("migrate", "status", str(run2), *d).stdout
    (data / "indexes" / "v1.999.faiss").write_bytes(b"junk")  # a snapshot no catalog row points at
    result = cli("doctor", *d, ok=False)
    assert result.exit_code == 1 and "v1.999.faiss" in result.stdout
    assert json.loads(cli("doctor", "--repair", "--json", *d).stdout)["clean"] is True


@pytest.mark.parametrize("order", ["insertion", "distance_to_mean", "access_frequency"])
def test_every_ordering_the_help_names_plans_from_the_cli(deployment, order: str) -> None:
    _, data = deployment
    d = ("--dir", str(data))
    assert order in cli("migrate", "plan", "--help").stdout
    plan = json.loads(
        cli("migrate", "plan", "--from", "v1", "--to", "v2", "--order", order, "--yes", "--json",
            *d).stdout
    )  # fmt: skip
    status = json.loads(cli("migrate", "status", str(plan["run"]), "--json", *d).stdout)
    assert status["ordering"] == order and status["total"] == N


def test_uncertainty_from_the_cli_says_it_needs_scores(deployment) -> None:
    _, data = deployment
    result = cli("migrate", "plan", "--from", "v1", "--to", "v2", "--order", "uncertainty",
                 "--yes", "--dir", str(data), ok=False)  # fmt: skip
    assert result.exit_code != 0 and "needs a per-item score" in str(result.exception)
    assert json.loads(cli("status", "--dir", str(data), "--json").stdout)["migrations"] == []
