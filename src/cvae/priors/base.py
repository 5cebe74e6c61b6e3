"""The prior p(z | c) as a module that owns its maths.

A prior gives a distribution for a batch of condition vectors (:meth:`Prior.distribution`) and,
from it, everything the rest of cvae asks of a prior:

- ``log_prob(z, c)``: log p(z | c), z of shape (B, D) or (S, B, D);
- ``sample(n, c, generator)``: n codes (n, D);
- ``kl(qz, z, c)``: KL(q(z | x, c) || p(z | c)) per example, shaped like ``z`` without its last
  dimension. Analytic where a closed form exists (the prior sets ``analytic_kl``), else the
  single-sample Monte-Carlo estimate log q(z | x, c) - log p(z | c) at the given draw z;
- ``kl_per_dim(qz, z, c)``: the same per latent dimension (analytic for a factorised prior; for a
  mixture, the Monte-Carlo estimate against the prior's marginal in each dimension, whose sum is
  not the total KL: ``factorized`` says which);
- ``spread(c, n)``: a centre and a scale per dimension (the mean and standard deviation of the
  prior, for a mixture those of the whole mixture), the units of latent traversals.

Nothing outside a prior reads its parameters or tests which prior it is.
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributions import DiagonalGaussian
from ..errors import CvaeError
from ..registry import Registry, check_options

PRIORS = Registry("prior", flag="--prior")


class Prior(nn.Module):
    """Base class. Subclasses set ``options`` (name -> default) and implement :meth:`distribution`.

    Construction: ``cls(latent_dim, cond_dim, context, **options)``, where ``context`` is the model
    (a VampPrior runs its encoder; other priors ignore it).
    """

    name: str = "?"
    options: dict = {}
    analytic_kl: bool = False
    factorized: bool = False  # kl_per_dim sums to kl; both are shaped like the draws z they are given
    needs_condition: bool = False
    model_class: str | None = None  # the model class whose own prior this is (None: any model's)

    def __init__(self, latent_dim: int, cond_dim: int, context=None, **options):
        super().__init__()
        if self.needs_condition and not cond_dim:
            raise CvaeError(f"prior {self.name!r} needs a condition; use --prior standard (or mog, vamp) for a plain VAE")
        self.latent_dim, self.cond_dim = latent_dim, cond_dim
        self.settings = check_options("prior", self.name, options, self.options)

    def distribution(self, c: torch.Tensor | None):
        """p(z | c) for a batch of condition vectors c (B, C), or the unconditional p(z) when the
        prior ignores c: an object with ``log_prob``, ``draw``, ``moments``, ``marginal_log_prob``."""
        raise NotImplementedError

    # -- what the rest of cvae calls --------------------------------------------------------------
    def log_prob(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.distribution(c).log_prob(z)

    def sample(self, n: int, c: torch.Tensor | None = None, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """n codes; ``temperature`` scales each (component's) standard deviation (1: exact draws).
        A distribution's ``draw(n, generator, temperature)`` implements it; one without a temperature
        argument serves exact draws only."""
        dist = self.distribution(c)
        return dist.draw(n, generator) if temperature == 1.0 else dist.draw(n, generator, temperature)

    def kl(self, qz: DiagonalGaussian, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.kl_monte_carlo(qz, z, c)

    def kl_monte_carlo(self, qz: DiagonalGaussian, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """log q(z | x, c) - log p(z | c) at the draw(s) z: an unbiased estimate of the KL."""
        return qz.log_prob(z).float() - self.log_prob(z, c).float()

    def kl_per_dim(self, qz: DiagonalGaussian, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        log_q = DiagonalGaussian(qz.mu, qz.logvar, event_dims=0).log_prob(z).float()
        return log_q - self.distribution(c).marginal_log_prob(z).float()

    def spread(self, c: torch.Tensor | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.distribution(c).moments()
        return mean.expand(n, -1), std.expand(n, -1)


class GaussianPrior(Prior):
    """A diagonal-Gaussian prior: the KL has a closed form."""

    analytic_kl = True
    factorized = True

    def kl(self, qz, z, c=None):
        return qz.kl(self.distribution(c)).float().expand(z.shape[:-1])

    def kl_per_dim(self, qz, z, c=None):
        return qz.kl_per_dim(self.distribution(c)).float().expand(z.shape)


def build_prior(name: str, latent_dim: int, cond_dim: int, context=None, options: dict | None = None) -> Prior:
    return PRIORS.get(name)(latent_dim, cond_dim, context, **(options or {}))
