"""Training-time objectives: what a new encoder is trained to minimise, compatibility included.

Every objective is a module that owns its trainable extras (classifier head, adapter) and its
frozen references (the old model's class prototypes), so ``train`` works with any registered
encoder, structured ones included.

One contract says how a trained (encoder, objective) pair is served:

- :meth:`Objective.embedding` maps encoder features to the **new-space** vectors (identity for most;
  BT²'s [b; e], OCA's orthogonal layer, d-Simplex's junction);
- :meth:`Objective.bridge_module` maps encoder features to **old-space** vectors (BCT's and RACT's
  backward adapter, BT²'s compatible block b, OCA's first d_old dims), or None when the new-space
  vectors are themselves comparable with the old gallery (same width, trained into the same space);
- :func:`new_space_model` / :func:`old_space_model` wrap a frozen copy of encoder + that module, ready
  for :func:`models.encoders.embed`. Blocks are cut by an explicit :class:`Slice`, never by silent
  truncation at comparison time.

Objectives whose loss needs frozen reference features of the same inputs (the old model's, a
teacher's: BT², d-Simplex's HOC, RACT) list them in :meth:`Objective.reference_dims`; train them on
``compat.references.WithReferences(encoder, refs)``, which appends those features to the encoder's.

Registered keys: ``classification``, ``bct`` (here), ``bt2`` (compat/bt2.py), ``oca`` (compat/oca.py),
``simplex`` (compat/simplex.py), ``ract`` (compat/ract.py), ``nca`` (compat/nca_objective.py; ours:
NCA of the bridged new features over every old training vector, for top-1 through the bridge).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compat.adapters import Adapter, AdapterConfig, build_adapter, with_penalty
from kernels.errors import InvalidInputError
from models.config import Config, check
from models.registry import Registry


class CosineClassifier(nn.Module):
    """Logits = scale · cos(feature, class weight): features are trained for cosine retrieval."""

    def __init__(self, dim: int, classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, features: Tensor) -> Tensor:  # (N, dim) -> (N, classes)
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObjectiveConfig(Config):
    classes: int
    embed_dim: int
    scale: float = 16.0
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        check(self.classes >= 2 and self.embed_dim > 0, f"bad classes/embed_dim in {self}")
        check(0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)")


class Slice(nn.Module):
    """(N, d) -> (N, stop - start): an explicit block of the features (BT²'s b, OCA's first d_old)."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.start : self.stop]


class Objective(nn.Module):
    key: str
    head: nn.Module

    def loss(self, features: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError  # each registered objective defines its own

    def embedding(self) -> nn.Module:
        """Encoder features (N, embed_dim) -> new-space vectors; identity unless overridden."""
        return nn.Identity()

    def bridge_module(self) -> nn.Module | None:
        """Encoder features -> old-space vectors, or None: the new-space vectors are comparable."""
        return None

    def reference_dims(self) -> tuple[int, ...]:
        """Widths of the frozen reference features appended to the encoder's (see module doc)."""
        return ()

    def split(self, features: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(N, embed_dim + sum(reference_dims)) -> own (N, embed_dim), [reference (N, d_r), ...]."""
        widths = self.reference_dims()
        own = features.shape[1] - sum(widths)
        if own <= 0:
            raise InvalidInputError(
                f"objective {self.key!r} needs reference features of widths {widths} appended "
                f"to the encoder's; got width {features.shape[1]}",
                fix="train compat.references.WithReferences(encoder, references)",
            )
        own_features, *refs = features.split([own, *widths], dim=1)
        return own_features, list(refs)

    def _ce(self, logits: Tensor, labels: Tensor, smoothing: float) -> Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=smoothing)


def _frozen(encoder: nn.Module, module: nn.Module) -> nn.Module:
    return copy.deepcopy(nn.Sequential(encoder, module)).eval().requires_grad_(False)


def new_space_model(encoder: nn.Module, objective: Objective) -> nn.Module:
    """A frozen copy of encoder + ``objective.embedding()``: inputs -> new-space vectors."""
    return _frozen(encoder, objective.embedding())


def old_space_model(encoder: nn.Module, objective: Objective) -> nn.Module:
    """A frozen copy of encoder + ``objective.bridge_module()``: inputs -> old-space vectors.

    Where the objective has no bridge (its new space is the old one), the new-space model.
    """
    bridge = objective.bridge_module()
    return new_space_model(encoder, objective) if bridge is None else _frozen(encoder, bridge)


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


@OBJECTIVES.register("classification")
class Classification(Objective):
    """Plain (label-smoothed) cross-entropy: an independent model, with no compatibility."""

    key = "classification"
    head: CosineClassifier

    def __init__(self, config: ObjectiveConfig) -> None:
        super().__init__()
        self.config = config
        self.head = CosineClassifier(config.embed_dim, config.classes, config.scale)

    def loss(self, features: Tensor, labels: Tensor) -> Tensor:
        return self._ce(self.head(features), labels, self.config.label_smoothing)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BCTConfig(ObjectiveConfig):
    old_dim: int
    weight: float = 1.0  # λ of the influence loss (BCT paper: 1)
    adapter: str = "orthogonal"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.old_dim > 0 and self.weight >= 0, f"bad old_dim/weight in {self}")


@OBJECTIVES.register("bct")
class BCT(Objective):
    """Backward-compatible training (Shen et al. 2020) through a backward adapter.

    L = CE(head(φ_new)) + λ·CE(old_classifier(B(φ_new))): the new features, mapped into the old space
    by the backward adapter B, must be classified correctly by the frozen old classifier. Its rows are
    the old model's class prototypes (see :func:`old_prototypes`). The adapter is trained jointly and
    is what serving uses to send v2 queries to the v1 gallery.
    """

    key = "bct"
    head: CosineClassifier
    prototypes: Tensor  # (classes, old_dim) unit rows, a buffer

    def __init__(self, config: BCTConfig, prototypes: Tensor) -> None:
        super().__init__()
        check(
            tuple(prototypes.shape) == (config.classes, config.old_dim),
            f"old prototypes must be ({config.classes}, {config.old_dim}), got {tuple(prototypes.shape)}",
        )
        self.config = config
        self.head = CosineClassifier(config.embed_dim, config.classes, config.scale)
        adapter_config = AdapterConfig(dim_in=config.embed_dim, dim_out=config.old_dim)
        self.adapter: Adapter = build_adapter(config.adapter, adapter_config)
        self.register_buffer("prototypes", F.normalize(prototypes.detach().float(), dim=1))

    def loss(self, features: Tensor, labels: Tensor) -> Tensor:
        smoothing = self.config.label_smoothing
        bridged = F.normalize(self.adapter(features), dim=1)
        old_logits = self.config.scale * bridged @ self.prototypes.T
        influence = self._ce(old_logits, labels, smoothing)
        loss = self._ce(self.head(features), labels, smoothing) + self.config.weight * influence
        return with_penalty(loss, self.adapter)

    def bridge_module(self) -> nn.Module:
        return self.adapter


PrototypeMode = Literal["class_means", "classifier"]


def old_prototypes(
    old_features: Tensor,
    labels: Tensor,
    classes: int,
    *,
    mode: PrototypeMode = "class_means",
    old_classifier: Tensor | None = None,
) -> Tensor:
    """The old model's classifier over all ``classes``: (classes, d_old), unit rows.

    ``classifier`` is the paper's construction: the real old classifier's rows for the classes the
    old model saw, the mean old feature for classes it never saw. ``class_means`` uses the mean old
    feature for every class (the variant the BT²/OCA re-implementations use); on Fashion-MNIST it
    passes the compatibility criterion where the paper's variant fails (docs/results/demo.md).
    """
    features = F.normalize(old_features.float(), dim=1)
    present = torch.bincount(labels, minlength=classes) > 0
    check(
        bool(present.all()),
        f"every class needs old features; missing {(~present).nonzero().flatten().tolist()}",
    )
    rows = torch.stack([features[labels == c].mean(dim=0) for c in range(classes)])
    if mode == "classifier":
        if old_classifier is None:
            raise InvalidInputError("mode='classifier' needs the old classifier's weights")
        seen = old_classifier.shape[0]
        rows[:seen] = old_classifier.detach().float()
    return F.normalize(rows, dim=1)


# The other registered objectives; imported last because they subclass Objective (defined above).
from compat import bt2, nca_objective, oca, ract, simplex  # noqa: E402, F401
