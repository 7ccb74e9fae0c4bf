"""The command line through Typer's test runner, and through main() for exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def hotswap(*args: str) -> subprocess.CompletedProcess:
    """Run the real entry point (main(): one-line errors and exit codes)."""
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "init", "db"):
        assert command in result.output


def test_init_then_db_current(tmp_path) -> None:
    data = tmp_path / "data"
    result = runner.invoke(app, ["init", "--dir", str(data)])
    assert result.exit_code == 0 and "next: hotswap db current" in result.output
    result = runner.invoke(app, ["db", "current", "--dir", str(data), "--json"])
    info = json.loads(result.output)
    assert info["current"] == info["head"] is not None


def test_db_upgrade_from_nothing_to_head(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    result = runner.invoke(app, ["db", "upgrade", "--database", url])
    from index import db

    assert result.exit_code == 0 and f"catalog at revision {db.head()}" in result.output


def test_errors_are_one_line_with_an_exit_code(tmp_path) -> None:
    result = hotswap("db", "current", "--dir", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: no hotswap data directory at {tmp_path / 'missing'} "
        f"(run: hotswap init --dir {tmp_path / 'missing'})"
    )
    assert result.stdout == ""


def test_usage_errors_keep_click_exit_code() -> None:
    result = hotswap("demo", "--no-such-flag")
    assert result.returncode == 2 and "No such option" in result.stderr


def test_demo_refuses_a_foreign_directory(tmp_path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = hotswap("demo", "--quick", "--dir", str(tmp_path))
    assert result.returncode == 4 and "was not made by hotswap demo" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_demo_quick_json(tmp_path) -> None:
    result = runner.invoke(app, ["demo", "--quick", "--json", "--dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out["cells"]) == {"old/old", "new/old", "new/new"}
    assert [p["fraction"] for p in out["curve"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # The curve starts at the bridged cell and ends at new/new: the mixed search at 0% and 100%
    # migration agrees with the direct evaluations of those two cells.
    for metric in ("top1", "top5", "ap"):
        assert out["curve"][0][metric] == pytest.approx(out["cells"]["new/old"][metric], abs=1e-9)
        assert out["curve"][-1][metric] == pytest.approx(out["cells"]["new/new"][metric], abs=2e-3)
    assert Path(out["plot"]).stat().st_size > 10_000
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["cells"] == out["cells"]
    # Re-running in the demo's own directory replaces the earlier run.
    assert (
        runner.invoke(app, ["demo", "--quick", "--json", "--dir", str(tmp_path / "demo")]).exit_code
        == 0
    )


def test_models_add_needs_exactly_one_of_dim_or_encoder(tmp_path) -> None:
    data = str(tmp_path / "data")
    assert runner.invoke(app, ["init", "--dir", data]).exit_code == 0
    from kernels.errors import InvalidInputError, NotFoundError

    for extra in ([], ["--dim", "8", "--encoder", "sentence-transformers:all-MiniLM-L6-v2"]):
        result = runner.invoke(app, ["models", "add", "v1", "--dir", data, *extra])
        assert isinstance(result.exception, InvalidInputError)
        assert "exactly one of --dim" in str(result.exception)
    spec = ["--encoder", "sentence-transformer:x"]
    unknown = runner.invoke(app, ["models", "add", "v1", "--dir", data, *spec])
    assert isinstance(unknown.exception, NotFoundError)
    assert "did you mean 'sentence-transformers'" in str(unknown.exception)
    listed = runner.invoke(app, ["models", "list", "--dir", data, "--json"])
    assert json.loads(listed.output) == []


def test_every_command_has_help() -> None:
    """Each command and group explains itself in --help (its docstring's first line at least)."""
    import typer.main

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    for path, command in walk(typer.main.get_command(app), []):
        assert command.help and len(command.help.split()) >= 4, path
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, path
