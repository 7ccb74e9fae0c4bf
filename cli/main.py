"""The ``hotswap`` command. Each command parses, calls one function below ``cli/``, renders.

Heavy libraries (torch, faiss, triton) are imported inside the commands so ``hotswap --help``
starts fast. Domain errors become one clear line and an exit code here, in one place.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="hotswap",
    help="Upgrade the embedding model of a retrieval system without waiting for a backfill.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(
    help="The catalog database: its schema version and migrations.", no_args_is_help=True
)
app.add_typer(db_app, name="db")

DataDir = Annotated[
    Path, typer.Option("--dir", "-d", help="hotswap data directory.", envvar="HOTSWAP_DIR")
]
Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="Catalog URL (default: SQLite file in the data directory).",
        envvar="HOTSWAP_DATABASE",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of text.")]
_state = {"debug": False}


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


def _emit(result: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(result, indent=2) if as_json else text)


@app.command()
def demo(
    directory: Annotated[
        Path,
        typer.Option("--dir", "-d", help="Where the demo writes its catalog, indexes and plot."),
    ] = Path("hotswap-demo"),
    dataset: Annotated[
        str, typer.Option(help="fashion-mnist, digits, or auto (Fashion-MNIST if installed).")
    ] = "auto",
    quick: Annotated[
        bool, typer.Option("--quick", help="Small splits and one epoch (about 20 s).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    prototypes: Annotated[
        str, typer.Option(help="BCT's old classifier: class_means, or classifier (the paper's).")
    ] = "class_means",
    as_json: Json = False,
) -> None:
    """Train v1 and a compatible v2, serve v2 queries on the v1 gallery, migrate it in waves."""
    from cli.progress import progress_reporter
    from cli.render import demo_report
    from index.demo import DemoConfig, run_demo

    options: dict[str, Any] = {"dataset": dataset, "seed": seed, "prototypes": prototypes}
    config = DemoConfig.quick(**options) if quick else DemoConfig(**options)
    with progress_reporter() as report:
        result = run_demo(directory, config, report)
    _emit(result, as_json, demo_report(result))


@app.command()
def init(directory: DataDir = Path("hotswap-data"), database: Database = None) -> None:
    """Create a data directory and its catalog (schema at the latest migration)."""
    from index.context import open_context

    ctx = open_context(directory, database, create=True)
    typer.echo(
        f"initialised {directory} (catalog: {ctx.engine.url.render_as_string(hide_password=True)})"
    )
    typer.echo(f"next: hotswap db current --dir {directory}")


@db_app.command("upgrade")
def db_upgrade(
    directory: DataDir = Path("hotswap-data"),
    database: Database = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply the catalog's schema migrations (Alembic) up to ``--revision``."""
    from index import db
    from index.context import catalog_url

    url = catalog_url(directory, database)
    db.upgrade(url, revision)
    typer.echo(f"catalog at revision {db.current(url)}")


@db_app.command("current")
def db_current(
    directory: DataDir = Path("hotswap-data"), database: Database = None, as_json: Json = False
) -> None:
    """Show the catalog's schema revision and the one this hotswap needs."""
    from index import db
    from index.context import catalog_url

    url = catalog_url(directory, database)
    info = {"current": db.current(url), "head": db.head()}
    text = f"current: {info['current']}  head: {info['head']}"
    if info["current"] != info["head"]:
        text += f"\nnext: hotswap db upgrade --dir {directory}"
    _emit(info, as_json, text)


def main() -> None:
    """Console entry point: domain errors become one line on stderr and their exit code.

    Typer runs in standalone mode, so usage errors and Ctrl-C keep click's own messages and codes.
    """
    try:
        app()
    except Exception as e:
        # Imported here: kernels imports torch, and `hotswap --help` must not.
        from kernels.errors import HotswapError

        if not isinstance(e, HotswapError) or _state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
