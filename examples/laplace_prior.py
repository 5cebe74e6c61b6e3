"""A new prior in one file: p(z) = prod_d Laplace(z_d; 0, b) with a learned scale b per dimension.

Import this module (or name it in your package's ``cvae.parts`` entry points) and train with
``--prior laplace``; the run saves it, ``cvae.load`` rebuilds it, and the conformance suite in
tests/test_parts.py runs it like every built-in prior.
"""

from __future__ import annotations

import torch
from torch import nn

from cvae.priors import PRIORS, Prior


class Laplace:
    """Independent Laplace(0, b) per dimension; b (D,)."""

    def __init__(self, log_b: torch.Tensor):
        self.log_b = log_b

    def marginal_log_prob(self, z):
        return -z.abs() / self.log_b.exp() - self.log_b - torch.log(torch.tensor(2.0))

    def log_prob(self, z):
        return self.marginal_log_prob(z).sum(-1)

    def draw(self, n, generator=None, temperature=1.0):  # temperature scales the spread (cvae sample)
        u = torch.rand((n, self.log_b.numel()), generator=generator).to(self.log_b.device) - 0.5
        return -temperature * self.log_b.exp() * u.sign() * torch.log1p(-2 * u.abs())

    def moments(self):
        b = self.log_b.exp()
        return torch.zeros_like(b), b * 2 ** 0.5


@PRIORS.register("laplace")
class LaplacePrior(Prior):
    options = {"scale": 1.0}
    factorized = True  # the per-dimension KL estimates add up to the total

    def __init__(self, latent_dim, cond_dim, context=None, **options):
        super().__init__(latent_dim, cond_dim, context, **options)
        self.log_b = nn.Parameter(torch.full((latent_dim,), float(self.settings["scale"])).log())

    def distribution(self, c=None):
        return Laplace(self.log_b)
