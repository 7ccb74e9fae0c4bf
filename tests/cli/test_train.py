"""hotswap train: a first version, a compatible upgrade, both registered; bad input changes nothing."""

import json
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from cli.main import app
from compat.metrics import self_retrieval_metrics
from index import versions
from index.context import open_context
from index.status import summary
from kernels.errors import ConflictError, InvalidInputError, NotFoundError
from models.datasets import load_dataset
from models.encoders import embed

runner = CliRunner()
V1 = '{"hidden_dims": [128], "embed_dim": 32}'
V2 = '{"hidden_dims": [128, 128], "embed_dim": 48, "layer": "monarch", "nblocks": 4}'


def hotswap(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """v1 (independent) then v2 (BCT, Monarch) trained on real Fashion-MNIST, quick settings."""
    data = tmp_path_factory.mktemp("train") / "data"
    assert hotswap("init", "--dir", str(data)).exit_code == 0
    common = ("--dir", str(data), "--quick", "--json", "--dataset", "fashion-mnist")
    first = hotswap("train", "--new", "v1", "--encoder-config", V1, *common)
    assert first.exit_code == 0, first.output
    second = hotswap("train", "--old", "v1", "--new", "v2", "--encoder-config", V2, *common)
    assert second.exit_code == 0, second.output
    return data, json.loads(first.stdout), json.loads(second.stdout)


def test_first_version_then_upgrade(trained) -> None:
    data, first, second = trained
    assert set(first["cells"]) == {"new/new"} and first["adapter"] is None
    assert list(second["cells"]) == ["old/old", "new/old", "new/new"]
    assert second["adapter"] == "v2-to-v1" and second["dim"] == 48
    assert set(second["compatible"]) == {"top1", "ap"}
    # v1's own cell in the upgrade is the same model on the same rows as v1's new/new: equal.
    assert second["cells"]["old/old"] == pytest.approx(first["cells"]["new/new"], abs=1e-9)
    status = summary(open_context(data))
    assert [s["name"] for s in status["spaces"]] == ["v1", "v2"]
    assert [(a["name"], a["direction"]) for a in status["adapters"]] == [("v2-to-v1", "backward")]


def _served_new_old_cell(data, new_name: str) -> dict[str, float]:
    """Reload v1, ``new_name`` and its adapter from the catalog; score the new/old cell."""
    ctx = open_context(data)
    test = load_dataset("fashion-mnist")
    x, y = torch.from_numpy(test.test_x[:500]), torch.from_numpy(test.test_y[:500])
    with ctx.transaction() as session:
        old, new = versions.get_version(session, "v1"), versions.get_version(session, new_name)
        v1, v2 = versions.load_version_encoder(ctx, old), versions.load_version_encoder(ctx, new)
        adapter = versions.query_adapter(ctx, session, new, old)
    with torch.no_grad():
        bridged = F.normalize(adapter(embed(v2, x)), dim=1)
    return self_retrieval_metrics(bridged, embed(v1, x), y)


def test_registered_artifacts_reproduce_the_reported_cell(trained) -> None:
    """Reload v1, v2 and the adapter from the catalog: the new/old cell comes out the same."""
    data, _, second = trained
    assert _served_new_old_cell(data, "v2") == pytest.approx(second["cells"]["new/old"], abs=1e-6)


def test_nca_upgrade_is_registered_and_served(trained) -> None:
    """--method nca: the jointly trained backward adapter is registered and serves the cell."""
    data = trained[0]
    common = ("--dir", str(data), "--quick", "--json", "--dataset", "fashion-mnist")
    result = hotswap(
        "train", "--old", "v1", "--new", "v5", "--method", "nca", "--bank-rows", "2000", *common
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["method"], out["adapter"], out["bank_rows"]) == ("nca", "v5-to-v1", 2000)
    assert _served_new_old_cell(data, "v5") == pytest.approx(out["cells"]["new/old"], abs=1e-6)


def _extension(data, new: str, method: str) -> tuple[Any, Any, Any]:
    """Train ``new`` as v1 kept whole beside 16 trained dims by ``method``; check the catalog's
    artifacts reproduce the reported new/old cell. Returns (v1's encoder, new's, the adapter)."""
    common = ("--dir", str(data), "--quick", "--json", "--dataset", "fashion-mnist")
    extra = '{"hidden_dims": [64], "embed_dim": 16}'
    result = hotswap(
        "train", "--old", "v1", "--new", new, "--method", method, "--encoder-config", extra,
        *common,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["method"], out["adapter"], out["dim"]) == (method, f"{new}-to-v1", 48)
    assert out["bank_rows"] == out["train_rows"] == 3000  # --quick: fewer rows than the limit
    assert _served_new_old_cell(data, new) == pytest.approx(out["cells"]["new/old"], abs=1e-6)
    ctx = open_context(data)
    with ctx.transaction() as session:
        v1, version = (versions.get_version(session, n) for n in ("v1", new))
        old = versions.load_version_encoder(ctx, v1)
        encoder = versions.load_version_encoder(ctx, version)
        return old, encoder, versions.query_adapter(ctx, session, version, v1)


def test_an_extended_upgrade_keeps_the_old_model_and_is_served(trained) -> None:
    """--method extend: v1 kept whole inside v6 beside 16 trained dims, a block_step bridge."""
    data = trained[0]
    old, new, adapter = _extension(data, "v6", "extend")
    assert new.key == "extended" and adapter.key == "block_step"
    x = torch.from_numpy(load_dataset("fashion-mnist").test_x[:50])
    torch.testing.assert_close(embed(new, x)[:, :32] * 2**0.5, embed(old, x), atol=1e-5, rtol=0)
    # an extension extends in turn: v7 keeps v6 (and so v1) whole
    common = ("--dir", str(data), "--quick", "--json", "--dataset", "fashion-mnist")
    again = hotswap("train", "--old", "v6", "--new", "v7", "--method", "extend", *common)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["dim"] == 48 + 64  # the mlp encoder's default embed_dim


def test_an_nca_extended_upgrade_serves_its_jointly_trained_projection(trained) -> None:
    """--method nca_extended: v1 kept whole inside v8; the bridge is a λ-orth map trained with the
    extra dims, registered as one projection."""
    _, new, adapter = _extension(trained[0], "v8", "nca_extended")
    assert new.key == "extended" and adapter.key == "lambda_orthogonal"
    assert adapter.serving_form() is not None


def test_models_show(trained) -> None:
    data, _, second = trained
    shown = json.loads(hotswap("models", "show", "v2", "--dir", str(data), "--json").stdout)
    assert shown["encoder"] == "mlp" and shown["config"]["layer"] == "monarch"
    assert len(shown["fingerprint"]["weights_sha256"]) == 64
    (adapter,) = shown["adapters"]
    assert (adapter["role"], adapter["direction"], adapter["target"]) == ("out", "backward", "v1")
    assert adapter["metrics"]["new/old top1"] == pytest.approx(second["cells"]["new/old"]["top1"])
    text = hotswap("models", "show", "v1", "--dir", str(data)).stdout
    assert text.startswith("v1: 32-d, encoder mlp") and "adapter in   v2-to-v1" in text
    missing = hotswap("models", "show", "v3", "--dir", str(data))
    assert isinstance(missing.exception, NotFoundError) and "did you mean" in str(missing.exception)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("--old", "v1", "--new", "v1"), InvalidInputError, "its own name"),
        (("--old", "v1", "--new", "v3", "--method", "bt2"), InvalidInputError, "cannot be"),
        (("--old", "v1", "--new", "v3", "--method", "bcx"), NotFoundError, "did you mean"),
        (("--old", "v9", "--new", "v3"), NotFoundError, "unknown model version 'v9'"),
        (("--old", "v1", "--new", "v3", "--method", "extnd"), NotFoundError, "'extend'"),
        (("--old", "v1", "--new", "v3", "--method", "nca_extnd"), NotFoundError, "'nca_extended'"),
        (("--old", "v1", "--new", "v2"), ConflictError, "'v2' already exists"),
        (("--new", "v3", "--encoder-config", "{oops"), InvalidInputError, "encoder config"),
        (("--new", "v3", "--encoder-config", '{"depth": 3}'), InvalidInputError, "no field"),
    ],
)
def test_bad_input_changes_nothing(trained, args, error, message) -> None:
    data = trained[0]
    before = summary(open_context(data))
    result = hotswap("train", "--dir", str(data), "--quick", *args)
    assert isinstance(result.exception, error) and message in str(result.exception)
    assert summary(open_context(data)) == before


def test_users_own_arrays(tmp_path) -> None:
    """--inputs/--labels: scikit-learn's real digits saved as the user's .npy files."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    np.save(tmp_path / "x.npy", (x / 16).astype(np.float32))
    np.save(tmp_path / "y.npy", y.astype(np.int64))
    data = tmp_path / "data"
    assert hotswap("init", "--dir", str(data)).exit_code == 0
    files = ("--inputs", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"))
    result = hotswap("train", "--dir", str(data), "--new", "d1", "--quick", "--json", *files)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["dataset"] == "user arrays" and out["train_rows"] == round(len(y) * 0.8)
    assert out["cells"]["new/new"]["top1"] > 0.5  # 10 classes: chance is 0.1
    np.save(tmp_path / "short.npy", y[:-1].astype(np.int64))
    bad = ("--inputs", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "short.npy"))
    result = hotswap("train", "--dir", str(data), "--new", "d2", "--quick", *bad)
    assert isinstance(result.exception, InvalidInputError) and "one label per" in str(
        result.exception
    )
    fashion = hotswap("train", "--dir", str(data), "--old", "d1", "--new", "d3", "--quick")
    assert isinstance(fashion.exception, InvalidInputError) and "width 784" in str(
        fashion.exception
    )


def test_a_bank_of_fewer_than_two_rows_is_refused(trained) -> None:
    from index.train import UpgradeConfig

    with pytest.raises(InvalidInputError, match="bank_rows must be >= 2"):
        UpgradeConfig(new="v3", old="v1", method="nca", bank_rows=1)
    result = hotswap("train", "--dir", str(trained[0]), "--old", "v1", "--new", "v3",
                     "--method", "nca", "--bank-rows", "1")  # fmt: skip
    assert result.exit_code == 2 and "--bank-rows" in result.output


def test_nca_banks_are_a_seeded_sample_of_at_most_nca_rows() -> None:
    """NCA's cost grows with its bank: at most NCA_ROWS distinct training rows, the same per seed."""
    from index.train import NCA_ROWS, _nca_rows

    rows = _nca_rows(NCA_ROWS * 3, seed=4)
    assert len(rows) == NCA_ROWS == len(set(rows.tolist())) and int(rows.max()) < NCA_ROWS * 3
    assert torch.equal(rows, _nca_rows(NCA_ROWS * 3, seed=4))
    assert not torch.equal(rows, _nca_rows(NCA_ROWS * 3, seed=5))
    assert sorted(_nca_rows(50, seed=4).tolist()) == list(range(50))  # fewer: every row
