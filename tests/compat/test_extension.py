"""An extended version's bridge: ``block_step`` and the held-out choice of its step."""

import pytest
import torch
import torch.nn.functional as F

import compat.extension as extension
from compat.adapters import build_adapter
from compat.fitting import FitOptions, fit_adapter
from compat.objectives import new_space_model
from compat.protocol import ProtocolConfig, _prepare
from kernels.errors import InvalidInputError
from models.encoders import embed


def test_the_step_moves_from_the_block_to_the_map() -> None:
    torch.manual_seed(0)
    adapter = build_adapter("block_step", {"dim_in": 12, "dim_out": 5, "step": 0.3})
    with torch.no_grad():
        adapter.linear.weight.add_(0.5 * torch.randn_like(adapter.linear.weight))
    x = torch.randn(9, 12)
    block, mapped = F.normalize(x[:, :5], dim=1), F.normalize(adapter.linear(x), dim=1)
    torch.testing.assert_close(adapter.stepped(x, 0.0), block)
    torch.testing.assert_close(adapter.stepped(x, 1.0), mapped)
    expected = F.normalize(0.7 * block + 0.3 * mapped, dim=1)  # served rows are unit
    torch.testing.assert_close(adapter.transform(x), expected.detach())
    # untrained, the map is the block itself (init="identity"): every step reads the block
    fresh = build_adapter("block_step", {"dim_in": 12, "dim_out": 5, "step": 0.3})
    torch.testing.assert_close(fresh.transform(x), block, rtol=1e-5, atol=1e-6)


def test_bad_steps_and_widths_are_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"step must be in \[0, 1\]"):
        build_adapter("block_step", {"dim_in": 12, "dim_out": 5, "step": 1.5})
    with pytest.raises(InvalidInputError, match="dim_in >= dim_out"):
        build_adapter("block_step", {"dim_in": 5, "dim_out": 12})


@pytest.fixture(scope="module")
def extended_pair():
    """The protocol's quick run: v1 and v2 = v1 extended, trained as its chain trains them."""
    from compat.chain import _version

    run = _prepare(ProtocolConfig.quick(), 0)
    v1 = _version(run, "extend", 0, None)
    v2 = _version(run, "extend", 1, v1)
    source, target = (embed(new_space_model(*v), run.x) for v in (v2, v1))
    return run, source, target, embed(new_space_model(*v2), run.x_test), embed(v1[0], run.x_test)


def test_step_zero_is_the_predecessors_own_retrieval(extended_pair, monkeypatch) -> None:
    run, source, target, queries, own = extended_pair
    monkeypatch.setattr(extension, "STEPS", (0.0,))
    bridge = extension.fit_block_step(source, target, run.y, seed=0, options=FitOptions(epochs=2))
    assert bridge.config.step == 0.0
    torch.testing.assert_close(bridge.transform(queries), own, rtol=1e-5, atol=1e-5)


def test_step_one_is_the_label_aware_map_fitted_on_every_pair(extended_pair, monkeypatch) -> None:
    run, source, target, queries, own = extended_pair
    monkeypatch.setattr(extension, "STEPS", (1.0,))
    bridge = extension.fit_block_step(source, target, run.y, seed=0, options=FitOptions(epochs=2))
    mapped = fit_adapter(
        "lambda_orthogonal_nca", source, target, direction="backward", seed=0,
        options=FitOptions(epochs=2), labels=run.y, config={"init": "identity"},
    ).adapter.transform(queries)  # fmt: skip
    assert bridge.config.step == 1.0
    torch.testing.assert_close(bridge.transform(queries), mapped, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(bridge.transform(queries), own, atol=1e-3)


def test_the_chosen_step_is_the_best_on_held_out_pairs(extended_pair) -> None:
    """Held-out top-1 at the chosen step is the best over every step (the selection's rule)."""
    from compat.fitting import split_rows
    from compat.metrics import self_retrieval_metrics

    run, source, target, _, _ = extended_pair
    bridge = extension.fit_block_step(source, target, run.y, seed=0, options=FitOptions(epochs=2))
    held, kept = split_rows(len(source), 0)
    probe = fit_adapter(
        "block_step", source[kept], target[kept], direction="backward", seed=0,
        options=FitOptions(epochs=2), labels=run.y[kept],
    ).adapter  # fmt: skip
    top1 = {
        step: self_retrieval_metrics(probe.stepped(source[held], step).detach(), target[held],
                                     run.y[held])["top1"]
        for step in extension.STEPS
    }  # fmt: skip
    assert bridge.config.step in extension.STEPS
    assert top1[bridge.config.step] == max(top1.values())


def test_nca_extended_needs_an_extension_of_the_old_encoder() -> None:
    """Its B reads the first old_dim dims as the old block: only true of an ExtendedEncoder
    around that very old encoder, so anything else is refused before training."""
    from compat.protocol import mlp
    from models.extended import ExtendedEncoder

    old, other = mlp(8), mlp(8)
    x, y = torch.randn(20, 784), torch.arange(20) % 4
    objective, references = extension.extended_nca(
        ExtendedEncoder.around(old, mlp(6)), old, x, y, 4
    )
    assert objective.adapter.key == "lambda_orthogonal" and references == [old]
    assert (objective.adapter.dim_in, objective.adapter.dim_out) == (14, 8)
    for encoder in (mlp(14), ExtendedEncoder.around(other, mlp(6))):
        with pytest.raises(InvalidInputError, match="'nca_extended' trains an ExtendedEncoder"):
            extension.extended_nca(encoder, old, x, y, 4)
