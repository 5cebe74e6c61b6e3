"""p(z | c) = N(mu(c), diag sigma(c)^2), one learned Gaussian per condition (a linear map of c).

The textbook CVAE objective KL(q(z | x, y) || p(z | y)); it starts as N(0, I) (zero weights)."""

from __future__ import annotations

from torch import nn

from ..distributions import DiagonalGaussian
from .base import PRIORS, GaussianPrior


@PRIORS.register("conditional")
class ConditionalGaussian(GaussianPrior):
    needs_condition = True

    def __init__(self, latent_dim, cond_dim, context=None, **options):
        super().__init__(latent_dim, cond_dim, context, **options)
        self.net = nn.Linear(cond_dim, 2 * latent_dim)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)

    def distribution(self, c):
        mu, logvar = self.net(c).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)
