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

    def draw(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` draws (n, D), the noise taken from ``generator`` on the CPU (reproducible anywhere),
        scaled by ``temperature`` (1: exact draws). A batch of distributions (B, D) gives one draw
        each and needs n == B."""
        eps = torch.randn((n, self.mu.shape[-1]), generator=generator).to(self.mu.device, self.mu.dtype)
        return self.mu + (self.std * temperature) * eps

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation per dimension."""
        return self.mu, self.std

    def marginal_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z_d; mu_d, sigma_d^2) per dimension, not summed: shape ``z.shape``."""
        return -0.5 * ((z - self.mu) ** 2 * torch.exp(-self.logvar) + self.logvar + LOG_2PI)

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


def _logsumexp_finite(x: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dimension of finite float32 values, terms more than 80 nats below the
    row's largest taken as e^-80: the same result to float32 precision (at most K e^-80 relative),
    and many times faster where the terms spread widely (torch's exp slows down on large negative
    arguments: 15 ms against 1.3 ms for 2,500 x 500 values spread over thousands of nats, one thread)."""
    m = x.amax(-1, keepdim=True)
    return (x - m).clamp_min_(-80.0).exp_().sum(-1).log_() + m.squeeze(-1)


class GaussianMixture:
    """sum_k pi_k N(mu_k, diag(exp(logvar_k))) over the last dimension.

    Components are shared, ``mu``/``logvar`` (K, D) and ``logits`` (K,), or one set per example,
    (B, K, D) and (B, K). :meth:`log_prob` takes z of shape (..., D) (shared) or (..., B, D) (per
    example) and works by matrix products, so that thousands of samples against hundreds of
    components cost no (samples x components x D) tensor; it runs in float32 outside autocast.
    """

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor, logits: torch.Tensor):
        self.mu, self.logvar, self.logits = mu.float(), logvar.float(), logits.float()

    @property
    def shared(self) -> bool:
        return self.mu.dim() == 2

    def _log_pi(self) -> torch.Tensor:
        return torch.log_softmax(self.logits, dim=-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            prec = torch.exp(-self.logvar)  # (.., K, D)
            const = -0.5 * ((self.mu * self.mu * prec).sum(-1) + self.logvar.sum(-1)
                            + self.mu.shape[-1] * LOG_2PI) + self._log_pi()  # (.., K)
            # one matrix product gives every log N(z; mu_k, sigma_k) + log pi_k at once:
            # [z^2, z, 1] . [-prec / 2, mu * prec, const]
            w = torch.cat([-0.5 * prec, self.mu * prec, const.unsqueeze(-1)], -1)  # (.., K, 2D + 1)
            if self.shared:
                zf = z.reshape(-1, z.shape[-1])
                a = torch.cat([zf * zf, zf, zf.new_ones(len(zf), 1)], -1)  # (N, 2D + 1)
                return _logsumexp_finite(a @ w.T).reshape(z.shape[:-1])
            b, d = self.mu.shape[0], self.mu.shape[-1]
            lead = z.shape[:-2]
            zb = z.reshape(-1, b, d).transpose(0, 1)  # (B, S, D)
            a = torch.cat([zb * zb, zb, zb.new_ones(*zb.shape[:2], 1)], -1)  # (B, S, 2D + 1)
            lp = torch.bmm(a, w.transpose(1, 2))  # (B, S, K)
            return _logsumexp_finite(lp).transpose(0, 1).reshape(*lead, b)

    def marginal_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log of the mixture's marginal density in each dimension d: shape ``z.shape``."""
        z = z.float().unsqueeze(-2)  # (..., 1, D) against (.., K, D)
        lp = -0.5 * ((z - self.mu) ** 2 * torch.exp(-self.logvar) + self.logvar + LOG_2PI)
        return torch.logsumexp(lp + self._log_pi().unsqueeze(-1), dim=-2)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixture's mean and standard deviation per dimension."""
        pi = torch.softmax(self.logits, dim=-1).unsqueeze(-1)  # (.., K, 1)
        mean = (pi * self.mu).sum(-2)
        second = (pi * (self.logvar.exp() + self.mu ** 2)).sum(-2)
        return mean, (second - mean ** 2).clamp_min(1e-12).sqrt()

    def draw(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` draws (n, D): a component, then a Gaussian draw from it (noise from ``generator``,
        scaled by ``temperature``)."""
        probs = torch.softmax(self.logits, dim=-1).detach().cpu()
        if self.shared:
            comp = torch.multinomial(probs, n, replacement=True, generator=generator)  # (n,)
            mu, logvar = self.mu[comp.to(self.mu.device)], self.logvar[comp.to(self.mu.device)]
        else:
            comp = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(self.mu.device)  # (B,)
            rows = torch.arange(len(comp), device=self.mu.device)
            mu, logvar = self.mu[rows, comp], self.logvar[rows, comp]
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        return mu + (torch.exp(0.5 * logvar) * temperature) * eps


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

    def log_prob_grouped(self, x: torch.Tensor, s: int) -> torch.Tensor:
        """log p(x_b | z_bj) for logits of (B * s) rows, s samples per example, example-major:
        x . l - sum softplus(l), one matrix product and one fused pass; shape (B, s)."""
        b = x.shape[0]
        logits = self.logits.float().reshape(b, s, -1)  # (B, s, P)
        return torch.bmm(logits, x.float().reshape(b, -1, 1)).squeeze(-1) - F.softplus(logits).sum(-1)


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



class Multinomial:
    """Counts over the elements of the last ``event_dims`` dimensions (items, for Mult-VAE) with
    probabilities pi = softmax(logits) over all of them: the likelihood of Mult-VAE (Liang et al.
    2018). ``log_prob(x) = sum_i x_i log pi_i``, one value per example; the multinomial coefficient,
    constant in the model's parameters, is left out as in the paper (so ``log_prob`` is the
    log-likelihood up to a term that depends on x alone)."""

    def __init__(self, logits: torch.Tensor, event_dims: int = 1):
        self.logits = logits
        self.event_dims = event_dims

    def _flat(self, t: torch.Tensor) -> torch.Tensor:
        return t.flatten(-self.event_dims) if self.event_dims > 1 else t

    def _log_pi(self) -> torch.Tensor:
        return torch.log_softmax(self._flat(self.logits.float()), dim=-1)

    @property
    def mean(self) -> torch.Tensor:
        """The probability of each element, pi (the expected share of a user's interactions)."""
        return self._log_pi().exp().reshape(self.logits.shape)

    def sample(self, total: int = 1) -> torch.Tensor:
        """Counts of ``total`` draws per example."""
        probs = self._log_pi().exp()
        flat = probs.reshape(-1, probs.shape[-1])
        draws = torch.multinomial(flat, total, replacement=True)
        counts = torch.zeros_like(flat).scatter_add_(1, draws, torch.ones_like(draws, dtype=flat.dtype))
        return counts.reshape(self.logits.shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return (self._log_pi() * self._flat(x.float())).sum(-1)
