"""Objectives: maths on the model's distributions, returning named results.

- :func:`elbo`: loss = E_q[-log p(x|z,c)] + beta * kl_weight * KL(q(z|x,c) || p(z|c)), one
  reparameterised sample, averaged over the batch (Kingma & Welling 2014; Higgins et al. 2017).
- :func:`iwae`: the same bound as a training objective (``--objective iwae --iwae-k K``).
- :func:`iwae_log_weights` / :func:`iwae_bound`: the importance-weighted bound of Burda et al. (2015),
  log (1/k) sum_i p(x, z_i | c) / q(z_i | x, c); with k = 1 it is the ELBO in expectation.
- :func:`kl_warmup`: the KL weight schedule, a pure function of progress (kept out of the model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .distributions import standard_normal_like
from .model import CVAE


@dataclass
class LossOutput:
    """Per-batch results. ``loss`` is what is minimised; the rest are means per example, in nats."""

    loss: torch.Tensor  # scalar
    reconstruction: torch.Tensor  # scalar, E_q[-log p(x | z, c)]
    kl: torch.Tensor  # scalar, KL(q || p) (unweighted)

    @property
    def neg_elbo(self) -> torch.Tensor:
        return self.reconstruction + self.kl


def elbo(model: CVAE, x: torch.Tensor, c: torch.Tensor | None = None, *, beta: float = 1.0,
         kl_weight: float = 1.0) -> LossOutput:
    out = model(x, c)
    rec = -out.px.log_prob(x)  # (B,)
    kl = out.qz.kl(out.pz)  # (B,)
    rec, kl = rec.mean(), kl.float().mean()
    return LossOutput(loss=rec + (beta * kl_weight) * kl, reconstruction=rec, kl=kl)


def iwae(model: CVAE, x: torch.Tensor, c: torch.Tensor | None = None, *, k: int = 5) -> LossOutput:
    """The IWAE objective (Burda et al., 2015): loss = -log (1/k) sum_i p(x, z_i | c) / q(z_i | x, c)
    with k reparameterised samples per example, averaged over the batch. ``reconstruction`` and
    ``kl`` report the ELBO's parts (over the k samples), so that runs of either objective log the
    same figures; with k = 1 the loss is the ELBO's."""
    out = model(x, c, samples=k)
    log_w, log_px = _log_weights(out, x)
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)
    return LossOutput(loss=-bound.mean(), reconstruction=-log_px.mean(), kl=out.qz.kl(out.pz).float().mean())


def _log_weights(out, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log w = log p(x | z) + log p(z | c) - log q(z | x, c) and log p(x | z), both (k, B), from a
    forward pass with k samples. Only the pass's distributions are used, so a wrapped model (DDP) works."""
    log_px = out.px.log_prob(x).float()  # x broadcasts over the samples
    prior = out.pz if out.pz is not None else standard_normal_like(out.z)
    return log_px + prior.log_prob(out.z).float() - out.qz.log_prob(out.z).float(), log_px


def iwae_log_weights(model: CVAE, x: torch.Tensor, c: torch.Tensor | None, k: int) -> torch.Tensor:
    """log p(x, z_i | c) - log q(z_i | x, c) for k samples per example: shape (k, B)."""
    return _log_weights(model(x, c, samples=k), x)[0]


def iwae_bound(model: CVAE, x: torch.Tensor, c: torch.Tensor | None = None, *, k: int = 5000,
               chunk: int = 500) -> torch.Tensor:
    """Importance-sampled log p(x | c) per example (shape (B,)), drawing k samples in chunks.

    Memory is bounded by ``chunk`` samples at a time; the log-sum-exp is accumulated stably.
    """
    total = None
    done = 0
    while done < k:
        m = min(chunk, k - done)
        lse = torch.logsumexp(iwae_log_weights(model, x, c, m).double(), dim=0)  # (B,)
        total = lse if total is None else torch.logaddexp(total, lse)
        done += m
    return (total - math.log(k)).float()


def kl_warmup(epoch: float, warmup_epochs: float) -> float:
    """Linear KL annealing from 0 to 1 over ``warmup_epochs`` (Bowman et al. 2016); 1 when 0."""
    if warmup_epochs <= 0:
        return 1.0
    return float(min(1.0, max(0.0, epoch / warmup_epochs)))
