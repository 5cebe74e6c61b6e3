"""VampPrior (Tomczak & Welling, 2018): p(z | c) = (1/K) sum_k q(z | u_k, c).

The prior is the encoder's own posterior at K learned pseudo-inputs u_k, shaped like the data.
For a conditional model each pseudo-input is paired with the condition vector c at hand (the
encoder runs on (u_k, c)), so one set of pseudo-inputs serves every condition, categorical or
continuous; a batch costs one encoder pass of K rows per distinct condition in it.

Pseudo-inputs of data in [0, 1] (a Bernoulli decoder on unstandardised data) are kept in [0, 1]
by a hard tanh and start near 0.05 (+- 0.01: the reference code's scale; its default mean, -0.05,
would put every pseudo-input at 0 after the hard tanh); elsewhere they start as
N(0, 1) draws in the model's (standardised) units. The KL against q is the single-sample
Monte-Carlo estimate. The encoder is the model's: the prior holds it by reference, so its weights
are stored once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import GaussianMixture
from .base import PRIORS, Prior


@PRIORS.register("vamp")
class VampPrior(Prior):
    options = {"components": 500}

    def __init__(self, latent_dim, cond_dim, context=None, **options):
        super().__init__(latent_dim, cond_dim, context, **options)
        k = int(self.settings["components"])
        config = context.config
        self.bounded = config.likelihood == "bernoulli" and not config.standardize
        init = 0.05 + 0.01 * torch.randn(k, *config.data_shape) if self.bounded else torch.randn(k, *config.data_shape)
        self.pseudo_inputs = nn.Parameter(init)
        self._context = [context]  # the model, by reference (not a submodule: its encoder is stored once)

    def inputs(self) -> torch.Tensor:
        """The K pseudo-inputs in the model's units."""
        return F.hardtanh(self.pseudo_inputs, 0.0, 1.0) if self.bounded else self.pseudo_inputs

    def distribution(self, c=None):
        model, u = self._context[0], self.inputs()
        k = len(u)
        if not self.cond_dim or c is None:
            qz = model.q_z(u, None)
            return GaussianMixture(qz.mu, qz.logvar, torch.zeros(k, device=u.device))
        distinct, index = torch.unique(c.float(), dim=0, return_inverse=True)  # (J, C), (B,)
        j = len(distinct)
        u_rep = u.unsqueeze(0).expand(j, *u.shape).reshape(j * k, *u.shape[1:])
        qz = model.q_z(u_rep, distinct.repeat_interleave(k, dim=0).to(c.dtype))
        mu, logvar = qz.mu.float().reshape(j, k, -1), qz.logvar.float().reshape(j, k, -1)
        return GaussianMixture(mu[index], logvar[index], torch.zeros(len(c), k, device=u.device))
