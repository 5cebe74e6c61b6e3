"""p(z) = N(0, I), whatever the condition."""

from __future__ import annotations

import torch

from ..distributions import DiagonalGaussian
from .base import PRIORS, GaussianPrior


@PRIORS.register("standard")
class StandardNormal(GaussianPrior):
    def __init__(self, latent_dim, cond_dim, context=None, **options):
        super().__init__(latent_dim, cond_dim, context, **options)
        self.register_buffer("zeros", torch.zeros(latent_dim), persistent=False)

    def distribution(self, c=None):
        return DiagonalGaussian(self.zeros, self.zeros)
