"""The protocol's pieces: config checks, the task-measured adapter choice, summaries, targets.

The quick mode end to end (real Fashion-MNIST) runs once, through the CLI: tests/cli/test_bench_command.py.
"""

from __future__ import annotations

import math
import types

import pytest
import torch

from compat.chain import summarise_chains
from compat.metrics import chain_metrics, self_retrieval_metrics
from compat.protocol import ProtocolConfig, choose_adapter
from compat.protocol_backfill import summarise_backfill
from compat.protocol_report import render_tables, targets
from compat.protocol_summary import summarise
from kernels.errors import InvalidInputError


def test_config_refuses_a_method_without_its_reference_model() -> None:
    with pytest.raises(InvalidInputError, match="independent"):
        ProtocolConfig(methods=("bt2",))
    with pytest.raises(InvalidInputError, match="independent"):
        ProtocolConfig(methods=("posthoc",))
    with pytest.raises(InvalidInputError, match="'bt2'"):
        ProtocolConfig(methods=("independent", "bt2+posthoc"))
    with pytest.raises(InvalidInputError, match="unknown methods"):
        ProtocolConfig(methods=("bcd",))
    with pytest.raises(InvalidInputError, match="'nca'"):
        ProtocolConfig(methods=("independent", "nca+posthoc"))


def test_config_refuses_an_unknown_chain_method() -> None:
    with pytest.raises(InvalidInputError, match=r"unknown chain methods \['nce'\]"):
        ProtocolConfig(chain_methods=("nce",))
    assert ProtocolConfig(chain_methods=("nca", "nca+posthoc")).chain_methods == (
        "nca",
        "nca+posthoc",
    )


def _clustered(seed: int, n: int = 600, d: int = 12, classes: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    centres = torch.randn(classes, d, generator=g) * 2
    return centres[labels] + torch.randn(n, d, generator=g), labels


def test_choose_adapter_keeps_the_held_out_best_and_refits_on_all_pairs() -> None:
    source, labels = _clustered(0)
    rotation = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(1)))[0]
    target = source @ rotation  # an exact rotation: Procrustes recovers it from any split
    run = types.SimpleNamespace(seed=0, y=labels, config=ProtocolConfig(adapter_epochs=2))
    pick, choice, adapter = choose_adapter(run, source, target, ("procrustes", "affine"))  # type: ignore[arg-type]
    assert set(pick.reports) == {"procrustes", "affine"} and choice in pick.reports
    assert pick.anchors == 384  # select_adapter saw 80% of the 80% kept, never the held-out fifth
    mapped = torch.nn.functional.normalize(adapter.transform(source), dim=1)
    cos = (mapped * torch.nn.functional.normalize(target, dim=1)).sum(dim=1)
    assert float(cos.min()) > 0.99


def _cells(old: float, cross: float, new: float) -> dict:
    cell = lambda v: {"top1": v, "top5": v, "ap": v / 2}  # noqa: E731
    return {"old/old": cell(old), "new/old": cell(cross), "new/new": cell(new), "bridge": "b"}


def test_summary_gain_tax_and_ecc_per_seed() -> None:
    per_seed = [
        {"independent": _cells(0.7, 0.1, 0.9), "bt2": _cells(0.7, 0.8, 0.89)},
        {"independent": _cells(0.7, 0.1, 0.8), "bt2": _cells(0.7, 0.69, 0.8)},
    ]
    s = summarise(per_seed)["bt2"]
    assert s["ecc top1"] == [True, False]
    gains = [(0.8 - 0.7) / (0.9 - 0.7), (0.69 - 0.7) / (0.8 - 0.7)]
    assert s["gain top1"][0] == pytest.approx(sum(gains) / 2)
    assert s["tax top1"][0] == pytest.approx((0.01 + 0.0) / 2)
    assert s["new/old ap"][0] == pytest.approx((0.4 + 0.345) / 2)


def test_chain_and_backfill_summaries() -> None:
    nan = math.nan
    a = [[0.7, nan, nan], [0.75, 0.72, nan], [0.71, 0.8, 0.8]]
    b = [[0.7, nan, nan], [0.69, 0.72, nan], [0.71, 0.8, 0.8]]
    chains = summarise_chains([{"posthoc": a}, {"posthoc": b}])["posthoc"]
    assert chains["ac_per_seed"] == [chain_metrics(a).ac, chain_metrics(b).ac]
    assert chains["ac_per_seed"] == pytest.approx([1.0, 2 / 3])
    assert chains["mean_matrix_top1"][1][0] == pytest.approx(0.72)

    def curve(area: float) -> dict:
        return {
            "area": area,
            "values": [0.1, area],
            "fractions": [0, 1],
            "fraction_to_target": None,
        }

    seeds = [
        {"r": {"random": curve(0.5), "uncertainty": curve(0.56)}},
        {"r": {"random": curve(0.6), "uncertainty": curve(0.62)}},
    ]
    s = summarise_backfill(seeds)["r"]["uncertainty"]
    assert s["margin_over_random"][0] == pytest.approx(0.04)
    assert s["mean_values"] == pytest.approx([0.1, 0.59])


def _results(cross: float, ac: float, margin: float) -> dict:
    per_seed = [
        {
            "independent": _cells(0.7, 0.1, 0.9),
            "bt2": _cells(0.7, cross, 0.9),
            "bt2+posthoc": _cells(0.7, cross, 0.9),
            "posthoc:procrustes": _cells(0.7, 0.8, 0.9),
        }
    ]
    curve = {
        "area": (0.5 + margin, 0.0),
        "margin_over_random": (margin, 0.0),
        "fraction_to_target": [0.5],
        "mean_values": [],
        "fractions": [],
    }
    return {
        "seeds_done": 1,
        "summary": summarise(per_seed),
        "chains": {
            "posthoc": {
                "ac": (ac, 0.0),
                "ac_per_seed": [ac],
                "am": (0.7, 0.0),
                "mean_matrix_top1": [[0.7, None], [0.8, 0.8]],
            }
        },
        "backfill": {
            "posthoc:procrustes": {
                "random": {**curve, "margin_over_random": (0.0, 0.0)},
                "uncertainty": curve,
            }
        },
    }


def test_targets_say_met_and_missed() -> None:
    met = {t["target"]: t["met"] for t in targets(_results(0.81, 1.0, 0.05))}
    assert all(v for k, v in met.items() if not k.startswith("post-hoc"))
    assert met["post-hoc adapter (independent models) gain fraction >= 0.9"] is False  # 0.5
    missed = {t["target"]: t["met"] for t in targets(_results(0.69, 2 / 3, 0.04))}
    assert not any(v for k, v in missed.items())
    assert "**MISSED**" in render_tables(_results(0.69, 2 / 3, 0.04))


def test_the_post_hoc_target_is_the_held_out_choice_not_the_best_test_row() -> None:
    results = _results(0.81, 1.0, 0.05)
    per_seed = [
        {
            "independent": _cells(0.7, 0.1, 0.9),
            "posthoc:affine": _cells(0.7, 0.9, 0.9),  # best on the test set, not chosen
            "posthoc:selected": {**_cells(0.7, 0.89, 0.9), "selected": "lambda_orthogonal_nca"},
        }
    ]
    results["summary"] = summarise(per_seed)
    posthoc = next(t for t in targets(results) if t["target"].startswith("post-hoc"))
    assert posthoc["best"] == "posthoc:selected (lambda_orthogonal_nca)"
    assert posthoc["value"] == pytest.approx(0.95) and posthoc["met"]
    combined = [t for t in targets(_results(0.81, 1.0, 0.05)) if "refinement" in t["target"]]
    assert [t["best"] for t in combined] == ["bt2+posthoc"]


def test_backfill_metric_is_cmc_top1() -> None:
    """The curves' MRR@1 under label relevance, self-match removed, equals the cells' CMC top-1."""
    from compat.backfill_curves import Relevance, cosine, evaluate
    from compat.protocol_backfill import METRIC

    x, labels = _clustered(3, n=300)
    y = (
        x + torch.randn(x.shape, generator=torch.Generator().manual_seed(4)) * 3
    )  # a noisy 2nd space
    relevance = Relevance.labels(labels, labels, self_match=True)
    assert evaluate(cosine(x, y), relevance, (1,))[METRIC] == pytest.approx(
        self_retrieval_metrics(x, y, labels)["top1"]
    )


def test_merge_results_of_one_seed_runs() -> None:
    from compat.protocol import merge_results

    def part(seed: int, cross: float) -> dict:
        per_seed = [{"independent": _cells(0.7, 0.1, 0.9), "bt2": _cells(0.7, cross, 0.9)}]
        config = ProtocolConfig(seeds=(seed,)).to_dict()
        return {
            "config": config,
            "per_seed": per_seed,
            "chain_matrices": [],
            "chain_choices": [{"posthoc": {"v2→v1": f"choice {seed}"}}],
            "backfill_curves": [],
            "seconds": 10.0 + seed,
        }

    merged = merge_results([part(0, 0.8), part(1, 0.75)])
    assert merged["config"]["seeds"] == (0, 1) and merged["seeds_done"] == 2
    assert merged["chain_choices"] == [
        {"posthoc": {"v2→v1": "choice 0"}},
        {"posthoc": {"v2→v1": "choice 1"}},
    ]
    assert merged["summary"]["bt2"]["new/old top1"][0] == pytest.approx(0.775)
    assert merged["seconds"] == 21.0 and merged["wall_seconds"] == 11.0
    with pytest.raises(InvalidInputError, match="repeat"):
        merge_results([part(0, 0.8), part(0, 0.75)])


def test_fastfill_searches_the_forward_transformed_gallery_with_plain_new_queries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a perfect forward map (F(old_i) = new_i) every un-migrated item already scores as its
    new vector would: the curve is flat at the full re-index's top-1 for every ordering."""
    import compat.protocol_backfill as backfill
    from compat.metrics import self_retrieval_metrics

    new, labels = _clustered(5, n=120)  # (120, 12)
    old = torch.randn(120, 6, generator=torch.Generator().manual_seed(6))  # a useless old space

    class PerfectMap:
        def transform(self, x: torch.Tensor) -> torch.Tensor:  # (G, 6) -> (G, 12)
            return new[: len(x)]

        def uncertainty(self, x: torch.Tensor) -> torch.Tensor:
            return torch.arange(len(x), dtype=torch.float32)

    monkeypatch.setattr(backfill, "forward_map", lambda run, source: PerfectMap())
    config = ProtocolConfig(backfill_items=100, backfill_points=5, backfill_bridges=("fastfill",))
    run = types.SimpleNamespace(
        config=config,
        seed=0,
        x_test=new,
        y_test=labels,
        old_test=old,
        spaces={"independent": (old, new)},
    )
    curves = backfill.backfill_curves(run)["fastfill"]  # type: ignore[arg-type]
    full = self_retrieval_metrics(new[:100], new[:100], labels[:100])["top1"]
    assert set(curves) == {"random", "distance_to_mean", "uncertainty", backfill.ORACLE}
    for curve in curves.values():
        assert curve["values"] == pytest.approx([full] * 5)


def test_an_extended_version_keeps_its_predecessor_whole_and_frozen() -> None:
    from compat.chain import _version
    from compat.objectives import new_space_model
    from compat.protocol import _prepare
    from models.encoders import embed

    run = _prepare(ProtocolConfig.quick(), 0)
    v1 = _version(run, "extend", 0, None)
    before = [p.clone() for p in v1[0].parameters()]
    v2 = _version(run, "extend", 1, v1)
    assert all(torch.equal(a, b) for a, b in zip(before, v1[0].parameters(), strict=True))
    first, second = (embed(new_space_model(*v), run.x_test) for v in (v1, v2))
    assert second.shape[1] == run.config.chain_dims[1]
    # the first d_1 dimensions are v1's vectors (one of two unit blocks, so of norm 1/√2)
    block = second[:, : first.shape[1]]
    assert torch.allclose(block * 2**0.5, first, atol=1e-5)
    with pytest.raises(InvalidInputError, match="chain_dims must grow"):
        ProtocolConfig(chain_dims=(64, 64, 128), chain_methods=("extend+posthoc",))


def test_the_extended_row_keeps_the_old_model_inside_the_new_one() -> None:
    """``extend+posthoc``: new vectors start with the old model's; the bridge's step is on record."""
    from compat.extension import STEPS
    from compat.protocol import EXTENDED, _prepare, method_rows
    from models.encoders import embed

    run = _prepare(ProtocolConfig.quick(), 0)
    cells = method_rows(run, EXTENDED, lambda message: None)[EXTENDED]
    encoder, _ = run.trained["extend"]
    c = run.config
    new = embed(encoder, run.x_test)
    assert new.shape[1] == c.new_dim + c.extra_dims
    assert torch.allclose(new[:, : c.old_dim] * 2**0.5, run.old_test, atol=1e-5)
    step = float(cells["selected"].removeprefix("step "))
    assert step in STEPS
    assert cells["old/old"] == self_retrieval_metrics(run.old_test, run.old_test, run.y_test)
    lo, hi = cells["top1 margin interval"]
    margin = cells["new/old"]["top1"] - cells["old/old"]["top1"]
    assert lo <= margin <= hi
    assert ProtocolConfig(methods=("independent", EXTENDED)).methods == ("independent", EXTENDED)


def test_the_nca_extended_row_trains_beside_the_kept_old_model_and_bridges_through_b() -> None:
    """``nca_extended``: the old model frozen inside the new one; its bridge is nca's jointly
    trained B (a λ-orth map, served as one projection), a training-time row seeded last."""
    from compat.protocol import METHODS, NCA_EXTENDED, TRAINING_TIME, _prepare, method_rows
    from models.encoders import embed

    assert METHODS[-1] == NCA_EXTENDED and NCA_EXTENDED in TRAINING_TIME
    run = _prepare(ProtocolConfig.quick(), 0)
    before = [p.clone() for p in run.old.parameters()]
    cells = method_rows(run, NCA_EXTENDED, lambda message: None)[NCA_EXTENDED]
    assert all(torch.equal(a, b) for a, b in zip(before, run.old.parameters(), strict=True))
    encoder, objective = run.trained[NCA_EXTENDED]
    c = run.config
    new = embed(encoder, run.x_test)
    assert new.shape[1] == c.new_dim + c.extra_dims
    assert torch.allclose(new[:, : c.old_dim] * 2**0.5, run.old_test, atol=1e-5)
    bridge = objective.bridge_module()
    assert bridge.key == "lambda_orthogonal" and bridge.serving_form() is not None
    bridged, _ = run.spaces[NCA_EXTENDED]
    torch.testing.assert_close(bridged, bridge.transform(new), atol=1e-5, rtol=1e-4)
    assert cells["new/old"] == self_retrieval_metrics(bridged, run.old_test, run.y_test)
    assert "kept old block" in cells["bridge"]


def test_a_posthoc_chain_trains_its_base_method_and_bridges_each_pair_directly() -> None:
    """``bct+posthoc`` versions are ``bct``'s (same diagonal); its cross cells use direct adapters."""
    from compat.chain import CHAIN_ADAPTERS, chain_matrix
    from compat.protocol import _prepare

    run = _prepare(ProtocolConfig.quick(), 0)
    plain, refined = (chain_matrix(run, m) for m in ("bct", "bct+posthoc"))
    # each pair's adapter, as held-out images chose it, is on record; bct composes, chooses nothing
    assert set(run.chain_choices) == {"bct+posthoc"}
    assert set(run.chain_choices["bct+posthoc"]) == {"v2→v1", "v3→v1", "v3→v2"}
    assert set(run.chain_choices["bct+posthoc"].values()) <= set(CHAIN_ADAPTERS)
    for i in range(3):
        assert refined[i][i] == pytest.approx(plain[i][i])
        assert all(math.isnan(v) for v in refined[i][i + 1 :])
        assert all(0.0 <= v <= 1.0 for v in refined[i][:i])
    assert refined[2][0] != pytest.approx(plain[2][0])  # not the composed BCT adapters
