"""``hotswap eval`` from two catalog versions with the real MiniLM and a WordNet query set.

MiniLM registered twice stands in for the new model too (MPNet takes minutes to embed on these
machines; tests/models/test_loaders.py does the same): identical encoders make every cell known in
advance — new/new equals old/old, and a Procrustes bridge between identical spaces is the identity.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from index.context import open_context
from index.evaluation import load_query_set
from index.versions import fit_and_register
from kernels.errors import InvalidInputError, NotFoundError
from models.text_data import WORDNET_DIR, read_synsets

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        not (WORDNET_DIR / "data.adv").is_file(),
        reason="needs Debian's wordnet-base (make test installs it)",
    ),
]
runner = CliRunner()
SPEC = "sentence-transformers:all-MiniLM-L6-v2"


def write_query_set(path: Path, n: int = 60) -> list:
    """Adverb synsets with >= 2 lemmas: query = the lemmas, its one relevant document = the gloss."""
    synsets = [s for s in read_synsets(WORDNET_DIR / "data.adv") if len(s.lemmas) >= 2][:n]
    path.write_text(json.dumps({
        "documents": [{"id": s.id, "text": s.definition} for s in synsets],
        "queries": [{"text": ", ".join(s.lemmas), "relevant": [s.id]} for s in synsets],
    }))  # fmt: skip
    return synsets


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval-versions")
    data, query_set = root / "data", root / "queries.json"
    assert runner.invoke(app, ["init", "--dir", str(data)]).exit_code == 0
    for name in ("mini-old", "mini-new"):
        added = runner.invoke(app, ["models", "add", name, "--encoder", SPEC, "--dir", str(data)])
        assert added.exit_code == 0, added.output
    assert (
        runner.invoke(app, ["models", "add", "ext", "--dim", "384", "--dir", str(data)]).exit_code
        == 0
    )
    write_query_set(query_set)
    return data, query_set


def eval_versions(data: Path, query_set: Path, *extra: str) -> list[str]:
    return ["eval", "--old-version", "mini-old", "--new-version", "mini-new", "--query-set",
            str(query_set), "--dir", str(data), "--rerank-depth", "20", *extra]  # fmt: skip


def test_eval_from_catalog_versions(catalog, tmp_path) -> None:
    data, query_set = catalog
    plots = tmp_path / "plots"
    result = runner.invoke(
        app, eval_versions(data, query_set, "--fit", "procrustes", "--json", "--plot", str(plots))
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert (r["queries"], r["gallery"], r["adapter"]) == (60, 60, "procrustes")
    old, new, bridged = r["old_old"], r["new_new"], r["bridged"]
    assert 0.3 < old["recall@10"] < 1.0  # a real task: MiniLM finds many glosses, not all
    assert new == pytest.approx(old, abs=1e-6)  # the same encoder under two names
    assert bridged == pytest.approx(old, abs=0.02)  # Procrustes between identical spaces: identity
    assert r["backfill"]["seconds_per_item"] > 0  # the new encoder's own measured time
    assert sorted(p.name for p in plots.glob("*.png")) == [
        "curves.png",
        "matrix.png",
        "retention.png",
    ]
    assert r["verdict"]["decision"] in ("bridge", "bridge+rerank", "backfill")


def test_a_registered_adapter_is_the_bridge(catalog) -> None:
    """With a backward adapter mini-new -> mini-old in the catalog, eval uses it (no fitting)."""
    data, query_set = catalog
    ctx = open_context(data)
    import torch

    vectors = torch.randn(50, 384)
    fit_and_register(ctx, "mini-new", "mini-old", vectors, vectors, key="affine")
    result = runner.invoke(app, eval_versions(data, query_set, "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["adapter"] == "affine"


def test_catalog_mode_errors_are_clear(catalog, tmp_path) -> None:
    data, query_set = catalog
    partial = runner.invoke(app, ["eval", "--old-version", "mini-old", "--dir", str(data)])
    assert isinstance(partial.exception, InvalidInputError)
    assert "--new-version" in str(partial.exception)
    args = eval_versions(data, query_set)
    args[args.index("mini-old")] = "ext"
    external = runner.invoke(app, args)
    assert isinstance(external.exception, InvalidInputError)
    assert "no pretrained encoder" in str(external.exception)
    args[args.index("ext")] = "mini-oldd"
    typo = runner.invoke(app, args)
    assert isinstance(typo.exception, NotFoundError) and "mini-old" in str(typo.exception.fix)
    nothing = runner.invoke(app, ["eval"])
    assert isinstance(nothing.exception, InvalidInputError) and "four vector files" in str(
        nothing.exception
    )


def test_query_set_file_is_checked(tmp_path) -> None:
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"documents": [{"id": "a", "text": "x"}],
                                "queries": [{"text": "y", "relevant": ["b"]}]}))  # fmt: skip
    with pytest.raises(InvalidInputError, match="unknown document id 'b'"):
        load_query_set(path)
    path.write_text(json.dumps({"documents": [{"id": "a", "text": "x", "label": 1}],
                                "queries": [{"text": "y", "label": 1}, {"text": "z", "label": 2}]}))  # fmt: skip
    labelled = load_query_set(path)
    assert labelled.relevance.gains.tolist() == [[True], [False]]
    path.write_text("{}")
    with pytest.raises(InvalidInputError, match="documents"):
        load_query_set(path)
    with pytest.raises(NotFoundError):
        load_query_set(tmp_path / "missing.json")


def test_catalog_mode_refuses_vector_file_options(catalog, tmp_path) -> None:
    data, query_set = catalog
    args = [*eval_versions(data, query_set), "--anchor-queries-new", str(tmp_path / "q.npy")]
    refused = runner.invoke(app, args)
    assert isinstance(refused.exception, InvalidInputError)
    assert "--anchor-queries-new: vector files" in str(refused.exception)
