"""Class-label terms shared by label-aware post-hoc adapters: config fields, bank, losses.

A post-hoc map fitted by MSE alone copies the old space, old mistakes included; what retrieval
measures is a mapped new query landing among *same-class* old gallery vectors. The terms here ask
for that, with the training items' class labels (passed by :func:`compat.fitting.fit_adapter`):

- cross-model: mapped new vectors B(h_new_i) against old vectors h_old_j, positives the same-class
  ones; SupCon (pull towards all of the class) or NCA (−log of the softmax mass on the class, i.e.
  one same-class old vector nearest: CMC top-1 at a low τ); candidates the batch's old vectors or,
  with ``bank``, every old training vector (seen once through ``prepare_labels``);
- new→new: SupCon among the mapped vectors themselves.

:class:`LabelTermsConfig` holds the weights, :class:`LabelAwareAdapter` the bank and the loss, so
the linear λ-orth family (compat/linear_adapters.py) and the residual MLP (compat/mlp_adapters.py)
share one implementation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from compat.adapters import Adapter, AdapterConfig, squared_distance
from kernels.errors import InvalidInputError
from models.config import check

SupervisedForm = Literal["supcon", "nca"]
# what the MSE term compares: the vectors as they are, or their directions (unit vectors, where
# ‖â − b̂‖² = 2 − 2·cos): retrieval ranks by cosine, so a map need not copy the old norms
MSEOn = Literal["vectors", "directions"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelTermsConfig(AdapterConfig):
    # every label-aware map was fitted on vectors before mse_on existed (stop 19 added it)
    SAVED_BEFORE: ClassVar[dict[str, Any]] = {"mse_on": "vectors"}

    mse: float = 1.0  # weight of ‖B(h_src) − h_tgt‖², beside the label terms
    mse_on: MSEOn = "vectors"
    # weights of the label terms (0 = off; either > 0 needs labels): cross-model, new→new
    supervised: float = 0.0
    supervised_new: float = 0.0
    temperature: float = 0.1  # of both label terms (cosine / τ)
    supervised_form: SupervisedForm = "supcon"  # of the cross-model term; new→new is SupCon
    bank: bool = False  # cross-model candidates: every training target, not only the batch's

    def __post_init__(self) -> None:
        super().__post_init__()
        weights = (self.mse, self.supervised, self.supervised_new)
        check(min(weights) >= 0, f"mse, supervised, supervised_new must be >= 0: {self}")
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        forms = get_args(SupervisedForm)
        check(self.supervised_form in forms, f"supervised_form must be one of {forms}")
        check(self.mse_on in get_args(MSEOn), f"mse_on must be one of {get_args(MSEOn)}")

    @property
    def needs_labels(self) -> bool:
        return self.supervised > 0 or self.supervised_new > 0


class LabelAwareAdapter(Adapter):
    """An adapter whose loss may add :class:`LabelTermsConfig`'s label terms (:meth:`add_label_terms`)."""

    config: LabelTermsConfig
    # (targets (N, d_out), labels (N,)) of the whole fit, set by prepare_labels; never saved
    _bank: tuple[Tensor, Tensor] | None = None

    def prepare_labels(self, y: Tensor, labels: Tensor) -> None:
        """See every training target (N, dim_out) and its label once: the bank, with ``bank``."""
        self._bank = (y.detach(), labels) if self.config.bank else None

    def fit_term(self, mapped: Tensor, y: Tensor) -> Tensor:
        """The weighted MSE of mapped (B, d_out) against targets y (B, d_out), on ``mse_on``."""
        if self.config.mse_on == "directions":
            mapped, y = F.normalize(mapped, dim=1), F.normalize(y, dim=1)
        return self.config.mse * squared_distance(mapped, y)

    def add_label_terms(
        self, loss: Tensor, mapped: Tensor, y: Tensor, labels: Tensor | None
    ) -> Tensor:
        """``loss`` + the configured label terms of mapped (B, d_out) vs targets y (B, d_out).

        labels (B,) int, or None (an error when a label term is on).
        """
        c = self.config
        if not c.needs_labels:
            return loss
        if labels is None:
            raise InvalidInputError(
                f"adapter {self.key!r} has supervised terms (supervised={c.supervised}, "
                f"supervised_new={c.supervised_new}) and needs the pairs' class labels",
                fix="pass labels= to fit_adapter / select_adapter, or set both weights to 0",
            )
        same = labels[:, None] == labels[None, :]  # (B, B): item j is a positive of anchor i
        if c.supervised > 0:
            loss = loss + c.supervised * self._cross_model(mapped, y, labels, same)
        if c.supervised_new > 0:
            own = torch.eye(len(mapped), dtype=torch.bool, device=mapped.device)
            new_new = supervised_contrastive(mapped, mapped, same, c.temperature, exclude=own)
            loss = loss + c.supervised_new * new_new
        return loss

    def _cross_model(self, mapped: Tensor, y: Tensor, labels: Tensor, same: Tensor) -> Tensor:
        """Mapped new vectors (B, d_out) against old candidates: the batch's, or the whole bank."""
        c = self.config
        if self._bank is not None:
            y, bank_labels = self._bank  # (N, d_out), (N,)
            same = labels[:, None] == bank_labels[None, :]  # (B, N)
        if c.supervised_form == "nca":
            return neighbourhood_loss(mapped, y, same, c.temperature)
        return supervised_contrastive(mapped, y, same, c.temperature)


def supervised_contrastive(
    anchors: Tensor,
    candidates: Tensor,
    same: Tensor,
    temperature: float,
    exclude: Tensor | None = None,
) -> Tensor:
    """SupCon (Khosla et al. 2020): anchors (B, d), candidates (C, d), same (B, C) bool -> ().

    Loss of anchor i: −mean over positives p (same[i, p]) of log softmax_c(cos(a_i, c) / τ)[p],
    the softmax over every candidate not in ``exclude`` (B, C) (e.g. the anchor itself); the mean
    is over anchors with at least one positive.
    """
    logits = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).T / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
        same = same & ~exclude
    log_prob = logits.log_softmax(dim=1).masked_fill(~same, 0.0)  # (B, C), no -inf left
    counts = same.sum(dim=1)  # (B,)
    has = counts > 0
    if not bool(has.any()):
        return anchors.sum() * 0.0  # no positive pair in the batch: nothing to learn, still a graph
    return -(log_prob.sum(dim=1)[has] / counts[has]).mean()


def neighbourhood_loss(
    anchors: Tensor, candidates: Tensor, same: Tensor, temperature: float
) -> Tensor:
    """NCA (Goldberger et al. 2004): −mean_i log Σ_{p: same[i, p]} softmax_c(cos(a_i, c) / τ)[p].

    anchors (B, d), candidates (C, d), same (B, C) bool -> (); anchors without a positive are
    left out. At a low τ it rewards the nearest candidate being same-class, which is CMC top-1.
    """
    logits = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).T / temperature
    has = same.any(dim=1)
    if not bool(has.any()):
        return anchors.sum() * 0.0
    positive = torch.logsumexp(logits.masked_fill(~same, float("-inf"))[has], dim=1)
    return (torch.logsumexp(logits[has], dim=1) - positive).mean()
