"""Commands on a running deployment: ingest vectors, query them, show what the catalog holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.app import DEFAULT_DIR, Database, DataDir, Json, app, emit

VectorsFile = Annotated[Path, typer.Option("--vectors", help="float32 (N, d) array, .npy.")]


@app.command(rich_help_panel="Serve and inspect")
def ingest(
    space: Annotated[str, typer.Option(help="Embedding space that receives the vectors.")],
    vectors: Annotated[
        Path,
        typer.Option("--vectors", help="float32 (N, d) .npy, or .parquet (id + vector columns)."),
    ],
    ids: Annotated[
        Path | None, typer.Option("--ids", help="External ids, one per line (with .npy).")
    ] = None,
    id_column: Annotated[str, typer.Option(help="Parquet: the id column.")] = "id",
    vector_column: Annotated[str, typer.Option(help="Parquet: the vector column.")] = "embedding",
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
    as_json: Json = False,
) -> None:
    """Add items with precomputed vectors to a space (all or nothing: bad input changes nothing)."""
    from index import galleries
    from index.context import open_context
    from kernels.errors import InvalidInputError
    from models.vector_files import load_ids, load_vectors

    ctx = open_context(directory, database)
    if vectors.suffix == ".parquet":
        item_ids = galleries.ingest_parquet(ctx, space, vectors, id_column, vector_column)
    elif ids is None:
        raise InvalidInputError("--ids is required with a .npy vectors file")
    else:
        item_ids = galleries.ingest(ctx, space, load_ids(ids), load_vectors(vectors))
    result = {"space": space, "ingested": len(item_ids)}
    emit(
        result,
        as_json,
        f"ingested {len(item_ids)} items into {space!r}\n"
        f"next: hotswap query --dir {directory} --version <version> --vectors <queries.npy>",
    )


@app.command(rich_help_panel="Serve and inspect")
def query(
    version: Annotated[str, typer.Option(help="Model version that embedded the queries.")],
    vectors: VectorsFile,
    k: Annotated[int, typer.Option("-k", min=1, max=10_000, help="Results per query.")] = 10,
    policy: Annotated[
        str, typer.Option(help="Merge policy: score, calibrated, rrf, native_first.")
    ] = "score",
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
) -> None:
    """Search every space holding part of the gallery; one JSON line per query on stdout."""
    import torch

    from index.context import open_context
    from index.search import MixedSearcher
    from models.vector_files import load_vectors

    searcher = MixedSearcher.open(open_context(directory, database), version)
    result = searcher.search(torch.from_numpy(load_vectors(vectors)), k=k, policy=policy)
    names = searcher.external_ids(result.ids)
    for q, row in enumerate(names):
        hits = [
            {"id": name, "score": round(float(score), 6), "space": result.space_names[space]}
            for name, score, space in zip(row, result.scores[q], result.spaces[q], strict=True)
            if name is not None
        ]
        typer.echo(json.dumps({"query": q, "hits": hits}))


@app.command(rich_help_panel="Serve and inspect")
def status(
    directory: DataDir = DEFAULT_DIR, database: Database = None, as_json: Json = False
) -> None:
    """Versions, spaces (vectors, authoritative items), adapters and migration runs."""
    from cli.render import status_report
    from index.context import open_context
    from index.status import summary

    result = summary(open_context(directory, database))
    emit(result, as_json, status_report(result))


@app.command(rich_help_panel="Serve and inspect")
def serve(
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it local.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(help="Require 'Authorization: Bearer TOKEN'.", envvar="HOTSWAP_TOKEN"),
    ] = None,
) -> None:
    """Serve POST /query, GET /status, GET /healthz (OpenAPI docs at /docs)."""
    from cli.server import create_app, run
    from index.context import open_context

    api = create_app(open_context(directory, database), token=token)
    typer.echo(f"serving {directory} on http://{host}:{port} (docs: /docs)", err=True)
    run(api, host, port)


@app.command(rich_help_panel="Set up")
def fit(
    source: Annotated[str, typer.Option("--from", help="Version whose vectors the adapter maps.")],
    target: Annotated[str, typer.Option("--to", help="Version whose space they are mapped into.")],
    source_vectors: Annotated[
        Path, typer.Option(help="Anchors embedded by --from, .npy (N, d_from).")
    ],
    target_vectors: Annotated[
        Path, typer.Option(help="The same anchors embedded by --to, .npy (N, d_to).")
    ],
    adapter: Annotated[
        str | None, typer.Option(help="Adapter key; default: best on held-out pairs.")
    ] = None,
    adapter_config: Annotated[
        str | None,
        typer.Option(
            help="The adapter's config fields as a JSON object or a .json/.toml file, with "
            """--adapter, e.g. '{"hard_negatives": 8}' for contrastive_affine."""
        ),
    ] = None,
    direction: Annotated[
        str, typer.Option(help="backward (queries new->old) or forward (gallery old->new).")
    ] = "backward",
    name: Annotated[str | None, typer.Option(help="Adapter name (default FROM-to-TO).")] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="The anchors' class labels, int (N,) .npy, if you have them: label-aware "
            "adapters (lambda_orthogonal_nca, ...) train on them, and the default choice is "
            "made by held-out class top-1 instead of paired recall."
        ),
    ] = None,
    queries: Annotated[
        Path | None,
        typer.Option(
            help="Sample queries embedded by --from, .npy (Q, d_from): each also teaches the "
            "adapter where --from's own first answer among the anchors lies in --to's space "
            "(no labels needed; the anchors should be gallery items, not queries), and the "
            "default choice is made on a held-out fifth of them (answer_recall@10). Whether they "
            "help on your data: hotswap eval --anchor-queries-new."
        ),
    ] = None,
    target_queries: Annotated[
        Path | None,
        typer.Option(
            help="The same queries embedded by --to, .npy (Q, d_to), if you can: their own "
            "pairs join the fit (on WordNet they took the bridge from 37% to 47% of the gain)."
        ),
    ] = None,
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
    as_json: Json = False,
) -> None:
    """Fit a post-hoc adapter from paired anchor vectors and register it with its held-out scores."""
    from cli.config import read_object_option
    from index.context import open_context
    from index.versions import fit_and_register
    from models.vector_files import load_labels, load_vectors

    config = read_object_option(adapter_config, "the adapter config")
    ctx = open_context(directory, database)
    result = fit_and_register(
        ctx,
        source,
        target,
        load_vectors(source_vectors),
        load_vectors(target_vectors),
        key=adapter,
        config=config,
        direction=direction,
        name=name,
        labels=None if labels is None else load_labels(labels),
        queries=None if queries is None else load_vectors(queries),
        target_queries=None if target_queries is None else load_vectors(target_queries),
    )
    emit(
        result,
        as_json,
        f"registered adapter {result['name']} ({result['kind']}, {result['direction']}, "
        f"{result['pairs']} pairs)\nnext: hotswap query --dir {directory} --version {source} --vectors Q.npy",
    )
