"""A multinomial over items with probabilities softmax(decoder output): the likelihood of Mult-VAE
(Liang et al. 2018) for implicit feedback, a user's clicks as draws from one distribution over items."""

from __future__ import annotations

from ..distributions import Multinomial
from .base import LIKELIHOODS, Likelihood


@LIKELIHOODS.register("multinomial")
class MultinomialLikelihood(Likelihood):
    def forward(self, params):
        return Multinomial(params, self.event_dims)
