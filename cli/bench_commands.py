"""``hotswap bench compat``: the compatibility protocol benchmark (logic in compat/protocol.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import Json, app, emit

bench_app = typer.Typer(help="Benchmarks: measured, never asserted.", no_args_is_help=True)
app.add_typer(bench_app, name="bench", rich_help_panel="Serve and inspect")


@bench_app.command("compat")
def compat(
    quick: Annotated[
        bool, typer.Option("--quick", help="One seed, small splits, one epoch (about a minute).")
    ] = False,
    seeds: Annotated[
        int | None, typer.Option(min=1, help="Seeds 0..N-1 (default 3; 1 quick).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write compat.json, compat_tables.md and the plots here.")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 2,
    chain_methods: Annotated[
        str | None,
        typer.Option(
            help="Chain methods, comma-separated, instead of the protocol's default ones (an "
            "unknown name is refused with the list of known ones)."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Training-time objectives, post-hoc adapters, chains and backfilling on Fashion-MNIST."""
    import torch

    from compat.protocol import ProtocolConfig, run_protocol
    from compat.protocol_report import render_tables, write_outputs

    torch.set_num_threads(threads)
    config = ProtocolConfig.quick() if quick else ProtocolConfig()
    if seeds:
        config = config.replace(seeds=tuple(range(seeds)))
    if chain_methods:
        config = config.replace(chain_methods=tuple(m for m in chain_methods.split(",") if m))
    results = run_protocol(config, lambda message: typer.echo(message, err=True))
    if out is not None:
        write_outputs(results, out)
    emit(results, as_json, render_tables(results))
