"""One map for two modalities: fit a bridge on image pairs, apply it to text (or the reverse).

Two CLIP-family models each embed images and texts into one space, but each modality sits in its
own cone (the "modality gap": image and text means differ). Canonicalizing multimodal contrastive
representations (Procrustes between two such models) fits the map on one modality with both
sides centred on *that modality's* means, then maps another modality by centring it on the source
model's mean *for that modality* and adding the target model's mean for it:

    y = (x - mu_src[m]) R + mu_tgt[m]        for inputs x of modality m

so pairs are needed for one modality only; the other needs just each model's own mean, which
unpaired samples give. Pure torch; the adapter is any registered one (Procrustes by default).
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor

from compat.adapters import Adapter, Direction
from compat.fitting import FitOptions, fit_adapter
from compat.vectors import check_vectors
from kernels.errors import InvalidInputError


@dataclasses.dataclass(frozen=True)
class CrossModalBridge:
    """A map fitted on centred pairs of one modality, with each model's mean per modality."""

    adapter: Adapter
    fitted_on: str  # the modality the pairs came from
    source_means: dict[str, Tensor]  # modality -> (dim_in,) mean of the source model's unit rows
    target_means: dict[str, Tensor]  # modality -> (dim_out,)

    def transform(self, x: Tensor, modality: str) -> Tensor:
        """(N, dim_in) unit rows of ``modality`` -> (N, dim_out) unit rows in the target space."""
        if modality not in self.source_means:
            raise InvalidInputError(
                f"no means for modality {modality!r}",
                fix=f"pass its samples to fit_cross_modal(others=...); known: {sorted(self.source_means)}",
            )
        x = F.normalize(check_vectors(x, self.adapter.dim_in, f"{modality} vectors"), dim=1)
        mapped = self.adapter(x - self.source_means[modality])  # (N, dim_out), centred
        return F.normalize(mapped + self.target_means[modality], dim=1)


def fit_cross_modal(
    x: Tensor,
    y: Tensor,
    *,
    modality: str,
    others: dict[str, tuple[Tensor, Tensor]],
    key: str = "procrustes",
    direction: Direction = "backward",
    seed: int = 0,
) -> CrossModalBridge:
    """Fit ``key`` on centred pairs (x (N, d_in), y (N, d_out)) of ``modality``.

    ``others``: modality -> (source samples (A, d_in), target samples (B, d_out)), each model's own
    unpaired embeddings of that modality, used only for their means.
    """
    x = F.normalize(check_vectors(x, None, "x"), dim=1)
    y = F.normalize(check_vectors(y, None, "y"), dim=1)
    source, target = {modality: x.mean(dim=0)}, {modality: y.mean(dim=0)}
    for name, (xs, ys) in others.items():
        if name == modality or len(xs) == 0 or len(ys) == 0:
            raise InvalidInputError(f"others[{name!r}] must be another modality with samples")
        source[name] = F.normalize(check_vectors(xs, x.shape[1], f"{name} source"), dim=1).mean(0)
        target[name] = F.normalize(check_vectors(ys, y.shape[1], f"{name} target"), dim=1).mean(0)
    centred = FitOptions(normalize=False)  # rows are unit already; centring must not be undone
    adapter = fit_adapter(
        key, x - source[modality], y - target[modality], direction=direction, seed=seed,
        options=centred,
    ).adapter  # fmt: skip
    return CrossModalBridge(adapter.eval(), modality, source, target)
