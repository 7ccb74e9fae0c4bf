"""A T-version upgrade chain (classes 0-3 → 0-6 → 0-9 by default) and its AC/AM matrix.

C[i][j] (top-1): version-i queries on the version-j gallery of all test images, j ≤ i. Methods:

- ``bct`` / ``ract`` / ``nca``: v1 plain classification, each later version trained against its
  predecessor (BCT's class means / RACT's contrastive term / NCA over the predecessor's features of
  the version's training images) with a jointly trained backward adapter; v_i reaches v_j through
  the adapters of v_i, v_{i-1}, …, v_{j+1} in turn.
- ``simplex``: every version d-Simplex with the same fixed vertices, later ones with HOC against their
  predecessor; no adapter (one shared space).
- ``posthoc``: every version trained independently; for every pair i > j an adapter v_i → v_j fitted
  on paired training-image features (label-aware candidates with their labels) and chosen by
  held-out class top-1
  (:func:`compat.protocol.choose_adapter`): no composition error accumulates along the chain.
- ``bct+posthoc`` / ``ract+posthoc`` / ``nca+posthoc`` (opt-in): versions trained as the base
  method, queries sent through one direct adapter per pair as in ``posthoc`` (training-time +
  post-hoc, per pair).
- ``extend+posthoc`` (opt-in): v_k keeps v_{k-1} whole, frozen, as a block of its vectors and trains
  only d_k - d_{k-1} extra dimensions beside it (BT²'s extra dimensions without its influence
  term). A later version then still encodes what an earlier one separates, classes it never saw
  included, and v_j's block read out of v_i's vectors is exactly v_j's own embedding. Each pair's
  queries move from that block towards a label-aware map by a step α chosen on held-out images
  (:func:`interpolated_queries`): α = 0 is v_j's own retrieval, which the held-out choice can
  always keep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compat.adapters import Adapter
from compat.fitting import FitOptions, fit_adapter
from compat.metrics import chain_metrics, self_retrieval_metrics
from compat.nca_objective import NCAConfig, nca_against
from compat.objectives import (
    BCT,
    BCTConfig,
    Classification,
    Objective,
    ObjectiveConfig,
    new_space_model,
    old_prototypes,
)
from compat.ract import RACT, RACTConfig
from compat.simplex import Simplex, SimplexConfig
from models.encoders import embed

if TYPE_CHECKING:
    from compat.protocol import Run

CHAIN_METHODS = (
    "bct",
    "ract",
    "nca",
    "simplex",
    "posthoc",
    "bct+posthoc",
    "ract+posthoc",
    "nca+posthoc",
    "extend+posthoc",
)
# extend+posthoc's steps from v_j's own block (0) to the label-aware map (1), chosen on held-out
# images: the full map over-corrects from a version that never saw some classes (stop 20,
# docs/results/compat.md: seed 1's v2 → v1 test top-1 0.708 at α = 1, 0.784 at α = 0.3, 0.759 at 0)
STEPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
# per pair, chosen on held-out images: the main protocol's label-aware candidates, nonlinear included
CHAIN_ADAPTERS = (
    "procrustes",
    "affine",
    "lambda_orthogonal",
    "lambda_orthogonal_nca",
    "residual_mlp_nca",
)


class Extended(nn.Module):
    """[the predecessor's vectors (frozen), extra dims], each block unit rows: raw extra dims would
    outweigh the predecessor's block in the version's cosine, and with it what the predecessor
    separates. The predecessor comes first, so the rectangular identity reads it back exactly."""

    def __init__(self, previous: nn.Module, extra: nn.Module) -> None:
        super().__init__()
        self.previous = previous.eval().requires_grad_(False)
        self.extra = extra

    def train(self, mode: bool = True) -> Extended:
        super().train(mode)
        self.previous.eval()  # frozen: its statistics must not move while the extra dims train
        return self

    def forward(self, x: Tensor) -> Tensor:  # (N, ...) -> (N, d_previous + d_extra)
        with torch.no_grad():
            kept = F.normalize(self.previous(x), dim=1)
        return torch.cat([kept, F.normalize(self.extra(x), dim=1)], dim=1)


def _version(
    run: Run, method: str, v: int, previous: tuple[nn.Module, Objective] | None
) -> tuple[nn.Module, Objective]:
    """Train version v (0-based) of the chain on the classes it sees."""
    from compat.protocol import fit, mlp

    method = method.removesuffix("+posthoc")  # "<m>+posthoc" trains as <m>; "posthoc" independently
    c = run.config
    classes, dim = c.chain[v], c.chain_dims[v]
    torch.manual_seed(run.seed * 100 + v)
    seen = run.y < classes
    x, y, seed = run.x[seen], run.y[seen], run.seed + v
    if method == "simplex":
        refs = [new_space_model(*previous)] if previous else []
        objective: Objective = Simplex(SimplexConfig(classes=10, embed_dim=dim, hoc=bool(refs)))
        return fit(mlp(dim), objective, x, y, seed, c.epochs, refs)
    if method == "extend" and previous is not None:
        encoder = Extended(new_space_model(*previous), mlp(dim - c.chain_dims[v - 1]))
        objective = Classification(ObjectiveConfig(classes=classes, embed_dim=dim))
        return fit(encoder, objective, x, y, seed, c.epochs)
    if previous is None or method == "posthoc":
        objective = Classification(ObjectiveConfig(classes=classes, embed_dim=dim))
        return fit(mlp(dim), objective, x, y, seed, c.epochs)
    prev_model, prev_dim = new_space_model(*previous), c.chain_dims[v - 1]
    if method == "ract":
        ract = RACT(RACTConfig(classes=classes, embed_dim=dim, old_dim=prev_dim))
        return fit(mlp(dim), ract, x, y, seed, c.epochs, [prev_model])
    if method == "nca":  # the bank: the predecessor's features of this version's training images
        nca_config = NCAConfig(classes=classes, embed_dim=dim, old_dim=prev_dim)
        nca, refs = nca_against(prev_model, x, y, nca_config)
        return fit(mlp(dim), nca, x, y, seed, c.epochs, refs)
    protos = old_prototypes(embed(prev_model, x), y, classes)
    bct = BCT(BCTConfig(classes=classes, embed_dim=dim, old_dim=prev_dim), protos)
    return fit(mlp(dim), bct, x, y, seed, c.epochs)


def _queries(
    run: Run, method: str, models: list[tuple[nn.Module, Objective]], i: int, j: int
) -> Tensor:
    """Version-i test queries in version j's space: (N_test, d_j)."""
    if method == "simplex" or i == j:
        return embed(new_space_model(*models[i]), run.x_test)
    if method.endswith("posthoc"):  # one direct adapter per pair, not a composition
        from compat.protocol import choose_adapter

        source, target = (embed(new_space_model(*models[k]), run.x) for k in (i, j))
        queries = embed(new_space_model(*models[i]), run.x_test)
        pair = run.chain_choices.setdefault(method, {})
        if method == "extend+posthoc":
            queries, step = interpolated_queries(run, source, target, queries)
            pair[f"v{i + 1}→v{j + 1}"] = f"step {step:g}"
            return queries
        _, choice, adapter = choose_adapter(run, source, target, CHAIN_ADAPTERS)
        pair[f"v{i + 1}→v{j + 1}"] = choice
        return adapter.transform(queries)
    encoder, _ = models[i]
    hops = [models[k][1].bridge_module() or nn.Identity() for k in range(i, j, -1)]
    return embed(nn.Sequential(encoder, *hops), run.x_test)


def interpolated_queries(
    run: Run, source: Tensor, target: Tensor, queries: Tensor
) -> tuple[Tensor, float]:
    """Extended v_i's queries (N_test, d_i) in v_j's space: (1 − α)·block + α·B(q), both unit rows;
    returns them and the chosen α.

    source (N, d_i) / target (N, d_j): the training images under v_i / v_j; the block is the first
    d_j dimensions of v_i (v_j's own vectors); B is ``lambda_orthogonal_nca`` started there
    (``init="identity"``). α is chosen on the run's held-out split by class top-1, then mAP, ties
    to the smaller step; B is then refitted on all pairs.
    """
    from compat.protocol import held_out_split

    d = target.shape[1]
    held, kept = held_out_split(run, len(source))

    def fitted(rows: Tensor) -> Adapter:
        return fit_adapter(
            "lambda_orthogonal_nca",
            source[rows],
            target[rows],
            direction="backward",
            seed=run.seed,
            options=FitOptions(epochs=run.config.adapter_epochs),
            labels=run.y[rows],
            config={"init": "identity"},
        ).adapter

    def moved(adapter: Adapter, x: Tensor, step: float) -> Tensor:
        block = F.normalize(x[:, :d], dim=1)
        return (1 - step) * block + step * F.normalize(adapter.transform(x), dim=1)

    probe = fitted(kept)

    def score(step: float) -> tuple[float, float, float]:
        m = self_retrieval_metrics(moved(probe, source[held], step), target[held], run.y[held])
        return round(m["top1"], 6), round(m["ap"], 6), -step

    step = max(STEPS, key=score)
    return moved(fitted(torch.arange(len(source))), queries, step), step


def chain_matrix(run: Run, method: str) -> list[list[float]]:
    """C (T, T) of top-1 values; NaN above the diagonal (queries on a newer gallery: not measured)."""
    models: list[tuple[nn.Module, Objective]] = []
    for v in range(len(run.config.chain)):
        models.append(_version(run, method, v, models[-1] if models else None))
    galleries = [embed(new_space_model(*m), run.x_test) for m in models]
    return [
        [
            self_retrieval_metrics(_queries(run, method, models, i, j), galleries[j], run.y_test)[
                "top1"
            ]
            if j <= i
            else float("nan")
            for j in range(len(models))
        ]
        for i in range(len(models))
    ]


def summarise_chains(chains: list[dict[str, list[list[float]]]]) -> dict[str, Any]:
    """Per method: AC and AM (mean ± std over seeds), AC per seed, the mean matrix."""
    from compat.protocol_summary import mean_std

    out: dict[str, Any] = {}
    if not chains:
        return out
    for method in chains[0]:
        scores = [chain_metrics(c[method]) for c in chains]
        t = len(chains[0][method])
        mean = [
            [mean_std([c[method][i][j] for c in chains])[0] if j <= i else None for j in range(t)]
            for i in range(t)
        ]
        out[method] = {
            "ac": mean_std([s.ac for s in scores]),
            "ac_per_seed": [s.ac for s in scores],
            "am": mean_std([s.am for s in scores]),
            "mean_matrix_top1": mean,
        }
    return out
