"""Imports of the pretrained-model libraries (the ``pretrained`` extra), working on CPU-only torch."""

from __future__ import annotations

from types import ModuleType

from kernels.optional import require
from models._torchvision_shim import ensure_torchvision_importable

LIBRARIES = ("transformers", "sentence_transformers", "open_clip")


def import_library(name: str) -> ModuleType:
    """Import one of :data:`LIBRARIES`; a missing one names ``pip install 'hotswap[pretrained]'``.

    Each of them imports torchvision, which fails on CPU torch without the workaround in
    ``models/_torchvision_shim.py``; it is applied first (and does nothing where it is not needed).
    """
    ensure_torchvision_importable()
    return require(name, "pretrained")
