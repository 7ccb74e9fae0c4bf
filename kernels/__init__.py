"""Leaf package: fused ops (pure-torch reference + Triton kernel + one dispatch point) and errors.

Public API: ``project``, ``project_ref``, ``backend``. Importing this package imports torch (not
triton). The exports are bound eagerly on purpose: ``project`` is both a submodule and a function,
and only an eager ``from ... import`` guarantees ``kernels.project`` is the function (a lazy PEP 562
export would be overwritten by the submodule the first time anything imports ``kernels.project``).
Use ``importlib.import_module("kernels.project")`` to reach the module itself.
"""

from kernels.dispatch import backend
from kernels.project import project, project_ref

__all__ = ["backend", "project", "project_ref"]
