"""Make torchvision importable on CPU-only torch, so transformers, sentence-transformers and open_clip load.

The only torchvision on PyPI that matches torch 2.13.0 is a CUDA build. On CPU torch its compiled
extension (``torchvision._C``) cannot load, and torchvision then fails at import time while registering
fake kernels for ``torchvision::nms``/``qnms``: "operator torchvision::nms does not exist". Defining
those two op schemas first lets the registration succeed; transforms and model definitions then work
and only the compiled ops (nms, roi_align, ...) stay unavailable. Where the extension loads (a CUDA
machine) this does nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None  # kept alive: dropping it unregisters the schemas


def _extension_loads(package_dir: Path) -> bool:
    for candidate in package_dir.glob("_C*.so"):
        try:
            torch.ops.load_library(str(candidate))
            return True
        except (OSError, RuntimeError):
            return False
    return False


def ensure_torchvision_importable() -> bool:
    """Apply the workaround if needed; return True when it was applied."""
    global _library
    spec = importlib.util.find_spec("torchvision")
    if _library is not None or spec is None or spec.origin is None:
        return False
    if _extension_loads(Path(spec.origin).parent):
        return False
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
    return True
