"""Query fusion: the fused query's definition, and α chosen on held-out queries."""

import pytest
import torch
import torch.nn.functional as F

from compat.backfill_curves import Relevance
from compat.query_fusion import choose_alpha, fuse
from kernels.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fuse_ends_are_the_two_views_and_rows_are_unit() -> None:
    torch.manual_seed(0)
    old, bridged = torch.randn(7, 5), torch.randn(7, 5)
    torch.testing.assert_close(fuse(old, bridged, 1.0), F.normalize(old, dim=1))
    torch.testing.assert_close(fuse(old, bridged, 0.0), F.normalize(bridged, dim=1))
    mid = fuse(3 * old, bridged, 0.3)  # each view is normalised first: the scale of one is moot
    torch.testing.assert_close(mid, fuse(old, bridged, 0.3))
    torch.testing.assert_close(mid.norm(dim=1), torch.ones(7))
    expected = F.normalize(0.3 * F.normalize(old, dim=1) + 0.7 * F.normalize(bridged, dim=1), dim=1)
    torch.testing.assert_close(mid, expected)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_fuse_refuses_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(InvalidInputError, match="alpha must be in"):
        fuse(torch.randn(2, 3), torch.randn(2, 3), alpha)


def test_fuse_refuses_mismatched_views() -> None:
    with pytest.raises(InvalidInputError, match="same shape"):
        fuse(torch.randn(2, 3), torch.randn(2, 4), 0.5)


def test_two_independent_noisy_views_fuse_better_than_either() -> None:
    """Old and bridged queries = the gallery item + independent noise: their mean is less noisy."""
    g = torch.Generator().manual_seed(1)
    gallery = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    old = gallery + 0.35 * torch.randn(300, 16, generator=g)
    new = gallery + 0.35 * torch.randn(300, 16, generator=g)  # the bridge is the identity here
    fusion = choose_alpha(old, new, gallery, Relevance.pairs(300), lambda x: x)
    assert 0.0 < fusion.alpha < 1.0
    assert fusion.scores[fusion.alpha] > max(fusion.scores[0.0], fusion.scores[1.0])
    assert set(fusion.scores) == {i / 10 for i in range(11)}
    torch.testing.assert_close(fusion(old, new), fuse(old, new, fusion.alpha))


def test_a_useless_bridge_gets_alpha_one() -> None:
    """Bridged queries that are pure noise: the held-out choice falls back to the old model."""
    g = torch.Generator().manual_seed(2)
    gallery = F.normalize(torch.randn(200, 16, generator=g), dim=1)
    old = gallery + 0.3 * torch.randn(200, 16, generator=g)
    noise = torch.randn(200, 16, generator=g)
    fusion = choose_alpha(old, noise, gallery, Relevance.pairs(200), lambda x: x)
    assert fusion.alpha == 1.0


def test_choose_alpha_checks_shapes() -> None:
    with pytest.raises(InvalidInputError, match="must agree"):
        choose_alpha(
            torch.randn(4, 3), torch.randn(5, 3), torch.randn(6, 3), Relevance.pairs(4), lambda x: x
        )
