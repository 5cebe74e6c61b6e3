"""Independent Gaussian features around the decoder's output: a fixed standard deviation
(``gaussian``, option ``sigma``) or one learned per feature (``gaussian-learned``, started at
``sigma``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..distributions import Gaussian
from ..errors import CvaeError
from .base import LIKELIHOODS, Likelihood


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(Likelihood):
    options = {"sigma": 1.0}
    learned = False

    def __init__(self, data_shape, **options):
        super().__init__(data_shape, **options)
        sigma = float(self.settings["sigma"])
        if not sigma > 0:
            raise CvaeError(f"sigma must be positive, got {sigma}")
        if self.learned:
            self.log_sigma = nn.Parameter(torch.full(self.data_shape, math.log(sigma)))
        else:
            self.register_buffer("log_sigma", torch.tensor(math.log(sigma)), persistent=False)

    def forward(self, params):
        return Gaussian(params, self.log_sigma, self.event_dims)

    def guided(self, cond, none, w):
        """N(m_c, s^2)^(1 + w) / N(m_0, s^2)^w, renormalised, is N((1 + w) m_c - w m_0, s^2) (one sigma for both)."""
        return self((1 + w) * cond - w * none)


@LIKELIHOODS.register("gaussian-learned")
class LearnedGaussianLikelihood(GaussianLikelihood):
    learned = True
