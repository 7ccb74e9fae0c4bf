"""Neighbourhood-compatible training (ours): NCA of the bridged new features over the old gallery.

L = CE(head(φ_new)) + λ·NCA(B(φ_new), bank, labels, τ) [+ μ·‖B̂(φ_new) − φ_old(x)‖²], with B a
backward adapter trained jointly (as BCT's) and the bank the old model's features of *every*
training image with their class labels (a buffer, as BCT's prototypes). NCA is
:func:`compat.linear_adapters.neighbourhood_loss`: −log of the softmax mass (cosine / τ) that a
bridged query puts on same-class old vectors.

Why not BCT's, OCA's or RACT's influence term: they pull a bridged query towards its class's old
*mean* (or all of its class), which raises mAP and lowers CMC top-1 (docs/results/compat.md,
"Reading"). Top-1 asks only that *one* same-class old vector be nearest, which NCA at a low
temperature over the whole old gallery asks for; the post-hoc ``lambda_orthogonal_nca`` map shows
it (top-1 gain 0.83). The optional μ term ties each bridged query to the old vector of its own
input (φ_old through ``compat.references.WithReferences``, as RACT's), the post-hoc map's MSE.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from compat.adapters import Adapter, AdapterConfig, build_adapter
from compat.linear_adapters import neighbourhood_loss
from compat.objectives import OBJECTIVES, CosineClassifier, Objective, ObjectiveConfig
from kernels.errors import InvalidInputError
from models.config import check
from models.encoders import embed


@dataclasses.dataclass(frozen=True, kw_only=True)
class NCAConfig(ObjectiveConfig):
    old_dim: int
    weight: float = 1.0  # λ of the NCA term
    tau: float = 0.02  # the post-hoc lambda_orthogonal_nca's temperature
    mse: float = 0.0  # μ; > 0 needs the old features of the same inputs (reference_dims)
    adapter: str = "orthogonal"  # the backward map B, embed_dim -> old_dim

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.old_dim > 0 and self.tau > 0, f"bad old_dim/tau in {self}")
        check(min(self.weight, self.mse) >= 0, f"weight and mse must be >= 0 in {self}")


@OBJECTIVES.register("nca")
class NCA(Objective):
    """Neighbourhood-compatible training; serving sends new queries to the old gallery through B."""

    key = "nca"
    head: CosineClassifier
    bank: Tensor  # (N, old_dim) unit rows: the old model's features of the training images
    bank_labels: Tensor  # (N,) their classes

    def __init__(self, config: NCAConfig, bank: Tensor, bank_labels: Tensor) -> None:
        super().__init__()
        _check_bank(config, bank, bank_labels)
        self.config = config
        self.head = CosineClassifier(config.embed_dim, config.classes, config.scale)
        adapter_config = AdapterConfig(dim_in=config.embed_dim, dim_out=config.old_dim)
        self.adapter: Adapter = build_adapter(config.adapter, adapter_config)
        self.register_buffer("bank", F.normalize(bank.detach().float(), dim=1))
        self.register_buffer("bank_labels", bank_labels.detach().long().clone())

    def reference_dims(self) -> tuple[int, ...]:
        return (self.config.old_dim,) if self.config.mse > 0 else ()

    def bridge_module(self) -> nn.Module:
        return self.adapter

    def loss(self, features: Tensor, labels: Tensor) -> Tensor:
        c = self.config
        own, refs = self.split(features)
        bridged = F.normalize(self.adapter(own), dim=1)  # (B, old_dim)
        same = labels[:, None] == self.bank_labels[None, :]  # (B, N): bank item j is a positive
        loss = self._ce(self.head(own), labels, c.label_smoothing)
        loss = loss + c.weight * neighbourhood_loss(bridged, self.bank, same, c.tau)
        if refs:  # unit rows on both sides: ‖a − b‖² = 2 − 2 cos
            loss = loss + c.mse * (bridged - refs[0]).pow(2).sum(dim=1).mean()
        return loss


def _check_bank(config: NCAConfig, bank: Tensor, labels: Tensor) -> None:
    """The bank must be (N, old_dim) finite old features with N labels in [0, classes)."""
    fix = "pass the old model's features of the training images (embed(old, x)) and their labels"
    if bank.ndim != 2 or bank.shape[1] != config.old_dim or len(bank) == 0:
        raise InvalidInputError(
            f"the old bank must be (N, old_dim={config.old_dim}), got {tuple(bank.shape)}", fix=fix
        )
    if labels.shape != (len(bank),):
        raise InvalidInputError(
            f"bank_labels must be ({len(bank)},) like the bank, got {tuple(labels.shape)}", fix=fix
        )
    if labels.is_floating_point() or int(labels.min()) < 0 or int(labels.max()) >= config.classes:
        raise InvalidInputError(
            f"bank_labels must be integer classes in [0, {config.classes}), "
            f"got {labels.dtype} in [{labels.min()}, {labels.max()}]",
            fix=fix,
        )
    if not bool(bank.isfinite().all()):
        raise InvalidInputError("the old bank has non-finite values", fix=fix)


def nca_against(
    old: nn.Module, x: Tensor, y: Tensor, config: NCAConfig
) -> tuple[NCA, list[nn.Module]]:
    """The objective against a frozen old model, and the reference models its loss needs.

    The bank is ``old``'s unit-norm features of the training images x (N, ...) with labels y (N,);
    the references are [old] when μ > 0 (train on ``WithReferences(encoder, references)``).
    """
    objective = NCA(config, embed(old, x), y)
    return objective, [old] if config.mse > 0 else []
