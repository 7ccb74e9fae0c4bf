"""Imports of optional extras that fail with the command that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from kernels.errors import MissingExtraError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise a :class:`MissingExtraError` naming ``pip install 'hotswap[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{module!r} is needed for this feature but is not installed",
            fix=f"install it with: pip install 'hotswap[{extra}]'",
        ) from e
