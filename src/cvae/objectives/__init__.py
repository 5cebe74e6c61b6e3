"""Objectives: registered parts (``--objective NAME``). See :mod:`cvae.objectives.base`.

Built in: ``elbo`` (beta, KL warm-up, free bits), ``iwae`` and ``dreg`` (k importance samples), ``m2``
(semi-supervised, with consistency regularisation), and the disentangling ``capacity``, ``btcvae``,
``factorvae``, ``dip-vae-i`` and ``dip-vae-ii`` (:mod:`cvae.objectives.disentangle`)."""

from . import disentangle  # noqa: F401  (registers capacity, btcvae, factorvae, dip-vae-i, dip-vae-ii)
from .base import OBJECTIVES, Objective, ObjectiveOutput, build_objective, kl_warmup
from .evidence import ELBO, elbo
from .importance import IWAE, DReG, iwae, iwae_bound, iwae_log_weights, log_weights
from .semi import SemiSupervised

LossOutput = ObjectiveOutput  # the name of the result type before objectives were registered parts

__all__ = ["ELBO", "IWAE", "DReG", "OBJECTIVES", "LossOutput", "Objective", "ObjectiveOutput", "SemiSupervised", "build_objective",
           "elbo", "iwae", "iwae_bound", "iwae_log_weights", "kl_warmup", "log_weights"]
