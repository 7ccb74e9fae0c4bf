"""Plain-text renderings of results for people (``--json`` prints the dicts instead)."""

from __future__ import annotations

from typing import Any

METRICS = (("top1", "top-1"), ("top5", "top-5"), ("ap", "mAP"))


def _row(label: str, cell: dict[str, float]) -> str:
    return f"  {label:<20}" + "".join(f"{cell[m]:>8.3f}" for m, _ in METRICS)


def demo_report(r: dict[str, Any]) -> str:
    """The demo's table: protocol cells with the compatibility verdict, then the backfilling curve."""
    cells, ok = r["cells"], r["compatible"]
    verdict = ", ".join(
        f"{name} {'PASS' if ok[m] else 'FAIL'}" for m, name in (("top1", "top-1"), ("ap", "mAP"))
    )
    lines = [
        f"hotswap demo: {r['dataset']}, gallery = query set = {r['gallery']} test images "
        "(self-match removed), cosine, full ranking",
        "",
        f"  {'':<20}" + "".join(f"{name:>8}" for _, name in METRICS),
        _row("old/old  v1 -> v1", cells["old/old"]),
        _row("new/old  v2 -> v1", cells["new/old"])
        + f"   compatible (new/old > old/old): {verdict}",
        _row("new/new  v2 -> v2", cells["new/new"]),
        "",
        "backfilling curve: v2 queries, mixed-version search (v1 space for unmigrated items,",
        "v2 space for migrated ones, merged by score), random order",
        f"  {'migrated':<20}" + "".join(f"{name:>8}" for _, name in METRICS),
        *(_row(f"{p['fraction']:>7.0%}", p) for p in r["curve"]),
        f"  area under the curve: top-1 {r['curve_area']['top1']:.3f}, mAP {r['curve_area']['ap']:.3f}",
        "",
        f"plot: {r['plot']}",
        "time: " + ", ".join(f"{stage} {sec:.0f} s" for stage, sec in r["seconds"].items()),
    ]
    return "\n".join(lines)


def status_report(s: dict[str, Any]) -> str:
    """The catalog summary as short aligned sections."""
    lines = ["versions:"]
    lines += [f"  {v['name']:<16} {v['encoder']:<10} dim {v['dim']}" for v in s["versions"]] or [
        "  (none)"
    ]
    lines.append("spaces:")
    lines += [
        f"  {sp['name']:<16} version {sp['version']:<10} {sp['vectors']} vectors, "
        f"{sp['authoritative']} authoritative, snapshot {sp['snapshot']}"
        for sp in s["spaces"]
    ] or ["  (none)"]
    lines.append("adapters:")
    lines += [
        f"  {a['name']:<16} {a['kind']} {a['direction']} {a['source']} -> {a['target']}"
        for a in s["adapters"]
    ] or ["  (none)"]
    lines.append("migrations:")
    lines += [
        f"  run {m['run']}: {m['state']}, {m['done']}/{m['total']} items, {m['ordering']} order"
        for m in s["migrations"]
    ] or ["  (none)"]
    return "\n".join(lines)
