"""Leaf package: fused ops (pure-torch reference + Triton kernel + one dispatch point) and errors.

Public API: ``project``, ``project_ref``, ``project_int8`` (-> ``Int8Rows``), ``backend``. Importing this package imports torch (not
triton). The exports are bound eagerly on purpose: ``project`` is both a submodule and a function,
and only an eager ``from ... import`` guarantees ``kernels.project`` is the function (a lazy PEP 562
export would be overwritten by the submodule the first time anything imports ``kernels.project``).
Use ``importlib.import_module("kernels.project")`` to reach the module itself.
"""

from kernels.dispatch import backend
from kernels.project import Int8Rows, project, project_int8, project_ref

__all__ = ["Int8Rows", "backend", "project", "project_int8", "project_ref"]
