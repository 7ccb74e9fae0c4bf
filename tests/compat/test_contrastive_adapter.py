"""The InfoNCE-trained adapters (affine, residual): their loss, config, and what training buys.

Shape, serving form, save/load and direction round trips are covered for every registered
adapter, this one included, in tests/compat/test_adapters.py.
"""

import pytest
import torch
import torch.nn.functional as F

from compat.adapters import ADAPTERS, build_adapter, load_adapter, save_adapter
from compat.contrastive_adapter import in_batch_info_nce, soft_target_loss
from compat.fitting import FitOptions, _default_keys, fit_adapter
from compat.linear_adapters import orthogonality_gap
from compat.negative_bank import NegativeBank, spherical_kmeans
from kernels.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("key", ["contrastive_affine", "contrastive_residual"])
def test_registered_and_considered_by_automatic_selection(key: str) -> None:
    assert key in ADAPTERS
    assert key in _default_keys()


def test_info_nce_masks_duplicate_targets() -> None:
    """Two pairs sharing one target are not each other's negatives: a perfect map costs ~0."""
    targets = torch.eye(4)[[0, 0, 1, 2]]  # rows 0 and 1 share a target
    loss = in_batch_info_nce(targets.clone(), targets, 0.01)
    assert float(loss) < 1e-3
    unmasked = F.cross_entropy(targets @ targets.T / 0.01, torch.arange(4))
    assert float(unmasked) > 0.3  # without the mask the duplicate would tie with the own target


def test_info_nce_prefers_the_own_target() -> None:
    torch.manual_seed(0)
    y = F.normalize(torch.randn(16, 8), dim=1)
    assert in_batch_info_nce(y, y, 0.1) < in_batch_info_nce(y[torch.randperm(16)], y, 0.1)
    one_way = in_batch_info_nce(y + 0.3 * torch.randn(16, 8), y, 0.1, symmetric=False)
    assert one_way.ndim == 0 and float(one_way) > 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("temperature", 0.0, "temperature"), ("orthogonality", -1.0, "orthogonality"),
     ("mse", -0.5, "mse"), ("init", "random", "init")],
)  # fmt: skip
@pytest.mark.parametrize("key", ["contrastive_affine", "contrastive_residual"])
def test_config_is_validated(key: str, field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        build_adapter(key, {"dim_in": 6, "dim_out": 4, field: value})


@pytest.mark.parametrize(("field", "value"), [("hidden", 0), ("depth", 0)])
def test_residual_config_is_validated(field: str, value: int) -> None:
    with pytest.raises(InvalidInputError, match=field):
        build_adapter("contrastive_residual", {"dim_in": 6, "dim_out": 4, field: value})


def test_residual_starts_at_its_linear_map() -> None:
    """The MLP's last layer is zero at the start: before training the adapter is xW + b."""
    torch.manual_seed(1)
    adapter = build_adapter("contrastive_residual", {"dim_in": 7, "dim_out": 5})
    x = torch.randn(9, 7)
    torch.testing.assert_close(adapter(x), adapter.linear(x))
    assert adapter.serving_form() is None  # nonlinear: serves through its module


def anisotropic_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y = normalize(x A) with A far from orthogonal: a rotation cannot fit it, retrieval suffers."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(12, 10, generator=g) * torch.linspace(0.2, 3.0, 10)
    x = F.normalize(torch.randn(n, 12, generator=g), dim=1)
    y = F.normalize(x @ a + 0.6 * torch.randn(n, 10, generator=g), dim=1)
    return x, y


def test_training_beats_its_procrustes_start_on_held_out_pairs() -> None:
    x, y = anisotropic_pairs(900, seed=3)
    train, held = slice(0, 600), slice(600, 900)
    options = FitOptions(epochs=20, batch_size=128, lr=3e-3)
    kwargs = {"direction": "backward", "seed": 0, "held_out": (x[held], y[held])}
    fitted = fit_adapter("contrastive_affine", x[train], y[train], options=options, **kwargs)
    start = fit_adapter("procrustes", x[train], y[train], **kwargs)
    assert fitted.held_out is not None and start.held_out is not None
    assert fitted.held_out.recall_at_10 > start.held_out.recall_at_10
    assert fitted.losses[-1] < fitted.losses[0]
    assert fitted.adapter.direction == "backward"


def test_residual_training_beats_its_procrustes_start_on_held_out_pairs() -> None:
    """A curved relation (y from tanh of x A) that a map xW + b cannot fit, InfoNCE-trained."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(12, 10, generator=g) * 2.0
    x = F.normalize(torch.randn(900, 12, generator=g), dim=1)
    y = F.normalize(torch.tanh(2.0 * x @ a) + 0.3 * torch.randn(900, 10, generator=g), dim=1)
    options = FitOptions(epochs=20, batch_size=128, lr=3e-3)
    kwargs = {"direction": "backward", "seed": 0, "held_out": (x[600:], y[600:])}
    fitted = fit_adapter(
        "contrastive_residual", x[:600], y[:600], options=options, config={"hidden": 64}, **kwargs
    )
    start = fit_adapter("procrustes", x[:600], y[:600], **kwargs)
    assert fitted.held_out is not None and start.held_out is not None
    assert fitted.held_out.recall_at_10 > start.held_out.recall_at_10


@pytest.mark.parametrize("key", ["contrastive_affine", "contrastive_residual"])
def test_learned_temperature_moves_and_survives_save_load(key: str, tmp_path) -> None:
    x, y = anisotropic_pairs(300, seed=6)
    config = {"temperature": 0.5, "learn_temperature": True}
    options = FitOptions(epochs=10, batch_size=100, lr=1e-2)
    adapter = fit_adapter(key, x, y, direction="backward", options=options, config=config).adapter
    tau = float(torch.as_tensor(adapter.tau()).detach())
    assert tau != pytest.approx(0.5, abs=1e-3) and 1e-3 <= tau <= 1.0
    save_adapter(adapter, tmp_path / "a")
    loaded = load_adapter(tmp_path / "a")
    assert float(torch.as_tensor(loaded.tau()).detach()) == pytest.approx(tau)
    fixed = build_adapter(key, {"dim_in": 12, "dim_out": 10, "temperature": 0.5})
    assert fixed.tau() == 0.5 and fixed.log_tau is None


def test_orthogonality_penalty_keeps_the_map_nearer_orthogonal() -> None:
    x, y = anisotropic_pairs(400, seed=4)
    options = FitOptions(epochs=10, batch_size=100, lr=3e-3)

    def gap(weight: float) -> float:
        adapter = fit_adapter(
            "contrastive_affine", x, y, direction="backward", options=options,
            config={"orthogonality": weight},
        ).adapter  # fmt: skip
        return float(orthogonality_gap(adapter.linear.weight.detach()))

    assert gap(10.0) < gap(0.0)


def test_info_nce_extra_negatives_mask_the_own_target_and_raise_the_loss() -> None:
    torch.manual_seed(7)
    y = F.normalize(torch.randn(1, 6), dim=1)
    mapped = y + 0.2 * torch.randn(1, 6)
    # One pair: its only competitor would be the own target again, which is masked.
    assert float(in_batch_info_nce(mapped, y, 0.1, extra=torch.cat([y, y]))) == 0.0
    assert float(in_batch_info_nce(mapped, y, 0.1, extra=torch.randn(4, 6))) > 0.0
    y = F.normalize(torch.randn(8, 6), dim=1)
    mapped = y + 0.2 * torch.randn(8, 6)
    base = in_batch_info_nce(mapped, y, 0.1, symmetric=False)
    more = in_batch_info_nce(mapped, y, 0.1, symmetric=False, extra=torch.randn(32, 6))
    assert float(more) > float(base)  # more competitors in every row's softmax


def test_spherical_kmeans_recovers_separated_groups() -> None:
    torch.manual_seed(2)
    centres = torch.eye(5, 16)
    rows = F.normalize(centres.repeat_interleave(40, 0) + 0.05 * torch.randn(200, 16), dim=1)
    centroids, assign = spherical_kmeans(rows, 5, iterations=20)
    assert len(centroids) <= 5 and int(assign.max()) < len(centroids)
    truth = torch.arange(5).repeat_interleave(40)
    for group in range(5):  # every true group lands in one cluster
        assert assign[truth == group].unique().numel() == 1


def test_negative_bank_draws_distinct_targets_and_near_ones_from_the_own_cluster() -> None:
    torch.manual_seed(3)
    centres = F.normalize(torch.randn(6, 10), dim=1)
    y = F.normalize(centres.repeat_interleave(30, 0) + 0.05 * torch.randn(180, 10), dim=1)
    bank = NegativeBank(torch.cat([y, y[:20]]), clusters=6)  # 20 duplicated targets
    assert len(bank) == 180
    assert bank.uniform(50).shape == (50, 10)
    near = bank.near(y[:4], 7)  # rows 0-3 belong to centre 0
    assert near.shape == (28, 10)
    assert float((near @ centres[0]).min()) > 0.9  # all from centre 0's neighbourhood


@pytest.mark.parametrize("config", [{"negatives": 64}, {"hard_negatives": 4, "clusters": 8}])
def test_bank_negatives_train_and_beat_the_procrustes_start(config: dict) -> None:
    x, y = anisotropic_pairs(900, seed=3)
    options = FitOptions(epochs=20, batch_size=128, lr=3e-3)
    kwargs = {"direction": "backward", "seed": 0, "held_out": (x[600:], y[600:])}
    fitted = fit_adapter(
        "contrastive_affine", x[:600], y[:600], options=options, config=config, **kwargs
    )
    start = fit_adapter("procrustes", x[:600], y[:600], **kwargs)
    assert fitted.held_out is not None and start.held_out is not None
    assert fitted.held_out.recall_at_10 > start.held_out.recall_at_10
    assert fitted.adapter.bank is not None and len(fitted.adapter.bank) == 600
    again = fit_adapter(
        "contrastive_affine", x[:600], y[:600], options=options, config=config, **kwargs
    )  # seeded: the bank draws are reproducible
    torch.testing.assert_close(again.adapter.linear.weight, fitted.adapter.linear.weight)


@pytest.mark.parametrize("field", ["negatives", "hard_negatives", "clusters"])
def test_bank_config_is_validated(field: str) -> None:
    with pytest.raises(InvalidInputError, match=field):
        build_adapter("contrastive_affine", {"dim_in": 6, "dim_out": 4, field: -1})


def test_soft_targets_at_a_tiny_temperature_are_the_one_hot_info_nce() -> None:
    torch.manual_seed(8)
    x, y = F.normalize(torch.randn(12, 9), dim=1), F.normalize(torch.randn(12, 5), dim=1)
    mapped = y + 0.3 * torch.randn(12, 5)
    soft = soft_target_loss(x, mapped, y, 0.1, soft=1e-4)
    torch.testing.assert_close(soft, in_batch_info_nce(mapped, y, 0.1, symmetric=False))
    # A softer target spreads mass to the source's neighbours: a different, finite loss.
    assert torch.isfinite(soft_target_loss(x, mapped, y, 0.1, soft=0.5))
    assert float(soft_target_loss(x, mapped, y, 0.1, soft=0.5)) != pytest.approx(float(soft))


def test_soft_targets_follow_the_source_neighbours_and_handle_duplicate_targets() -> None:
    """Sources 0 and 1 are near-twins in the source space: a map that puts mapped_0 between
    targets 0 and 1 costs less under soft targets than one that puts it on a stranger."""
    torch.manual_seed(9)
    x = F.normalize(torch.randn(6, 8), dim=1)
    x[1] = F.normalize(x[0] + 0.05 * torch.randn(8), dim=0)
    y = torch.eye(6, 6)
    between, stranger = y.clone(), y.clone()
    between[0] = F.normalize(y[0] + y[1], dim=0)
    stranger[0] = F.normalize(y[0] + y[4], dim=0)
    loss = lambda m: float(soft_target_loss(x, m, y, 0.1, soft=0.2))  # noqa: E731
    assert loss(between) < loss(stranger)
    duplicated = y[[0, 0, 1, 2, 3, 4]]  # targets 0 and 1 are one vector
    assert torch.isfinite(soft_target_loss(x, duplicated, duplicated, 0.1, soft=0.2))


def test_distill_trains_and_is_validated() -> None:
    x, y = anisotropic_pairs(600, seed=3)
    options = FitOptions(epochs=10, batch_size=100, lr=3e-3)
    config = {"distill": 1.0, "distill_temperature": 0.1}
    fitted = fit_adapter(
        "contrastive_affine", x, y, direction="backward", options=options, config=config
    )
    assert fitted.losses[-1] < fitted.losses[0]
    for field in ("distill", "distill_temperature"):
        with pytest.raises(InvalidInputError, match=field):
            build_adapter("contrastive_affine", {"dim_in": 6, "dim_out": 4, field: -1.0})
