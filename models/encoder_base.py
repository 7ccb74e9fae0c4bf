"""What every pretrained encoder is: a frozen batch embedder with a fingerprint of what it is.

A :class:`PretrainedEncoder` maps inputs (a list of strings, an image tensor or external ids) to
fp32 (N, dim) L2-normalized rows, batched, with progress. Its ``fingerprint`` (weights sha256, dim,
normalization, pooling, library and version) is what the catalog records to tell two model
versions apart. The loaders that build one live in models/loaders.py (sentence-transformers,
open_clip, specs), models/split_zip.py (MPNet's split packages), models/vector_loader.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.errors import InvalidInputError
from models.checkpoint import sha256_file

Modality = Literal["text", "image", "vectors"]
ComputeDtype = Literal["float32", "bfloat16"]
COMPUTE_DTYPES = ("float32", "bfloat16")
# CPU flags (Linux /proc/cpuinfo) of native bf16 matmuls; without them torch emulates bf16
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainedEncoder:
    """A frozen encoder: ``encode(inputs) -> fp32 (N, dim)`` unit rows; ``fingerprint`` identifies it."""

    name: str
    dim: int
    modality: Modality
    fingerprint: dict[str, Any]
    embed_batch: Callable[[Any], Tensor] = dataclasses.field(repr=False)

    def encode(
        self,
        inputs: Sequence[Any] | Tensor,
        *,
        batch_size: int = 64,
        progress: Progress | None = None,
    ) -> Tensor:
        """Embed ``inputs`` (N items) in batches of ``batch_size``; call ``progress(done, total)`` per batch.

        Texts are batched longest first and the rows put back in input order: a batch is padded to
        its longest text, so mixing a 5-token lemma with a 60-token gloss wastes most of the batch.
        """
        if batch_size <= 0:
            raise InvalidInputError(f"batch_size must be positive, got {batch_size}")
        _check_inputs(self.modality, inputs)
        total, parts = len(inputs), []
        order = _length_order(inputs) if self.modality == "text" else list(range(total))
        with torch.inference_mode():
            for start in range(0, total, batch_size):
                rows = order[start : start + batch_size]
                batch = inputs[rows] if isinstance(inputs, Tensor) else [inputs[i] for i in rows]
                parts.append(self.embed_batch(batch).float().cpu())
                if progress is not None:
                    progress(min(start + batch_size, total), total)
        out = torch.empty(total, self.dim)
        if parts:
            out[torch.tensor(order, dtype=torch.long)] = torch.cat(parts)
        return F.normalize(out, dim=1)  # (N, dim), unit rows for cosine retrieval


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Does this CPU run bf16 matmuls natively (AVX512-BF16 or AMX)? False where the flags cannot
    be read. It decides whether bf16 autocast pays: MPNet ~2x faster than fp32 with them, ~7x
    slower without (1.4 vs 10 texts/s on an AVX2-only AMD EPYC, docs/results/text_upgrade.md)."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & NATIVE_BF16_FLAGS)


def _length_order(texts: Sequence[Any] | Tensor) -> list[int]:
    """Positions of ``texts``, longest first (character length: a cheap proxy for token count)."""
    return sorted(range(len(texts)), key=lambda i: -len(texts[i]))


def _check_inputs(modality: Modality, inputs: Sequence[Any] | Tensor) -> None:
    if modality == "image":
        if not isinstance(inputs, Tensor) or inputs.ndim != 4 or inputs.shape[1] != 3:
            shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise InvalidInputError(f"image encoders take a (N, 3, H, W) tensor, got {shape}")
    elif isinstance(inputs, str | Tensor) or not all(isinstance(x, str) for x in inputs):
        # A bare string would be encoded character by character: reject it instead.
        raise InvalidInputError(f"{modality} encoders take a list of strings")


# --- fingerprints -------------------------------------------------------------------------------

_FILE_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: hash once


def _cached_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(path)
    return _FILE_HASHES[key]


def weights_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's (relative path, file sha256) list; docs and dotfiles skipped."""
    if path.is_file():
        return _cached_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if not rel.startswith(".") and "/." not in rel and not file.name.startswith("README"):
            digest.update(f"{rel}\0{_cached_sha256(file)}\n".encode())
    return digest.hexdigest()


def fingerprint(sha: str, dim: int, pooling: str, library: str, **extra: Any) -> dict[str, Any]:
    """The dict stored beside a model version: same fingerprint <=> same vectors for the same input."""
    version = importlib.metadata.version(library)
    return {
        "weights_sha256": sha,
        "dim": dim,
        "normalization": "l2",
        "pooling": pooling,
        "library": library,
        "library_version": version,
        **extra,
    }
