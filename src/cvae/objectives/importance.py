"""The importance-weighted bound (Burda, Grosse & Salakhutdinov 2015) as a training objective and
as an estimate of log p(x | c), and its doubly reparameterised gradient (Tucker, Lawson, Gu &
Maddison 2019).

    log w_i = log p(x | z_i, c) + log p(z_i | c) - log q(z_i | x, c),   z_i ~ q(z | x, c), i = 1..k
    bound   = log (1/k) sum_i w_i            (k = 1: the ELBO)

``iwae`` minimises -bound with the plain reparameterised gradient. ``dreg`` has the same loss value
and the same decoder and prior gradients, sum_i w~_i grad log w_i with w~ = softmax(log w), but
gives the encoder the doubly reparameterised estimator sum_i w~_i^2 (d log w_i / d z_i)(d z_i / d phi)
with q's density held fixed (its parameters detached in log q): the IWAE encoder gradient's
signal-to-noise ratio falls as k grows (Rainforth et al. 2018); DReG's does not.
"""

from __future__ import annotations

import math

import torch

from .base import OBJECTIVES, Objective, ObjectiveOutput, with_auxiliary


def log_weights(out, x: torch.Tensor, *, detach_q: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log w and log p(x | z), both (k, B), from a forward pass with k samples. Only the pass's
    distributions and prior are used, so a wrapped model (DDP) works. With ``detach_q`` log q is
    evaluated with q's parameters detached (the gradient reaches the encoder through z only)."""
    log_px = out.px.log_prob(x).float()  # x broadcasts over the samples
    qz = out.qz
    if detach_q:
        qz = type(qz)(qz.mu.detach(), qz.logvar.detach())
    return log_px + out.log_prior().float() - qz.log_prob(out.z).float(), log_px


@OBJECTIVES.register("iwae")
class IWAE(Objective):
    """-log (1/k) sum_i w_i with k reparameterised samples per example, averaged over the batch.
    ``reconstruction`` and ``kl`` report the ELBO's parts over the k samples, so that runs of every
    objective log the same figures; with k = 1 the loss is the ELBO's."""

    uses = ("iwae_k",)

    def __init__(self, iwae_k: int = 5):
        self.k = int(iwae_k)

    def __call__(self, model, x, c, *, progress=0.0):
        out = model(x, c, samples=self.k)
        log_w, log_px = log_weights(out, x)
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.k)
        loss, terms = with_auxiliary(out, -bound.mean(), self._terms(log_w))
        return ObjectiveOutput(loss=loss, reconstruction=-log_px.mean(), kl=out.kl().float().mean(), terms=terms)

    @staticmethod
    def _terms(log_w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The effective sample size of the k weights, averaged over the batch (1 to k)."""
        lw = log_w.detach()
        ess = torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))
        return {"ess": ess.mean()}


@OBJECTIVES.register("dreg")
class DReG(IWAE):
    """The IWAE bound with the doubly reparameterised encoder gradient (Tucker et al. 2019, eq. 5)."""

    def __call__(self, model, x, c, *, progress=0.0):
        out = model(x, c, samples=self.k)
        log_w, log_px = log_weights(out, x, detach_q=True)
        w = torch.softmax(log_w.detach(), dim=0)  # (k, B), the normalised weights
        if out.z.requires_grad:
            # the gradient reaching z from sum_i w_i log w_i is w_i d log w_i / d z_i; scaling it by w_i
            # once more gives the encoder w_i^2 (DReG), while the decoder and the prior keep w_i (IWAE).
            out.z.register_hook(lambda g: g * w.unsqueeze(-1).to(g.dtype))
        surrogate = -(w * log_w).sum(0).mean()
        bound = (torch.logsumexp(log_w.detach(), dim=0) - math.log(self.k)).mean()
        loss = -bound + (surrogate - surrogate.detach())  # the bound's value, DReG's gradient
        loss, terms = with_auxiliary(out, loss, self._terms(log_w))
        return ObjectiveOutput(loss=loss, reconstruction=-log_px.mean(), kl=out.kl().float().mean(), terms=terms)


def iwae(model, x: torch.Tensor, c: torch.Tensor | None = None, *, k: int = 5) -> ObjectiveOutput:
    """The IWAE objective with k samples (the function form of ``--objective iwae``)."""
    return IWAE(k)(model, x, c)


def iwae_log_weights(model, x: torch.Tensor, c: torch.Tensor | None, k: int) -> torch.Tensor:
    """log p(x, z_i | c) - log q(z_i | x, c) for k samples per example: shape (k, B)."""
    return log_weights(model(x, c, samples=k), x)[0]


def log_mean_exp(chunks, k: int) -> torch.Tensor:
    """log (1/k) sum_i exp(w_i) per example (B,) of k log weights given in chunks of shape (m, B), the
    log-sum-exp accumulated stably in float64 one chunk at a time."""
    total = None
    for lw in chunks:
        lse = torch.logsumexp(lw.double(), dim=0)  # (B,)
        total = lse if total is None else torch.logaddexp(total, lse)
    return (total - math.log(k)).float()


def iwae_bound(model, x: torch.Tensor, c: torch.Tensor | None = None, *, k: int = 5000,
               chunk: int = 500) -> torch.Tensor:
    """Importance-sampled log p(x | c) per example (shape (B,)), drawing k samples in chunks.

    Memory is bounded by ``chunk`` samples at a time; the log-sum-exp is accumulated stably.
    """
    return log_mean_exp((iwae_log_weights(model, x, c, min(chunk, k - done)) for done in range(0, k, chunk)), k)
