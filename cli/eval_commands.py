"""``hotswap eval``: bridge or backfill? measured from vector files alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.app import Json, app, emit


@app.command("eval", rich_help_panel="Upgrade")
def eval_command(
    old_queries: Annotated[
        Path, typer.Option(help="Queries embedded by the old model (Q, d_old) .npy.")
    ],
    new_queries: Annotated[Path, typer.Option(help="The same queries, new model (Q, d_new) .npy.")],
    old_gallery: Annotated[Path, typer.Option(help="Gallery, old model (G, d_old) .npy.")],
    new_gallery: Annotated[Path, typer.Option(help="The same gallery, new model (G, d_new) .npy.")],
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
    k: Annotated[int, typer.Option("-k", min=1, help="Cut-off of Recall/MRR/nDCG@k.")] = 10,
    rerank_depth: Annotated[
        int, typer.Option(min=0, help="Bridge + rerank candidates (0: off).")
    ] = 50,
    seconds_per_item: Annotated[
        float | None, typer.Option(help="New encoder s/item, for the cost.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(file_okay=False, help="Write PNG plots to this folder.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Old/old, bridged, new/new, rerank, backfilling curves, and the verdict: bridge or backfill."""
    from compat.eval_inputs import EvalFiles, evaluate_vector_files

    files = EvalFiles(
        old_queries=old_queries, new_queries=new_queries, old_gallery=old_gallery,
        new_gallery=new_gallery, query_labels=query_labels, gallery_labels=gallery_labels,
        pairs=pairs, self_match=self_match, adapter=adapter, fit=fit,
        anchors_old=anchors_old, anchors_new=anchors_new,
    )  # fmt: skip
    report = evaluate_vector_files(
        files, metric=f"recall@{k}", ks=(k,), rerank_depth=rerank_depth or None,
        new_seconds_per_item=seconds_per_item,
    )  # fmt: skip
    result: dict[str, Any] = report.to_dict()
    if plot is not None:
        from index.plots import plot_report

        result["plots"] = [str(p) for p in plot_report(report, plot)]
    emit(result, as_json, _text(result))


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
        "",
    ]
    for c in r["curves"]:
        reach = "never" if c["fraction_to_target"] is None else f"{c['fraction_to_target']:.0%}"
        lines.append(
            f"backfill {c['ordering']:<17} area {c['area']:.3f}, 95% of new/new after {reach}"
        )
    lines += ["", f"verdict: {r['verdict']['decision']} - {r['verdict']['reason']}"]
    lines += [f"plot: {p}" for p in r.get("plots", [])]
    return "\n".join(lines)
