"""The Typer application and what its commands share: option types and output helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.config import ConfigGroup

app = typer.Typer(
    name="hotswap",
    help="Upgrade the embedding model of a retrieval system without waiting for a backfill.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=ConfigGroup,
)
db_app = typer.Typer(
    help="The catalog database: its schema version and migrations.", no_args_is_help=True
)
models_app = typer.Typer(help="Model versions registered in the catalog.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")

DataDir = Annotated[
    Path, typer.Option("--dir", "-d", help="hotswap data directory.", envvar="HOTSWAP_DIR")
]
Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="Catalog URL (default: SQLite file in the data directory), e.g. postgresql+psycopg://…",
        envvar="HOTSWAP_DATABASE",
    ),
]
Json = Annotated[
    bool,
    typer.Option("--json", help="Print JSON on stdout instead of text.", envvar="HOTSWAP_JSON"),
]
DEFAULT_DIR = Path("hotswap-data")
state = {"debug": False}


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show full tracebacks on errors.", envvar="HOTSWAP_DEBUG"),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Config file (default: hotswap.toml in the data directory, else in the "
            "current directory). Its values rank below HOTSWAP_* variables and flags.",
            envvar="HOTSWAP_CONFIG",
        ),
    ] = None,
) -> None:
    from cli.config import apply

    state["debug"] = debug  # set first: a bad config file's error then honours --debug
    root = apply(ctx, config)
    if getattr(ctx.get_parameter_source("debug"), "name", None) == "DEFAULT":
        state["debug"] = bool(root.get("debug", False))


def emit(result: Any, as_json: bool, text: str) -> None:
    """JSON on stdout with --json, else the text rendering."""
    typer.echo(json.dumps(result, indent=2) if as_json else text)


# Register `hotswap bench` and `hotswap eval`: imported last because they use app, emit and Json.
from cli import bench_commands, eval_commands  # noqa: E402, F401
