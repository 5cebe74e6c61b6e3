"""Light-weight distributions for the encoder, prior and decoder.

These mirror :mod:`torch.distributions` (``log_prob``, ``rsample``, ``mean``) but sum over the
event dimensions and skip argument validation, because they sit on the hot path of every training
step. Their log-densities are tested against :mod:`torch.distributions` to 1e-6.

Every ``log_prob`` returns one value per example: shape ``batch_shape`` (event dimensions summed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def _sum_event(t: torch.Tensor, event_dims: int) -> torch.Tensor:
    return t.sum(dim=tuple(range(-event_dims, 0))) if event_dims else t


class DiagonalGaussian:
    """N(mu, diag(exp(logvar))) over the last ``event_dims`` dimensions (default 1)."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor, event_dims: int = 1):
        self.mu = mu
        self.logvar = logvar
        self.event_dims = event_dims

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def variance(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Reparameterised sample: mu + sigma * eps, shape ``sample_shape + mu.shape``."""
        eps = torch.randn(tuple(sample_shape) + self.mu.shape, dtype=self.mu.dtype, device=self.mu.device)
        return self.mu + self.std * eps

    sample = rsample

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        lp = -0.5 * ((z - self.mu) ** 2 * torch.exp(-self.logvar) + self.logvar + LOG_2PI)
        return _sum_event(lp, self.event_dims)

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """Analytic KL(self || other); ``other=None`` means the standard normal N(0, I)."""
        if other is None:
            kl = 0.5 * (self.mu**2 + self.logvar.exp() - 1.0 - self.logvar)
        else:
            kl = 0.5 * (
                other.logvar
                - self.logvar
                + (self.logvar.exp() + (self.mu - other.mu) ** 2) * torch.exp(-other.logvar)
                - 1.0
            )
        return _sum_event(kl, self.event_dims)

    def kl_per_dim(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL per latent dimension, shape ``mu.shape`` (not summed)."""
        return DiagonalGaussian(self.mu, self.logvar, event_dims=0).kl(
            None if other is None else DiagonalGaussian(other.mu, other.logvar, event_dims=0)
        )


def standard_normal_like(mu: torch.Tensor, event_dims: int = 1) -> DiagonalGaussian:
    zeros = torch.zeros_like(mu)
    return DiagonalGaussian(zeros, zeros, event_dims)


class Bernoulli:
    """Independent Bernoulli pixels/features with the given logits; targets may be grey levels in [0, 1]
    (the continuous-target cross-entropy used for grey-level MNIST in PyTorch's VAE example)."""

    def __init__(self, logits: torch.Tensor, event_dims: int):
        self.logits = logits
        self.event_dims = event_dims

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def sample(self) -> torch.Tensor:
        return torch.bernoulli(self.mean)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        # Fused, numerically stable -BCE(logits, x); computed in float32 whatever the autocast dtype.
        logits = self.logits.float()
        nll = F.binary_cross_entropy_with_logits(logits, x.float().expand_as(logits), reduction="none")
        return -_sum_event(nll, self.event_dims)


class Gaussian:
    """Independent Gaussian features N(mean, sigma^2); ``log_sigma`` broadcasts against ``loc``."""

    def __init__(self, loc: torch.Tensor, log_sigma: torch.Tensor, event_dims: int):
        self.loc = loc
        self.log_sigma = log_sigma
        self.event_dims = event_dims

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def sample(self) -> torch.Tensor:
        return self.loc + torch.exp(self.log_sigma) * torch.randn_like(self.loc)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        loc, log_sigma = self.loc.float(), self.log_sigma.float()
        lp = -0.5 * (((x.float() - loc) * torch.exp(-log_sigma)) ** 2 + LOG_2PI) - log_sigma
        return _sum_event(lp.expand_as(loc) if lp.shape != loc.shape else lp, self.event_dims)
