"""Post-hoc fitting: gradient-trained adapters, the selection, and input validation."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from compat.adapters import ADAPTERS, build_adapter
from compat.fitting import FitOptions, fit_adapter, info_nce, pair_scores, select_adapter
from compat.linear_adapters import orthogonality_gap
from compat.solvers import procrustes_map
from kernels.errors import DirectionError, InvalidInputError

FAST = FitOptions(epochs=40, batch_size=64, lr=3e-2)


# Small tensors: on a shared 2-core machine extra OpenMP threads only spin-wait (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gap(adapter: torch.nn.Module) -> float:
    return float(orthogonality_gap(adapter.linear.weight.detach()))


def rotated_pairs(n: int, d_in: int, d_out: int, noise: float, seed: int):
    """x (n, d_in) and y = x R + noise, R (d_in, d_out) with orthonormal rows or columns."""
    g = torch.Generator().manual_seed(seed)
    r = procrustes_map(torch.randn(d_in, d_in, generator=g), torch.randn(d_in, d_out, generator=g))
    x = torch.randn(n, d_in, generator=g)
    y = x @ r.float() + noise * torch.randn(n, d_out, generator=g)
    return x, y, r.float()


def test_fit_procrustes_scores_its_pairs() -> None:
    x, y, _ = rotated_pairs(300, 16, 16, 0.0, seed=0)
    report = fit_adapter(
        "procrustes", x[:200], y[:200], direction="backward", held_out=(x[200:], y[200:])
    )
    assert report.losses == []  # closed form
    assert report.held_out is not None and report.held_out.n == 100
    assert report.held_out.cosine == pytest.approx(1.0, abs=1e-5)
    assert report.held_out.recall_at_10 == 1.0 and report.train.recall_at_10 == 1.0


def test_pair_scores_against_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 6, generator=g), torch.randn(30, 6, generator=g)
    adapter = build_adapter("affine", {"dim_in": 6, "dim_out": 6})  # identity before prepare
    scores = pair_scores(adapter, x, y)
    mapped, target = F.normalize(x, dim=1), F.normalize(y, dim=1)
    sims = mapped @ target.T
    hits = [sum(sims[i, j] >= sims[i, i] for j in range(30) if j != i) < 10 for i in range(30)]
    assert scores.recall_at_10 == pytest.approx(sum(hits) / 30)
    assert scores.cosine == pytest.approx(float(sims.diagonal().mean()), abs=1e-6)


def test_lambda_penalty_is_zero_when_orthogonal_and_gated_by_lambda() -> None:
    adapter = build_adapter("lambda_orthogonal", {"dim_in": 8, "dim_out": 8, "lam": 1.0})
    with torch.no_grad():
        assert float(adapter.penalty()) == 0.0  # starts at the identity
        adapter.linear.weight.mul_(1.5)  # ‖WWᵀ − I‖_F = 1.25·√8 ≈ 3.5 > λ: penalty ≈ the gap
        distance = gap(adapter)
        assert distance == pytest.approx(1.25 * 8**0.5, rel=1e-5)
        assert float(adapter.penalty()) == pytest.approx(distance, rel=1e-6)
        loose = build_adapter("lambda_orthogonal", {"dim_in": 8, "dim_out": 8, "lam": 10.0})
        loose.load_state_dict(adapter.state_dict())
        assert float(loose.penalty()) < 1e-6 * distance  # within λ: free
    default = build_adapter("lambda_orthogonal", {"dim_in": 512, "dim_out": 128})
    assert default.config.tolerance == pytest.approx(6.0)  # 12·√(128/512)


def test_lambda_orthogonal_learns_a_near_orthogonal_map_from_orthogonal_data() -> None:
    x, y, _ = rotated_pairs(512, 16, 16, 0.01, seed=2)
    config = {"init": "identity"}  # start away from the answer
    report = fit_adapter(
        "lambda_orthogonal", x, y, direction="backward", config=config, options=FAST
    )
    assert gap(report.adapter) < 0.05
    assert report.train.cosine > 0.99


def test_the_penalty_pulls_a_non_orthogonal_fit_towards_orthogonal() -> None:
    x, y, _ = rotated_pairs(512, 16, 16, 0.0, seed=3)
    scales = torch.linspace(0.5, 1.5, 16)
    y = y * scales  # a non-orthogonal target map
    opts = FitOptions(epochs=40, batch_size=64, lr=3e-2, normalize=False)
    fits = {
        lam: fit_adapter(
            "lambda_orthogonal", x, y, direction="backward", config={"lam": lam}, options=opts
        )
        for lam in (0.0, 2.0, 1e6)
    }
    gaps = [gap(report.adapter) for report in fits.values()]
    assert gaps[0] < 0.5 * gaps[2]  # λ = 0: pulled to (nearly) orthogonal; λ huge: plain affine
    assert gaps[0] < gaps[1] < gaps[2]


def test_low_rank_affine_fits_a_low_rank_correction() -> None:
    g = torch.Generator().manual_seed(4)
    u, v = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    x = torch.randn(512, 16, generator=g)
    y = x @ (torch.eye(16) + 0.3 * u @ v.T)
    config = {"rank": 2, "init": "identity"}
    opts = FitOptions(epochs=60, batch_size=64, lr=1e-2, normalize=False)
    report = fit_adapter("low_rank_affine", x, y, direction="forward", config=config, options=opts)
    assert report.losses[-1] < 0.05 * report.losses[0]


def test_uncertainty_is_higher_on_noisier_pairs() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1024, 8, generator=g)
    noisy = x[:, 0] > 0  # which pairs are noisy is predictable from x, as σ needs
    y = torch.roll(x, 1, dims=1) + noisy[:, None] * 1.5 * torch.randn(1024, 8, generator=g)
    config = {"hidden": 32, "uncertainty": True}
    report = fit_adapter("forward_mlp", x, y, direction="forward", config=config, options=FAST)
    sigma = report.adapter.uncertainty(F.normalize(x, dim=1))
    assert sigma.shape == (1024,)
    assert float(sigma[noisy].mean()) > float(sigma[~noisy].mean()) + 0.5
    plain = fit_adapter(
        "forward_mlp", x[:64], y[:64], direction="forward", options=FitOptions(epochs=1)
    )
    with pytest.raises(InvalidInputError, match="no uncertainty head"):
        plain.adapter.uncertainty(x)


def test_select_adapter_picks_procrustes_on_rotated_data() -> None:
    x, y, _ = rotated_pairs(240, 24, 24, 0.3, seed=6)
    x, y = x + 1.0, y + torch.linspace(-1, 1, 24)  # real embeddings are not centred
    quick = FitOptions(epochs=5, batch_size=64, lr=1e-2)
    selection = select_adapter(x, y, holdout=0.25, seed=0, direction="backward", options=quick)
    assert selection.key == "procrustes"
    assert (selection.anchors, selection.held_out) == (180, 60)
    # every registered candidate by default, except those that only fit labelled pairs and the
    # bridge of an extended version, which reads a block of its vectors (never a default)
    label_only = {"lambda_orthogonal_supcon", "lambda_orthogonal_nca", "residual_mlp_nca"}
    assert set(selection.reports) == set(ADAPTERS.keys()) - label_only - {"block_step"}
    assert all(r.held_out is not None and r.held_out.n == 60 for r in selection.reports.values())
    # refit on all 240 pairs: the returned map is the full-data Procrustes fit
    full = fit_adapter("procrustes", x, y, direction="backward").adapter
    torch.testing.assert_close(selection.adapter.weight, full.weight)
    assert selection.adapter.direction == "backward"


def test_selection_ties_go_to_the_earlier_candidate() -> None:
    x, y, _ = rotated_pairs(100, 8, 8, 0.0, seed=9)  # affine and procrustes both exact
    for keys in (["affine", "procrustes"], ["procrustes", "affine"]):
        assert select_adapter(x, y, keys, direction="forward", refit=False).key == keys[0]


def test_a_fitted_adapter_refuses_the_wrong_direction() -> None:
    x, y, _ = rotated_pairs(64, 12, 8, 0.0, seed=7)
    adapter = fit_adapter("procrustes", x, y, direction="backward").adapter
    adapter.expect("backward", 12, 8)
    with pytest.raises(DirectionError, match="backward map"):
        adapter.expect("forward", 12, 8)
    with pytest.raises(DirectionError, match="12->8"):
        adapter.expect("backward", 8, 12)


def test_fitting_is_deterministic_and_keeps_orthogonality_under_decay() -> None:
    x, y, _ = rotated_pairs(128, 20, 12, 0.1, seed=8)
    opts = FitOptions(epochs=3, batch_size=32, weight_decay=0.5)
    a, b = (
        fit_adapter("orthogonal", x, y, direction="backward", seed=3, options=opts) for _ in "ab"
    )
    torch.testing.assert_close(a.adapter.serving_form().weight, b.adapter.serving_form().weight)
    w = a.adapter.serving_form().weight  # (20, 12)
    torch.testing.assert_close(w.T @ w, torch.eye(12), atol=1e-5, rtol=0)


def test_inputs_are_validated() -> None:
    x, y = torch.randn(10, 4), torch.randn(10, 3)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(InvalidInputError, match="x_source has NaN"):
        fit_adapter("affine", bad, y, direction="backward")
    with pytest.raises(InvalidInputError, match="10 rows but y_target has 9"):
        fit_adapter("affine", x, y[:9], direction="backward")
    with pytest.raises(InvalidInputError, match="2-D"):
        fit_adapter("affine", x[0], y, direction="backward")
    with pytest.raises(InvalidInputError, match="come from the data"):
        fit_adapter("affine", x, y, direction="backward", config={"dim_out": 5})
    with pytest.raises(InvalidInputError, match="no field 'rige'"):
        fit_adapter("affine", x, y, direction="backward", config={"rige": 1.0})
    with pytest.raises(InvalidInputError, match="holdout"):
        select_adapter(x, y, ["affine"], holdout=1.5, direction="backward")
    with pytest.raises(InvalidInputError, match="distinct candidate keys"):
        select_adapter(x, y, ["affine", "affine"], direction="backward")
    with pytest.raises(InvalidInputError, match="criterion"):
        select_adapter(x, y, ["affine"], direction="backward", criterion="mrr")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="cannot be split"):
        select_adapter(x[:4], y[:4], ["affine"], direction="backward")


def test_info_nce_against_its_definition() -> None:
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    sims = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.1
    by_hand = -torch.stack([sims[i, i] - torch.logsumexp(sims[i], dim=0) for i in range(6)]).mean()
    assert float(info_nce(a, b, 0.1)) == pytest.approx(float(by_hand), rel=1e-6)


def test_contrastive_term_is_validated_and_trains_towards_retrieval() -> None:
    with pytest.raises(InvalidInputError, match="contrastive"):
        FitOptions(contrastive=-1.0)
    with pytest.raises(InvalidInputError, match="temperature"):
        FitOptions(temperature=0.0)
    x, y, _ = rotated_pairs(256, 12, 8, 0.3, seed=6)  # noisy: MSE alone leaves neighbours mixed
    options = FitOptions(epochs=30, batch_size=64, lr=1e-2, contrastive=1.0, temperature=0.1)
    config = {"hidden": 16}

    def fit(opts: FitOptions):
        return fit_adapter(
            "residual_mlp", x, y, direction="backward", config=config, options=opts, seed=1
        )

    report, again = fit(options), fit(options)
    assert report.losses == again.losses  # seeded
    assert report.losses[-1] < report.losses[0]
    mse_only = fit(dataclasses.replace(options, contrastive=0.0))
    xn, yn = F.normalize(x, dim=1), F.normalize(y, dim=1)
    nce = float(info_nce(report.adapter.transform(xn), yn, 0.1))
    assert nce < float(info_nce(mse_only.adapter.transform(xn), yn, 0.1))
