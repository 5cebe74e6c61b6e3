"""Priors p(z | c): registered parts (``--prior NAME``). See :mod:`cvae.priors.base`.

Built in: ``standard`` (N(0, I)), ``conditional`` (a learned Gaussian per condition), ``mog`` (a
learned mixture of Gaussians, per condition when conditioned) and ``vamp`` (VampPrior)."""

from . import conditional, mog, standard, vamp  # noqa: F401  (registration)
from .base import PRIORS, GaussianPrior, Prior, build_prior

__all__ = ["PRIORS", "GaussianPrior", "Prior", "build_prior"]
