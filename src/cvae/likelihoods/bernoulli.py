"""Independent Bernoulli pixels or features with logits from the decoder (targets in [0, 1])."""

from __future__ import annotations

from ..distributions import Bernoulli
from .base import LIKELIHOODS, Likelihood


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    def forward(self, params):
        return Bernoulli(params, self.event_dims)

    def guided(self, cond, none, w):
        """p^(1 + w) / q^w of two Bernoullis, renormalised, is the Bernoulli of logits (1 + w) l_c - w l_0."""
        return self((1 + w) * cond - w * none)
