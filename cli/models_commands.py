"""``hotswap models add|list|show``: the model versions a catalog knows."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.app import DEFAULT_DIR, Database, DataDir, Json, emit, models_app


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="Version name, e.g. minilm-v1.")],
    dim: Annotated[
        int | None, typer.Option(min=1, help="Embedding width of an external version.")
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            help="Pretrained encoder spec hotswap runs itself, e.g. "
            "sentence-transformers:all-MiniLM-L6-v2 (its width is read from the model).",
        ),
    ] = None,
    space: Annotated[
        bool, typer.Option(help="Also create its embedding space (same name).")
    ] = True,
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
    as_json: Json = False,
) -> None:
    """Register a model version: external (--dim: vectors come precomputed, e.g. from an API)
    or pretrained (--encoder: hotswap embeds text queries with it)."""
    from index import galleries, versions
    from index.context import open_context
    from kernels.errors import InvalidInputError

    if (dim is None) == (encoder is None):
        raise InvalidInputError("give exactly one of --dim (external) or --encoder (pretrained)")
    ctx = open_context(directory, database)
    with ctx.transaction() as session:
        if encoder is None:
            version = versions.register_external_version(session, name, dim or 0)
        else:
            from models.loaders import load_pretrained

            loaded = load_pretrained(encoder)
            version = versions.register_pretrained_version(
                session, name, encoder, loaded.fingerprint, loaded.dim
            )
        if space:
            galleries.create_space(session, version)
        result = {
            "name": name,
            "dim": version.dim,
            "encoder": version.encoder_key,
            "space": name if space else None,
        }
    emit(
        result,
        as_json,
        f"registered {name} ({result['dim']}-d, {result['encoder']})\n"
        f"next: hotswap ingest --dir {directory} --space {name} --vectors V.npy --ids IDS.txt",
    )


@models_app.command("list")
def models_list(
    directory: DataDir = DEFAULT_DIR, database: Database = None, as_json: Json = False
) -> None:
    """The registered model versions."""
    from index.context import open_context
    from index.status import summary

    versions = summary(open_context(directory, database))["versions"]
    text = "\n".join(
        f"{v['name']:<16} {v['encoder']:<12} dim {v['dim']:<6} {v['status']}" for v in versions
    )
    emit(versions, as_json, text or "no model versions yet")


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="Version name (see: hotswap models list).")],
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
    as_json: Json = False,
) -> None:
    """One version: encoder key and config, fingerprint, spaces, adapters in and out."""
    from index.context import open_context
    from index.versions import describe_version

    info = describe_version(open_context(directory, database), name)
    emit(info, as_json, show_report(info))


def show_report(v: dict[str, Any]) -> str:
    """``models show`` as text: one line per fact, adapters with their fit metrics."""
    lines = [
        f"{v['name']}: {v['dim']}-d, encoder {v['encoder']}, {v['status']}",
        f"  config       {v['config']}",
        *(f"  {key:<12} {value}" for key, value in v["fingerprint"].items()),
        "  spaces       "
        + (", ".join(f"{s['name']} ({s['vectors']} vectors)" for s in v["spaces"]) or "(none)"),
    ]
    for a in v["adapters"]:
        lines.append(
            f"  adapter {a['role']:<4} {a['name']} ({a['kind']}, {a['direction']}, "
            f"{a['source']} -> {a['target']})"
        )
        lines += [f"      {m}: {_number(x)}" for m, x in a["metrics"].items()]
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
