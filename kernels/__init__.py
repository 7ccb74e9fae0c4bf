"""Leaf package: fused ops (pure-torch reference + Triton kernel + one dispatch point) and errors.

Public API: ``project``, ``project_ref``, ``project_int8`` (-> ``Int8Rows``), ``ip_topk``,
``ip_topk_ref`` (-> ``TopK``), ``backend``. They resolve lazily (PEP 562), so that
``import kernels.errors`` (what the CLI needs to map errors to exit codes) does not import torch;
``kernels.dispatch`` and ``kernels.optional`` are torch-free too. Nothing here imports triton.

The ops live in modules named for what they hold (``kernels.projection``, ``kernels.topk``,
``kernels.monarch``), so no submodule shadows the op of the same name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see: the functions themselves
    from kernels.dispatch import backend
    from kernels.projection import Int8Rows, project, project_int8, project_ref
    from kernels.topk import TopK, ip_topk, ip_topk_ref

_OWNERS = {
    "backend": "kernels.dispatch",
    "Int8Rows": "kernels.projection",
    "project": "kernels.projection",
    "project_int8": "kernels.projection",
    "project_ref": "kernels.projection",
    "TopK": "kernels.topk",
    "ip_topk": "kernels.topk",
    "ip_topk_ref": "kernels.topk",
}

__all__ = [
    "Int8Rows",
    "TopK",
    "backend",
    "ip_topk",
    "ip_topk_ref",
    "project",
    "project_int8",
    "project_ref",
]


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    module = importlib.import_module(owner)
    value = getattr(module, name)
    globals()[name] = value  # resolved once
    return value
