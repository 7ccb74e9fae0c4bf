"""bridge_or_backfill's ``calibration``: bridged scores mapped onto the new/new scale before mixing."""

import pytest
import torch
import torch.nn.functional as F

from compat.backfill_curves import Relevance
from compat.verdict import bridge_or_backfill

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
