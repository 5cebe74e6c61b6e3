"""Pictures of what each latent follows: the factor-by-latent heat map and the traversal grid labelled
with factors, drawn from the ``disentanglement`` section of a run's ``eval.json``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..models import CVAE
from ..plots import save_factor_heatmap, save_image_grid
from .latent import kl_per_dimension, traverse

HEATMAP = "disentanglement.png"
TRAVERSAL = "traversal_factors.png"


def write_disentanglement_pictures(run: str | Path, model: CVAE, section: dict, x: torch.Tensor | None = None,
                                   c_raw: torch.Tensor | None = None, *, steps: int = 9) -> dict[str, Path]:
    """RUN/disentanglement.png (I(z_d; v_k) / H(v_k), factors by latents, with MIG and the factor each
    dimension follows) and, for images, RUN/traversal_factors.png: every latent dimension ordered by
    its KL, moved from -3 to 3 prior standard deviations from the prior mean, labelled with its KL and
    the factor it follows most."""
    run = Path(run)
    m = np.asarray(section["normalized_mutual_information"])  # (D, F)
    factors = section["factors"]
    follows = section["dimension_follows"]
    out = {"heatmap": save_factor_heatmap(run / HEATMAP, m.T, factors,
                                          title=f"I(z_d; factor) / H(factor); MIG {section.get('mig', float('nan')):.3f}")}
    if len(model.config.data_shape) == 3 and x is not None:
        kl = kl_per_dimension(model, x, c_raw)
        t = traverse(model, kl=kl, top=model.config.latent_dim, steps=steps)
        k, b, s = t.x.shape[:3]
        labels = [f"z{d} KL {float(kl[d]):.2f}: {follows[d] or '-'}" for d in t.dims]
        out["traversal"] = save_image_grid(run / TRAVERSAL, t.x.reshape(k * b * s, *t.x.shape[3:]), s,
                                           row_labels=labels, col_labels=[f"{v:+.1f}" for v in t.values.tolist()],
                                           title="one latent at a time, highest KL first: the factor it follows")
    return out
