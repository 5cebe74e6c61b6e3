"""The conditional VAE: one diagonal-Gaussian z, composed of registered parts.

A VAE is a CVAE whose condition schema is empty; a beta-VAE is the same model trained with
``beta != 1``; the network, the prior and the likelihood are config values (:class:`ModelConfig`):

    encoder   (x, c) -> q(z | x, c)   diagonal Gaussian      (cvae.nn.ENCODERS)
    prior     p(z | c)                                        (cvae.priors.PRIORS)
    decoder   (z, c) -> p(x | z, c)                           (cvae.nn.DECODERS, cvae.likelihoods.LIKELIHOODS)
"""

from __future__ import annotations

import torch

from ..distributions import DiagonalGaussian
from ..likelihoods import LIKELIHOODS
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

    def __init__(self, config, *, run=None):
        super().__init__(config, run=run)
        cond_dim = self.schema.dim
        kw = dict(hidden=config.hidden, channels=config.channels, cond_dim=cond_dim, cond_at=config.condition_at,
                  act=config.activation)
        lik = LIKELIHOODS.get(config.likelihood)
        options = dict(config.likelihood_options)
        if "sigma" in lik.options:
            options.setdefault("sigma", config.sigma)
        self.likelihood = lik(config.data_shape, **options)
        self.encoder = ENCODERS[config.arch](config.data_shape, config.latent_dim, **kw)
        self.decoder = DECODERS[config.arch](config.data_shape, config.latent_dim,
                                             params_per_element=self.likelihood.params_per_element, **kw)
        self.prior = build_prior(config.prior, config.latent_dim, cond_dim, self, config.prior_options)

    def q_z(self, x: torch.Tensor, c: torch.Tensor | None = None) -> DiagonalGaussian:
        mu, logvar = self.encoder(x, c)
        return DiagonalGaussian(mu, logvar)

    def p_x(self, z: torch.Tensor, c: torch.Tensor | None = None):
        """The decoder p(x | z, c). ``z`` may carry leading sample dimensions (S, B, latent)."""
        z, c, lead = flatten_samples(z, c)
        params = self.decoder(z, c)
        return self.likelihood(params.reshape(*lead, *params.shape[1:]))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, samples: int | None = None) -> ModelOutput:
        """One reparameterised z per example, or ``samples`` of them (z: (samples, B, latent))."""
        qz = self.q_z(x, c)
        z = qz.rsample() if samples is None else qz.rsample((samples,))
        return ModelOutput(qz=qz, z=z, px=self.p_x(z, c), c=c, prior=self.prior)
