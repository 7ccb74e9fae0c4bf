"""Pictures of measurements (matplotlib, written to files; no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compat.verdict import BridgeReport


def plot_backfill_curve(
    curve: Sequence[Mapping[str, float]],
    references: Mapping[str, Mapping[str, float]],
    path: Path,
    metrics: Sequence[str] = ("top1", "ap"),
) -> Path:
    """Metric vs fraction of the gallery re-embedded, with old/old and new/new as reference lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    fractions = [p["fraction"] for p in curve]
    for ax, metric in zip(axes[0], metrics, strict=True):
        ax.plot(fractions, [p[metric] for p in curve], "o-", label="mixed-version search")
        for (name, cell), style in zip(references.items(), ("--", ":", "-."), strict=False):
            ax.axhline(cell[metric], linestyle=style, color="grey", label=name)
        ax.set_xlabel("fraction of gallery re-embedded by v2")
        ax.set_ylabel({"top1": "CMC top-1", "ap": "mAP"}.get(metric, metric))
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Backfilling curve: v2 queries over a gallery migrating from v1 to v2")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: BridgeReport, directory: Path, *, prefix: str = "") -> list[Path]:
    """A bridge-or-backfill report as three PNGs in ``directory``: the compatibility matrix,
    the backfilling curves per ordering, and retention (mixed / full re-index) vs fraction migrated.
    """
    directory.mkdir(parents=True, exist_ok=True)
    return [
        _matrix(report, directory / f"{prefix}matrix.png"),
        _curves(report, directory / f"{prefix}curves.png", retention=False),
        _curves(report, directory / f"{prefix}retention.png", retention=True),
    ]


def _matrix(report: BridgeReport, path: Path) -> Path:
    """Rows: query model (old, new); columns: gallery model (old, new); old->new does not exist."""
    plt = _pyplot()
    m = report.metric
    cells = [[report.old_old[m], float("nan")], [report.bridged[m], report.new_new[m]]]
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    image = ax.imshow(cells, cmap="viridis", vmin=0, vmax=1)
    for i, row in enumerate(cells):
        for j, value in enumerate(row):
            ax.text(j, i, "n/a" if value != value else f"{value:.3f}", ha="center", va="center",
                    color="black" if value != value or value >= 0.6 else "white")  # fmt: skip
    ax.set_xticks([0, 1], ["old gallery", "new gallery"])
    ax.set_yticks([0, 1], ["old queries", "new queries\n(bridged on old)"])
    ax.set_title(f"compatibility matrix, {m}")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(plt, fig, path)


def _curves(report: BridgeReport, path: Path, *, retention: bool) -> Path:
    plt = _pyplot()
    m, full = report.metric, report.new_new[report.metric]
    scale = 1.0 / full if retention and full > 0 else 1.0
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for curve in report.curves:
        ax.plot(
            curve.fractions, [v * scale for v in curve.values], "o-", ms=3, label=curve.ordering
        )
    for name, value, style in (("old/old", report.old_old[m], ":"), ("new/new", full, "--")):
        ax.axhline(value * scale, linestyle=style, color="grey", label=name)
    target = report.verdict.target_retention * (1.0 if retention else full)
    ax.axhline(
        target,
        linestyle="-.",
        color="red",
        lw=0.8,
        label=f"{report.verdict.target_retention:.0%} of new/new",
    )
    ax.set_xlabel("fraction of the gallery re-embedded by the new model")
    ax.set_ylabel(f"retention ({m} / new-new)" if retention else m)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
