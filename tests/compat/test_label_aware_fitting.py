"""Label-aware post-hoc fitting: λ-orth's supervised terms, NCA over a bank, labels plumbing."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from compat.adapters import build_adapter, load_adapter, save_adapter
from compat.fitting import FitOptions, fit_adapter, select_adapter
from compat.label_terms import neighbourhood_loss, supervised_contrastive
from compat.metrics import self_retrieval_metrics
from kernels.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OPTS = FitOptions(epochs=30, batch_size=64, lr=1e-2)


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def test_supervised_contrastive_against_its_definition() -> None:
    g = torch.Generator().manual_seed(0)
    a, c = torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    la, lc = torch.tensor([0, 1, 2, 0, 3]), torch.tensor([0, 0, 1, 2, 1, 2, 0])
    same = la[:, None] == lc[None, :]
    s = cosines(a, c) / 0.2
    per_anchor: list[float] = []
    for i in range(5):
        positives = [p for p in range(7) if same[i, p]]
        if positives:  # anchor 4 (class 3) has none: left out
            log_z = torch.logsumexp(s[i], dim=0)
            per_anchor.append(-sum(float(s[i, p] - log_z) for p in positives) / len(positives))
    expected = sum(per_anchor) / len(per_anchor)
    assert float(supervised_contrastive(a, c, same, 0.2)) == pytest.approx(expected, rel=1e-5)


def test_supervised_contrastive_excludes_the_anchor_itself() -> None:
    g = torch.Generator().manual_seed(1)
    v, labels = torch.randn(6, 3, generator=g), torch.tensor([0, 0, 1, 1, 1, 2])
    own = torch.eye(6, dtype=torch.bool)
    same = labels[:, None] == labels[None, :]
    s = cosines(v, v) / 0.5
    per_anchor: list[float] = []
    for i in range(5):  # anchor 5 is alone in its class
        others = [j for j in range(6) if j != i]
        log_z = torch.logsumexp(s[i, others], dim=0)
        positives = [p for p in others if labels[p] == labels[i]]
        per_anchor.append(-sum(float(s[i, p] - log_z) for p in positives) / len(positives))
    got = supervised_contrastive(v, v, same, 0.5, exclude=own)
    assert float(got) == pytest.approx(sum(per_anchor) / len(per_anchor), rel=1e-5)


def test_neighbourhood_loss_against_its_definition() -> None:
    g = torch.Generator().manual_seed(2)
    a, c = torch.randn(4, 5, generator=g), torch.randn(9, 5, generator=g)
    la, lc = torch.tensor([0, 1, 2, 9]), torch.tensor([0, 1, 1, 2, 0, 2, 2, 1, 0])
    s = cosines(a, c) / 0.05
    probs = s.softmax(dim=1)
    expected = -sum(float(probs[i, lc == la[i]].sum().log()) for i in range(3)) / 3  # 9: none
    got = neighbourhood_loss(a, c, la[:, None] == lc[None, :], 0.05)
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_losses_give_finite_gradients_when_an_anchor_has_no_positive() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 4, generator=g, requires_grad=True)
    c = torch.randn(5, 4, generator=g)
    same = torch.tensor([0, 1, 7])[:, None] == torch.tensor([0, 1, 1, 0, 2])[None, :]
    for loss in (neighbourhood_loss(a, c, same, 0.02), supervised_contrastive(a, c, same, 0.1)):
        (grad,) = torch.autograd.grad(loss, a)
        assert torch.isfinite(grad).all() and float(grad[2].abs().sum()) == 0.0


@pytest.mark.parametrize("key", ["lambda_orthogonal_nca", "residual_mlp_nca"])
def test_the_nca_maps_fit_old_directions_not_old_norms(key: str) -> None:
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 5, generator=g)
    adapter = build_adapter(key, {"dim_in": 6, "dim_out": 5})
    assert adapter.config.mse_on == "directions"
    mapped = adapter(x).detach()
    # targets rescaled row by row: same directions, so the same loss; on vectors it would change
    scale = torch.rand(16, 1, generator=g) + 0.5
    assert float(adapter.fit_term(mapped, y * scale)) == pytest.approx(
        float(adapter.fit_term(mapped, y))
    )
    on_vectors = build_adapter(key, {"dim_in": 6, "dim_out": 5, "mse_on": "vectors"})
    assert float(on_vectors.fit_term(mapped, y * scale)) != pytest.approx(
        float(on_vectors.fit_term(mapped, y))
    )
    expected = adapter.config.mse * (2 - 2 * F.cosine_similarity(mapped, y)).mean()
    assert float(adapter.fit_term(mapped, y)) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(InvalidInputError, match="mse_on must be one of"):
        build_adapter(key, {"dim_in": 6, "dim_out": 5, "mse_on": "norms"})


@pytest.mark.parametrize("key", ["lambda_orthogonal_nca", "residual_mlp_nca"])
def test_an_artifact_saved_before_mse_on_existed_says_it_fitted_vectors(
    key: str, tmp_path: Path
) -> None:
    adapter = build_adapter(key, {"dim_in": 6, "dim_out": 5})
    save_adapter(adapter, tmp_path / "now.safetensors")
    assert load_adapter(tmp_path / "now.safetensors").config.mse_on == "directions"
    # the same file as written before the field: its config JSON has no mse_on
    config = adapter.config.to_dict()
    del config["mse_on"]
    tensors = {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}
    meta = {"key": key, "config": json.dumps(config)}
    save_file(tensors, tmp_path / "before.safetensors", metadata=meta)
    old = load_adapter(tmp_path / "before.safetensors")
    assert old.config.mse_on == "vectors"
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(old.transform(x), adapter.transform(x))  # serving is unchanged
    # a config built today, from a dict that leaves the field out, takes today's default
    assert build_adapter(key, config).config.mse_on == "directions"


def mistaken_old_model(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paired features of 4 classes: new (n, 10) separates them all; the old model (n, 8) files
    3/4 of class 3 under class 2, so copying its features (MSE) copies the mistake."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    new = 3 * torch.randn(4, 10, generator=g)[labels] + torch.randn(n, 10, generator=g)
    filed = labels.clone()
    filed[(labels == 3) & (torch.arange(n) % 16 != 15)] = 2  # 3 of every 4 class-3 items
    old = 3 * torch.randn(4, 8, generator=g)[filed] + torch.randn(n, 8, generator=g)
    return new, old, labels


def test_nca_over_the_bank_beats_copying_the_old_features_on_class_top1() -> None:
    new, old, labels = mistaken_old_model(480, seed=3)
    fits = {
        key: fit_adapter(
            key, new[:320], old[:320], direction="backward", options=OPTS, labels=labels[:320]
        )
        for key in ("lambda_orthogonal", "lambda_orthogonal_nca")
    }
    top1 = {
        key: self_retrieval_metrics(r.adapter.transform(new[320:]), old[320:], labels[320:])["top1"]
        for key, r in fits.items()
    }
    assert top1["lambda_orthogonal_nca"] > top1["lambda_orthogonal"] + 0.05


def test_unsupervised_fits_ignore_labels_and_label_only_fits_need_them() -> None:
    new, old, labels = mistaken_old_model(96, seed=4)
    quick = FitOptions(epochs=2, batch_size=32)
    with_labels, without = (
        fit_adapter("lambda_orthogonal", new, old, direction="backward", options=quick, labels=lab)
        for lab in (labels, None)
    )
    assert with_labels.losses == without.losses  # supervised weights 0: labels change nothing
    for key in ("lambda_orthogonal_supcon", "lambda_orthogonal_nca", "residual_mlp_nca"):
        with pytest.raises(InvalidInputError, match="trains on class labels"):
            fit_adapter(key, new, old, direction="backward", options=quick)
        fit_adapter(key, new, old, direction="backward", options=quick, labels=labels)
    with pytest.raises(InvalidInputError, match="labels must be an integer tensor of shape"):
        fit_adapter("affine", new, old, direction="backward", labels=labels[:5])
    with pytest.raises(InvalidInputError, match="labels must be an integer tensor"):
        fit_adapter("affine", new, old, direction="backward", labels=labels.float())


def test_select_adapter_offers_label_only_candidates_only_with_labels() -> None:
    new, old, labels = mistaken_old_model(120, seed=5)
    quick = FitOptions(epochs=1, batch_size=64)
    plain = select_adapter(new, old, direction="backward", options=quick, refit=False)
    assert "lambda_orthogonal_nca" not in plain.reports
    assert "residual_mlp_nca" not in plain.reports
    assert "lambda_orthogonal" in plain.reports
    keys = ["procrustes", "lambda_orthogonal_nca"]
    with pytest.raises(InvalidInputError, match="trains on class labels"):
        select_adapter(new, old, keys, direction="backward", options=quick)
    labelled = select_adapter(new, old, keys, direction="backward", options=quick, labels=labels)
    assert set(labelled.reports) == set(keys)


def test_with_labels_select_adapter_ranks_by_held_out_class_top1() -> None:
    new, old, labels = mistaken_old_model(240, seed=6)
    keys = ["procrustes", "affine", "lambda_orthogonal_nca"]
    chosen = select_adapter(
        new, old, keys, direction="backward", options=OPTS, labels=labels, refit=False
    )
    assert chosen.criterion == "class_top1"
    held = torch.randperm(240, generator=torch.Generator().manual_seed(0))[: chosen.held_out]
    top1 = {}
    for key, report in chosen.reports.items():  # brute force on the same held-out split
        bridged = report.adapter.transform(F.normalize(new[held], dim=1))
        top1[key] = self_retrieval_metrics(bridged, F.normalize(old[held], dim=1), labels[held])
        assert report.held_out is not None
        assert report.held_out.class_top1 == pytest.approx(top1[key]["top1"], abs=1e-6)
    assert top1[chosen.key]["top1"] == max(m["top1"] for m in top1.values())
    assert chosen.key == "lambda_orthogonal_nca"  # the map that does not copy the old mistakes
    paired = select_adapter(
        new, old, keys, direction="backward", options=OPTS, labels=labels, criterion="recall@10"
    )
    assert paired.criterion == "recall@10"
    with pytest.raises(InvalidInputError, match="needs the pairs' labels"):
        select_adapter(new, old, keys[:2], direction="backward", criterion="class_top1")
