"""Likelihoods p(x | z, c): registered parts (``--likelihood NAME``). See :mod:`cvae.likelihoods.base`."""

from . import bernoulli, categorical, discrete, gaussian, multinomial  # noqa: F401  (registration)
from .base import LIKELIHOODS, Likelihood, build_likelihood

__all__ = ["LIKELIHOODS", "Likelihood", "build_likelihood"]
