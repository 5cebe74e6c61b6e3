"""A hierarchical conditional VAE with a top-down inference path (Ladder VAE / NVAE / VDVAE style).

Sonderby et al. (2016), "Ladder variational autoencoders"; Vahdat & Kautz (2020), "NVAE"; Child
(2021), "Very deep VAEs". The image is read bottom-up once; a top-down pass then draws latent groups
from the coarsest resolution to the finest, ``groups`` of them per resolution::

    bottom-up   x -> stem (stride 2) -> cells -> f_1 (H/2) -> pool -> ... -> f_L (H / 2^L)
    top-down    h = learned constant at H / 2^L
                for each resolution, coarse to fine, for each group i there:
                    p(z_i | z_<i, c)    = N(mu_p, sigma_p)            from h          (the prior)
                    q(z_i | z_<i, x, c) = N(mu_p + dmu, sigma_p * ds)  from h and f_l  (relative to it)
                    h = cell(h + proj(z_i) + prior feature)
                upsample; ... ; p(x | z, c) from h at full resolution

The condition c enters every residual cell (a per-channel bias). The code z of this model is every
group flattened and concatenated, coarsest first, so that ``encode``, ``decode``, ``embed``,
interpolation and transfer work on it as on any model; ``q_z(x, c)`` reports the posterior along
its mean path (each group's posterior given the means of the groups above), and the importance
sampler draws from the real, sequential posterior (:meth:`HVAE.importance_terms`).

Stability (what the papers needed, made default by :data:`HVAE.train_defaults`): residual cells
whose last convolution starts at zero (the network starts as the identity), variances soft-clamped,
the posterior parameterised relative to the prior, KL warm-up, gradient-norm clipping, and steps
with a non-finite gradient skipped, counted in ``metrics.jsonl`` and refused when most are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import DiagonalGaussian
from ..errors import CvaeError
from ..likelihoods import build_likelihood
from ..nn import activation
from ..priors import PRIORS, Prior, build_prior
from .base import MODELS, ModelOutput, VAEModel, flatten_samples
from .config import ModelConfig, _whole

LOGVAR_LIMIT = 8.0  # log-variances are soft-clamped to (-8, 8): sigma in (0.018, 55)


def soft_clamp(t: torch.Tensor, limit: float = LOGVAR_LIMIT) -> torch.Tensor:
    return limit * torch.tanh(t / limit)


@dataclass
class HVAEConfig(ModelConfig):
    """The ladder of the hierarchical model; ``latent_dim`` is derived (every group's size summed)."""

    model_class: str = "hvae"
    arch: str = "conv"
    activation: str = "gelu"
    prior: str = "top-down"
    depth: int = 2  # resolutions that carry latent groups: H/2, H/4, ..., H/2^depth
    width: int = 32  # channels of the residual stream
    groups: int = 2  # latent groups per resolution
    z_channels: int = 4  # channels of each latent group (a group at h x w holds z_channels * h * w numbers)

    def __post_init__(self):
        self.depth = _whole("depth (--depth)", self.depth, low=1)
        self.width = _whole("width (--width)", self.width, low=1)
        self.groups = _whole("groups (--groups)", self.groups, low=1)
        self.z_channels = _whole("z_channels (--z-channels)", self.z_channels, low=1)
        if self.prior == "auto":
            self.prior = "top-down"
        if self.prior != "top-down":
            raise CvaeError(f"the hierarchical model's prior is its top-down pass (top-down); leave --prior out "
                            f"(got {self.prior!r})")
        shape = tuple(self.data_shape)
        if len(shape) != 3:
            raise CvaeError(f"the hierarchical model (--preset hvae) needs images (channels, height, width); this "
                            f"data has shape {shape}. Use --preset mlp-400 for tables or signals")
        step = 2 ** _whole("depth (--depth)", self.depth, low=1)
        if shape[1] % step or shape[2] % step:
            raise CvaeError(f"the hierarchical model halves the image {self.depth} times (--depth {self.depth}), so "
                            f"its height and width must be multiples of {step}; these images are {shape[1]}x{shape[2]}. "
                            f"Resize them (--image-size) or lower --depth")
        self.latent_dim = sum(self.z_channels * h * w * self.groups for h, w in self.resolutions())
        super().__post_init__()

    def resolutions(self) -> list[tuple[int, int]]:
        """(height, width) of the latent resolutions, coarsest first."""
        _, h, w = tuple(self.data_shape)
        return [(h // 2 ** s, w // 2 ** s) for s in range(self.depth, 0, -1)]

    def group_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, height, width) of every latent group in top-down order."""
        return [(self.z_channels, h, w) for h, w in self.resolutions() for _ in range(self.groups)]


class Cell(nn.Module):
    """A residual cell: conv3x3(act(conv3x3(act(h)) + bias(c))), added to h when the widths match.
    Its last convolution starts at zero (``zero_init``) so that a deep stack starts as the identity."""

    def __init__(self, c_in: int, width: int, c_out: int, cond_dim: int, act: str, *, zero_init: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, c_out, 3, padding=1)
        self.cond = nn.Linear(cond_dim, width) if cond_dim else None
        self.act = activation(act)
        self.residual = c_in == c_out
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        t = self.conv1(self.act(h))
        if self.cond is not None:
            t = t + self.cond(c.to(t.dtype))[:, :, None, None]
        t = self.conv2(self.act(t))
        return h + t if self.residual else t


class GroupBlock(nn.Module):
    """One latent group of the top-down pass: its prior, its posterior (relative to the prior) and
    the cell that merges the drawn z into the stream."""

    def __init__(self, width: int, z_channels: int, cond_dim: int, act: str):
        super().__init__()
        self.zc = z_channels
        self.prior = Cell(width, width, 2 * z_channels + width, cond_dim, act)
        self.posterior = Cell(2 * width, width, 2 * z_channels, cond_dim, act)
        self.z_proj = nn.Conv2d(z_channels, width, 1)
        nn.init.normal_(self.z_proj.weight, std=0.1 / math.sqrt(z_channels))
        self.merge = Cell(width, width, width, cond_dim, act)

    def forward(self, h, c, f=None, z=None, noise=None, temperature: float = 1.0):
        """One group. ``f``: bottom-up features (then z ~ q unless given); ``z``: a given code; else
        z ~ p at ``temperature`` (``noise(shape)`` gives the standard-normal draws; None: the mean)."""
        p_mu, p_logvar, feature = self.prior(h, c).split([self.zc, self.zc, h.shape[1]], dim=1)
        p_logvar = soft_clamp(p_logvar)
        q = None
        if f is not None:
            d_mu, d_logvar = self.posterior(torch.cat([h, f], 1), c).chunk(2, dim=1)
            q = (p_mu + d_mu, soft_clamp(p_logvar + d_logvar))
        if z is None:
            mu, logvar = q if q is not None else (p_mu, p_logvar)
            scale = 1.0 if q is not None else temperature
            z = mu if noise is None or scale == 0 else mu + torch.exp(0.5 * logvar) * scale * noise(mu.shape)
        h = self.merge(h + feature + self.z_proj(z.to(h.dtype)), c)
        return h, z, (p_mu, p_logvar), q


@dataclass
class HierarchicalOutput(ModelOutput):
    """A forward pass of the hierarchical model: qz and pz are every group's q(z_i | z_<i, x, c) and
    p(z_i | z_<i, c) at the drawn z_<i, concatenated like z."""

    pz: DiagonalGaussian | None = None

    def kl(self) -> torch.Tensor:
        """sum_i KL(q(z_i | z_<i, x, c) || p(z_i | z_<i, c)), analytic per group at the drawn z_<i."""
        return self.qz.kl(self.pz).float()

    def log_prior(self) -> torch.Tensor:
        return self.pz.log_prob(self.z)


@MODELS.register("hvae")
class HVAE(VAEModel):
    """The hierarchical conditional VAE (see the module's docstring)."""

    config_class = HVAEConfig
    # training settings this class sets when the user leaves them at their neutral value
    # (KL warm-up in epochs, gradient-norm clipping); measured in benchmarks/hvae.py
    train_defaults = {"kl_warmup": 1.0, "grad_clip": 200.0}
    skips_nonfinite_steps = True
    # classifier-free guidance: with condition dropout the whole model reads [c, present] (the condition
    # enters every cell, so a row trained without it is an unconditional hierarchical VAE). On by default
    # for images with a class (cvae.train.GUIDED_DEFAULTS): benchmarks/hvae.py measured Fashion-MNIST
    # samples read as their class 0.766 unguided and 0.913 at W 2 (Bernoulli on grey levels, 8 epochs;
    # benchmarks/results/hvae-fashion-guided-bernoulli.json); categorical-256 gained less (0.756 -> 0.785)
    guidable = True

    def __init__(self, config: HVAEConfig, *, run=None):
        super().__init__(config, run=run)
        cond_dim, width, act = self.schema.dim + int(self.flagged), config.width, config.activation
        channels = config.data_shape[0]
        self.likelihood = build_likelihood(config.likelihood, config.data_shape, config.likelihood_options,
                                           sigma=config.sigma)
        if config.standardize and getattr(self.likelihood, "levels", None):
            raise CvaeError(f"the {config.likelihood} likelihood scores 8-bit pixels in [0, 1]; this data is "
                            "standardised features, so use --likelihood gaussian-learned")
        self.P = self.likelihood.params_per_element
        self.shapes = config.group_shapes()
        self.sizes = [math.prod(s) for s in self.shapes]
        n_res = config.depth
        # bottom-up: full resolution -> H/2 (stride 2), a cell per resolution, average-pooled between them
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.up_cells = nn.ModuleList(Cell(width, width, width, cond_dim, act) for _ in range(n_res))
        # top-down
        top_h, top_w = config.resolutions()[0]
        self.h_top = nn.Parameter(torch.zeros(1, width, top_h, top_w))
        self.top_cond = nn.Linear(cond_dim, width) if cond_dim else None
        self.blocks = nn.ModuleList(GroupBlock(width, config.z_channels, cond_dim, act) for _ in self.shapes)
        self.out_up = nn.ConvTranspose2d(width, width, 4, stride=2, padding=1)
        self.out_cell = Cell(width, width, width, cond_dim, act)
        self.out_conv = nn.Conv2d(width, channels * self.P, 3, padding=1)
        self.act = activation(act)
        self.prior = build_prior(config.prior, config.latent_dim, cond_dim, self, config.prior_options)

    # -- the passes -------------------------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        return len(self.shapes)

    def _cond(self, c: torch.Tensor | None, present: bool = True) -> torch.Tensor | None:
        """What the cells read: c itself, or with condition dropout [c, 1] ([0, 0]: no condition). A
        vector that already carries the flag passes through, so each pass extends it once."""
        if c is not None and c.shape[-1] == self.schema.dim + int(self.flagged):
            return c
        return self.flag_condition(c, present)

    def bottom_up(self, x: torch.Tensor, c: torch.Tensor | None) -> list[torch.Tensor]:
        """Features per latent resolution, coarsest first."""
        c = self._cond(c)
        h = self.down(self.act(self.stem(x)))
        feats = []
        for i, cell in enumerate(self.up_cells):
            if i:
                h = F.avg_pool2d(h, 2)
            h = cell(h, c)
            feats.append(h)
        return feats[::-1]

    def top_down(self, c: torch.Tensor | None, n: int, *, feats=None, z=None, noise=None, temperature=1.0):
        """The top-down pass over n rows: draws (or takes) every group. Returns the final stream h
        and, per group, z, the prior's (mu, logvar) and the posterior's (None without ``feats``)."""
        c = self._cond(c)
        h = self.h_top.expand(n, -1, -1, -1)
        if self.top_cond is not None:
            h = h + self.top_cond(c.to(h.dtype))[:, :, None, None]
        temps = temperature if isinstance(temperature, (list, tuple)) else [temperature] * self.n_groups
        zs, ps, qs = [], [], []
        res = -1
        for i, block in enumerate(self.blocks):
            if i % self.config.groups == 0:
                res += 1
                if res:
                    h = F.interpolate(h, scale_factor=2, mode="nearest")
            zi = None if z is None else z[i]
            h, zi, p, q = block(h, c, None if feats is None else feats[res], zi, noise, temps[i])
            zs.append(zi)
            ps.append(p)
            qs.append(q)
        return h, zs, ps, qs

    def output(self, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Decoder parameters (n, [P,] C, H, W) from the final stream."""
        c = self._cond(c)
        h = self.out_cell(self.act(self.out_up(h)), c)
        params = self.out_conv(self.act(h))
        return params.reshape(len(params), self.P, *self.config.data_shape) if self.P > 1 else params

    def _flat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.flatten(1) for t in parts], dim=1)

    def _split(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [t.reshape(len(z), *s) for t, s in zip(z.split(self.sizes, dim=1), self.shapes)]

    @staticmethod
    def _noise(generator: torch.Generator | None, device):
        if generator is None:
            return lambda shape: torch.randn(shape, device=device)
        return lambda shape: torch.randn(shape, generator=generator).to(device)

    def _pass(self, x, c, samples, noise):
        """Bottom-up once, then the top-down pass over ``samples`` copies of every row."""
        b = len(x)
        c = self.drop_conditions(self._cond(c))  # in training, for the whole pass of a dropped row
        feats = self.bottom_up(x, c)
        if samples is not None:
            feats = [f.unsqueeze(0).expand(samples, *f.shape).reshape(samples * b, *f.shape[1:]) for f in feats]
            if c is not None:
                c = c.unsqueeze(0).expand(samples, *c.shape).reshape(samples * b, -1)
        n = b * (samples or 1)
        h, zs, ps, qs = self.top_down(c, n, feats=feats, noise=noise)
        lead = (samples, b) if samples is not None else (b,)
        def cat(parts):
            return self._flat(parts).reshape(*lead, -1)
        qz = DiagonalGaussian(cat([q[0] for q in qs]), cat([q[1] for q in qs]))
        pz = DiagonalGaussian(cat([p[0] for p in ps]), cat([p[1] for p in ps]))
        params = self.output(h, c)
        return cat(zs), qz, pz, self.likelihood(params.reshape(*lead, *params.shape[1:]))

    # -- what a model class implements ------------------------------------------------------------
    def forward(self, x, c=None, samples=None) -> HierarchicalOutput:
        """z ~ q(z | x, c) group by group (``samples`` draws per example: z (samples, B, latent))."""
        z, qz, pz, px = self._pass(x, c, samples, self._noise(None, x.device))
        return HierarchicalOutput(qz=qz, z=z, px=px, c=c, prior=self.prior, pz=pz)

    def q_z(self, x, c=None) -> DiagonalGaussian:
        """The posterior along its mean path: each group's q(z_i | z_<i = their means, x, c),
        concatenated like z. Its mean decodes to the reconstruction."""
        _, _, _, qs = self.top_down(c, len(x), feats=self.bottom_up(x, c), noise=None)
        return DiagonalGaussian(self._flat([q[0] for q in qs]), self._flat([q[1] for q in qs]))

    def p_x(self, z, c=None):
        z, c, lead = flatten_samples(z, c)
        h, _, _, _ = self.top_down(c, len(z), z=self._split(z))
        params = self.output(h, c)
        return self.likelihood(params.reshape(*lead, *params.shape[1:]))

    def p_x_guided(self, z: torch.Tensor, c: torch.Tensor, guidance: float):
        """Classifier-free guidance: p(x | z, c)^(1 + w) / p(x | z)^w, the same groups z decoded by one
        top-down pass over [with the condition; without it]."""
        if not self.flagged:
            raise CvaeError("--guidance needs a run trained with --condition-dropout; leave --guidance out")
        z, c, lead = flatten_samples(z, c)
        both_c = torch.cat([self._cond(c), self._cond(c, present=False)])
        h, _, _, _ = self.top_down(both_c, 2 * len(z), z=self._split(torch.cat([z, z])))
        params = self.output(h, both_c)
        cond, none = params.reshape(2, *lead, *params.shape[1:]).unbind(0)
        return self.likelihood.guided(cond, none, float(guidance))

    def prior_of(self, z: torch.Tensor, c: torch.Tensor | None) -> DiagonalGaussian:
        """p(z_i | z_<i, c) of every group at the given code(s) z (..., latent), concatenated."""
        z, c, lead = flatten_samples(z, c)
        _, _, ps, _ = self.top_down(c, len(z), z=self._split(z))
        return DiagonalGaussian(self._flat([p[0] for p in ps]).reshape(*lead, -1),
                                self._flat([p[1] for p in ps]).reshape(*lead, -1))

    def draw_prior(self, n: int, c: torch.Tensor | None, generator=None, temperature=1.0) -> torch.Tensor:
        """n codes from p(z | c), group by group; ``temperature`` a number or one per group (0: means)."""
        _, zs, _, _ = self.top_down(c, n, noise=self._noise(generator, self.device), temperature=temperature)
        return self._flat(zs)

    def check_temperature(self, temperature) -> None:
        if isinstance(temperature, (list, tuple)):
            if len(temperature) != self.n_groups:
                raise CvaeError(f"give one temperature for all groups or one per latent group: this model has "
                                f"{self.n_groups} groups (coarsest first), got {len(temperature)} temperatures")
            for t in temperature:
                super().check_temperature(t)
            return
        super().check_temperature(temperature)

    @torch.no_grad()
    def sequential_kl(self, x, c=None, generator=None) -> torch.Tensor:
        """KL per dimension (B, latent) of each group's q(z_i | z_<i, x, c) against p(z_i | z_<i, c), both
        at one draw of the groups above from the sequential posterior: the training objective's KL terms
        (their sum is the KL of the ELBO). ``q_z``'s mean path against the prior at a drawn path would
        set the two on different z_<i (30 nats where the ELBO's KL is 19)."""
        _, qz, pz, _ = self._pass(x, c, None, self._noise(generator, x.device))
        return 0.5 * (pz.logvar - qz.logvar + (qz.logvar.exp() + (qz.mu - pz.mu) ** 2) / pz.logvar.exp() - 1)

    @torch.no_grad()
    def importance_terms(self, x, c, s: int, generator=None):
        """log p(x | z, c), log p(z | c) and log q(z | x, c) for s draws of the sequential posterior
        per example, each (B, s): the importance sampler's terms (:mod:`cvae.evaluate`)."""
        z, qz, pz, px = self._pass(x, c, s, self._noise(generator, x.device))
        terms = (px.log_prob(x).float(), pz.log_prob(z).float(), qz.log_prob(z).float())  # (s, B) each
        return tuple(t.transpose(0, 1) for t in terms)

    def latent_groups(self) -> list[tuple[int, int]]:
        """(start, end) of every group in the code z, coarsest first."""
        ends = [sum(self.sizes[:i + 1]) for i in range(self.n_groups)]
        return [(e - s, e) for s, e in zip(self.sizes, ends)]


class _TopDownDistribution:
    """p(z | c) of the hierarchical model for a batch of conditions (the prior's ``distribution``)."""

    def __init__(self, model: HVAE, c: torch.Tensor | None):
        self.model, self.c = model, c

    def _c_for(self, z: torch.Tensor):
        if self.c is None:
            return None
        return self.c if z.shape[-2] == len(self.c) else self.c.expand(z.shape[-2], -1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.prior_of(z, self._c_for(z)).log_prob(z)

    def marginal_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z_d | z_<group of d, c) per dimension: the terms that sum to log p(z | c)."""
        p = self.model.prior_of(z, self._c_for(z))
        return DiagonalGaussian(p.mu, p.logvar, event_dims=0).log_prob(z)

    def draw(self, n: int, generator=None, temperature=1.0) -> torch.Tensor:
        c = None if self.c is None else (self.c if len(self.c) == n else self.c.expand(n, -1))
        return self.model.draw_prior(n, c, generator, temperature)

    def moments(self, draws: int = 2048):
        """The marginal mean and standard deviation of every dimension of p(z | c), estimated from
        ``draws`` draws per distinct condition (seeded: the same every call)."""
        g = torch.Generator().manual_seed(0)
        if self.c is None:
            z = self.model.draw_prior(draws, None, g)
            return z.mean(0, keepdim=True), z.std(0, keepdim=True)
        distinct, index = torch.unique(self.c, dim=0, return_inverse=True)
        stats = [self.model.draw_prior(draws, row.expand(draws, -1), g) for row in distinct]
        mean = torch.stack([z.mean(0) for z in stats])
        std = torch.stack([z.std(0) for z in stats])
        return mean[index], std[index]


@PRIORS.register("top-down")
class TopDownPrior(Prior):
    """p(z | c) = prod_i p(z_i | z_<i, c): the top-down pass of the hierarchical model (its own prior)."""

    model_class = "hvae"

    def __init__(self, latent_dim, cond_dim, context=None, **options):
        super().__init__(latent_dim, cond_dim, context, **options)
        if not isinstance(context, HVAE):
            raise CvaeError("the top-down prior is the hierarchical model's own (--preset hvae); choose another --prior")
        self._context = [context]  # the model, by reference (not a submodule)

    def distribution(self, c=None):
        return _TopDownDistribution(self._context[0], c)
