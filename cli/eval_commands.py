"""``hotswap eval``: bridge or backfill? measured from vector files, or from two catalog versions.

Vector files: --old-queries/--new-queries/--old-gallery/--new-gallery (+ labels or pairs).
Catalog versions: --old-version/--new-version (registered with --encoder) and --query-set, a JSON
file of labelled texts (format: index/evaluation.py), embedded here by both versions' encoders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.app import DEFAULT_DIR, Database, DataDir, Json, app, emit
from kernels.errors import InvalidInputError


@app.command("eval", rich_help_panel="Upgrade")
def eval_command(
    old_queries: Annotated[
        Path | None, typer.Option(help="Queries embedded by the old model (Q, d_old) .npy.")
    ] = None,
    new_queries: Annotated[
        Path | None, typer.Option(help="The same queries, new model (Q, d_new) .npy.")
    ] = None,
    old_gallery: Annotated[
        Path | None, typer.Option(help="Gallery, old model (G, d_old) .npy.")
    ] = None,
    new_gallery: Annotated[
        Path | None, typer.Option(help="The same gallery, new model (G, d_new) .npy.")
    ] = None,
    old_version: Annotated[
        str | None, typer.Option(help="Catalog version of the old model (pretrained encoder).")
    ] = None,
    new_version: Annotated[
        str | None, typer.Option(help="Catalog version of the new model (pretrained encoder).")
    ] = None,
    query_set: Annotated[
        Path | None, typer.Option(help="Labelled texts for --old/--new-version (JSON).")
    ] = None,
    query_labels: Annotated[
        Path | None, typer.Option(help="Class label per query, one a line.")
    ] = None,
    gallery_labels: Annotated[
        Path | None, typer.Option(help="Class label per gallery row.")
    ] = None,
    pairs: Annotated[
        Path | None, typer.Option(help="Relevant pairs: 'query_row gallery_row' lines.")
    ] = None,
    self_match: Annotated[
        bool, typer.Option(help="Queries are the gallery items: drop each one's own row.")
    ] = False,
    adapter: Annotated[
        Path | None, typer.Option(help="A saved backward adapter (new -> old).")
    ] = None,
    fit: Annotated[
        str, typer.Option(help="Adapter to fit when none is given: a registry key or auto.")
    ] = "auto",
    anchors_old: Annotated[
        Path | None, typer.Option(help="Anchor texts, old model (default: gallery).")
    ] = None,
    anchors_new: Annotated[Path | None, typer.Option(help="The same anchors, new model.")] = None,
    anchor_queries_new: Annotated[
        Path | None,
        typer.Option(
            help="Other queries than the evaluated ones, new model: each also teaches the fitted "
            "bridge the new model's first answer among the anchors (as hotswap fit --queries)."
        ),
    ] = None,
    anchor_queries_old: Annotated[
        Path | None, typer.Option(help="The same queries, old model: their own pairs join the fit.")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Cut-off of Recall/MRR/nDCG@k.")] = 10,
    rerank_depth: Annotated[
        int, typer.Option(min=0, help="Bridge + rerank candidates (0: off).")
    ] = 50,
    seconds_per_item: Annotated[
        float | None, typer.Option(help="New encoder s/item, for the cost.")
    ] = None,
    deployed_items: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Items in the real gallery (default: the evaluated one's): prices the backfill "
            "and re-checks the verdict there, extrapolating how retention falls with gallery size.",
        ),
    ] = None,
    resamples: Annotated[
        int,
        typer.Option(
            min=0,
            help="Bootstrap resamples of the queries: intervals around each figure and how often "
            "another query sample would decide otherwise (0: off).",
        ),
    ] = 1000,
    plot: Annotated[
        Path | None, typer.Option(file_okay=False, help="Write PNG plots to this folder.")
    ] = None,
    directory: DataDir = DEFAULT_DIR,
    database: Database = None,
    as_json: Json = False,
) -> None:
    """Old/old, bridged, new/new, rerank, backfilling curves, and the verdict: bridge or backfill."""
    options: dict[str, Any] = {"metric": f"recall@{k}", "ks": (k,),
                               "rerank_depth": rerank_depth or None, "resamples": resamples}  # fmt: skip
    if seconds_per_item is not None:
        options["new_seconds_per_item"] = seconds_per_item
    if deployed_items is not None:
        options["backfill_items"] = deployed_items
    if old_version is None and new_version is None and query_set is None:
        report = _from_vector_files(
            old_queries, new_queries, old_gallery, new_gallery, query_labels=query_labels,
            gallery_labels=gallery_labels, pairs=pairs, self_match=self_match, adapter=adapter,
            fit=fit, anchors_old=anchors_old, anchors_new=anchors_new,
            anchor_queries_new=anchor_queries_new, anchor_queries_old=anchor_queries_old,
            options=options,
        )  # fmt: skip
    else:
        from index.context import open_context
        from index.evaluation import evaluate_versions, load_query_set

        if old_version is None or new_version is None or query_set is None:
            raise InvalidInputError(
                "catalog mode needs --old-version, --new-version and --query-set"
            )
        vector_files_only = {"--anchors-old": anchors_old, "--anchors-new": anchors_new,
                             "--anchor-queries-new": anchor_queries_new,
                             "--anchor-queries-old": anchor_queries_old}  # fmt: skip
        given = [flag for flag, value in vector_files_only.items() if value is not None]
        if given:
            raise InvalidInputError(
                f"{', '.join(given)}: vector files, and catalog mode embeds the query set itself",
                fix="drop them, or evaluate from the four vector files",
            )
        report = evaluate_versions(
            open_context(directory, database), old_version, new_version,
            load_query_set(query_set), adapter=adapter, fit=fit, **options,
        )  # fmt: skip
    result: dict[str, Any] = report.to_dict()
    if plot is not None:
        from index.plots import plot_report

        result["plots"] = [str(p) for p in plot_report(report, plot)]
    emit(result, as_json, _text(result))


def _from_vector_files(
    old_queries: Path | None,
    new_queries: Path | None,
    old_gallery: Path | None,
    new_gallery: Path | None,
    *,
    options: dict[str, Any],
    **files: Any,
) -> Any:
    from compat.eval_inputs import EvalFiles, evaluate_vector_files

    if old_queries is None or new_queries is None or old_gallery is None or new_gallery is None:
        raise InvalidInputError(
            "give the four vector files (--old-queries, --new-queries, --old-gallery, "
            "--new-gallery) or two catalog versions (--old-version, --new-version, --query-set)"
        )
    paths = EvalFiles(old_queries=old_queries, new_queries=new_queries, old_gallery=old_gallery,
                      new_gallery=new_gallery, **files)  # fmt: skip
    return evaluate_vector_files(paths, **options)


def _text(r: dict[str, Any]) -> str:
    metrics = list(r["new_new"])
    rows = [("old/old", r["old_old"]), ("bridged", r["bridged"])]
    rows += (
        []
        if r["rerank"] is None
        else [(f"rerank top-{r['rerank']['depth']}", r["rerank"]["metrics"])]
    )
    rows.append(("new/new", r["new_new"]))
    lines = [f"{r['queries']} queries, {r['gallery']} gallery items, adapter {r['adapter']}", "",
             f"  {'':<16}" + "".join(f"{m:>11}" for m in metrics)]  # fmt: skip
    lines += [
        f"  {name:<16}" + "".join(f"{cell[m]:>11.3f}" for m in metrics) for name, cell in rows
    ]
    lines += [
        "",
        f"retention {r['retention'][r['metric']]:.3f}, gain {r['gain'][r['metric']]:+.3f}",
        *_spread_lines(r.get("spread")),
        "",
    ]
    for c in r["curves"]:
        reach = "never" if c["fraction_to_target"] is None else f"{c['fraction_to_target']:.0%}"
        lines.append(
            f"backfill {c['ordering']:<17} area {c['area']:.3f}, 95% of new/new after {reach}"
        )
    lines += _scaling_lines(r.get("scaling"))
    lines += ["", f"verdict: {r['verdict']['decision']} - {r['verdict']['reason']}"]
    lines += [f"plot: {p}" for p in r.get("plots", [])]
    return "\n".join(lines)


def _spread_lines(data: dict[str, Any] | None) -> list[str]:
    """The figures' intervals over resampled queries, and how often each decision comes out."""
    if not data:
        return []
    names = {"gain": "gain", "retention": "retention", "gain_fraction": "share of the gain",
             "rerank_retention": "rerank retention"}  # fmt: skip
    spans = ", ".join(
        f"{label} [{data['intervals'][key][0]:.3f}, {data['intervals'][key][1]:.3f}]"
        for key, label in names.items()
        if key in data["intervals"]
    )
    decisions = ", ".join(f"{d} {share:.0%}" for d, share in data["decisions"].items())
    return [
        f"{data['level']:.0%} intervals over {data['resamples']:,} resamples of the "
        f"{data['queries']:,} queries: {spans}",
        f"decision over those resamples: {decisions}",
    ]


def _scaling_lines(data: dict[str, Any] | None) -> list[str]:
    """Retention on nested subsets of the gallery, and where its trend leads at the deployed size."""
    if not data or len(data["points"]) < 2:
        return []
    from compat.gallery_scaling import GalleryScaling, per_doubling

    s = GalleryScaling.from_dict(data)
    lines = ["", f"gallery size   retention {s.metric}: bridged / rerank"]
    for p in s.points:
        kept = [v for v in (p.retention("bridged"), p.retention("rerank")) if v is not None]
        lines.append(f"  {p.gallery:>11,}   " + " / ".join(f"{v:.3f}" for v in kept))
    if s.deployed_items > s.points[-1].gallery:
        trend = ", ".join(
            f"{name} {value:.3f} ({per_doubling(s, name)})" for name, value in s.at_deployed.items()
        )
        lines.append(f"  {s.deployed_items:>11,}   extrapolated: {trend}")
    return lines
