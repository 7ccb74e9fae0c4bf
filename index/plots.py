"""Pictures of measurements (matplotlib, written to files; no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


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
