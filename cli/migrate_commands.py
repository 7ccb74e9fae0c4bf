"""``hotswap migrate plan|start|resume|status|pause``: move a gallery to a new space in waves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import DEFAULT_DIR, Database, DataDir, Json, app, emit

migrate_app = typer.Typer(
    help="Migrate a gallery to a new model version in waves.", no_args_is_help=True
)
app.add_typer(migrate_app, name="migrate", rich_help_panel="Serve and inspect")

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Really write (without it: a dry run).")]
RunId = Annotated[int, typer.Argument(help="Migration run id (see: hotswap migrate status).")]


@migrate_app.command("plan")
def plan(
    source: Annotated[str, typer.Option("--from", help="Space the items are in now.")],
    target: Annotated[
        str,
        typer.Option(
            "--to", help="Space to move them to (made for a version of that name if missing)."
        ),
    ],
    order: Annotated[
        str,
        typer.Option(
            help="Ordering: random, insertion, distance_to_mean (farthest from its k-means mean "
            "in the stored vectors first), access_frequency (most often returned by search "
            "first); uncertainty needs per-item scores (Python API: index.migrate.plan(score=))."
        ),
    ] = "random",
    seed: Annotated[int, typer.Option(help="Seed of the random ordering.")] = 0,
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Create a migration run and its task ledger (every item now authoritative in --from)."""
    from index import galleries, migrate, versions
    from index.context import open_context
    from index.status import summary

    ctx = open_context(directory, database)
    counts = {s["name"]: s["authoritative"] for s in summary(ctx)["spaces"]}
    result: dict[str, object] = {
        "from": source,
        "to": target,
        "order": order,
        "items": counts.get(source, 0),
    }
    if yes:
        with ctx.transaction() as session:
            if target not in counts:
                galleries.create_space(session, versions.get_version(session, target), target)
        result["run"] = migrate.plan(ctx, source, target, ordering=order, seed=seed)
        text = (
            f"planned run {result['run']}: {result['items']} items {source} -> {target}, {order} order\n"
            f"next: hotswap migrate start {result['run']} --vectors NEW.npy --ids IDS.txt --yes"
        )
    else:
        text = f"would plan {result['items']} items {source} -> {target} ({order} order); add --yes to write"
    emit(result, as_json, text)


@migrate_app.command("start")
def start(
    run: RunId,
    vectors: Annotated[Path, typer.Option("--vectors", help="New-model vectors, .npy (N, d).")],
    ids: Annotated[Path, typer.Option("--ids", help="Their external ids, one per line.")],
    wave_size: Annotated[
        int, typer.Option(min=1, help="Items per wave (one snapshot + one commit).")
    ] = 1000,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many waves.")] = None,
    engine: Annotated[
        str, typer.Option(help="local, or ray: a Ray actor pool (pip install 'hotswap[scale]').")
    ] = "local",
    workers: Annotated[int, typer.Option(min=1, help="Encoder actors (--engine ray).")] = 2,
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Run (or resume) a migration's waves; safe to interrupt at any instant and run again."""
    from cli.progress import progress_reporter
    from index import migrate
    from index.context import open_context
    from index.ray_engine import precomputed

    ctx = open_context(directory, database)
    if not yes:
        emit(migrate.status(ctx, run), as_json, "dry run: add --yes to migrate")
        return
    source = precomputed(ctx, ids, vectors, engine=engine, workers=workers)
    with progress_reporter() as report:
        final = migrate.run(
            ctx,
            run,
            source,
            wave_size=wave_size,
            max_waves=limit,
            on_wave=lambda w: report(f"migrate run {run}", w.done, w.total),
        )
    status = migrate.status(ctx, run)
    emit(
        status,
        as_json,
        f"run {run}: {status['state']}, {final.done}/{final.total} items migrated\n"
        f"next: hotswap migrate status {run}",
    )


migrate_app.command("resume", help="Same as start: continue a paused or interrupted run.")(start)


@migrate_app.command("status")
def status(
    run: RunId, directory: DataDir = DEFAULT_DIR, database: Database = None, as_json: Json = False
) -> None:
    """State and progress of a migration run."""
    from index import migrate
    from index.context import open_context

    s = migrate.status(open_context(directory, database), run)
    emit(
        s,
        as_json,
        f"run {s['run']}: {s['state']}, {s['done']}/{s['total']} items ({s['fraction']:.0%}), {s['ordering']} order",
    )


@migrate_app.command("pause")
def pause(run: RunId, directory: DataDir = DEFAULT_DIR, database: Database = None) -> None:
    """Ask a running migration to stop after its current wave."""
    from index import migrate
    from index.context import open_context

    migrate.pause(open_context(directory, database), run)
    typer.echo(
        f"run {run} will pause after its current wave\nnext: hotswap migrate resume {run} ... --yes"
    )


@migrate_app.command("cutover")
def cutover(
    run: RunId,
    alias: Annotated[
        str | None, typer.Option(help="Serving alias to point at the new space.")
    ] = None,
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
    yes: Yes = False,
) -> None:
    """Make a completed run's target space the one that serves (optionally through an alias)."""
    from index import migrate
    from index.context import open_context

    ctx = open_context(directory, database)
    if not yes:
        typer.echo(f"dry run: would cut run {run} over; add --yes")
        return
    migrate.cutover(ctx, run, alias=alias)
    typer.echo(f"run {run} cut over\nnext: hotswap status --dir {directory}")


@migrate_app.command("rollback")
def rollback(
    run: RunId, directory: DataDir = DEFAULT_DIR, database: Database = None, yes: Yes = False
) -> None:
    """Hand every migrated item back to the source space (crash-safe, idempotent)."""
    from index import migrate
    from index.context import open_context

    ctx = open_context(directory, database)
    if not yes:
        typer.echo(f"dry run: would roll run {run} back; add --yes")
        return
    moved = migrate.rollback(ctx, run)
    typer.echo(f"run {run} rolled back: {moved} items answer from the source space again")


@app.command(rich_help_panel="Serve and inspect")
def doctor(
    repair: Annotated[
        bool, typer.Option(help="Fix what can be fixed (stale files, ledger).")
    ] = False,
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
    as_json: Json = False,
) -> None:
    """Check the catalog against the index files; with --repair fix what has a source."""
    from index.context import open_context
    from index.doctor import doctor as check

    report = check(open_context(directory, database), repair=repair)
    lines = [
        f"{f.severity:<8} {f.check:<14} {f.subject}: {f.message}"
        + (f" [repaired: {f.repaired}]" if f.repaired else f" ({f.fix})" if f.fix else "")
        for f in report.findings
    ]
    emit(
        report.to_dict(),
        as_json,
        "\n".join(lines + ["clean" if report.clean else "problems remain"]),
    )
    if not report.clean:
        raise typer.Exit(1)
