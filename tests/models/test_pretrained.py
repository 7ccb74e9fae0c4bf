"""The pretrained-model libraries import on CPU torch (each test in a fresh interpreter: imports are global)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


def test_libraries_import_and_build_a_model() -> None:
    result = python(
        "from models.pretrained import import_library as lib\n"
        "open_clip = lib('open_clip'); st = lib('sentence_transformers'); tf = lib('transformers')\n"
        "model = open_clip.create_model('ViT-B-32', pretrained=None)\n"
        "print(type(model).__name__, st.SentenceTransformer.__name__, tf.AutoModel.__name__)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["CLIP", "SentenceTransformer", "AutoModel"]


def test_the_workaround_is_what_makes_it_work() -> None:
    probe = python(
        "from models._torchvision_shim import _extension_loads as ok; import importlib.util as u, pathlib as p; "
        "print(ok(p.Path(u.find_spec('torchvision').origin).parent))"
    )
    if probe.stdout.strip() == "True":
        pytest.skip(
            "torchvision's compiled ops load here (CUDA torch): the workaround is not needed"
        )
    result = python("import open_clip")
    assert result.returncode != 0 and "torchvision::nms does not exist" in result.stderr


def test_missing_library_names_the_extra() -> None:
    result = python(
        "import sys; sys.modules['open_clip'] = None\n"
        "from models.pretrained import import_library\n"
        "try:\n    import_library('open_clip')\nexcept ImportError as e:\n    print(e)\n"
    )
    assert "pip install 'hotswap[pretrained]'" in result.stdout


@pytest.mark.slow
def test_real_mpnet_from_its_five_parts(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """all-mpnet-base-v2 assembled from the pinned part packages: 768-d, bf16 within 1e-3 of fp32."""
    from kernels.errors import MissingExtraError
    from models import loaders
    from models.split_zip import load_mpnet_from_parts

    # the slow-bf16 warning is test_loaders' subject; three texts are quick either way
    monkeypatch.setattr(loaders, "native_bf16", lambda: True)

    try:
        fp32 = load_mpnet_from_parts()
    except MissingExtraError as e:
        # Justified: `make test` installs the five parts; a user's venv without them skips, and
        # the message is the install command.
        pytest.skip(f"{e} ({e.fix})")
    bf16 = load_mpnet_from_parts(compute_dtype="bfloat16")
    texts = ["dog, domestic dog, Canis familiaris", "a member of the genus Canis", "stock market"]
    vectors = fp32.encode(texts)
    assert vectors.shape == (3, 768) and fp32.fingerprint["dim"] == 768
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.1  # the synonyms sit nearer their definition
    assert float((bf16.encode(texts) * vectors).sum(dim=1).min()) > 0.999
    assert fp32.fingerprint["weights_sha256"] == bf16.fingerprint["weights_sha256"]
    assert fp32.fingerprint != bf16.fingerprint
