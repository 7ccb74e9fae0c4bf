"""Encoder checkpoints: safetensors weights with the registry key and config JSON in the metadata.

Files are written atomically (temp file in the same directory, fsync, ``os.replace``) so a crash
never leaves a half-written checkpoint under the final name, and identified by their sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors
from torch import Tensor

from kernels.errors import CorruptArtifactError, InvalidInputError, NotFoundError
from models.encoders import Encoder, build_encoder

FORMAT_VERSION = "1"
_KEY, _CONFIG, _FORMAT = "hotswap.encoder_key", "hotswap.config", "hotswap.format"


def sha256_file(path: Path, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (constant memory for multi-GB artifacts)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a same-directory temp file, fsync and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some platforms cannot open directories, which is fine there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_encoder(encoder: Encoder, path: Path) -> str:
    """Write ``encoder``'s weights, key and config to ``path``; return the file's sha256 hex."""
    if not hasattr(encoder, "key") or not hasattr(encoder, "config"):
        raise InvalidInputError(
            f"{type(encoder).__name__} is not a registered encoder (needs .key and .config)"
        )
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    metadata = {_KEY: encoder.key, _CONFIG: encoder.config.to_json(), _FORMAT: FORMAT_VERSION}
    data = save_tensors(tensors, metadata=metadata)
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def load_encoder(path: Path, expected_sha256: str | None = None) -> Encoder:
    """Rebuild an encoder saved by :func:`save_encoder` (CPU, eval mode).

    Raises NotFoundError for a missing file or an unknown encoder key, CorruptArtifactError for a
    checksum mismatch or a file that cannot be read back into the encoder it describes.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no encoder checkpoint at {str(path)!r}")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise CorruptArtifactError(
                f"checksum mismatch for {str(path)!r}: expected {expected_sha256}, got {actual}",
                fix="the file was modified or truncated; restore it from the original artifact",
            )
    metadata, tensors = _read_safetensors(path)
    if _KEY not in metadata or _CONFIG not in metadata:
        raise CorruptArtifactError(f"{str(path)!r} has no hotswap encoder metadata")
    try:
        config = json.loads(metadata[_CONFIG])
    except json.JSONDecodeError as e:
        raise CorruptArtifactError(f"{str(path)!r} has an unreadable config: {e}") from e
    try:
        encoder = build_encoder(metadata[_KEY], config)  # unknown key -> NotFoundError
    except InvalidInputError as e:
        raise CorruptArtifactError(f"{str(path)!r} has an invalid config: {e}") from e
    try:
        encoder.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CorruptArtifactError(f"{str(path)!r} does not match its config: {e}") from e
    return encoder.eval()


def _read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptArtifactError(f"cannot read encoder checkpoint {str(path)!r}: {e}") from e
    return metadata, tensors


# Public name for other packages (compat's adapters read their artifacts the same way).
read_safetensors = _read_safetensors
