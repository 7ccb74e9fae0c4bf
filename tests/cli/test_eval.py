"""``hotswap eval`` through the CLI on small seeded vector files."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.eval_commands import _text
from cli.main import app
from kernels.errors import InvalidInputError

runner = CliRunner()


# Small tensors: on a shared 2-core machine extra OpenMP threads only spin-wait (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_upgrade(directory: Path, seed: int = 0) -> dict[str, Path]:
    """Labelled items whose new embedding is less noisy than the old one (a real upgrade).

    A latent z = class centre + spread; old = z A + 0.6 noise (16-d), new = z B + 0.1 noise (24-d).
    The queries are the gallery items themselves (self-match), 8 classes x 30 items.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(8), 30)
    z = rng.normal(size=(8, 12))[labels] + 0.8 * rng.normal(size=(240, 12))
    old = z @ rng.normal(size=(12, 16)) + 0.6 * rng.normal(size=(240, 16))
    new = z @ rng.normal(size=(12, 24)) + 0.1 * rng.normal(size=(240, 24))
    files = {
        "old": directory / "old.npy",
        "new": directory / "new.npy",
        "labels": directory / "labels.txt",
    }
    np.save(files["old"], old.astype(np.float32))
    np.save(files["new"], new.astype(np.float32))
    files["labels"].write_text("".join(f"class-{c}\n" for c in labels))
    return files


def eval_args(files: dict[str, Path], *extra: str) -> list[str]:
    return [
        "eval", "--old-queries", str(files["old"]), "--new-queries", str(files["new"]),
        "--old-gallery", str(files["old"]), "--new-gallery", str(files["new"]),
        "--query-labels", str(files["labels"]), "--gallery-labels", str(files["labels"]),
        "--self-match", "--fit", "affine", "--rerank-depth", "20", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[dict, Path]:
    """One ``hotswap eval --json --plot`` run shared by the checks below (the machine is small)."""
    directory = tmp_path_factory.mktemp("eval")
    files = write_upgrade(directory)
    result = runner.invoke(app, [*eval_args(files), "--json", "--plot", str(directory / "plots")])
    assert result.exit_code == 0, result.output
    return json.loads(result.output), directory / "plots"


def test_eval_json_has_every_cell_and_consistent_curves(evaluated) -> None:
    r, _ = evaluated
    m = r["metric"]
    assert m == "recall@10" and r["queries"] == r["gallery"] == 240
    assert r["new_new"][m] > r["old_old"][m]  # the upgrade is real by construction
    assert r["retention"][m] == pytest.approx(r["bridged"][m] / r["new_new"][m])
    assert r["gain"][m] == pytest.approx(r["bridged"][m] - r["old_old"][m])
    for curve in r["curves"]:  # a mixed gallery: bridge alone at 0, the full re-index at 1
        assert curve["values"][0] == pytest.approx(r["bridged"][m])
        assert curve["values"][-1] == pytest.approx(r["new_new"][m])
    assert {c["ordering"] for c in r["curves"]} == {"random", "distance_to_mean"}
    assert r["verdict"]["decision"] in ("bridge", "bridge+rerank", "backfill")
    assert r["rerank"]["depth"] == 20
    spread = r["spread"]  # the query bootstrap: intervals around the measured figures
    assert spread["queries"] == 240 and spread["resamples"] == 1000
    lo, hi = spread["intervals"]["retention"]
    assert lo <= r["retention"][m] <= hi and lo < hi
    assert sum(spread["decisions"].values()) == pytest.approx(1.0)


def test_eval_plots_and_text(evaluated) -> None:
    r, plots = evaluated
    pngs = sorted(plots.glob("*.png"))
    assert [p.name for p in pngs] == ["curves.png", "matrix.png", "retention.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert sorted(r["plots"]) == sorted(str(p) for p in pngs)
    text = _text(r)
    assert (
        f"{r['old_old']['recall@10']:.3f}" in text
        and f"verdict: {r['verdict']['decision']}" in text
    )
    lo, hi = r["spread"]["intervals"]["retention"]
    assert "95% intervals over 1,000 resamples of the 240 queries:" in text
    assert f"retention [{lo:.3f}, {hi:.3f}]" in text and "decision over those resamples:" in text


def test_eval_with_relevance_pairs(tmp_path) -> None:
    files = write_upgrade(tmp_path)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{i} {i}\n" for i in range(240)))  # each query's own row: trivial
    vectors = eval_args(files)[:9]  # "eval" and the four vector files
    result = runner.invoke(app, [*vectors, "--pairs", str(pairs), "--fit", "procrustes", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["old_old"]["recall@10"] == 1.0 and r["new_new"]["recall@10"] == 1.0
    # every query finds its answer under every model: no resample can decide otherwise
    assert r["spread"]["decisions"] == {r["verdict"]["decision"]: 1.0}
    off = runner.invoke(app, [*vectors, "--pairs", str(pairs), "--fit", "procrustes", "--json",
                              "--resamples", "0"])  # fmt: skip
    assert off.exit_code == 0, off.output
    assert json.loads(off.output)["spread"] is None


def test_gallery_rows_no_pair_names_are_distractors(tmp_path) -> None:
    """Unlabelled items of a real gallery go in as rows no pair names: every query is kept."""
    files = write_upgrade(tmp_path)
    for side in ("old", "new"):
        np.save(tmp_path / f"{side}_q.npy", np.load(files[side])[:100])
    (tmp_path / "pairs.txt").write_text("".join(f"{i} {i}\n" for i in range(100)))
    args = [
        "eval", "--old-queries", str(tmp_path / "old_q.npy"), "--new-queries",
        str(tmp_path / "new_q.npy"), "--old-gallery", str(files["old"]), "--new-gallery",
        str(files["new"]), "--pairs", str(tmp_path / "pairs.txt"), "--fit", "procrustes", "--json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert (r["queries"], r["gallery"]) == (100, 240)  # 140 distractors, no query dropped
    assert r["new_new"]["recall@10"] == 1.0  # each query's own row is in its gallery


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path) -> None:
    files = write_upgrade(tmp_path)
    np.save(tmp_path / "short.npy", np.zeros((10, 24), np.float32))
    args = eval_args(files, "--plot", str(tmp_path / "plots"))
    args[args.index("--new-gallery") + 1] = str(tmp_path / "short.npy")
    result = runner.invoke(app, args)
    assert isinstance(result.exception, InvalidInputError) and "row by row" in str(result.exception)
    assert not (tmp_path / "plots").exists()
    both = runner.invoke(app, [*eval_args(files), "--pairs", str(files["labels"])])
    assert isinstance(both.exception, InvalidInputError) and "either as labels" in str(
        both.exception
    )


def test_eval_deployed_items_prices_the_backfill_and_extrapolates_retention(tmp_path) -> None:
    files = write_upgrade(tmp_path)
    result = runner.invoke(app, [*eval_args(files), "--deployed-items", "1000000", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    s = r["scaling"]
    assert r["backfill"]["items"] == s["deployed_items"] == 1_000_000
    assert [p["gallery"] for p in s["points"]] == [120, 240]  # G/2 and G (G/4 < 100 items)
    assert set(s["at_deployed"]) == {"bridged", "rerank"}
    assert r["verdict"]["at_deployed"] in ("bridge", "bridge+rerank", "backfill")
    text = _text(r)
    assert "1,000,000   extrapolated: bridged" in text and "pt per doubling" in text


def test_anchor_queries_refit_the_bridge_and_clash_with_a_given_adapter(tmp_path) -> None:
    """Other queries' new vectors add answer pairs to the fitted bridge (compat/answer_pairs.py)."""
    (tmp_path / "other").mkdir()
    files, other = write_upgrade(tmp_path), write_upgrade(tmp_path / "other", seed=1)
    args = eval_args(files, "--json", "--resamples", "0")
    args[args.index("--fit") + 1] = "procrustes"
    plain = json.loads(runner.invoke(app, args).output)
    taught = runner.invoke(app, [*args, "--anchor-queries-new", str(other["new"])])
    assert taught.exit_code == 0, taught.output
    r = json.loads(taught.output)
    assert r["old_old"] == plain["old_old"] and r["new_new"] == plain["new_new"]
    assert r["bridged"] != plain["bridged"]  # the 240 answer pairs moved the fit
    both = runner.invoke(app, [*args, "--anchor-queries-new", str(other["new"]),
                               "--anchor-queries-old", str(other["old"])])  # fmt: skip
    assert both.exit_code == 0, both.output
    assert json.loads(both.output)["bridged"] not in (plain["bridged"], r["bridged"])
    np.save(tmp_path / "narrow.npy", np.zeros((5, 16), np.float32))
    narrow = runner.invoke(app, [*args, "--anchor-queries-new", str(tmp_path / "narrow.npy")])
    assert isinstance(narrow.exception, InvalidInputError) and "width 16" in str(narrow.exception)
    alone = runner.invoke(app, [*args, "--anchor-queries-old", str(other["old"])])
    assert isinstance(alone.exception, InvalidInputError) and "without the queries" in str(
        alone.exception
    )
    adapter = tmp_path / "a.safetensors"
    clash = runner.invoke(
        app, [*args, "--adapter", str(adapter), "--anchor-queries-new", str(other["new"])]
    )
    assert isinstance(clash.exception, InvalidInputError) and "--adapter" in str(clash.exception)
