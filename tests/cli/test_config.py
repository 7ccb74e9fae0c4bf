"""hotswap.toml: file < HOTSWAP_* environment < flags; unknown keys rejected, nothing changed."""

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from kernels.errors import InvalidInputError

runner = CliRunner()


@pytest.fixture
def data(tmp_path, monkeypatch):
    """An initialised data directory; the test runs from tmp_path with no HOTSWAP_* set."""
    for name in ("HOTSWAP_DIR", "HOTSWAP_DATABASE", "HOTSWAP_JSON", "HOTSWAP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["init", "--dir", "d"]).exit_code == 0
    return tmp_path / "d"


def current(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, [*args, "db", "current", "--dir", "d"], env=env)


def test_file_in_the_data_directory_sets_a_global(data) -> None:
    assert current().output.startswith("current:")
    (data / "hotswap.toml").write_text("json = true\n")
    assert json.loads(current().output)["current"] is not None


def test_environment_beats_file_and_flag_beats_both(data, tmp_path) -> None:
    (tmp_path / "hotswap.toml").write_text('dir = "nowhere"\n')  # cwd file: a wrong directory
    missing = runner.invoke(app, ["db", "current"])
    assert isinstance(missing.exception, InvalidInputError) and "nowhere" in str(missing.exception)
    from_env = runner.invoke(app, ["db", "current"], env={"HOTSWAP_DIR": "d"})
    assert from_env.exit_code == 0, from_env.output
    (tmp_path / "hotswap.toml").write_text("json = true\n")
    assert current(env={"HOTSWAP_JSON": "0"}).output.startswith("current:")
    assert json.loads(runner.invoke(app, ["db", "current", "--dir", "d", "--json"]).output)


def test_per_command_tables_reach_nested_commands(data, tmp_path) -> None:
    config = tmp_path / "other.toml"
    config.write_text("[db.current]\njson = true\n[query]\nk = 3\n")
    result = runner.invoke(app, ["--config", str(config), "db", "current", "--dir", "d"])
    assert json.loads(result.output)["head"] is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jsn = true\n", "unknown key(s) ['jsn']"),
        ("[query]\nkk = 3\n", "[query]: unknown key 'kk'"),
        ("[migrate.start]\nyes = true\n", "unknown key 'yes'"),  # writes are asked for by flag
        ("[migrate]\ndebug = true\n", "unknown key(s) ['debug']"),  # root-only key, nested
        ("[query\n", "cannot parse"),
        ("query = 3\n", "must be a table"),
    ],
)
def test_bad_files_get_a_clear_error(data, text, message) -> None:
    (data / "hotswap.toml").write_text(text)
    result = current()
    assert isinstance(result.exception, InvalidInputError)
    assert message in str(result.exception)


def test_missing_explicit_config(data) -> None:
    result = current("--config", "absent.toml")
    assert isinstance(result.exception, InvalidInputError) and "absent.toml" in str(
        result.exception
    )


def test_kernels_key_sets_the_backend_unless_the_variable_is_set(data, monkeypatch) -> None:
    import os

    monkeypatch.delenv("HOTSWAP_KERNELS", raising=False)
    (data / "hotswap.toml").write_text('kernels = "torch"\n')
    assert current().exit_code == 0 and os.environ["HOTSWAP_KERNELS"] == "torch"
    monkeypatch.setenv("HOTSWAP_KERNELS", "auto")
    assert current().exit_code == 0 and os.environ["HOTSWAP_KERNELS"] == "auto"
