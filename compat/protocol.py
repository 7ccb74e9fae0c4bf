"""The compatibility protocol on Fashion-MNIST: training-time objectives, post-hoc maps, both combined.

Old model: MLP 784→256→64 on classes 0-4. New models on all 10 classes, wider (784→512→128) and a
Monarch variant (784→512→512→128, 4 blocks). For each method × seed, three cells: old/old, new/old
(new queries on the untouched old gallery, through the method's bridge), new/new; top-1, top-5 and
mAP; ECC; gain fraction and tax against the independent new model of the same architecture.

Rows beyond the trained methods:

- ``posthoc:<key>``: every registered adapter fitted (``compat.fitting.select_adapter``) from the
  independent new model's features to the old model's, on training images only, label-aware ones
  (e.g. ``lambda_orthogonal_nca``) with the training images' labels; ``posthoc:paired`` is the one
  select_adapter keeps by held-out paired recall@10, ``posthoc:selected`` the one chosen per seed
  by held-out class top-1 (:func:`choose_adapter`), refitted on all pairs.
- ``<method>+posthoc``: a trained method's new-space features refined by an adapter chosen the same
  way among ``REFINE_ADAPTERS`` (training-time method + post-hoc refinement).
- ``extend+posthoc``: the old model kept whole, frozen, inside a new one beside trained extra
  dimensions (:class:`models.extended.ExtendedEncoder`), queries bridged by a ``block_step`` whose
  step is chosen on held-out training images (:func:`compat.extension.fit_block_step`).

Then the chains (:mod:`compat.chain`) and the backfilling curves (:mod:`compat.protocol_backfill`).
:func:`run_protocol` returns every number as a JSON-ready dict (arranged and summarised by
:mod:`compat.protocol_summary`); :mod:`compat.protocol_report` renders it.
``bench/compat_protocol.py`` and ``hotswap bench compat`` are thin entries to this.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from compat.adapters import Adapter
from compat.chain import CHAIN_METHODS
from compat.extension import NCA_EXTENDED, extended_nca, fit_block_step
from compat.fitting import FitOptions, Selection, fit_adapter, select_adapter, split_rows
from compat.metrics import (
    cosine_scores,
    per_query_correct,
    self_retrieval_metrics,
    truncate_to_common_width,
)
from compat.nca_objective import NCAConfig, nca_against
from compat.objectives import (
    BCT,
    BCTConfig,
    Classification,
    Objective,
    ObjectiveConfig,
    PrototypeMode,
    new_space_model,
    old_prototypes,
    old_space_model,
)
from compat.oca import OCA, OCAConfig
from compat.protocol_summary import Cells, results
from compat.query_spread import paired_interval
from compat.ract import RACT, RACTConfig
from compat.references import WithReferences
from compat.simplex import Simplex, SimplexConfig
from compat.training import TrainConfig, train
from models.config import Config, check
from models.datasets import load_dataset
from models.encoders import Encoder, MLPEncoderConfig, build_encoder, embed
from models.extended import ExtendedEncoder

TRAINED = (
    "independent",
    "bct",
    "bct_paper",
    "bt2",
    "bt2_light",
    "oca",
    "simplex",
    "ract",
    "independent@monarch",
    "bct@monarch",
    "bt2@monarch",
    "nca",
)
REFINABLE = ("bct", "bt2", "oca", "ract", "nca")  # the "+posthoc" rows
# their candidates (bounded time): the rigid map, the free one, λ-orth plain and label-aware
REFINE_ADAPTERS = ("procrustes", "affine", "lambda_orthogonal", "lambda_orthogonal_nca")
# the old model kept whole beside trained dims, bridged by a held-out step (models/extended.py)
EXTENDED = "extend+posthoc"
# and NCA_EXTENDED (compat/extension.py): nca's objective on that extended encoder, trained jointly.
# METHODS.index seeds each method: a row added later goes last, so the earlier rows keep their seeds
METHODS = (*TRAINED, "posthoc", *(f"{m}+posthoc" for m in REFINABLE), EXTENDED, NCA_EXTENDED)
# the trained rows that are compatibility methods (the independent models are the baseline)
TRAINING_TIME = tuple(m for m in (*TRAINED, NCA_EXTENDED) if not m.startswith("independent"))
METRICS = ("top1", "ap")
BRIDGES = {  # how each trained method's new queries reach the old gallery (Objective.bridge_module)
    "bct": "orthogonal adapter, trained jointly",
    "bct_paper": "orthogonal adapter, trained jointly",
    "ract": "orthogonal adapter, trained jointly",
    "bt2": "block b = (R_c z)[:64]",
    "bt2_light": "block b = (R_c z)[:64]; λ2 = 1 instead of 10",
    "oca": "first 64 dims of the orthogonal layer",
    "nca": "orthogonal adapter 160 → 64, trained jointly (NCA over the old training gallery)",
    NCA_EXTENDED: "λ-orth 160 → 64 started at the kept old block, trained jointly (as nca)",
}
Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProtocolConfig(Config):
    seeds: tuple[int, ...] = (0, 1, 2)
    # Sized for the shared, loaded 2-core machine: 10k/3k images.
    train_limit: int = 10_000  # first rows of the (shuffled) training split
    test_limit: int = 3_000  # query set = gallery
    epochs: int = 3
    old_epochs: int = 3
    old_classes: int = 5
    old_dim: int = 64
    new_dim: int = 128
    extra_dims: int = 32  # BT²'s a, OCA's k and nca's added width
    # Monarch rows are opt-in (methods=METHODS): the shared 2-core machine cannot afford them here.
    methods: tuple[str, ...] = tuple(m for m in METHODS if not m.endswith("@monarch"))
    # Gradient-fitted post-hoc adapters: as many epochs as `hotswap fit` gives them
    # (FitOptions.epochs). Stop 21 measured 15 (the earlier bound on runtime) against 30 for the two
    # NCA maps on the held-out split: 30 scored higher on 5 of 6 map × seed pairs (one tie).
    adapter_epochs: int = 30
    chain: tuple[int, ...] = (4, 7, 10)  # classes seen by each version of the chain
    chain_dims: tuple[int, ...] = (64, 96, 128)
    chain_methods: tuple[str, ...] = ("bct", "simplex", "posthoc", "nca")
    backfill_items: int = 2_000  # query set = gallery of the backfilling curves (first test items)
    backfill_points: int = 11
    # "fastfill": the old gallery transformed forward (compat/protocol_backfill.py)
    backfill_bridges: tuple[str, ...] = ("posthoc:selected", "fastfill", "bt2")

    def __post_init__(self) -> None:
        for name in (
            "seeds",
            "methods",
            "chain",
            "chain_dims",
            "chain_methods",
            "backfill_bridges",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check(bool(self.seeds), "need at least one seed")
        check(min(self.epochs, self.old_epochs, self.adapter_epochs) >= 1, f"epochs >= 1: {self}")
        unknown = sorted(set(self.methods) - set(METHODS))
        check(not unknown, f"unknown methods {unknown}; known: {METHODS}")
        unknown = sorted(set(self.chain_methods) - set(CHAIN_METHODS))  # else trained as BCT
        check(not unknown, f"unknown chain methods {unknown}; known: {CHAIN_METHODS}")
        check(
            len(self.chain) == len(self.chain_dims) >= 2, "chain and chain_dims: same length >= 2"
        )
        widening = all(a < b for a, b in itertools.pairwise(self.chain_dims))
        check(
            widening or "extend+posthoc" not in self.chain_methods,
            f"extend+posthoc adds dimensions per version: chain_dims must grow, got {self.chain_dims}",
        )
        check(2 <= self.backfill_points <= 101, "backfill_points must be in 2..101")
        for (
            method
        ) in self.methods:  # BT²'s teacher and the post-hoc maps reuse the independent model
            needs = "independent@monarch" if method == "bt2@monarch" else "independent"
            base = method.split("+")[0]
            uses = method.split("@")[0] in ("bt2", "bt2_light", "posthoc") or "+" in method
            check(not uses or needs in self.methods, f"method {method!r} needs {needs!r} too")
            check(base in self.methods or base not in TRAINED, f"{method!r} needs {base!r} too")

    @classmethod
    def quick(cls) -> ProtocolConfig:
        return cls(
            seeds=(0,),
            train_limit=2_000,
            test_limit=400,
            epochs=1,
            old_epochs=1,
            adapter_epochs=3,
            backfill_items=400,
            backfill_points=5,
        )


@dataclasses.dataclass
class Run:
    """One seed's shared state: data, the old model and its embeddings, the trained new models."""

    config: ProtocolConfig
    seed: int
    x: Tensor  # (N, 784) training images
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    old: nn.Module
    old_classifier: Tensor  # (old_classes, old_dim), the paper's BCT variant reuses it
    old_train: Tensor  # (N, old_dim) unit rows
    old_test: Tensor
    trained: dict[str, tuple[nn.Module, Objective]] = dataclasses.field(default_factory=dict)
    # row -> (bridged queries (N_test, d_old), new-space vectors (N_test, d_new)): backfill curves
    spaces: dict[str, tuple[Tensor, Tensor]] = dataclasses.field(default_factory=dict)
    # chain method -> {"v3→v1": what held-out images chose for that pair (an adapter, a step)}
    chain_choices: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)


def mlp(dim: int, layer: str = "dense", hidden: tuple[int, ...] | None = None) -> Encoder:
    """The protocol's encoders: 784→hidden→dim; Monarch variants get two 512 hidden layers."""
    hidden = hidden or ((512, 512) if layer == "monarch" else (512,))
    return build_encoder(
        "mlp", MLPEncoderConfig(input_dim=784, hidden_dims=hidden, embed_dim=dim, layer=layer)
    )


def fit(
    encoder: nn.Module,
    objective: Objective,
    x: Tensor,
    y: Tensor,
    seed: int,
    epochs: int,
    references: list[nn.Module] | None = None,
) -> tuple[nn.Module, Objective]:
    """Train encoder + objective (with frozen reference models where the loss needs them)."""
    model = WithReferences(encoder, references) if references else encoder
    train(model, objective, x, y, TrainConfig(epochs=epochs, seed=seed))
    return encoder, objective


def _prepare(config: ProtocolConfig, seed: int) -> Run:
    data = load_dataset("fashion-mnist")
    x = torch.from_numpy(data.train_x[: config.train_limit])
    y = torch.from_numpy(data.train_y[: config.train_limit])
    x_test = torch.from_numpy(data.test_x[: config.test_limit])
    y_test = torch.from_numpy(data.test_y[: config.test_limit])
    seen = y < config.old_classes
    torch.manual_seed(seed)
    objective = Classification(
        ObjectiveConfig(classes=config.old_classes, embed_dim=config.old_dim)
    )
    old, _ = fit(
        mlp(config.old_dim, hidden=(256,)), objective, x[seen], y[seen], seed, config.old_epochs
    )
    classifier = objective.head.weight.detach()
    return Run(
        config, seed, x, y, x_test, y_test, old, classifier, embed(old, x), embed(old, x_test)
    )


def _train_method(run: Run, method: str) -> tuple[nn.Module, Objective]:
    """Train the new model of a training-time method (seeded per method and run)."""
    c, name, layer = run.config, *(method.split("@") + ["dense"])[:2]
    torch.manual_seed(run.seed * 1000 + METHODS.index(method))
    seed, classes, width = run.seed + 1, 10, c.new_dim
    if name == "independent":
        objective: Objective = Classification(ObjectiveConfig(classes=classes, embed_dim=width))
        return fit(mlp(width, layer), objective, run.x, run.y, seed, c.epochs)
    if name in ("bct", "bct_paper"):
        mode: PrototypeMode = "classifier" if name == "bct_paper" else "class_means"
        protos = old_prototypes(
            run.old_train, run.y, classes, mode=mode, old_classifier=run.old_classifier
        )
        objective = BCT(BCTConfig(classes=classes, embed_dim=width, old_dim=c.old_dim), protos)
        return fit(mlp(width, layer), objective, run.x, run.y, seed, c.epochs)
    protos = old_prototypes(run.old_train, run.y, classes)
    if name in ("bt2", "bt2_light"):
        from compat.bt2 import BT2, BT2Config

        teacher, _ = run.trained["independent" if layer == "dense" else "independent@monarch"]
        config = BT2Config(
            classes=classes,
            embed_dim=width + c.extra_dims,
            old_dim=c.old_dim,
            extra_dims=c.extra_dims,
            teacher_dim=width,
            # the diagnosed variant: the class-mean term pulls bridged queries onto old class means,
            # which helps mAP and hurts top-1 (docs/results/compat.md, "Reading")
            prototype_weight=1.0 if name == "bt2_light" else 10.0,
        )
        encoder = mlp(width + c.extra_dims, layer)
        return fit(encoder, BT2(config, protos), run.x, run.y, seed, c.epochs, [run.old, teacher])
    if name == "oca":
        config_oca = OCAConfig(
            classes=classes, embed_dim=c.old_dim + c.extra_dims, old_dim=c.old_dim
        )
        encoder = mlp(c.old_dim + c.extra_dims, layer)
        return fit(encoder, OCA(config_oca, protos), run.x, run.y, seed, c.epochs)
    if name == "ract":
        objective = RACT(RACTConfig(classes=classes, embed_dim=width, old_dim=c.old_dim))
        return fit(mlp(width, layer), objective, run.x, run.y, seed, c.epochs, [run.old])
    if name == "nca":  # BT²'s added width: with 128 alone the bridge costs 1.5 pt of new/new
        wide = width + c.extra_dims
        config_nca = NCAConfig(classes=classes, embed_dim=wide, old_dim=c.old_dim)
        objective, refs = nca_against(run.old, run.x, run.y, config_nca)
        return fit(mlp(wide, layer), objective, run.x, run.y, seed, c.epochs, refs)
    if name == NCA_EXTENDED:  # extend+posthoc's encoder, trained under nca
        encoder = _extension_of_old(run, layer)
        objective, refs = extended_nca(encoder, run.old, run.x, run.y, classes)
        return fit(encoder, objective, run.x, run.y, seed, c.epochs, refs)
    raise ValueError(f"not a training-time method: {method}")  # guarded by ProtocolConfig


def _extension_of_old(run: Run, layer: str = "dense") -> ExtendedEncoder:
    """The run's old model kept whole and frozen beside new_dim + extra_dims − old_dim untrained
    dims, for a width of new_dim + extra_dims (nca's and BT²'s)."""
    c = run.config
    extra = mlp(c.new_dim + c.extra_dims - c.old_dim, layer)
    return ExtendedEncoder.around(cast(Encoder, run.old), extra)


def _extended(run: Run) -> Cells:
    """``extend+posthoc``: the old model kept whole, frozen, beside new_dim + extra_dims − old_dim
    dims trained on every class (nca's and BT²'s width); queries reach the old gallery through a
    ``block_step`` whose step is chosen on held-out training images (compat/extension.py)."""
    c = run.config
    torch.manual_seed(run.seed * 1000 + METHODS.index(EXTENDED))
    encoder = _extension_of_old(run)
    objective = Classification(ObjectiveConfig(classes=10, embed_dim=encoder.embed_dim))
    # kept like every trained row's model: a backfill bridge row reads its new space from here
    run.trained["extend"] = fit(encoder, objective, run.x, run.y, run.seed + 1, c.epochs)
    new_train, new_test = embed(encoder, run.x), embed(encoder, run.x_test)
    options = FitOptions(epochs=c.adapter_epochs)
    bridge = fit_block_step(new_train, run.old_train, run.y, seed=run.seed, options=options)
    cells = _cells(run, EXTENDED, bridge.transform(new_test), new_test)
    cells["bridge"] = "block_step: the kept old block, stepped towards λ-orth NCA"
    cells["selected"] = f"step {bridge.config.step:g}"
    return cells


def _cells(run: Run, row: str, bridged: Tensor, new: Tensor, old: Tensor | None = None) -> Cells:
    """The three cells; ``old`` = the old gallery (the run's old model unless a method has its own)."""
    old = run.old_test if old is None else old
    run.spaces[row] = (bridged, new)
    return {
        "old/old": self_retrieval_metrics(old, old, run.y_test),
        "new/old": self_retrieval_metrics(bridged, old, run.y_test),
        "new/new": self_retrieval_metrics(new, new, run.y_test),
        "top1 margin interval": _margin_interval(run, bridged, old),
    }


def _margin_interval(run: Run, bridged: Tensor, old: Tensor) -> tuple[float, float]:
    """95% interval of new/old − old/old top-1 over resampled test queries (ECC's margin): whether
    a row passes or fails ECC by more than the choice of queries decides."""
    own = torch.arange(len(old))  # the self-match, removed as in every cell
    right = [
        per_query_correct(cosine_scores(q, old), run.y_test, run.y_test, exclude=own).double()
        for q in (old, bridged)
    ]
    return paired_interval(*right, seed=run.seed)


def _simplex(run: Run) -> Cells:
    """d-Simplex needs its own old model: the same fixed 10-vertex classifier, classes 0-4 only."""
    c, seen = run.config, run.y < run.config.old_classes
    torch.manual_seed(run.seed)
    old_obj = Simplex(SimplexConfig(classes=10, embed_dim=c.old_dim))
    old_enc, _ = fit(
        mlp(c.old_dim, hidden=(256,)), old_obj, run.x[seen], run.y[seen], run.seed, c.old_epochs
    )
    old_model = new_space_model(old_enc, old_obj)
    new_obj = Simplex(SimplexConfig(classes=10, embed_dim=c.new_dim, hoc=True))
    enc, _ = fit(mlp(c.new_dim), new_obj, run.x, run.y, run.seed + 1, c.epochs, [old_model])
    old_test = embed(old_model, run.x_test)
    new_test = embed(new_space_model(enc, new_obj), run.x_test)
    cells = _cells(run, "simplex", new_test, new_test, old_test)
    cells["bridge"] = "shared simplex space (own simplex old model)"
    return cells


def _trained_cells(run: Run, method: str) -> Cells:
    if method not in run.trained:
        run.trained[method] = _train_method(run, method)
    encoder, objective = run.trained[method]
    new_test = embed(new_space_model(encoder, objective), run.x_test)
    bridged = embed(old_space_model(encoder, objective), run.x_test)
    how = BRIDGES.get(method.split("@")[0], "none")
    if objective.bridge_module() is None and bridged.shape[1] != run.old_test.shape[1]:
        # the BT²/OCA protocol for an incompatible model of another width: said, not silent
        bridged, _ = truncate_to_common_width(bridged, run.old_test)
        how = f"truncated to the first {bridged.shape[1]} dims"
    cells = _cells(run, method, bridged, new_test)
    cells["bridge"] = how
    return cells


def choose_adapter(
    run: Run, source: Tensor, target: Tensor, keys: tuple[str, ...] | None
) -> tuple[Selection, str, Adapter]:
    """Fit candidate adapters source → target (training images' features, (N, d_s), (N, d_t)).

    One seeded split of the training images: 80% go to :func:`compat.fitting.select_adapter`, which
    fits every candidate and keeps the best by its paired recall@10; the other 20% choose by the
    protocol's own measure (held-out class top-1, then mAP; ties to the earlier, simpler key), and
    that winner is refitted on all pairs. Label-aware candidates get the training images' labels.
    Returns (select_adapter's selection, task choice, refit).
    """
    held, kept = split_rows(len(source), run.seed)  # the run's one split, as the chain's
    options = FitOptions(epochs=run.config.adapter_epochs)
    pick = select_adapter(
        source[kept],
        target[kept],
        keys,
        direction="backward",
        seed=run.seed,
        options=options,
        labels=run.y[kept],
        criterion="recall@10",  # the paired choice (posthoc:paired); the task choice is below
    )

    def score(key: str) -> tuple[float, float]:
        bridged = pick.reports[key].adapter.transform(source[held])
        m = self_retrieval_metrics(bridged, target[held], run.y[held])
        return round(m["top1"], 6), round(m["ap"], 6)

    choice = max(pick.reports, key=score)
    refit = fit_adapter(
        choice, source, target, direction="backward", seed=run.seed, options=options, labels=run.y
    ).adapter
    return pick, choice, refit


def _posthoc(run: Run, source: str, say: Say) -> dict[str, Cells]:
    """Adapters from ``source``'s new-space features to the old ones, chosen on held-out images.

    Training images only, through :func:`choose_adapter`. ``source == "independent"``: every registered
    adapter gets a row, plus both choices; otherwise the task choice only, ``<source>+posthoc``.
    """
    encoder, objective = run.trained[source]
    model = new_space_model(encoder, objective)
    new_train, new_test = embed(model, run.x), embed(model, run.x_test)
    keys = None if source == "independent" else REFINE_ADAPTERS
    pick, choice, refit = choose_adapter(run, new_train, run.old_train, keys)
    rows: dict[str, Cells] = {}
    if source == "independent":
        for key, report in pick.reports.items():
            rows[f"posthoc:{key}"] = _cells(
                run, f"posthoc:{key}", report.adapter.transform(new_test), new_test
            )
            rows[f"posthoc:{key}"]["bridge"] = f"{key} (fitted on 64% of the training pairs)"
        rows["posthoc:paired"] = _cells(
            run, "posthoc:paired", pick.adapter.transform(new_test), new_test
        )
        rows["posthoc:paired"]["bridge"] = "chosen by select_adapter's held-out paired recall@10"
        rows["posthoc:paired"]["selected"] = pick.key
    name = "posthoc:selected" if source == "independent" else f"{source}+posthoc"
    rows[name] = _cells(run, name, refit.transform(new_test), new_test)
    rows[name]["bridge"] = "chosen by held-out class top-1 (20% of training images), refitted"
    rows[name]["selected"] = choice
    say(f"seed {run.seed} {name}: task choice {choice}, paired-R@10 choice {pick.key}")
    return rows


def method_rows(run: Run, method: str, say: Say) -> dict[str, Cells]:
    """Every table row one method contributes for this run."""
    if method == "simplex":
        return {"simplex": _simplex(run)}
    if method == "posthoc":
        return _posthoc(run, "independent", say)
    if method == EXTENDED:
        return {method: _extended(run)}
    if method.endswith("+posthoc"):
        return _posthoc(run, method.split("+")[0], say)
    return {method: _trained_cells(run, method)}


def _order(methods: tuple[str, ...]) -> list[str]:
    """Independent models first (teachers, post-hoc sources), refinements after their base."""
    return sorted(
        methods, key=lambda m: (not m.startswith("independent"), "+" in m, "posthoc" in m)
    )


def run_protocol(
    config: ProtocolConfig,
    progress: Say | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every method × seed, the chains and the backfilling curves; every number in a JSON-ready dict.

    ``checkpoint`` receives the results so far after each seed (a long run keeps what it finished).
    """
    from compat.chain import chain_matrix
    from compat.protocol_backfill import backfill_curves

    say = progress or (lambda message: None)
    start = time.perf_counter()
    per_seed: list[dict[str, Cells]] = []
    chains: list[dict[str, list[list[float]]]] = []
    choices: list[dict[str, dict[str, str]]] = []
    curves: list[dict[str, Any]] = []
    for seed in config.seeds:
        run = _prepare(config, seed)
        cells: dict[str, Cells] = {}
        for method in _order(config.methods):
            for row, values in method_rows(run, method, say).items():
                cells[row] = values
                say(f"seed {seed} {row}: new/old top1 {values['new/old']['top1']:.3f}")
        per_seed.append(cells)
        curves.append(backfill_curves(run, say))
        chains.append({m: chain_matrix(run, m) for m in config.chain_methods})
        choices.append(run.chain_choices)
        say(f"seed {seed} done ({time.perf_counter() - start:.0f} s)")
        if checkpoint:
            checkpoint(results(config, per_seed, chains, curves, start, choices))
    return results(config, per_seed, chains, curves, start, choices)


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of disjoint seeds (e.g. one process per seed), summarised afresh.

    Seconds add up (CPU-side cost); ``wall_seconds`` is the longest part (what a parallel run took).
    """
    seeds = [seed for part in parts for seed in part["config"]["seeds"]]
    check(len(set(seeds)) == len(seeds), f"parts repeat seeds: {seeds}")
    rows = [list(part["per_seed"][0]) for part in parts]
    check(all(r == rows[0] for r in rows), "parts ran different methods")
    config = ProtocolConfig.from_dict({**parts[0]["config"], "seeds": tuple(seeds)})
    merged = results(
        config,
        [s for part in parts for s in part["per_seed"]],
        [c for part in parts for c in part["chain_matrices"]],
        [c for part in parts for c in part["backfill_curves"]],
        time.perf_counter(),
        [c for part in parts for c in part.get("chain_choices", [])],
    )
    merged["seconds"] = round(sum(part["seconds"] for part in parts), 1)
    merged["wall_seconds"] = max(part["seconds"] for part in parts)
    return merged
