"""``hotswap train``: train a new model version, compatible with an old one, and register it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.app import DEFAULT_DIR, Database, DataDir, Json, app, emit
from cli.config import read_object_option

METRIC_NAMES = (("top1", "top-1"), ("top5", "top-5"), ("ap", "mAP"))


@app.command(rich_help_panel="Set up")
def train(
    new: Annotated[str, typer.Option("--new", help="Name of the version to create.")],
    old: Annotated[
        str | None,
        typer.Option(
            "--old",
            help="Registered version to stay compatible with (its encoder is loaded from the "
            "catalog). Without it: an independent first version.",
        ),
    ] = None,
    encoder: Annotated[str, typer.Option(help="Encoder registry key: mlp, conv, ...")] = "mlp",
    encoder_config: Annotated[
        str | None,
        typer.Option(
            help='Encoder config: JSON text (\'{"embed_dim": 128, "layer": "monarch"}\') or a '
            ".json/.toml file; input_dim comes from the data.",
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="Compatibility method (with --old): bct, ract or nca train a new encoder with a "
            "backward adapter; extend keeps --old's encoder whole, frozen, and trains the "
            "encoder you configure as extra dimensions beside it (its embed_dim is the extra "
            "width), bridged by a step chosen on held-out training inputs; nca_extended trains "
            "those extra dimensions under nca with a jointly trained λ-orth bridge instead (one "
            "projection at query time; slower: NCA compares every batch with up to --bank-rows "
            "old training vectors).",
        ),
    ] = "bct",
    dataset: Annotated[
        str, typer.Option(help="fashion-mnist, digits or auto, unless --inputs is given.")
    ] = "auto",
    inputs: Annotated[
        Path | None, typer.Option(help="Your training inputs instead: float (N, D) .npy.")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Their class labels: int (N,) .npy (with --inputs).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 5,
    bank_rows: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="nca, nca_extended, extend: at most this many training rows (a seeded sample) "
            "in the old-feature bank or the bridge fit; their time grows with it "
            "(default 10,000).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    quick: Annotated[
        bool, typer.Option("--quick", help="One epoch on 3,000 rows: a smoke run (seconds).")
    ] = False,
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
    as_json: Json = False,
) -> None:
    """Train a new version (with a backward adapter into --old's space) and register both."""
    from cli.progress import progress_reporter
    from index.context import open_context
    from index.train import UpgradeConfig, load_labelled_files, train_upgrade
    from kernels.errors import InvalidInputError
    from models.datasets import load_dataset

    if (inputs is None) != (labels is None):
        raise InvalidInputError("--inputs and --labels go together")
    options: dict[str, Any] = {"new": new, "old": old, "encoder": encoder, "seed": seed}
    if bank_rows is not None:
        options["bank_rows"] = bank_rows
    options |= {
        "method": method,
        "encoder_config": read_object_option(encoder_config, "the encoder config"),
    }
    config = UpgradeConfig.quick(**options) if quick else UpgradeConfig(epochs=epochs, **options)
    ctx = open_context(directory, database)
    if inputs is not None and labels is not None:
        data = load_labelled_files(inputs, labels, seed=seed)
    else:
        data = load_dataset(dataset)
    with progress_reporter() as report:
        result = train_upgrade(ctx, config, data, report)
    emit(result, as_json, train_report(result, directory))


def train_report(r: dict[str, Any], directory: Path) -> str:
    """The protocol cells (old/old, new/old, new/new) and the next command."""
    lines = [
        f"trained {r['new']} ({r['encoder']}, {r['dim']}-d, {r['method']}) on {r['dataset']}, "
        f"{r['train_rows']} rows"
        + (f" ({r['bank_rows']} in its bank)" if "bank_rows" in r else ""),
        "",
        f"  {'':<12}" + "".join(f"{name:>8}" for _, name in METRIC_NAMES),
    ]
    for cell, values in r["cells"].items():
        lines.append(f"  {cell:<12}" + "".join(f"{values[m]:>8.3f}" for m, _ in METRIC_NAMES))
    if "compatible" in r:
        verdict = ", ".join(f"{m} {'PASS' if ok else 'FAIL'}" for m, ok in r["compatible"].items())
        lines += ["", f"compatible (new/old > old/old): {verdict}"]
        lines.append(f"registered {r['new']} and adapter {r['adapter']} ({r['new']} -> {r['old']})")
        lines.append(
            f"next: hotswap migrate plan --dir {directory} --from {r['old']} --to {r['new']} --yes"
        )
    else:
        lines += ["", f"registered {r['new']}"]
        lines.append(
            f"next: hotswap train --dir {directory} --old {r['new']} --new NEW --method bct"
        )
    return "\n".join(lines)
