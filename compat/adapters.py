"""Compatibility adapters: small maps between two embedding spaces, with a recorded direction.

A **backward** adapter maps new-model vectors into the old space (a v2 query searches the untouched
v1 gallery); a **forward** adapter maps stored old vectors into the new space. Applying a map in the
wrong direction passes every shape check and destroys retrieval, so the direction is part of the
config, stored in the artifact and checked wherever an adapter is applied.

Linear adapters export a :class:`ServingForm` (a dense projection plus bias) that ``kernels.project``
executes, so serving never runs the training-time parametrization. Nonlinear adapters (MLPs) cannot
be one projection: their ``serving_form()`` is None and they serve through their module.
:meth:`Adapter.bridge` hides the difference: it returns a callable (N, dim_in) -> (N, dim_out) either
way, which is what search and backfill should hold.

The registered adapters live in small modules imported at the bottom of this one, so
``import compat.adapters`` is enough to ``build_adapter`` any key:

- ``orthogonal`` (here), ``orthogonal_monarch`` (compat/monarch_adapter.py): exactly orthogonal maps;
- ``procrustes``, ``affine`` (compat/closed_form.py): closed-form fits on paired anchors;
  ``procrustes_monarch`` (compat/monarch_adapter.py): Procrustes restricted to orthogonal Monarch maps;
- ``lambda_orthogonal``, ``low_rank_affine`` (compat/linear_adapters.py): gradient-trained linear maps;
- ``residual_mlp``, ``residual_mlp_nca``, ``forward_mlp`` (compat/mlp_adapters.py): nonlinear maps, no
  serving form (label terms shared in compat/label_terms.py);
- ``contrastive_affine`` (compat/contrastive_adapter.py): an affine map trained with in-batch InfoNCE;
- ``block_step`` (compat/step_adapter.py): an extended version's bridge into its predecessor, a step
  from the block it keeps towards a label-aware map; it reads a block (``reads_block``), so it is
  never a default candidate between unrelated encoders.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import Tensor, nn

import kernels
from compat.solvers import procrustes_map
from kernels.errors import CorruptArtifactError, DirectionError, InvalidInputError
from models.checkpoint import atomic_write_bytes, read_safetensors, sha256_file
from models.config import Config, check
from models.registry import Registry

Direction = Literal["backward", "forward"]
DIRECTIONS: tuple[Direction, ...] = ("backward", "forward")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdapterConfig(Config):
    dim_in: int
    dim_out: int
    direction: Direction = "backward"

    def __post_init__(self) -> None:
        check(self.dim_in > 0 and self.dim_out > 0, f"adapter widths must be > 0, got {self}")
        check(self.direction in DIRECTIONS, f"direction must be one of {DIRECTIONS}")

    @property
    def needs_labels(self) -> bool:
        """True when the configured loss has terms only class labels define (it cannot fit without)."""
        return False


@dataclasses.dataclass(frozen=True)
class ServingForm:
    """``y = normalize?(x @ weight + bias)``: what kernels/ runs at query or backfill time."""

    weight: Tensor  # (dim_in, dim_out)
    bias: Tensor | None  # (dim_out,)
    normalize: bool

    def __call__(self, x: Tensor) -> Tensor:
        return kernels.project(x, self.weight, self.bias, normalize=self.normalize)


Bridge = Callable[[Tensor], Tensor]  # (N, dim_in) -> (N, dim_out), what serving holds


class Adapter(nn.Module):
    """Contract of every registered adapter: widths, direction, config, serving form.

    Fitting hooks (used by :func:`compat.fitting.fit_adapter`): :meth:`prepare` sees the paired
    training data once before any gradient step (a data-dependent initialisation, or the whole fit
    when ``closed_form``); :meth:`prepare_labels` sees the pairs' class labels once, when the fit
    has them; :meth:`training_loss` is what gradient training minimises (labels are the batch's, or
    None; adapters without label terms ignore them).
    """

    key: str
    config_class: type[AdapterConfig] = AdapterConfig
    config: AdapterConfig
    closed_form: ClassVar[bool] = False  # True: prepare() is the whole fit, no gradient training
    # True: assumes the target's vectors are the source's first dim_out dimensions (an extended
    # version's, models/extended.py); meaningless between unrelated encoders, and never widening
    reads_block: ClassVar[bool] = False

    @property
    def dim_in(self) -> int:
        return self.config.dim_in

    @property
    def dim_out(self) -> int:
        return self.config.dim_out

    @property
    def direction(self) -> Direction:
        return self.config.direction

    def serving_form(self) -> ServingForm | None:
        """The dense projection serving runs, or None for a nonlinear adapter."""
        raise NotImplementedError  # each registered adapter defines its own

    # Not named ``apply``: nn.Module.apply(fn) recurses into children, an override would break it.
    def transform(self, x: Tensor) -> Tensor:
        """(N, dim_in) -> (N, dim_out) as served: the serving form when there is one, else the module's
        forward, L2-normalized. Rows are unit for unit inputs (an isometric form skips the normalize).
        """
        form = self.serving_form()
        return _serve_module(self, x) if form is None else form(self._check_input(x))

    def bridge(self) -> Bridge:
        """A frozen callable for serving: the serving form, or an eval-mode copy of the module.

        Computed once (an orthogonal parametrization costs a matrix exponential per evaluation), so
        hold on to it rather than calling :meth:`transform` per batch. Later training does not change it.
        """
        form = self.serving_form()
        if form is not None:
            return form
        frozen = copy.deepcopy(self).eval().requires_grad_(False)
        return _ModuleBridge(frozen)

    def prepare(self, x: Tensor, y: Tensor) -> None:
        """See the paired data (N, dim_in), (N, dim_out) once before training; default: nothing."""

    def prepare_labels(self, y: Tensor, labels: Tensor) -> None:
        """See every training target (N, dim_out) and its class (N,) once; default: nothing."""

    def penalty(self) -> Tensor | None:
        """A term that keeps this map's form, added to any loss that trains it (post-hoc or jointly
        with an encoder, :func:`with_penalty`); None: the map has none (default)."""
        return None

    def training_loss(self, x: Tensor, y: Tensor, labels: Tensor | None = None) -> Tensor:
        """Mean squared L2 distance between mapped sources and targets: (N, dim_in), (N, dim_out)."""
        return squared_distance(self(x), y)

    def _check_input(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim_in:
            raise InvalidInputError(
                f"adapter {self.key!r} maps (N, {self.dim_in}) inputs, got shape {tuple(x.shape)}",
                fix="pass vectors of the adapter's source space, batched as (N, d)",
            )
        return x

    def expect(self, direction: Direction, dim_in: int, dim_out: int) -> None:
        """Refuse use in another direction or between spaces of other widths."""
        if direction != self.direction:
            raise DirectionError(
                f"adapter {self.key!r} is a {self.direction} map ({self.dim_in}->{self.dim_out}) "
                f"but a {direction} map is needed",
                fix="fit or register an adapter in the needed direction",
            )
        if (dim_in, dim_out) != (self.dim_in, self.dim_out):
            raise DirectionError(
                f"adapter {self.key!r} maps {self.dim_in}->{self.dim_out} dims, the spaces need "
                f"{dim_in}->{dim_out}"
            )


def with_penalty(loss: Tensor, adapter: Adapter | None) -> Tensor:
    """``loss`` plus the jointly trained ``adapter``'s own :meth:`Adapter.penalty`, if it has one."""
    penalty = None if adapter is None else adapter.penalty()
    return loss if penalty is None else loss + penalty


def squared_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean over rows of ‖a_i − b_i‖²: (N, d), (N, d) -> (); every MSE term of the adapters."""
    return (a - b).pow(2).sum(dim=1).mean()


def _serve_module(module: Adapter, x: Tensor) -> Tensor:
    """A nonlinear adapter as served: forward without autograd, rows L2-normalized, x's dtype."""
    module._check_input(x)
    with torch.no_grad():
        return F.normalize(module(x.float()), dim=1).to(x.dtype)


class _ModuleBridge:
    """Serve a frozen copy of a nonlinear adapter (see :meth:`Adapter.bridge`)."""

    def __init__(self, module: Adapter) -> None:
        self.module = module

    def __call__(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        return _serve_module(self.module, x)


ADAPTERS: Registry[type[Adapter]] = Registry("adapter")


# What prepare() starts an exactly orthogonal adapter's post-hoc fit from (its Procrustes solve, or
# the parametrization's random draw); shared by ``orthogonal`` and ``orthogonal_monarch``.
RotationInit = Literal["procrustes", "random"]
ROTATION_INITS: tuple[RotationInit, ...] = ("procrustes", "random")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrthogonalConfig(AdapterConfig):
    parametrization: Literal["matrix_exp", "cayley", "householder"] = "matrix_exp"
    bias: bool = False
    init: RotationInit = "procrustes"

    def __post_init__(self) -> None:
        super().__post_init__()
        options = ("matrix_exp", "cayley", "householder")
        check(self.parametrization in options, f"parametrization must be one of {options}")
        check(self.init in ROTATION_INITS, f"init must be one of {ROTATION_INITS}")


@ADAPTERS.register("orthogonal")
class OrthogonalAdapter(Adapter):
    """W with orthonormal rows or columns (exactly, by parametrization): an isometry when widening,
    an orthogonal projection when narrowing. Square and rectangular.

    Its parameters must be trained without weight decay: decay on the parametrization's free
    matrix breaks orthogonality of rectangular maps in torch 2.13 (‖WWᵀ−I‖ reaches 1); see
    :func:`no_decay_parameters`.
    """

    key = "orthogonal"
    config_class = OrthogonalConfig
    config: OrthogonalConfig

    def __init__(self, config: OrthogonalConfig) -> None:
        super().__init__()
        self.config = config
        linear = nn.Linear(config.dim_in, config.dim_out, bias=config.bias)
        self.linear = nn.utils.parametrizations.orthogonal(
            linear, orthogonal_map=config.parametrization
        )

    def forward(self, x: Tensor) -> Tensor:  # (N, dim_in) -> (N, dim_out)
        return self.linear(x)

    def prepare(self, x: Tensor, y: Tensor) -> None:
        """Post-hoc fits start from the centred Procrustes rotation (``init="procrustes"``)."""
        if self.config.init != "procrustes":
            return
        mx, my = x.double().mean(dim=0), y.double().mean(dim=0)
        r = procrustes_map(x.double() - mx, y.double() - my)  # (dim_in, dim_out)
        linear = cast(nn.Linear, self.linear)
        with torch.no_grad():
            # assigning goes through the parametrization's right_inverse: exactly R afterwards
            linear.weight = r.T.float().contiguous()
            if linear.bias is not None:
                linear.bias.copy_(my - mx @ r)

    def serving_form(self) -> ServingForm:
        with torch.no_grad():
            linear = cast(nn.Linear, self.linear)  # the parametrization computes .weight on access
            weight = linear.weight.detach().T.contiguous()  # (dim_in, dim_out)
            bias = None if linear.bias is None else linear.bias.detach().clone()
        # Widening orthonormal columns preserve norms: unit inputs stay unit, normalize is a no-op.
        isometric = self.dim_out >= self.dim_in and bias is None
        return ServingForm(weight=weight, bias=bias, normalize=not isometric)


def no_decay_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters that weight decay must not touch (those behind an orthogonal parametrization)."""
    return [p for name, p in module.named_parameters() if "parametrizations." in name]


def build_adapter(key: str, config: AdapterConfig | dict) -> Adapter:
    """The adapter registered as ``key``, from its config, a dict of its fields, or a plain
    :class:`AdapterConfig` (widths + direction; the key's other fields take their defaults)."""
    cls = ADAPTERS.get(key)
    if isinstance(config, dict):
        config = cls.config_class.from_dict(config)
    elif type(config) is AdapterConfig and cls.config_class is not AdapterConfig:
        config = cls.config_class.from_dict(config.to_dict())
    elif not isinstance(config, cls.config_class):
        raise InvalidInputError(
            f"adapter {key!r} takes a {cls.config_class.__name__}, got {type(config).__name__}",
            fix="pass a dict of its fields or a plain AdapterConfig(dim_in=, dim_out=, direction=)",
        )
    return cls(config)


def save_adapter(adapter: Adapter, path: Path) -> str:
    """Write weights + key + config (direction included) as safetensors; return the file's sha256."""
    tensors = {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}
    meta = {"key": adapter.key, "config": adapter.config.to_json()}
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return sha256_file(path)


def load_adapter(path: Path, expected_sha256: str | None = None) -> Adapter:
    """Rebuild an adapter from its artifact; a checksum mismatch or unreadable file is an error."""
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise CorruptArtifactError(
            f"adapter artifact {path} does not match its recorded sha256",
            fix="the file was changed or truncated: refit the adapter or restore the file",
        )
    meta, tensors = read_safetensors(path)
    try:
        config = ADAPTERS.get(meta["key"]).config_class.from_saved(json.loads(meta["config"]))
        adapter = build_adapter(meta["key"], config)
        adapter.load_state_dict(tensors)
    except (KeyError, json.JSONDecodeError, RuntimeError) as e:
        raise CorruptArtifactError(f"adapter artifact {path} is not a hotswap adapter: {e}") from e
    return adapter


# The other registered adapters; imported last because they subclass Adapter (defined above).
from compat import (  # noqa: E402, F401
    closed_form,
    contrastive_adapter,
    linear_adapters,
    mlp_adapters,
    monarch_adapter,
    step_adapter,
)
