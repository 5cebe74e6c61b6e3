"""Independent Bernoulli pixels or features with logits from the decoder (targets in [0, 1])."""

from __future__ import annotations

from ..distributions import Bernoulli
from .base import LIKELIHOODS, Likelihood


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    def forward(self, params):
        return Bernoulli(params, self.event_dims)
