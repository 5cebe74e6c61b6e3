"""The conditional VAE: one diagonal-Gaussian z, composed of registered parts.

A VAE is a CVAE whose condition schema is empty; a beta-VAE is the same model trained with
``beta != 1``; the network, the prior and the likelihood are config values (:class:`ModelConfig`):

    encoder   (x, c) -> q(z | x, c)   diagonal Gaussian      (cvae.nn.ENCODERS)
    prior     p(z | c)                                        (cvae.priors.PRIORS)
    decoder   (z, c) -> p(x | z, c)                           (cvae.nn.DECODERS, cvae.likelihoods.LIKELIHOODS)
"""

from __future__ import annotations

import math

import torch

from ..distributions import DiagonalGaussian
from ..errors import CvaeError
from ..likelihoods import build_likelihood
from ..nn import DECODERS, ENCODERS
from ..priors import build_prior
from .base import MODELS, ModelOutput, VAEModel, flatten_samples


@MODELS.register("cvae")
class CVAE(VAEModel):
    """A (conditional) variational autoencoder.

    The training code calls :meth:`forward` with the encoded condition vector ``c``; users call
    :meth:`encode`, :meth:`decode`, :meth:`sample` and :meth:`reconstruct`, which accept conditions in
    friendly forms (``"label=7"``, ``{"label": [3, 7]}``, or an (N, A) array of raw codes).
    """

    guidable = True  # classifier-free guidance: condition_dropout in training, p_x_guided when generating
    aggregate_codes = True  # one flat code: its aggregate posterior is fitted after training (cvae.aggregate)
    # On data with factors of variation (dSprites, a file with --factors) Adam's rate is 1e-3, Chen et al.
    # (2018)'s for beta-TCVAE, not 3e-3: at 3e-3 a beta-TCVAE run on a Shapes3D-like set of 64x64 colour
    # images collapsed its posteriors to log variances of -100 in the first epoch, and on dSprites 1e-3
    # widened beta-TCVAE's lead (MIG 0.158 against the VAE's 0.026 over 3 seeds; 0.154 against 0.055 at
    # 3e-3; README "Disentanglement", benchmarks/disentangle_defaults.py). And a smaller set trains
    # for as many images as the dSprites default does (10 epochs of its 235,930 rows that fit in memory):
    # on 45,000 Shapes3D-like images (53 epochs instead of 10, 3 seeds) beta-TCVAE's MIG went from 0.126 to
    # 0.196 and its DCI disentanglement from 0.345 to 0.528 (the VAE's: 0.063 to 0.089, 0.124 to 0.135).
    # --lr and --epochs override them.
    FACTOR_LR = 1e-3
    FACTOR_EXAMPLES_SEEN = 2_350_000
    LEAST_EPOCHS = 10  # --epochs' default: a larger data set keeps it

    @classmethod
    def training_defaults(cls, data) -> dict:
        defaults = super().training_defaults(data)
        if not getattr(data, "factor_names", None):
            return defaults
        return {**defaults, "lr": cls.FACTOR_LR, **cls.epochs_to_see(cls.FACTOR_EXAMPLES_SEEN, data)}

    @classmethod
    def epochs_to_see(cls, examples: int, data) -> dict:
        """``{"epochs": E}`` when more than ``LEAST_EPOCHS`` epochs of ``data``'s training examples are needed
        to see ``examples`` of them, else nothing (the data set keeps --epochs' default)."""
        epochs = math.ceil(examples / max(1, len(data.train.x)))
        return {"epochs": epochs} if epochs > cls.LEAST_EPOCHS else {}

    def __init__(self, config, *, run=None):
        super().__init__(config, run=run)
        cond_dim = self.schema.dim
        kw = dict(hidden=config.hidden, channels=config.channels, cond_dim=cond_dim, cond_at=config.condition_at,
                  act=config.activation)
        # with condition dropout the decoder reads [c, present] (see _decoder_condition)
        dec_kw = dict(kw, cond_dim=cond_dim + int(self.flagged))
        self.likelihood = build_likelihood(config.likelihood, config.data_shape, config.likelihood_options,
                                           sigma=config.sigma)
        self.encoder = ENCODERS[config.arch](config.data_shape, config.latent_dim, **kw)
        self.decoder = DECODERS[config.arch](config.data_shape, config.latent_dim,
                                             params_per_element=self.likelihood.params_per_element, **dec_kw)
        self.prior = build_prior(config.prior, config.latent_dim, cond_dim, self, config.prior_options)

    def q_z(self, x: torch.Tensor, c: torch.Tensor | None = None) -> DiagonalGaussian:
        mu, logvar = self.encoder(x, c)
        return DiagonalGaussian(mu, logvar)

    def p_x(self, z: torch.Tensor, c: torch.Tensor | None = None):
        """The decoder p(x | z, c). ``z`` may carry leading sample dimensions (S, B, latent)."""
        z, c, lead = flatten_samples(z, self._decoder_condition(c))
        params = self.decoder(z, c)
        return self.likelihood(params.reshape(*lead, *params.shape[1:]))

    def p_x_guided(self, z: torch.Tensor, c: torch.Tensor, guidance: float):
        """Classifier-free guidance (Ho & Salimans 2022): the likelihood's p(x | z, c)^(1 + w) / p(x | z)^w
        from one decoder pass over [with the condition; without it]."""
        if not self.flagged:
            raise CvaeError("--guidance needs a run trained with --condition-dropout; leave --guidance out")
        z, c, lead = flatten_samples(z, c)
        both = self.decoder(torch.cat([z, z]), torch.cat([self._decoder_condition(c, present=True),
                                                          self._decoder_condition(c, present=False)]))
        cond, none = both.reshape(2, *lead, *both.shape[1:]).unbind(0)
        return self.likelihood.guided(cond, none, float(guidance))

    def _decoder_condition(self, c: torch.Tensor | None, present: bool = True) -> torch.Tensor | None:
        """The decoder's condition input: c itself, or [c, 1] with condition dropout ([0, 0]: none). In
        training a share ``condition_dropout`` of the rows lose theirs."""
        out = self.flag_condition(c, present)
        return self.drop_conditions(out) if present else out

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, samples: int | None = None) -> ModelOutput:
        """One reparameterised z per example, or ``samples`` of them (z: (samples, B, latent))."""
        qz = self.q_z(x, c)
        z = qz.rsample() if samples is None else qz.rsample((samples,))
        return ModelOutput(qz=qz, z=z, px=self.p_x(z, c), c=c, prior=self.prior)
