"""One composed model family: VAE, beta-VAE and conditional VAE.

A VAE is a CVAE whose condition schema is empty; a beta-VAE is the same model trained with
``beta != 1``; which network, prior and likelihood are config values (:class:`ModelConfig`).

    encoder   (x, c) -> q(z | x, c)   diagonal Gaussian
    prior     p(z) = N(0, I)  or  p(z | c) learned (a Gaussian per condition)
    decoder   (z, c) -> p(x | z, c)   Bernoulli, Gaussian with fixed sigma, or Gaussian with learned sigma
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

import torch
from torch import nn

from .conditions import ConditionSchema
from .distributions import Bernoulli, DiagonalGaussian, Gaussian, standard_normal_like
from .errors import CvaeError
from .nn import ACTIVATIONS, DECODERS, ENCODERS

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian-learned")
PRIORS = ("auto", "standard", "conditional")


@dataclass
class ModelConfig:
    """Everything that rebuilds a model; written to ``config.json`` of every run."""

    data_shape: tuple[int, ...]
    schema: dict = field(default_factory=dict)  # ConditionSchema.to_dict()
    arch: Literal["mlp", "conv"] = "mlp"
    hidden: list[int] = field(default_factory=lambda: [400])
    channels: list[int] = field(default_factory=lambda: [32])
    latent_dim: int = 20
    activation: str = "relu"
    condition_at: int = 0  # layer at which c joins the MLP (0 = input; textbook: 1; -1 = every layer)
    likelihood: Literal["bernoulli", "gaussian", "gaussian-learned"] = "bernoulli"
    sigma: float = 1.0  # fixed decoder standard deviation (likelihood="gaussian"), also the init of a learned one
    # p(z | c) learned per condition (the textbook CVAE objective KL(q(z|x,y) || p(z|y))) or N(0, I);
    # "auto": conditional when the model has a condition, else standard. Saved configs hold the resolved value.
    prior: Literal["auto", "standard", "conditional"] = "auto"
    standardize: bool = False  # features are standardised; the model keeps their mean/std as buffers

    def __post_init__(self):
        self.data_shape = tuple(int(s) for s in self.data_shape)
        self.hidden = [int(h) for h in self.hidden]
        self.channels = [int(c) for c in self.channels]
        checks = [
            (self.arch in ENCODERS, f"unknown architecture {self.arch!r}; choose one of {', '.join(ENCODERS)}"),
            (self.likelihood in LIKELIHOODS, f"unknown likelihood {self.likelihood!r}; choose one of {', '.join(LIKELIHOODS)}"),
            (self.prior in PRIORS, f"unknown prior {self.prior!r}; choose one of {', '.join(PRIORS)}"),
            (self.activation in ACTIVATIONS, f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}"),
            (self.latent_dim >= 1, f"latent_dim must be at least 1, got {self.latent_dim}"),
            (all(h >= 1 for h in self.hidden + self.channels), "hidden and channel widths must be positive"),
            (self.sigma > 0, f"sigma must be positive, got {self.sigma}"),
        ]
        for ok, message in checks:
            if not ok:
                raise CvaeError(message)
        if self.prior == "auto":
            self.prior = "conditional" if ConditionSchema.from_dict(self.schema) else "standard"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data_shape"] = list(self.data_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CvaeError(f"unknown model setting(s) {', '.join(unknown)} in config")
        return cls(**d)


# Published settings. Each is a partial ModelConfig; data shape and conditions come from the data.
PRESETS: dict[str, dict] = {
    # PyTorch's own VAE example (examples/vae): 784-400-20, ReLU, Bernoulli decoder.
    "mlp-400": dict(arch="mlp", hidden=[400], latent_dim=20, activation="relu"),
    # The textbook CVAE: 784-512-256-2, the condition concatenated after the first layer.
    "textbook": dict(arch="mlp", hidden=[512, 256], latent_dim=2, activation="relu", condition_at=1),
    # The article's convolutional model: Conv 32 (stride 2) -> Dense 64 -> latent, mirrored decoder.
    "conv": dict(arch="conv", channels=[32], hidden=[64], latent_dim=16, activation="relu"),
    # Burda, Grosse & Salakhutdinov (2015), IWAE paper, one stochastic layer: 784-200-200-50, tanh.
    "burda": dict(arch="mlp", hidden=[200, 200], latent_dim=50, activation="tanh"),
}


@dataclass
class ModelOutput:
    """What one forward pass gives: the three distributions and the sampled code."""

    qz: DiagonalGaussian  # q(z | x, c)
    pz: DiagonalGaussian | None  # p(z | c); None for the standard normal
    px: Bernoulli | Gaussian  # p(x | z, c)
    z: torch.Tensor  # (B, latent) or (S, B, latent)


class CVAE(nn.Module):
    """A (conditional) variational autoencoder.

    The training code calls :meth:`forward` with the encoded condition vector ``c``; users call
    :meth:`encode`, :meth:`decode`, :meth:`sample` and :meth:`reconstruct`, which accept conditions in
    friendly forms (``"label=7"``, ``{"label": [3, 7]}``, or an (N, A) array of raw codes).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.schema = ConditionSchema.from_dict(config.schema)
        cond_dim = self.schema.dim
        kw = dict(
            hidden=config.hidden,
            channels=config.channels,
            cond_dim=cond_dim,
            cond_at=config.condition_at,
            act=config.activation,
        )
        self.encoder = ENCODERS[config.arch](config.data_shape, config.latent_dim, **kw)
        self.decoder = DECODERS[config.arch](config.data_shape, config.latent_dim, **kw)
        self.event_dims = len(config.data_shape)
        if config.likelihood == "gaussian-learned":
            self.log_sigma = nn.Parameter(torch.full(config.data_shape, math.log(config.sigma)))
        else:
            self.register_buffer("log_sigma", torch.tensor(math.log(config.sigma)), persistent=False)
        # Data units <-> model units: x_model = (x - x_loc) / x_scale (identity unless standardize).
        self.register_buffer("x_loc", torch.zeros(config.data_shape), persistent=config.standardize)
        self.register_buffer("x_scale", torch.ones(config.data_shape), persistent=config.standardize)
        if config.prior == "conditional":
            if not cond_dim:
                raise CvaeError("prior 'conditional' needs a condition; use --prior standard for a plain VAE")
            self.prior_net = nn.Linear(cond_dim, 2 * config.latent_dim)
            nn.init.zeros_(self.prior_net.weight)  # starts as N(0, I)
            nn.init.zeros_(self.prior_net.bias)

    # -- distributions -------------------------------------------------------------------------
    def q_z(self, x: torch.Tensor, c: torch.Tensor | None = None) -> DiagonalGaussian:
        mu, logvar = self.encoder(x, c)
        return DiagonalGaussian(mu, logvar)

    def p_z(self, c: torch.Tensor | None = None) -> DiagonalGaussian | None:
        """The prior p(z | c); ``None`` stands for N(0, I)."""
        if self.config.prior == "standard":
            return None
        mu, logvar = self.prior_net(c).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)

    def p_x(self, z: torch.Tensor, c: torch.Tensor | None = None) -> Bernoulli | Gaussian:
        """The decoder p(x | z, c). ``z`` may carry leading sample dimensions (S, B, latent)."""
        lead = z.shape[:-1]
        if z.ndim > 2:
            z = z.reshape(-1, z.shape[-1])
            if c is not None:
                c = c.expand(*lead, c.shape[-1]).reshape(-1, c.shape[-1])
        params = self.decoder(z, c).reshape(*lead, *self.config.data_shape)
        if self.config.likelihood == "bernoulli":
            return Bernoulli(params, self.event_dims)
        return Gaussian(params, self.log_sigma, self.event_dims)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, samples: int | None = None) -> ModelOutput:
        """One reparameterised z per example, or ``samples`` of them (z: (samples, B, latent))."""
        qz = self.q_z(x, c)
        z = qz.rsample() if samples is None else qz.rsample((samples,))
        return ModelOutput(qz=qz, pz=self.p_z(c), px=self.p_x(z, c), z=z)

    def log_prior(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        pz = self.p_z(c)
        return (pz if pz is not None else standard_normal_like(z)).log_prob(z)

    # -- the user's interface ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def condition_vector(self, condition=None, n: int | None = None) -> torch.Tensor | None:
        """Friendly conditions -> the encoded vector c (N, schema.dim) on the model's device."""
        if not self.schema:
            if condition not in (None, "", "none", {}):
                raise CvaeError("this model is a plain VAE (no condition); leave the condition out")
            return None
        return self.schema.encode(self.schema.parse(condition, n)).to(self.device)

    def to_model_units(self, x) -> torch.Tensor:
        """Data-unit inputs (any array, shape checked, NaN refused) -> the model's units (standardised
        where the model standardises), the inverse of :meth:`to_data_units`."""
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        shape = self.config.data_shape
        if tuple(x.shape[1:]) != shape:
            if x.shape[1:].numel() == math.prod(shape):
                x = x.reshape(-1, *shape)
            else:
                raise CvaeError(f"inputs have shape {tuple(x.shape[1:])} per example; this model expects {shape}")
        if not torch.isfinite(x).all():
            raise CvaeError("inputs contain NaN or infinite values; clean or drop those examples")
        return (x - self.x_loc) / self.x_scale if self.config.standardize else x

    def to_data_units(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.x_scale + self.x_loc if self.config.standardize else x

    @torch.no_grad()
    def encode(self, x, condition=None) -> DiagonalGaussian:
        """q(z | x, c) for a batch of inputs (in the model's data units)."""
        x = self.to_model_units(x)
        return self.q_z(x, self.condition_vector(condition, len(x)))

    @torch.no_grad()
    def decode(self, z, condition=None, *, mean: bool = True) -> torch.Tensor:
        """Decode latent codes: the mean of p(x | z, c) (or a draw from it with ``mean=False``)."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        px = self.p_x(z, self.condition_vector(condition, len(z)))
        return self.to_data_units(px.mean if mean else px.sample())

    @torch.no_grad()
    def sample(self, n: int | None = None, condition=None, *, mean: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z ~ p(z | c) and decode. Leaving a categorical condition out cycles through its classes."""
        c = self.condition_vector(condition, n)
        n = len(c) if c is not None and n is None else (n or 1)
        eps = torch.randn((n, self.config.latent_dim), generator=generator).to(self.device)
        pz = self.p_z(c)
        z = eps if pz is None else pz.mu + pz.std * eps
        px = self.p_x(z, c)
        return self.to_data_units(px.mean if mean else px.sample())

    @torch.no_grad()
    def reconstruct(self, x, condition=None, *, sample_z: bool = False) -> torch.Tensor:
        """Encode then decode (the posterior mean by default): the mean of p(x | z, c)."""
        x = self.to_model_units(x)
        c = self.condition_vector(condition, len(x))
        qz = self.q_z(x, c)
        return self.to_data_units(self.p_x(qz.rsample() if sample_z else qz.mu, c).mean)
