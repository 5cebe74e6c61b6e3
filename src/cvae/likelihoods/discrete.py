"""Likelihoods for 8-bit images: pixels in [0, 1] that are multiples of 1/255, scored as the 256
levels they are, so that -log p(x) is a code length and ``bits per dimension`` means what the
papers mean by it.

- ``logistic-mixture``: the discretized mixture of logistics of PixelCNN++ (Salimans, Karpathy,
  Chen & Kingma 2017, eq. 2), one mixture of K components per sub-pixel (option ``components``,
  10 by default): the probability of level k is the mass that the logistic puts on
  [k - 1/2, k + 1/2] / 255 (the two end levels take the tails). 3K decoder outputs per element:
  mixture logits, means and log-scales. The PixelCNN++ coupling of the channels of one pixel is
  left out: each sub-pixel has its own mixture.
- ``categorical-256``: a 256-way softmax per sub-pixel (van den Oord et al. 2016, PixelRNN), 256
  decoder outputs per element.

Both say ``levels = 256``: :mod:`cvae.evaluate` then reports bits per dimension beside nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import CvaeError
from .base import LIKELIHOODS, Likelihood

LEVELS = 256
HALF_BIN = 1.0 / (LEVELS - 1)  # half a level's width on the [-1, 1] scale


def _levels(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> integer levels 0..255 (rounded: resized images are quantised here)."""
    return (x.float() * (LEVELS - 1)).round_().clamp_(0, LEVELS - 1)


def _sum_event(t: torch.Tensor, event_dims: int) -> torch.Tensor:
    return t.sum(dim=tuple(range(-event_dims, 0)))


class DiscretizedLogisticMixture:
    """p(x) per sub-pixel: sum_k pi_k [sigma((x + 1/255 - mu_k) / s_k) - sigma((x - 1/255 - mu_k) / s_k)]
    on the [-1, 1] scale. ``params`` is (..., 3K, *event) (logits, means, log-scales)."""

    def __init__(self, params: torch.Tensor, components: int, event_dims: int):
        self.k, self.event_dims = components, event_dims
        logits, mu, log_s = params.float().split(components, dim=-event_dims - 1)
        self.logits = logits  # (..., K, *event)
        self.mu = mu
        self.log_s = log_s.clamp(min=-7.0)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        xs = (_levels(x) * (2.0 / (LEVELS - 1)) - 1.0).unsqueeze(-self.event_dims - 1)  # (..., 1, *event)
        centered = xs - self.mu
        inv_s = torch.exp(-self.log_s)
        plus_in = inv_s * (centered + HALF_BIN)
        min_in = inv_s * (centered - HALF_BIN)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # level 0: log sigma(plus_in)
        log_one_minus_cdf_min = -F.softplus(min_in)  # level 255: log (1 - sigma(min_in))
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        mid_in = inv_s * centered
        # where the bin's mass underflows, the density at its centre times its width
        log_pdf_mid = mid_in - self.log_s - 2.0 * F.softplus(mid_in) + math.log(2.0 * HALF_BIN)
        log_mid = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp_min(1e-12)), log_pdf_mid)
        log_p = torch.where(xs < -0.999, log_cdf_plus, torch.where(xs > 0.999, log_one_minus_cdf_min, log_mid))
        log_p = torch.logsumexp(log_p + torch.log_softmax(self.logits, dim=-self.event_dims - 1),
                                dim=-self.event_dims - 1)
        return _sum_event(log_p, self.event_dims)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] in [0, 1] (the mixture's mean; the tails' clipping at the end levels is ignored)."""
        pi = torch.softmax(self.logits, dim=-self.event_dims - 1)
        return ((pi * self.mu).sum(-self.event_dims - 1) + 1.0).mul(0.5).clamp(0.0, 1.0)

    def sample(self) -> torch.Tensor:
        """One draw per sub-pixel: a component, then a logistic draw from it, quantised to 8 bits."""
        gumbel = -torch.log(-torch.log(torch.rand_like(self.logits).clamp(1e-7, 1 - 1e-7)))
        pick = F.one_hot((self.logits + gumbel).argmax(-self.event_dims - 1), self.k)
        pick = pick.movedim(-1, -self.event_dims - 1).to(self.mu.dtype)
        mu, log_s = (pick * self.mu).sum(-self.event_dims - 1), (pick * self.log_s).sum(-self.event_dims - 1)
        u = torch.rand_like(mu).clamp(1e-5, 1 - 1e-5)
        xs = mu + torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))
        return _levels((xs.clamp(-1.0, 1.0) + 1.0) * 0.5) / (LEVELS - 1)


class Categorical256:
    """A softmax over the 256 levels of each sub-pixel; ``logits`` is (..., 256, *event)."""

    def __init__(self, logits: torch.Tensor, event_dims: int):
        self.logits, self.event_dims = logits, event_dims

    def _log_pi(self) -> torch.Tensor:
        return torch.log_softmax(self.logits.float(), dim=-self.event_dims - 1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        log_pi = self._log_pi()
        idx = _levels(x).long().unsqueeze(-self.event_dims - 1)
        idx = idx.expand(*log_pi.shape[:-self.event_dims - 1], 1, *log_pi.shape[-self.event_dims:])
        return _sum_event(log_pi.gather(-self.event_dims - 1, idx).squeeze(-self.event_dims - 1), self.event_dims)

    @property
    def mean(self) -> torch.Tensor:
        values = torch.arange(LEVELS, device=self.logits.device, dtype=torch.float32) / (LEVELS - 1)
        values = values.reshape(LEVELS, *([1] * self.event_dims))
        return (self._log_pi().exp() * values).sum(-self.event_dims - 1)

    def sample(self) -> torch.Tensor:
        logits = self._log_pi()
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-7, 1 - 1e-7)))
        return (logits + gumbel).argmax(-self.event_dims - 1).float() / (LEVELS - 1)


@LIKELIHOODS.register("logistic-mixture")
class LogisticMixtureLikelihood(Likelihood):
    """The discretized mixture of logistics (PixelCNN++) over 8-bit levels; option ``components``."""

    options = {"components": 10}
    levels = LEVELS

    def __init__(self, data_shape, **options):
        super().__init__(data_shape, **options)
        k = self.settings["components"]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 64:
            raise CvaeError(f"the logistic-mixture likelihood's components must be a whole number from 1 to 64, got {k!r}")
        self.components = k
        self.params_per_element = 3 * k

    def forward(self, params):
        return DiscretizedLogisticMixture(params, self.components, self.event_dims)


@LIKELIHOODS.register("categorical-256")
class Categorical256Likelihood(Likelihood):
    """A 256-way categorical per sub-pixel."""

    params_per_element = LEVELS
    levels = LEVELS

    def forward(self, params):
        return Categorical256(params, self.event_dims)

    def guided(self, cond, none, w):
        """The 256 levels' log-probabilities (1 + w) log p_c - w log p_0, renormalised by the softmax."""
        dim = -self.event_dims - 1
        return self((1 + w) * torch.log_softmax(cond.float(), dim) - w * torch.log_softmax(none.float(), dim))
