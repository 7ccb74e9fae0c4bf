"""Commands that set a deployment up: demo, init, db."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.app import DEFAULT_DIR, Database, DataDir, Json, app, db_app, emit


@app.command(rich_help_panel="Set up")
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
    emit(result, as_json, demo_report(result))


@app.command(rich_help_panel="Set up")
def init(directory: DataDir = DEFAULT_DIR, database: Database = None) -> None:
    """Create a data directory and its catalog (schema at the latest migration)."""
    from index.context import open_context

    ctx = open_context(directory, database, create=True)
    typer.echo(
        f"initialised {directory} (catalog: {ctx.engine.url.render_as_string(hide_password=True)})"
    )
    typer.echo(f"next: hotswap db current --dir {directory}")


@db_app.command("upgrade")
def db_upgrade(
    directory: DataDir = DEFAULT_DIR,
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
    directory: DataDir = DEFAULT_DIR, database: Database = None, as_json: Json = False
) -> None:
    """Show the catalog's schema revision and the one this hotswap needs."""
    from index import db
    from index.context import catalog_url

    url = catalog_url(directory, database)
    info = {"current": db.current(url), "head": db.head()}
    text = f"current: {info['current']}  head: {info['head']}"
    if info["current"] != info["head"]:
        text += f"\nnext: hotswap db upgrade --dir {directory}"
    emit(info, as_json, text)
