"""Calibrated mixed galleries: bridge_or_backfill's fixed ``calibration`` and the protocol's per-wave
one (backfill_curve's ``calibration=wave_calibration(...)``), both mapping bridged scores onto the
new/new scale before mixing."""

import pytest
import torch
import torch.nn.functional as F

from compat.backfill_curves import Relevance, backfill_curve, order_random, wave_calibration
from compat.verdict import bridge_or_backfill
from kernels.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def upgrade(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Pairs retrieval where the new model is exact and the old one noisy (8-d both)."""
    g = torch.Generator().manual_seed(seed)
    docs = F.normalize(torch.randn(120, 8, generator=g), dim=1)
    queries = docs + 0.05 * torch.randn(120, 8, generator=g)
    old_q = queries + 0.6 * torch.randn(120, 8, generator=g)
    old_d = docs + 0.6 * torch.randn(120, 8, generator=g)
    return old_q, queries, old_d, docs


def run(calibration=None):
    oq, nq, og, ng = upgrade()
    return bridge_or_backfill(
        oq, nq, og, ng, Relevance.pairs(120), lambda x: x, rerank_depth=None,
        orderings=("random",), points=5, calibration=calibration,
    )  # fmt: skip


def test_identity_calibration_changes_nothing() -> None:
    assert run(lambda s: s).to_dict() == run().to_dict()


def test_calibration_moves_only_the_mixed_curve() -> None:
    """A bridged scale pushed far down: every migrated item outranks every bridged one."""
    raw, shifted = run(), run(lambda s: s - 10.0)
    assert shifted.bridged == raw.bridged and shifted.old_old == raw.old_old  # cells untouched
    raw_curve, low_curve = raw.curves[0], shifted.curves[0]
    assert low_curve.values[0] == pytest.approx(
        raw_curve.values[0]
    )  # nothing migrated: a shift is moot
    assert low_curve.values[-1] == pytest.approx(raw_curve.values[-1])  # all migrated
    assert low_curve.values[1:-1] != raw_curve.values[1:-1]


def rescaled_world(g: int = 300) -> tuple[torch.Tensor, torch.Tensor, Relevance]:
    """A gallery that is its own query set; the bridge ranks exactly as the new model does but on
    another scale (cosines squeezed and shifted down), as a contrastive bridge's do."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(20, (g,), generator=gen)
    x = F.normalize(
        torch.randn(20, 16, generator=gen)[labels] + 1.5 * torch.randn(g, 16, generator=gen), dim=1
    )
    native = x @ x.T
    return native, 0.3 * native - 0.5, Relevance.labels(labels, labels, self_match=True)


def curve(calibration=None):
    native, bridged, relevance = rescaled_world()
    order = order_random(len(native), seed=1)
    return backfill_curve(
        native, bridged, relevance, order, ordering="random", metric="mrr@1", points=6,
        target=0.5, calibration=calibration,
    )  # fmt: skip


def test_wave_calibration_maps_a_rescaled_bridge_back_onto_the_native_scale() -> None:
    native, bridged, _ = rescaled_world()
    migrated = torch.zeros(len(native), dtype=torch.bool)
    migrated[::2] = True  # 150 items with both vectors
    calibrated = wave_calibration(native, bridged)(migrated)(bridged)
    # exact where rankings are decided (bins get finer towards the top; binned means of a linear
    # relation lie on it); the coarse bottom bin and the outer halves of the end bins are
    # extended with slope 1, by design
    low, high = torch.quantile(bridged.flatten()[::7], torch.tensor([0.5, 0.95]))
    inner = (bridged > low) & (bridged < high)
    torch.testing.assert_close(calibrated[inner], native[inner], atol=1e-4, rtol=0)
    by_bridged = calibrated.flatten()[bridged.flatten().argsort()]
    assert bool((by_bridged.diff() >= 0).all())  # monotone: no ranking within the space changes
    nothing = wave_calibration(native, bridged)(torch.zeros(len(native), dtype=torch.bool))
    assert torch.equal(nothing(bridged), bridged)  # no item has both vectors yet: raw scores


def test_a_calibrated_merge_has_no_dip_where_the_raw_merge_has_one() -> None:
    native, bridged, _ = rescaled_world()
    raw, calibrated = curve(), curve(wave_calibration(native, bridged))
    assert raw.values[0] == calibrated.values[0] and raw.values[-1] == calibrated.values[-1]
    # the raw merge ranks every migrated item above every bridged one: top-1 falls mid-way
    assert min(raw.values[1:-1]) < raw.values[0] - 0.05
    # calibrated, both kinds of score are the native ones: the curve stays at new/new
    assert calibrated.values == pytest.approx([calibrated.values[-1]] * 6, abs=1e-9)


def test_wave_calibration_refuses_score_matrices_that_are_not_self_retrieval() -> None:
    native, bridged, _ = rescaled_world()
    with pytest.raises(InvalidInputError, match="self-retrieval"):
        wave_calibration(native[:10], bridged)
