"""Post-hoc fitting: an adapter between two frozen encoders, from paired embeddings of the same items.

:func:`fit_adapter` fits one registered adapter (closed form for ``procrustes``/``affine``, AdamW
otherwise, never decaying orthogonal parametrizations) and scores it on the pairs it saw and,
optionally, on held-out pairs. :func:`select_adapter` fits every candidate on one split and keeps
the best by held-out paired retrieval: the anchor and held-out counts travel with the result,
because a choice made on 200 anchors says less than one made on 20,000.

Scores are measured through ``Adapter.transform`` (the serving path), never the training forward.

Optional class labels (N,) of the paired items reach every adapter's ``prepare_labels`` and
``training_loss``; only adapters with label terms (compat/label_terms.py: the λ-orth family,
``residual_mlp_nca``) use them, the others fit exactly as without. An adapter configured with
label-only terms refuses to fit without labels.

Optional sample queries (source space) add pairs from the source model's own answers among the
anchors (compat/answer_pairs.py), and :func:`select_adapter` then ranks on held-out queries.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from compat.adapters import ADAPTERS, Adapter, Direction, build_adapter, no_decay_parameters
from compat.answer_pairs import answer_recall, target_queries, with_answers
from compat.metrics import self_retrieval_metrics
from compat.vectors import check_vectors
from kernels.errors import InvalidInputError
from models.config import Config, check

# Held-out scores select_adapter can rank by. "class_top1" needs the pairs' labels: the map that
# copies the old space most faithfully (best paired recall) also copies the old model's mistakes,
# so with labels the choice is made on what class retrieval measures (docs/results/compat.md).
# "answer_recall@10" needs sample queries: on WordNet paired recall ties at 1.0 and the tie went to
# a map below old/old (gain fraction -0.24); the answers chose procrustes (+0.04), still short of
# contrastive_affine (+0.39): pseudo-answers are no relevance labels (docs/results/text_upgrade.md).
Criterion = Literal["recall@10", "cosine", "class_top1", "answer_recall@10"]
CRITERIA: tuple[Criterion, ...] = ("recall@10", "cosine", "class_top1", "answer_recall@10")
# Simplest first: a tie on the criterion goes to the earlier (fewer assumptions, fewer parameters).
DEFAULT_CANDIDATES = (
    "procrustes",
    "orthogonal",
    "orthogonal_monarch",
    "procrustes_monarch",
    "affine",
    "lambda_orthogonal",
    "low_rank_affine",
    "residual_mlp",
    "forward_mlp",
)
_SET_BY_DATA = ("dim_in", "dim_out", "direction")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitOptions(Config):
    """Gradient training of the non-closed-form adapters (closed-form ones ignore all but normalize)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    # L2-normalize both sides first (held-out pairs too): the spaces are compared by cosine, and
    # stored/query vectors are unit rows, so the fit sees what serving will feed the adapter.
    normalize: bool = True
    # Weight of an in-batch InfoNCE term added to the adapter's own loss: mapped x_i must be nearer
    # its y_i than the batch's other y_j (cosine / temperature). MSE alone pulls each point toward
    # its target but does not teach the map what to keep apart, which is what retrieval needs.
    contrastive: float = 0.0
    temperature: float = 0.05

    def __post_init__(self) -> None:
        check(self.epochs >= 1 and self.batch_size >= 1, f"epochs, batch_size must be >= 1: {self}")
        check(self.lr > 0 and self.weight_decay >= 0, f"lr must be > 0, weight_decay >= 0: {self}")
        check(self.contrastive >= 0, f"contrastive must be >= 0, got {self.contrastive}")
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")


@dataclasses.dataclass(frozen=True)
class PairScores:
    """How well an adapter maps x_i onto its own y_i over n pairs."""

    cosine: float  # mean cos(transform(x_i), y_i)
    recall_at_10: float  # share of i with y_i among the 10 nearest y_j of transform(x_i), ties fail
    n: int
    # With labels: share of i whose nearest y_j (j != i) under transform(x_i) has x_i's class,
    # the protocol's new/old CMC top-1 on these pairs; None without labels.
    class_top1: float | None = None
    # With held-out queries: compat.answer_pairs.answer_recall over the held-out anchors.
    answer_recall: float | None = None

    def get(self, criterion: Criterion) -> float:
        if criterion == "class_top1":
            if self.class_top1 is None:
                raise InvalidInputError("class_top1 was not measured: these pairs had no labels")
            return self.class_top1
        if criterion == "answer_recall@10":
            if self.answer_recall is None:
                raise InvalidInputError("answer_recall@10 was not measured: no queries were given")
            return self.answer_recall
        return self.recall_at_10 if criterion == "recall@10" else self.cosine


@dataclasses.dataclass(frozen=True)
class FitReport:
    key: str
    adapter: Adapter
    train: PairScores
    held_out: PairScores | None
    losses: list[float]  # mean training loss per epoch; empty for closed-form fits


@dataclasses.dataclass(frozen=True)
class Selection:
    """The chosen adapter and the evidence: every candidate's report, from one split."""

    key: str
    adapter: Adapter  # refit on all pairs when select_adapter(refit=True)
    criterion: Criterion
    anchors: int  # training pairs of the split
    held_out: int  # held-out pairs the choice was made on
    reports: dict[str, FitReport]


def pair_scores(
    adapter: Adapter, x: Tensor, y: Tensor, *, labels: Tensor | None = None, chunk: int = 1024
) -> PairScores:
    """Paired cosine and recall@10 of ``adapter.transform(x)`` against the gallery ``y``: (N, ·) each;
    with ``labels`` (N,) also the class top-1 (self-match removed)."""
    mapped = F.normalize(adapter.transform(x).float(), dim=1)  # (N, dim_out)
    target = F.normalize(y.float(), dim=1)
    cosine = (mapped * target).sum(dim=1)  # (N,)
    hits = 0
    for start in range(0, len(x), chunk):
        rows = torch.arange(start, min(start + chunk, len(x)))
        scores = mapped[rows] @ target.T  # (c, N)
        own = scores[torch.arange(len(rows)), rows][:, None]  # the true pair's score, same rounding
        # Ties fail: an item scoring exactly as the true pair counts as ranked above it.
        above = (scores >= own).sum(dim=1) - 1
        hits += int((above < 10).sum())
    top1 = None if labels is None else self_retrieval_metrics(mapped, target, labels, (1,))["top1"]
    return PairScores(float(cosine.mean()), hits / len(x), len(x), top1)


def _labels(labels: Tensor | None, n: int) -> Tensor | None:
    if labels is None:
        return None
    if labels.ndim != 1 or len(labels) != n or labels.is_floating_point():
        raise InvalidInputError(
            f"labels must be an integer tensor of shape ({n},), got {labels.dtype} "
            f"{tuple(labels.shape)}",
            fix="pass one class id per pair, aligned with the pairs' rows",
        )
    return labels


def _pairs(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x = check_vectors(x, None, "x_source")
    y = check_vectors(y, None, "y_target")
    if len(x) != len(y):
        raise InvalidInputError(
            f"x_source has {len(x)} rows but y_target has {len(y)}: pairs must align row by row"
        )
    if len(x) < 2:
        raise InvalidInputError(f"fitting needs at least 2 pairs, got {len(x)}")
    return x, y


def _config(
    key: str, x: Tensor, y: Tensor, direction: Direction, overrides: dict[str, Any]
) -> dict:
    clash = sorted(set(overrides) & set(_SET_BY_DATA))
    if clash:
        raise InvalidInputError(
            f"config overrides for {key!r} set {clash}, which come from the data and direction",
            fix="drop them from the overrides; pass direction= to the fitting function",
        )
    return {"dim_in": x.shape[1], "dim_out": y.shape[1], "direction": direction, **overrides}


def fit_adapter(
    key: str,
    x_source: Tensor,
    y_target: Tensor,
    *,
    direction: Direction,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    options: FitOptions | None = None,
    held_out: tuple[Tensor, Tensor] | None = None,
    labels: Tensor | None = None,
    held_out_labels: Tensor | None = None,
) -> FitReport:
    """Fit adapter ``key`` on pairs (x_source (N, d_in), y_target (N, d_out)); deterministic per seed.

    ``direction`` is recorded, not inferred: backward when x are new-model vectors mapped into the
    old space, forward when x are old vectors mapped into the new one. ``config`` overrides the
    adapter's config fields (not widths or direction). ``held_out`` pairs are scored, never fitted.
    ``labels`` (N,) int: the pairs' classes, for adapters whose loss uses them (ignored by others);
    ``held_out_labels``: the held-out pairs' classes, which add the class top-1 to their scores.
    """
    options = options or FitOptions()
    x, y = _pairs(x_source, y_target)
    labels = _labels(labels, len(x))
    if options.normalize:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = build_adapter(key, _config(key, x, y, direction, config or {}))
        if labels is None and adapter.config.needs_labels:
            raise InvalidInputError(
                f"adapter {key!r} as configured trains on class labels, and none were given",
                fix="pass labels= (one class id per pair), or fit an unsupervised adapter",
            )
        adapter.prepare(x, y)
        if labels is not None:
            adapter.prepare_labels(y, labels)
        losses = [] if adapter.closed_form else _train(adapter, x, y, options, seed, labels)
    adapter.eval()
    held = None
    if held_out is not None:
        hx, hy = _pairs(*held_out)
        if options.normalize:
            hx, hy = F.normalize(hx, dim=1), F.normalize(hy, dim=1)
        held = pair_scores(adapter, hx, hy, labels=_labels(held_out_labels, len(hx)))
    return FitReport(key, adapter, pair_scores(adapter, x, y), held, losses)


def _train(
    adapter: Adapter,
    x: Tensor,
    y: Tensor,
    options: FitOptions,
    seed: int,
    labels: Tensor | None = None,
) -> list[float]:
    """AdamW + cosine decay on ``adapter.training_loss``; mean loss per epoch."""
    params = [p for p in adapter.parameters() if p.requires_grad]
    if not params:
        return []
    exempt = {id(p) for p in no_decay_parameters(adapter)}
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if id(p) not in exempt]},
        {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=options.lr, weight_decay=options.weight_decay)
    steps = math.ceil(len(x) / options.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=options.epochs * steps)
    generator = torch.Generator().manual_seed(seed)
    adapter.train()
    losses = []
    for _ in range(options.epochs):
        order, total = torch.randperm(len(x), generator=generator), 0.0
        for batch in order.split(options.batch_size):
            loss = adapter.training_loss(
                x[batch], y[batch], None if labels is None else labels[batch]
            )
            if options.contrastive > 0:
                loss = loss + options.contrastive * info_nce(
                    adapter(x[batch]), y[batch], options.temperature
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * len(batch)
        losses.append(total / len(x))
    return losses


def info_nce(mapped: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Mean cross-entropy of row i picking target i among the batch's targets: (B, d), (B, d) -> ()."""
    logits = F.normalize(mapped, dim=1) @ F.normalize(target, dim=1).T / temperature  # (B, B)
    return F.cross_entropy(logits, torch.arange(len(mapped), device=mapped.device))


def select_adapter(
    x: Tensor,
    y: Tensor,
    keys: Sequence[str] | None = None,
    *,
    holdout: float = 0.2,
    seed: int = 0,
    direction: Direction,
    criterion: Criterion | None = None,
    configs: dict[str, dict[str, Any]] | None = None,
    options: FitOptions | None = None,
    refit: bool = True,
    labels: Tensor | None = None,
    queries: Tensor | None = None,
    queries_target: Tensor | None = None,
) -> Selection:
    """Fit each candidate on one seeded split of the pairs and keep the best on the held-out part.

    Best = highest held-out ``criterion`` (default: ``class_top1`` with labels, else
    ``answer_recall@10`` with queries, else ``recall@10``);
    then the next score (recall@10, else cosine); then the earlier key (the default order runs
    simplest first). With ``refit`` the winner is fitted again on all pairs.
    ``labels`` (N,): the pairs' classes, passed to label-aware candidates; without them the default
    candidates leave out adapters that cannot fit unlabelled (listing one in ``keys`` is an error).
    ``queries`` (Q, d_in): source-space query vectors, split like the pairs: each training query
    is also fitted onto the target row of the training anchor it ranks first
    (compat/answer_pairs.py), so no held-out anchor is ever an answer, and the held-out queries
    score ``answer_recall@10`` against the held-out anchors; ``queries_target`` (Q, d_out), the
    same queries in the target space, adds the training queries' own pairs to every fit.
    """
    if not 0.0 < holdout < 1.0:
        raise InvalidInputError(f"holdout must be a fraction in (0, 1), got {holdout}")
    x, y = _pairs(x, y)
    labels = _labels(labels, len(x))
    candidates = list(keys) if keys is not None else _default_keys(labelled=labels is not None)
    if not candidates or len(set(candidates)) != len(candidates):
        raise InvalidInputError(f"select_adapter needs distinct candidate keys, got {candidates}")
    default: Criterion = "answer_recall@10" if queries is not None else "recall@10"
    criterion = criterion or ("class_top1" if labels is not None else default)
    if criterion not in CRITERIA:
        raise InvalidInputError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if criterion == "answer_recall@10" and queries is None:
        raise InvalidInputError(
            "criterion 'answer_recall@10' ranks by the source model's answers to sample queries",
            fix="pass queries=, or choose 'recall@10' or 'cosine'",
        )
    if criterion == "class_top1" and labels is None:
        raise InvalidInputError(
            "criterion 'class_top1' ranks by class retrieval and needs the pairs' labels",
            fix="pass labels= (one class id per pair), or choose 'recall@10' or 'cosine'",
        )
    n_held = round(len(x) * holdout)
    if not 2 <= n_held <= len(x) - 2:
        raise InvalidInputError(f"{len(x)} pairs cannot be split {holdout:.0%} held out")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    held, train = order[:n_held], order[n_held:]
    configs = configs or {}
    asked = _split_queries(queries, queries_target, y.shape[1], holdout, seed)
    fit_x, fit_y, fit_labels = with_answers(
        x[train], y[train], asked.train, None if labels is None else labels[train], asked.target
    )
    reports = {
        key: fit_adapter(
            key,
            fit_x,
            fit_y,
            direction=direction,
            config=configs.get(key),
            seed=seed,
            options=options,
            held_out=(x[held], y[held]),
            labels=fit_labels,
            held_out_labels=None if labels is None else labels[held],
        )
        for key in candidates
    }
    if asked.held is not None:
        reports = {
            key: _with_answer_recall(r, asked.held, x[held], y[held]) for key, r in reports.items()
        }
    other: Criterion = "cosine" if criterion == "recall@10" else "recall@10"  # the tie-breaker

    def rank(i: int) -> tuple[float, float, int]:
        scores = reports[candidates[i]].held_out
        assert scores is not None  # every candidate above was scored on the held-out pairs
        return (round(scores.get(criterion), 6), round(scores.get(other), 6), -i)

    best = candidates[max(range(len(candidates)), key=rank)]
    adapter = reports[best].adapter
    if refit:
        all_x, all_y, all_labels = with_answers(x, y, queries, labels, queries_target)
        adapter = fit_adapter(
            best,
            all_x,
            all_y,
            direction=direction,
            config=configs.get(best),
            seed=seed,
            options=options,
            labels=all_labels,
        ).adapter
    return Selection(best, adapter, criterion, len(train), n_held, reports)


@dataclasses.dataclass(frozen=True)
class _Queries:
    train: Tensor | None  # fitted on, answered by the training anchors
    target: Tensor | None  # their target-space rows, if given
    held: Tensor | None  # scored against the held-out anchors


def _split_queries(
    queries: Tensor | None, queries_target: Tensor | None, dim: int, holdout: float, seed: int
) -> _Queries:
    """One seeded split of the sample queries, made as the pairs' split is."""
    if queries is None:
        return _Queries(None, queries_target, None)  # with_answers refuses a lone target side
    queries = check_vectors(queries, None, "queries")
    if queries_target is not None:
        queries_target = target_queries(queries, queries_target, dim)
    n_held = round(len(queries) * holdout)
    if not 2 <= n_held <= len(queries) - 1:
        raise InvalidInputError(
            f"{len(queries)} queries cannot be split {holdout:.0%} held out",
            fix="give at least 10 sample queries",
        )
    order = torch.randperm(len(queries), generator=torch.Generator().manual_seed(seed))
    held, train = order[:n_held], order[n_held:]
    target = None if queries_target is None else queries_target[train]
    return _Queries(queries[train], target, queries[held])


def _with_answer_recall(report: FitReport, queries: Tensor, x: Tensor, y: Tensor) -> FitReport:
    assert report.held_out is not None  # select_adapter scores every candidate on held-out pairs
    score = answer_recall(report.adapter.transform, queries, x, y)
    return dataclasses.replace(
        report, held_out=dataclasses.replace(report.held_out, answer_recall=score)
    )


def split_rows(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """One seeded split of n rows: (a fifth held out to choose on, the rest to fit on)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: n // 5], order[n // 5 :]


def _default_keys(*, labelled: bool = False) -> list[str]:
    """Every registered key, DEFAULT_CANDIDATES first; label-only adapters only when ``labelled``;
    never one that reads a block (an extended version's bridge, chosen by its own fit)."""
    registered = ADAPTERS.keys()
    keys = [k for k in DEFAULT_CANDIDATES if k in registered] + [
        k for k in registered if k not in DEFAULT_CANDIDATES
    ]
    keys = [k for k in keys if not ADAPTERS.get(k).reads_block]  # extended versions only
    return [k for k in keys if labelled or not _label_only(k)]


def _label_only(key: str) -> bool:
    """Does ``key``'s default config need labels? (Its config at width 2; no adapter is built.)"""
    return ADAPTERS.get(key).config_class(dim_in=2, dim_out=2).needs_labels
