"""Mult-VAE and Mult-DAE (Liang, Krishnan, Hoffman & Jebara 2018, "Variational autoencoders for
collaborative filtering"), conditioned on what is known about the user when the schema is not empty.

    x        a user's interactions with the items, counts (N, items)
    encoder  (dropout(x / ||x||_2), c) -> q(z | x, c)          tanh MLP, items -> 600 -> 2 x 200
    decoder  (z, c) -> logits of a multinomial over the items   tanh MLP, 200 -> 600 -> items
    prior    p(z | c), a registered part (standard N(0, I) as in the paper)

Mult-DAE is the same class with ``variational: false``: the encoder gives a point z (its output is
``latent_dim`` wide, not twice), and the KL term is zero. The dropout on the normalised input is
part of the model (active in training mode only), as in the paper's code (github.com/dawenl/vae_cf).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import DiagonalGaussian
from ..errors import CvaeError
from ..likelihoods import LIKELIHOODS
from ..nn import MLP
from ..priors import build_prior
from .base import MODELS, ModelOutput, VAEModel, flatten_samples
from .config import ModelConfig

# The paper's network: [items -> 600 -> 200 -> 600 -> items], tanh, a multinomial decoder, N(0, I).
MULTVAE_DEFAULTS = dict(model_class="multvae", hidden=[600], latent_dim=200, activation="tanh",
                        likelihood="multinomial", prior="standard", condition_at=-1)


@dataclass
class MultVAEConfig(ModelConfig):
    """:class:`ModelConfig` plus the input dropout and whether the encoder is variational."""

    model_class: str = "multvae"
    dropout: float = 0.5  # on the L2-normalised input, training mode only (the paper: keep probability 0.5)
    variational: bool = True  # False: Mult-DAE, a point z and no KL term
    # How the user's condition (attributes) enters; each is a training-time setting of the model:
    condition_in: str = "both"  # both: encoder and decoder; decoder: the decoder only (q(z | x) ignores c)
    condition_embedding: int = 0  # > 0: c passes a learned tanh layer of this width first (shared by both nets)
    condition_dropout: float = 0.0  # training: each user's condition blanked (all zeros) with this probability
    # Cold-start-like training users: this share of each batch has its input (not its target) cut to
    # 1..truncate_items of its items at random, so the encoder learns from short histories.
    truncate_share: float = 0.0
    truncate_items: int = 5
    # Cold-start users (Volkovs et al. 2017, DropoutNet): training, each user's whole input (not the
    # target) is blanked with this probability, so the decoder learns to recommend from c alone.
    history_dropout: float = 0.0
    # > 0: a per-condition item bias b(c) (a linear map of c to the items' logits, one bias per
    # attribute value) added with weight k / (k + n), n the items in the user's input and k this
    # value: a user with no history is ranked by b(c) and the decoder's output at that empty input.
    condition_bias: float = 0.0
    # > 0, scoring only: z = (n mu_q + k mu_p(c)) / (n + k), the posterior mean pulled towards the
    # prior's mean for the user's condition by a user with few items (k this value).
    prior_fold_in: float = 0.0

    full_condition_dropout = True  # cold-start training may blank every user's attributes

    def __post_init__(self):
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or \
                not 0 <= self.dropout < 1:
            raise CvaeError(f"model setting dropout must be a number from 0 to below 1, got {self.dropout!r}")
        self.dropout = float(self.dropout)
        if self.condition_in not in ("both", "decoder"):
            raise CvaeError(f"model setting condition_in must be both or decoder, got {self.condition_in!r}")
        for name in ("condition_dropout", "truncate_share", "history_dropout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise CvaeError(f"model setting {name} must be a number from 0 to 1, got {v!r}")
            setattr(self, name, float(v))
        for name in ("condition_bias", "prior_fold_in"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise CvaeError(f"model setting {name} must be a finite number of at least 0, got {v!r}")
            setattr(self, name, float(v))
        for name, low in (("condition_embedding", 0), ("truncate_items", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise CvaeError(f"model setting {name} must be a whole number of at least {low}, got {v!r}")
        if not isinstance(self.variational, bool):
            raise CvaeError(f"model setting variational must be true or false, got {self.variational!r}")
        if self.arch != "mlp":
            raise CvaeError(f"the multvae model class is an MLP over the items; model setting arch must be mlp, "
                            f"got {self.arch!r}")
        super().__post_init__()


@dataclass
class PointOutput(ModelOutput):
    """The forward pass of a deterministic encoder (Mult-DAE): z is a point, and there is no KL."""

    def kl(self) -> torch.Tensor:
        return self.z.new_zeros(self.z.shape[:-1])


@MODELS.register("multvae")
class MultVAE(VAEModel):
    """Mult-VAE (``variational: true``) or Mult-DAE (``false``), with or without a user condition."""

    config_class = MultVAEConfig
    drops_conditions = True  # condition_dropout blanks a user's attributes (no guidance)
    trained_by = "cvae recommend train"  # interaction data has its own trainer and protocol

    def __init__(self, config: MultVAEConfig, *, run=None):
        super().__init__(config, run=run)
        items, cond_dim = math.prod(config.data_shape), self.schema.dim
        self.embed = None
        if cond_dim and config.condition_embedding:
            self.embed = nn.Sequential(nn.Linear(cond_dim, config.condition_embedding), nn.Tanh())
            cond_dim = config.condition_embedding
        enc_cond = cond_dim if config.condition_in == "both" else 0
        kw = dict(cond_dim=enc_cond, cond_at=config.condition_at, act=config.activation)
        self.drop = nn.Dropout(config.dropout)
        width = config.latent_dim * (2 if config.variational else 1)
        self.encoder = MLP(items, config.hidden, width, **kw)
        widths = list(reversed(config.hidden))
        cond_at = config.condition_at if config.condition_at < 0 else min(config.condition_at, len(widths))
        self.decoder = MLP(config.latent_dim, widths, items, cond_dim=cond_dim, cond_at=cond_at, act=config.activation)
        self.bias = None
        if self.schema.dim and config.condition_bias:
            self.bias = nn.Linear(self.schema.dim, items, bias=False)  # b(c): one item bias per attribute value
            nn.init.zeros_(self.bias.weight)
        self.likelihood = LIKELIHOODS.get(config.likelihood)(config.data_shape, **config.likelihood_options)
        self.prior = build_prior(config.prior, config.latent_dim, self.schema.dim, self, config.prior_options)
        self._init_weights()

    def _init_weights(self) -> None:
        """As the paper's code: Glorot-uniform weights, biases from N(0, 0.001^2)."""
        if any(p.is_meta for p in self.parameters()):
            return
        for net in (self.encoder, self.decoder):
            for layer in net.layers:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.normal_(layer.bias, std=0.001)

    def _condition(self, c: torch.Tensor | None) -> torch.Tensor | None:
        """The condition as the networks see it: through the embedding when there is one."""
        if c is None or self.embed is None:
            return c
        return self.embed(c.float())

    def _truncate(self, x: torch.Tensor) -> torch.Tensor:
        """Training: a ``truncate_share`` of the users keep 1..``truncate_items`` random items of their input."""
        share, most = self.config.truncate_share, self.config.truncate_items
        if not (self.training and share):
            return x
        pick = torch.rand(x.shape[0], 1, device=x.device) < share
        k = torch.randint(1, most + 1, (x.shape[0], 1), device=x.device)
        keys = torch.where(x > 0, torch.rand(x.shape, device=x.device), torch.full_like(x, 2.0))
        kth = keys.sort(dim=1).values.gather(1, (k - 1).clamp(max=x.shape[1] - 1))
        return torch.where(pick & (keys > kth), torch.zeros_like(x), x)

    def _drop_history(self, x: torch.Tensor) -> torch.Tensor:
        """Training: each user's whole input blanked with probability ``history_dropout`` (DropoutNet)."""
        if not (self.training and self.config.history_dropout):
            return x
        keep = torch.rand(x.shape[0], 1, device=x.device) >= self.config.history_dropout
        return x * keep.to(x.dtype)

    def _encode(self, x: torch.Tensor, c: torch.Tensor | None) -> tuple[DiagonalGaussian, torch.Tensor]:
        """q(z | x, c) and the number of items the encoder saw per user (after the training-time cuts)."""
        seen = self._drop_history(self._truncate(x.flatten(1).float()))
        h = self.drop(F.normalize(seen, dim=-1))
        out = self.encoder(h, self._condition(c) if self.config.condition_in == "both" else None)
        n = (seen > 0).sum(-1).to(out.dtype)
        if self.config.variational:
            mu, logvar = out.chunk(2, dim=-1)
            return DiagonalGaussian(mu, logvar), n
        return DiagonalGaussian(out, torch.full_like(out, -math.inf)), n  # a point mass at mu (std 0)

    def q_z(self, x: torch.Tensor, c: torch.Tensor | None = None) -> DiagonalGaussian:
        return self._encode(x, c)[0]

    def p_x(self, z: torch.Tensor, c: torch.Tensor | None = None, n: torch.Tensor | None = None):
        """The multinomial over the items. ``z`` may carry leading sample dimensions (S, B, latent).
        ``n`` (B,): the items each user's input held, which weighs the per-condition item bias
        (``condition_bias``); none given: that of a user with no history (weight 1)."""
        lead_c = c
        z, c, lead = flatten_samples(z, c)
        logits = self.decoder(z, self._condition(c)).reshape(*lead, *self.config.data_shape)
        if self.bias is not None and lead_c is not None:
            k = self.config.condition_bias
            weight = 1.0 if n is None else (k / (k + n)).unsqueeze(-1)
            logits = logits + weight * self.bias(lead_c.float())  # (B, items), broadcast over samples
        return self.likelihood(logits)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, samples: int | None = None) -> ModelOutput:
        if c is not None and self.training and self.config.condition_dropout:
            keep = torch.rand(c.shape[0], 1, device=c.device) >= self.config.condition_dropout
            c = c * keep.to(c.dtype)  # a blanked condition: the model also learns users it knows nothing of
        qz, n = self._encode(x, c)
        if not self.config.variational:
            z = qz.mu if samples is None else qz.mu.expand(samples, *qz.mu.shape)
            return PointOutput(qz=qz, z=z, px=self.p_x(z, c, n), c=c, prior=self.prior)
        z = qz.rsample() if samples is None else qz.rsample((samples,))
        return ModelOutput(qz=qz, z=z, px=self.p_x(z, c, n), c=c, prior=self.prior)

    @torch.no_grad()
    def item_scores(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """log pi: the log-probability of every item for users with interactions ``x`` (N, items),
        z at its posterior mean (no dropout, whatever the mode): the paper's ranking scores. With
        ``prior_fold_in`` k > 0, z is pulled towards the prior's mean for c: (n mu_q + k mu_p) / (n + k)."""
        was = self.training
        self.eval()
        try:
            qz, n = self._encode(x, c)
            z = qz.mu
            k = self.config.prior_fold_in
            if k:
                centre = self.prior.spread(c, len(z))[0].to(z.dtype)
                z = (n.unsqueeze(-1) * z + k * centre) / (n.unsqueeze(-1) + k)
            px = self.p_x(z, c, n)
            return torch.log_softmax(px.logits.float(), dim=-1)
        finally:
            self.train(was)
