"""Structured linear layers: drop-in replacements for ``nn.Linear`` (the HazyResearch fly pattern).

Every layer keeps ``nn.Linear``'s signature ``(in_features, out_features, bias=True, **structure)``,
maps ``(..., in_features) -> (..., out_features)`` and can produce its dense matrix:
``layer(x) == x @ layer.to_dense().T + layer.bias``. Layers are looked up by stable key in
:data:`LAYERS`: ``dense``, ``block_diagonal`` and ``monarch`` live here, ``butterfly`` and
``orthogonal_butterfly`` in :mod:`models.butterfly`, ``orthogonal_dense``,
``orthogonal_block_diagonal`` and ``orthogonal_monarch`` in :mod:`models.orthogonal_layers`
(imported at the bottom of this module, so every key is registered once ``LAYERS`` is importable).

Rectangular maps zero-pad the input up to a multiple of ``nblocks`` and crop the output, so any
``(in_features, out_features)`` works; the padded rows/columns simply never carry signal.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal

from kernels.errors import InvalidInputError, did_you_mean
from kernels.monarch import CPU_CHUNK_ROWS, MonarchMap, apply_monarch, prepare_monarch
from models.registry import Registry

LAYERS: Registry[type[nn.Module]] = Registry("structured layer")


def monarch_multiply(x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """Monarch product through ``kernels.monarch`` (differentiable on its torch path).

    x (B, k*p), w1 (k, q, p), w2 (l, s, r) with l*r == k*q  ->  (B, s*l); the layout and the
    stride permutation are specified by :func:`kernels.monarch.project_monarch_ref`.
    """
    return apply_monarch(x, prepare_monarch(w1, w2))


class StructuredLinear(nn.Module):
    """Base of the structured layers: bias, padding, CPU row chunking and ``to_dense``.

    Subclasses implement :meth:`_operands` (the tensors a product of ``rows`` inputs needs, built
    once per forward: a parametrized weight is recomputed on every access, and the CPU chunks share
    one copy), :meth:`_multiply` on padded, flattened input (B, in_padded) -> (B, out_padded), and
    list their extra constructor arguments in ``structure_params``. ``isometric`` layers are
    orthogonal maps (norm-preserving) where their widths allow, so their output scale is not
    ``nn.Linear``'s.

    A layer that is a Monarch or block-diagonal map returns its factors from :meth:`_factors`;
    its forward then runs ``kernels.monarch.apply_monarch`` on a :meth:`monarch_map`: rebuilt on
    every call while autograd tracks the parameters (training), cached otherwise (inference), so
    that serving neither re-lays out the weights nor re-runs a parametrization per batch.
    ``map_when_training = False`` keeps training on the generic path (butterfly, whose direct
    levels beat building factors at small batches).
    """

    structure_params: ClassVar[tuple[str, ...]] = ()
    isometric: ClassVar[bool] = False
    constrained: ClassVar[tuple[str, ...]] = ()  # tensors a parametrization keeps on a manifold
    map_when_training: ClassVar[bool] = True
    chunk_rows: int = CPU_CHUNK_ROWS
    _map_cache: tuple[list[object], MonarchMap] | None = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        in_padded: int,
        out_padded: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.in_padded = in_padded
        self.out_padded = out_padded
        self.bias: nn.Parameter | None
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def reset_bias(self) -> None:
        """Same bias init as ``nn.Linear``."""
        init_bias(self.bias, self.in_features)

    def _constrain(self) -> None:
        """Called last in ``__init__``: make ``constrained`` orthogonal (Givens for butterfly)."""
        for name in self.constrained:
            orthogonal(self, name)

    def _operands(self, rows: int) -> tuple[Tensor, ...]:
        """What a product of ``rows`` inputs needs; by default the Monarch factors."""
        factors = self._factors()
        if factors is None:
            raise NotImplementedError  # abstract: a layer defines _factors or its own operands
        return tuple(f for f in factors if f is not None)

    def _multiply(self, x: Tensor, operands: tuple[Tensor, ...]) -> Tensor:
        """(B, in_padded) -> (B, out_padded); by default the factors through ``kernels.monarch``."""
        return apply_monarch(x, prepare_monarch(*operands))

    def _linear_part(self, x: Tensor, operands: tuple[Tensor, ...]) -> Tensor:
        """(B, in_features) -> (B, out_features), no bias: pad, multiply, crop."""
        if self.in_padded != self.in_features:
            x = F.pad(x, (0, self.in_padded - self.in_features))
        return self._multiply(x, operands)[:, : self.out_features]

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        _check_width(self, x)
        if x.dim() == 2:  # the common case: skip two reshapes (microseconds at B=1)
            m = self.monarch_map()  # inlined _forward_rows: a call is ~0.2 us of ~25 at B=1
            if m is not None:
                return apply_monarch(x, m, chunk_rows=self.chunk_rows)
            return self._forward_rows(x)
        lead = x.shape[:-1]
        out = self._forward_rows(x.reshape(-1, self.in_features))
        return out.reshape(*lead, self.out_features)

    def _forward_rows(self, flat: Tensor) -> Tensor:
        """(B, in_features) -> (B, out_features) with bias: the kernels op, or the generic path."""
        m = self.monarch_map()
        if m is not None:
            return apply_monarch(flat, m, chunk_rows=self.chunk_rows)
        operands = self._operands(flat.shape[0])
        if flat.device.type == "cpu" and flat.shape[0] > self.chunk_rows:
            # split/cat are differentiable, so chunking keeps autograd intact.
            chunks = flat.split(self.chunk_rows)
            out = torch.cat([self._linear_part(c, operands) for c in chunks])
        else:
            out = self._linear_part(flat, operands)
        return out if self.bias is None else out + self.bias

    def _factors(self) -> tuple[Tensor, Tensor | None] | None:
        """(w1 (k, q, p), w2 (l, s, r) or None) as in ``kernels.monarch``; None: no such form."""
        return None

    def monarch_map(self) -> MonarchMap | None:
        """The layer (bias and crop included) as a prepared ``kernels.monarch`` map, or None."""
        # the plain parameters directly: .parameters() costs ~5 us, a third of a B=1 forward
        params = (
            list(self.parameters())
            if "parametrizations" in self._modules  # is_parametrized(), without its exception
            else self._parameters.values()  # may hold None (no bias)
        )
        if torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params):
            return self._build_map() if self.map_when_training else None
        # In-place updates bump _version, conversions (.to, .double) go through _apply below.
        # (A list comprehension, not a generator: this runs on every inference call.)
        key: list[object] = [(p.data_ptr(), p._version) for p in params if p is not None]
        key.append(torch.is_inference_mode_enabled())
        if self._map_cache is None or self._map_cache[0] != key:
            m = self._build_map()
            if m is None:
                return None
            self._map_cache = (key, m)
        return self._map_cache[1]

    def _build_map(self) -> MonarchMap | None:
        factors = self._factors()
        if factors is None:
            return None
        return prepare_monarch(*factors, self.bias, d_out=self.out_features)

    def _apply(self, fn: Any, recurse: bool = True) -> StructuredLinear:
        self._map_cache = None  # .to()/.double()/.cuda() replace the parameters' storage
        return super()._apply(fn, recurse)

    def to_dense(self) -> Tensor:
        """The equivalent (out_features, in_features) weight, built by mapping the identity."""
        like = next(self.parameters())
        eye = torch.eye(self.in_features, device=like.device, dtype=like.dtype)
        out = self._linear_part(eye, self._operands(self.in_features))  # (in, out)
        return out.T

    def extra_repr(self) -> str:
        extra = ", ".join(f"{name}={getattr(self, name)}" for name in self.structure_params)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}" + (f", {extra}" if extra else "")
        )


def _check_width(layer: nn.Module, x: Tensor) -> None:
    if x.ndim == 0 or x.shape[-1] != layer.in_features:
        raise InvalidInputError(
            f"{type(layer).__name__} expects {layer.in_features} input features, "
            f"got shape {tuple(x.shape)}"
        )


def _check_blocks(in_features: int, out_features: int, nblocks: int) -> None:
    if in_features <= 0 or out_features <= 0:
        raise InvalidInputError(
            f"features must be positive, got in={in_features}, out={out_features}"
        )
    if nblocks <= 0 or nblocks > min(in_features, out_features):
        raise InvalidInputError(
            f"nblocks={nblocks} must be in [1, min(in, out)={min(in_features, out_features)}]",
            fix="use fewer blocks, or a 'dense' layer for very narrow maps",
        )


@LAYERS.register("dense")
class DenseLinear(nn.Linear):
    """``nn.Linear`` plus ``to_dense`` (so it satisfies the structured-layer contract)."""

    structure_params: ClassVar[tuple[str, ...]] = ()
    isometric: ClassVar[bool] = False
    constrained: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        for name in self.constrained:
            orthogonal(self, name)

    def reset_parameters(self) -> None:
        if redraw_parametrized(self, self.constrained):
            init_bias(self.bias, self.in_features)
        else:
            super().reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features); a wrong width is a typed error."""
        _check_width(self, x)
        return super().forward(x)

    def to_dense(self) -> Tensor:
        """The (out_features, in_features) weight itself."""
        return self.weight


class BlockLinear(StructuredLinear):
    """Layers made of ``nblocks``-block factors: the shared constructor.

    p = ceil(in/nb) and s = ceil(out/nb): the widths are padded to nb*p and nb*s. Subclasses give
    their factors' shapes in :meth:`_factor_shapes` and their init in :meth:`_init_factors`;
    ``constrained`` subclasses (the orthogonal variants) are redrawn on the manifold instead.
    """

    structure_params: ClassVar[tuple[str, ...]] = ("nblocks",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        nblocks: int = 4,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_blocks(in_features, out_features, nblocks)
        p, s = math.ceil(in_features / nblocks), math.ceil(out_features / nblocks)
        super().__init__(
            in_features,
            out_features,
            bias,
            in_padded=nblocks * p,
            out_padded=nblocks * s,
            device=device,
            dtype=dtype,
        )
        self.nblocks = nblocks
        for name, shape in self._factor_shapes(nblocks, p, s).items():
            setattr(self, name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()
        self._constrain()

    def _factor_shapes(self, nblocks: int, p: int, s: int) -> dict[str, tuple[int, int, int]]:
        raise NotImplementedError  # abstract: each registered block layer defines its own

    def _init_factors(self) -> None:
        raise NotImplementedError  # abstract: each registered block layer defines its own

    def reset_parameters(self) -> None:
        if not redraw_parametrized(self, self.constrained):
            self._init_factors()
        self.reset_bias()


@LAYERS.register("block_diagonal")
class BlockDiagonalLinear(BlockLinear):
    """One block-diagonal factor, no permutation (M2-BERT's "Monarch MLP"): n*m/nb parameters.

    blocks (nb, s, p).
    """

    blocks: Tensor

    def _factor_shapes(self, nblocks: int, p: int, s: int) -> dict[str, tuple[int, int, int]]:
        return {"blocks": (nblocks, s, p)}

    def _init_factors(self) -> None:
        """Uniform with bound 1/sqrt(block fan-in): output variance matches ``nn.Linear``'s."""
        bound = 1.0 / math.sqrt(self.blocks.shape[-1])
        nn.init.uniform_(self.blocks, -bound, bound)

    def _factors(self) -> tuple[Tensor, Tensor | None]:
        return self.blocks, None


@LAYERS.register("monarch")
class MonarchLinear(BlockLinear):
    """Two block-diagonal factors with a stride permutation between them: ~2*n*m/nb parameters.

    w1 (k, q, p) and w2 (l, s, r) with k = l = nblocks, p = ceil(in/nb), s = ceil(out/nb) and
    q = r = min(p, s) (the narrower side fixes the middle width, so the map can still be full rank).
    """

    w1: Tensor
    w2: Tensor

    def _factor_shapes(self, nblocks: int, p: int, s: int) -> dict[str, tuple[int, int, int]]:
        q = min(p, s)
        return {"w1": (nblocks, q, p), "w2": (nblocks, s, q)}

    def _init_factors(self) -> None:
        """Uniform with bound 1/sqrt(block fan-in) on w1 (as ``nn.Linear``: gain 1/3 in variance);
        w2 gets sqrt(3)/sqrt(fan-in), a variance-preserving factor, so that the product's output
        variance matches ``nn.Linear``'s instead of being 3x smaller (fly's init gives 1/9)."""
        bound1 = 1.0 / math.sqrt(self.w1.shape[-1])
        bound2 = math.sqrt(3.0 / self.w2.shape[-1])
        nn.init.uniform_(self.w1, -bound1, bound1)
        nn.init.uniform_(self.w2, -bound2, bound2)

    def _factors(self) -> tuple[Tensor, Tensor | None]:
        return self.w1, self.w2


def make_linear(
    kind: str, in_features: int, out_features: int, bias: bool = True, **kw: Any
) -> nn.Module:
    """Build a layer from :data:`LAYERS`; unknown structure arguments are a clear error."""
    cls = LAYERS.get(kind)
    allowed = list(getattr(cls, "structure_params", ()))
    for name in kw:
        if name not in allowed + ["device", "dtype"]:
            raise InvalidInputError(
                f"layer {kind!r} takes no argument {name!r}",
                fix=did_you_mean(name, allowed) if allowed else f"{kind!r} takes none",
            )
    return cls(in_features, out_features, bias=bias, **kw)


def structure_kwargs(kind: str, **candidates: Any) -> dict[str, Any]:
    """The subset of ``candidates`` that layer ``kind`` accepts (drops ``nblocks`` for dense)."""
    allowed = getattr(LAYERS.get(kind), "structure_params", ())
    return {name: value for name, value in candidates.items() if name in allowed}


def parameter_count(module: nn.Module) -> int:
    """Number of trainable scalars (bias included)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def init_bias(bias: Tensor | None, in_features: int) -> None:
    """``nn.Linear``'s bias init: U(-1/sqrt(in_features), 1/sqrt(in_features))."""
    if bias is not None:
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(bias, -bound, bound)


def redraw_parametrized(module: nn.Module, names: tuple[str, ...]) -> bool:
    """Give the parametrized tensors ``names`` fresh random values; False if not parametrized yet.

    Assigning to a parametrized tensor goes through the parametrization's ``right_inverse``, which
    projects a Gaussian draw onto the constraint (a random orthogonal matrix, random rotation
    angles). Before registration (inside the parent's ``__init__``) the caller runs its plain init
    instead, and registering the parametrization then projects that.
    """
    if not names or not all(parametrize.is_parametrized(module, name) for name in names):
        return False
    with torch.no_grad():
        for name in names:
            setattr(module, name, torch.randn_like(getattr(module, name)))
    return True


# Register the layers that live in their own modules (they import the names above).
from models import butterfly, orthogonal_layers  # noqa: E402, F401
