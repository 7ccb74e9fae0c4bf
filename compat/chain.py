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
  only d_k - d_{k-1} extra dimensions beside it (:class:`models.extended.ExtendedEncoder`). A later
  version then still encodes what an earlier one separates, classes it never saw included, and v_j's
  block read out of v_i's vectors is exactly v_j's own embedding. Each pair's queries move from that
  block towards a label-aware map by a step chosen on held-out images (a ``block_step`` bridge,
  :func:`compat.extension.fit_block_step`): step 0 is v_j's own retrieval, which the held-out choice
  can always keep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from compat.extension import fit_block_step
from compat.fitting import FitOptions
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
from models.encoders import Encoder, embed
from models.extended import ExtendedEncoder

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
# per pair, chosen on held-out images: the main protocol's label-aware candidates, nonlinear included
CHAIN_ADAPTERS = (
    "procrustes",
    "affine",
    "lambda_orthogonal",
    "lambda_orthogonal_nca",
    "residual_mlp_nca",
)


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
        # every version of the chain is a registered encoder (mlp, or extended in turn)
        kept = cast(Encoder, previous[0])
        encoder = ExtendedEncoder.around(kept, mlp(dim - c.chain_dims[v - 1]))
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
        if method == "extend+posthoc":  # v_j's block of v_i's vectors, stepped towards a map
            options = FitOptions(epochs=run.config.adapter_epochs)
            bridge = fit_block_step(source, target, run.y, seed=run.seed, options=options)
            pair[f"v{i + 1}→v{j + 1}"] = f"step {bridge.config.step:g}"
            return bridge.transform(queries)
        _, choice, adapter = choose_adapter(run, source, target, CHAIN_ADAPTERS)
        pair[f"v{i + 1}→v{j + 1}"] = choice
        return adapter.transform(queries)
    encoder, _ = models[i]
    hops = [models[k][1].bridge_module() or nn.Identity() for k in range(i, j, -1)]
    return embed(nn.Sequential(encoder, *hops), run.x_test)


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
