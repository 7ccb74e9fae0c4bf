"""A bridge fitted on image pairs of two open_clip models carries their texts across too.

Two tiny open_clip models whose checkpoints the test writes: B is A with both output projections
rotated by one orthogonal Q and each tower's final LayerNorm bias shifted (a different offset per
modality, as real models' modality gaps differ). Images then pair up as B ≈ A Q + shift_image and
texts as B ≈ A Q + shift_text before normalisation, so a map fitted on images transfers to texts
only when each modality is centred on its own means.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from compat.crossmodal import fit_cross_modal
from kernels.errors import InvalidInputError
from models.loaders import load_open_clip
from models.pretrained import import_library

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
WORDS = [
    "cat",
    "dog",
    "car",
    "tree",
    "house",
    "river",
    "mountain",
    "bird",
    "fish",
    "flower",
    "city",
    "road",
    "boat",
    "horse",
    "apple",
]


@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    open_clip = import_library("open_clip")
    directory = tmp_path_factory.mktemp("crossmodal")
    config = directory / "hotswap-crossmodal-clip.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    state = open_clip.create_model(config.stem, pretrained=None).state_dict()
    torch.save(state, directory / "a.pt")
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=g))
    moved = dict(state)
    moved["visual.proj"] = state["visual.proj"] @ q
    moved["text_projection"] = state["text_projection"] @ q
    moved["visual.ln_post.bias"] = state["visual.ln_post.bias"] + 0.5 * torch.randn(64, generator=g)
    moved["ln_final.bias"] = state["ln_final.bias"] + 0.5 * torch.randn(32, generator=g)
    torch.save(moved, directory / "b.pt")
    a, b = (load_open_clip(config.stem, directory / f"{n}.pt") for n in ("a", "b"))
    images = torch.randn(96, 3, 32, 32, generator=g)
    texts = [f"a photo of a {w} near a {v}" for w in WORDS for v in WORDS[:6]]  # 90 texts
    return {
        "images": (b.image.encode(images), a.image.encode(images)),  # (new, old) pairs
        "texts": (b.text.encode(texts), a.text.encode(texts)),
    }


def text_top1(mapped: torch.Tensor, old_texts: torch.Tensor) -> float:
    """Share of bridged texts whose nearest old-model text is the same text."""
    return float(((mapped @ old_texts.T).argmax(dim=1) == torch.arange(len(mapped))).float().mean())


def test_image_fitted_map_carries_texts_with_their_own_means(clip_pair) -> None:
    (new_img, old_img), (new_txt, old_txt) = clip_pair["images"], clip_pair["texts"]
    # Text means from unpaired halves: the means need no pairs.
    others = {"text": (new_txt[:45], old_txt[45:])}
    bridge = fit_cross_modal(new_img, old_img, modality="image", others=others)
    own = bridge.transform(new_txt, "text")
    borrowed = F.normalize(bridge.adapter(F.normalize(new_txt, dim=1) - bridge.source_means["image"])
                           + bridge.target_means["image"], dim=1)  # fmt: skip
    cos_own = float((own * old_txt).sum(dim=1).mean())
    cos_borrowed = float((borrowed * old_txt).sum(dim=1).mean())
    assert cos_own > 0.9 and cos_own > cos_borrowed + 0.05
    assert text_top1(own, old_txt) >= text_top1(borrowed, old_txt)
    assert text_top1(own, old_txt) > 0.3  # chance: 1/90 (random-weight towers crowd their texts)
    assert float((bridge.transform(new_img, "image") * old_img).sum(dim=1).mean()) > 0.9


def test_cross_modal_errors(clip_pair) -> None:
    (new_img, old_img), (new_txt, old_txt) = clip_pair["images"], clip_pair["texts"]
    bridge = fit_cross_modal(
        new_img, old_img, modality="image", others={"text": (new_txt, old_txt)}
    )
    with pytest.raises(InvalidInputError, match="no means for modality 'audio'"):
        bridge.transform(new_txt, "audio")
    with pytest.raises(InvalidInputError, match="another modality"):
        fit_cross_modal(new_img, old_img, modality="image", others={"image": (new_img, old_img)})
    with pytest.raises(InvalidInputError, match="width"):
        bridge.transform(new_txt[:, :16], "text")
