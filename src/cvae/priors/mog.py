"""A learned mixture of K diagonal Gaussians, p(z) = sum_k pi_k N(mu_k, diag sigma_k^2).

With a condition, each component's mean, log-variance and weight move with c by a learned linear
map (zero at the start), so that every condition has a mixture of its own. The KL against q has no
closed form: it is the single-sample Monte-Carlo estimate."""

from __future__ import annotations

import torch
from torch import nn

from ..distributions import GaussianMixture
from .base import PRIORS, Prior


@PRIORS.register("mog")
class MixtureOfGaussians(Prior):
    options = {"components": 10}

    def __init__(self, latent_dim, cond_dim, context=None, **options):
        super().__init__(latent_dim, cond_dim, context, **options)
        k = int(self.settings["components"])
        self.k = k
        self.mu = nn.Parameter(torch.randn(k, latent_dim))
        self.logvar = nn.Parameter(torch.zeros(k, latent_dim))
        self.logits = nn.Parameter(torch.zeros(k))
        if cond_dim:
            self.net = nn.Linear(cond_dim, k * (2 * latent_dim + 1))
            nn.init.zeros_(self.net.weight)
            nn.init.zeros_(self.net.bias)

    def distribution(self, c=None):
        if not self.cond_dim or c is None:
            return GaussianMixture(self.mu, self.logvar, self.logits)
        k, d = self.k, self.latent_dim
        shift = self.net(c).float()
        mu, logvar, logits = shift.split([k * d, k * d, k], dim=-1)
        return GaussianMixture(self.mu + mu.unflatten(-1, (k, d)), self.logvar + logvar.unflatten(-1, (k, d)),
                               self.logits + logits)
