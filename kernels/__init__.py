"""Leaf package: fused ops (pure-torch reference + Triton kernel + one dispatch point) and errors.

Public API: ``project``, ``project_ref``, ``project_int8`` (-> ``Int8Rows``), ``ip_topk``,
``ip_topk_ref`` (-> ``TopK``), ``backend``. Importing this package imports torch (not
triton). The exports are bound eagerly on purpose: ``project`` is both a submodule and a function,
and only an eager ``from ... import`` guarantees ``kernels.project`` is the function (a lazy PEP 562
export would be overwritten by the submodule the first time anything imports ``kernels.project``).
Use ``importlib.import_module("kernels.project")`` to reach the module itself.
"""

from kernels.dispatch import backend
from kernels.project import Int8Rows, project, project_int8, project_ref
from kernels.topk import TopK, ip_topk, ip_topk_ref

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
