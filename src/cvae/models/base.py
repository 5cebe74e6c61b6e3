"""The user-facing layer shared by every model class, and the registry of model classes.

A model class implements the maths: ``q_z(x, c)`` (the encoder's posterior), ``p_x(z, c)`` (the
decoder's likelihood), a ``prior`` module (:mod:`cvae.priors`) and ``forward(x, c, samples)``
returning a :class:`ModelOutput`. Everything a user calls (friendly conditions such as
``"label=7"``, data units, ``encode``, ``decode``, ``sample``, ``reconstruct``) lives here once,
over every class. Register a class with ``@MODELS.register("name")``; ``config.json`` names it
(``model.model_class``) and ``cvae.load`` rebuilds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..conditions import CONDITION_LIMIT, ConditionSchema
from ..errors import CvaeError
from ..registry import Registry
from ..units import UNIT_SLACK, pixel_divisor
from .config import ModelConfig, check_weight

MODELS = Registry("model class")
# The default temperature of sample(): see benchmarks/defaults.py and the README.
SAMPLING_TEMPERATURE = 0.9
# codes from the fitted aggregate posterior (cvae.aggregate) are drawn from it exactly by default: it lies
# where the training examples' codes do already, and scaling it down costs variety (recall) for little:
# on two 100-label MNIST runs 0.9 gave a Fréchet distance of 30.8 and 35.0 against 30.1 and 33.6 at 1,
# recall 0.105 and 0.099 against 0.132 and 0.131, 99.0% and 98.9% read as their class against 98.4% and
# 98.5% (README "Codes for sampling")
AGGREGATE_TEMPERATURE = 1.0


def check_positive(name: str, value) -> int:
    """A setting that counts something (draws, a batch size): a whole number >= 1, as an int."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)  # 2.0, as sample(2.0) takes it
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CvaeError(f"{name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def check_count(n, shape: tuple[int, ...]) -> int | None:
    """A number of samples to draw, as an int: None (one, or one per condition given), or a whole number
    >= 1 whose outputs fit in memory (float32, with room for the decoder's work)."""
    if n is None:
        return None
    if isinstance(n, (torch.Tensor, np.ndarray)) and n.ndim == 0:
        n = n.item()  # torch.tensor(4)
    n = check_positive("the number of samples", n)
    from ..memory import free_memory

    need, free = 4 * int(n) * math.prod(shape) * 3, free_memory()  # outputs, the last layer, its activations
    if free is not None and need > free:
        raise CvaeError(f"{int(n):,} samples would take about {need / 1e9:,.1f} GB, more than this machine has free; "
                        "draw them in batches (e.g. 10,000 at a time)")
    return int(n)


def _numpy_dtype(dtype) -> np.dtype:
    """The NumPy type of an input's values (a torch dtype mapped; float32 when unknown: lists, scalars)."""
    if isinstance(dtype, torch.dtype):
        if dtype == torch.uint8:
            return np.dtype(np.uint8)
        return np.dtype(np.int64) if not (dtype.is_floating_point or dtype.is_complex) else np.dtype(np.float32)
    try:
        return np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
    except TypeError:
        return np.dtype(np.float32)


def input_layout(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``x`` as (N, *shape): as it is, one example without its batch axis, flat rows, grey images without
    their channel axis, or channel-last images (moved, not reshaped); any other shape is a CvaeError."""
    got = tuple(x.shape)
    if got[1:] == shape:
        return x
    if got == shape:
        return x[None]
    if len(shape) == 3:
        c, h, w = shape
        if got[1:] == (h, w, c):
            return x.permute(0, 3, 1, 2)
        if got == (h, w, c):
            return x.permute(2, 0, 1)[None]
        if c == 1 and got[1:] == (h, w):
            return x[:, None]
        if c == 1 and got == (h, w):
            return x[None, None]
    size = math.prod(shape)
    if x.ndim == 2 and got[1] == size:
        return x.reshape(-1, *shape)
    if x.ndim == 1 and got[0] == size:
        return x.reshape(1, *shape)
    ways = f"(N, {', '.join(map(str, shape))})" + (f" or flat rows (N, {size})" if len(shape) > 1 else "")
    if len(shape) == 3:
        ways += f" or channel-last (N, {shape[1]}, {shape[2]}, {shape[0]})"
    raise CvaeError(f"inputs have shape {got}; this model expects {ways}")


@dataclass
class RunInfo:
    """Where a model came from: its run folder and the contents of its ``config.json``."""

    dir: Path | None = None
    config: dict = field(default_factory=dict)


@dataclass
class ModelOutput:
    """One forward pass: q(z | x, c), the sampled code(s) z, p(x | z, c), and the prior at c."""

    qz: object  # q(z | x, c): a DiagonalGaussian
    z: torch.Tensor  # (B, latent) or (S, B, latent)
    px: object  # p(x | z, c)
    c: torch.Tensor | None
    prior: nn.Module
    # losses of the model's auxiliary networks, trained beside the ELBO and sharing no parameter with
    # it (the sequence model's prefix predictor): every objective adds them to its loss and logs them
    auxiliary: dict = field(default_factory=dict)

    def kl(self) -> torch.Tensor:
        """KL(q(z | x, c) || p(z | c)) per example (and sample): the prior decides how."""
        return self.prior.kl(self.qz, self.z, self.c)

    def log_prior(self) -> torch.Tensor:
        """log p(z | c) at the sampled code(s)."""
        return self.prior.log_prob(self.z, self.c)


class VAEModel(nn.Module):
    """Base of every model class: the user's interface over the class's maths."""

    config_class = ModelConfig
    name = "?"
    fills_missing = False  # whether inputs may lack a categorical condition (a model with q(y | x) infers it)
    default_objective = "elbo"
    trained_by = "cvae train"  # the command that trains this model class
    # whether the class implements classifier-free guidance (condition dropout in training, then
    # p_x_guided); one that does not refuses --guidance, and --condition-dropout unless it drops
    # conditions for a reason of its own (drops_conditions: the recommender's blanked attributes)
    guidable = False
    drops_conditions = False
    guided_by_default = True  # a guidable class that is trained guided on images unless told otherwise
    # whether the class's codes are one flat vector whose aggregate posterior cvae.aggregate fits after
    # training; a loaded run that has the fit keeps it in ``aggregate``, and sample() draws from it
    aggregate_codes = False
    aggregate = None
    aggregate_problem = None  # why the run's aggregate.safetensors could not be used (damaged, foreign, stale)
    # whether p_x_guided combines two parameter sets of the run's likelihood (Likelihood.guided), so
    # that training for guidance needs a likelihood that has it; the sequence model guides per token
    guided_by_likelihood = True
    # whether the class can be steered by a predictor of the condition (the sequence model's prefix
    # predictor, --steer); a conditioned run of such a class is steered by default (cvae.train.STEER_DEFAULT)
    steerable = False
    # training settings the class sets where the user leaves them out (cvae.train.with_class_defaults)
    train_defaults: dict = {}

    @classmethod
    def training_defaults(cls, data) -> dict:
        """The training settings this class sets for ``data`` (DataSplits) where the user leaves them out."""
        return cls.train_defaults

    def __init__(self, config: ModelConfig, *, run: RunInfo | None = None):
        super().__init__()
        self.config = config
        self.schema = ConditionSchema.from_dict(config.schema)
        self.run = run or RunInfo()
        if (config.guidance or (config.condition_dropout and not self.drops_conditions)) and not self.guidable:
            guidable = ", ".join(n for n, cls in MODELS.items() if cls.guidable)
            raise CvaeError(f"--condition-dropout and --guidance are not available for the {self.name} model "
                            f"(classifier-free guidance is written for: {guidable}); leave them out")
        if config.condition_dropout and self.guidable and not self.schema:
            raise CvaeError("--condition-dropout drops the condition, and this model has none (a plain VAE); "
                            "leave it out")
        # with condition dropout the decoder reads [c, present]: present = 0 (and c = 0) marks "no condition"
        self.flagged = self.guidable and bool(config.condition_dropout) and self.schema.dim > 0
        # Data units <-> model units: x_model = (x - x_loc) / x_scale (identity unless standardize).
        self.register_buffer("x_loc", torch.zeros(config.data_shape), persistent=config.standardize)
        self.register_buffer("x_scale", torch.ones(config.data_shape), persistent=config.standardize)

    # -- what a model class implements ------------------------------------------------------------
    def q_z(self, x: torch.Tensor, c: torch.Tensor | None = None):
        raise NotImplementedError

    def p_x(self, z: torch.Tensor, c: torch.Tensor | None = None):
        raise NotImplementedError

    def p_x_guided(self, z: torch.Tensor, c: torch.Tensor, guidance: float):
        """p(x | z, c) classifier-free guided with weight ``guidance`` (a class with ``guidable`` writes it)."""
        raise NotImplementedError

    # -- condition dropout, shared by the guidable classes -----------------------------------------
    def flag_condition(self, c: torch.Tensor | None, present: bool = True) -> torch.Tensor | None:
        """What a guided network reads: [c, 1], or [0, 0] for "no condition"; c itself when the model
        was not trained with condition dropout."""
        if c is None or not self.flagged:
            return c
        out = torch.cat([c, torch.ones_like(c[..., :1])], dim=-1)
        return out if present else torch.zeros_like(out)

    def drop_conditions(self, flagged: torch.Tensor | None) -> torch.Tensor | None:
        """In training, a share ``condition_dropout`` of the rows of a flagged condition blanked."""
        if flagged is None or not self.flagged or not self.training:
            return flagged
        keep = torch.rand(flagged.shape[:-1] + (1,), device=flagged.device) >= self.config.condition_dropout
        return flagged * keep.to(flagged.dtype)

    def guidance_weight(self, guidance: float | None) -> float:
        """The guidance weight to generate with: ``guidance``, or the run's default when None; refused
        (one line) for a run whose decoder never learnt to decode without the condition."""
        if guidance is None:
            return self.config.guidance
        check_weight(guidance)
        if guidance and not self.flagged:
            raise CvaeError("--guidance needs a run trained with --condition-dropout (its decoder also learnt "
                            "p(x | z) without the condition); retrain with e.g. --condition-dropout 0.2, or leave "
                            "--guidance out" if self.schema else "--guidance is for conditioned runs; leave it out")
        return float(guidance)

    def sample_z(self, n: int, c: torch.Tensor | None, generator: torch.Generator | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
        """n codes from the prior p(z | c), its deviations scaled by ``temperature``."""
        return self.prior.sample(n, c, generator, temperature)

    def check_temperature(self, temperature) -> None:
        """A sampling temperature this model takes: a number from 0 to 10 (a hierarchical model also
        takes one per latent group)."""
        if not (isinstance(temperature, (int, float)) and 0 <= temperature <= 10):
            raise CvaeError(f"temperature must be a number from 0 to 10, got {temperature!r}")

    def latent_groups(self) -> list[tuple[int, int]]:
        """(start, end) of each latent group in the code z, top (coarsest) first: one for most models."""
        return [(0, self.config.latent_dim)]

    def parameter_groups(self) -> list[dict]:
        """The optimizer's parameter groups; a group's ``lr_scale`` multiplies the learning rate for it."""
        return [{"params": list(self.parameters())}]

    # -- where the model came from ----------------------------------------------------------------
    @property
    def run_dir(self) -> Path | None:
        return self.run.dir

    @property
    def run_config(self) -> dict:
        return self.run.config

    # -- the user's interface ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.x_loc.device

    def condition_vector(self, condition=None, n: int | None = None) -> torch.Tensor | None:
        """Friendly conditions -> the encoded vector c (N, schema.dim) on the model's device."""
        if not self.schema:
            if condition not in (None, "", "none", {}):
                raise CvaeError("this model is a plain VAE (no condition); leave the condition out")
            return None
        y = self.schema.parse(condition, n)
        if not self.fills_missing and bool(torch.isnan(y).any()):
            raise CvaeError("a condition value is missing (NaN); this model needs every condition (only a "
                            "semi-supervised model, --model m2, infers a missing label)")
        return self.condition_codes(y)

    def condition_codes(self, y) -> torch.Tensor:
        """Raw condition codes (N, A) -> the encoded vector c (N, schema.dim) on the model's device, after
        checking each continuous value: finite once standardised and within CONDITION_LIMIT training
        standard deviations of its mean (one clear error otherwise, never NaN or overflowing outputs)."""
        y = torch.as_tensor(y, dtype=torch.float64)  # a far value is named as given, not as float32 overflows it
        c = self.schema.encode(y.float()).to(self.device)
        if not torch.isfinite(c).all():
            j, a = next((j, a) for j, a in enumerate(self.schema.attributes) if a.kind == "continuous"
                        and not torch.isfinite((y[:, j].float() - a.mean) / a.std).all())
            i = int(torch.nonzero(~torch.isfinite((y[:, j].float() - a.mean) / a.std))[0, 0])
            raise CvaeError(f"condition {a.name!r} = {float(y[i, j]):g} is not finite once standardised (its training "
                            f"mean is {a.mean:.4g}, standard deviation {a.std:.4g}); give a value near the training range")
        far = self.schema.far_value(y)
        if far is not None:
            j, i = far
            a = self.schema.attributes[j]
            raise CvaeError(f"condition {a.name!r} = {float(y[i, j]):g} is more than {CONDITION_LIMIT:,.0f} standard "
                            f"deviations from its training mean ({a.mean:.4g}, standard deviation {a.std:.4g}), "
                            "where the model computes nothing meaningful; give a value near the training range")
        return c

    def generating_condition(self, condition=None, n: int | None = None) -> torch.Tensor | None:
        """The condition vector to generate from: every condition given, as there is no input to infer
        a missing one from (a class that infers labels refuses a missing one here)."""
        return self.condition_vector(condition, n)

    def to_model_units(self, x) -> torch.Tensor:
        """Data-unit inputs -> the model's units (standardised where the model standardises), the inverse
        of :meth:`to_data_units`. Any array of numbers: (N, *data_shape), one example without its batch
        axis, flat rows (N, features), grey images without their channel axis (N, H, W) and channel-last
        images (N, H, W, C) are read, and (N, C, H', W') images of another size resized; another shape of
        the same size is refused rather than reshaped (it would scramble the pixels). A run on grey levels
        reads pixel values as training read its files (``cvae.data.sources.pixel_divisor``: 8-bit values
        divided by 255, 16-bit integers by 65535, [0, 1] as it is) and refuses other values; NaN is refused."""
        shape = tuple(self.config.data_shape)
        dtype = _numpy_dtype(getattr(x, "dtype", None))
        try:
            x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        except (TypeError, ValueError, RuntimeError):
            raise CvaeError(f"inputs must be an array of numbers of shape (N, {', '.join(map(str, shape))}); got "
                            f"{type(x).__name__}" + (f" of {x.dtype}" if hasattr(x, "dtype") else "")) from None
        if len(shape) == 3 and x.ndim == 4 and x.shape[1] == shape[0] and tuple(x.shape[2:]) != shape[1:]:
            # images of another size: resized as the command line resizes its inputs (and --image-size its data)
            x = torch.nn.functional.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False,
                                                antialias=x.shape[2] > shape[1] or x.shape[3] > shape[2])
        x = input_layout(x, shape)
        if not torch.isfinite(x).all():
            raise CvaeError("inputs contain NaN or infinite values; clean or drop those examples")
        if self.config.standardize:
            return (x - self.x_loc) / self.x_scale
        if len(shape) == 3 and x.numel():
            low, high = float(x.min()), float(x.max())
            divisor = pixel_divisor(dtype, low, high) if low >= -UNIT_SLACK else None
            if divisor is None:
                raise CvaeError(f"inputs hold values from {low:g} to {high:g}, but this run's images are grey levels in "
                                "[0, 1] (or 8-bit pixel values up to 255, 16-bit integers up to 65535): rescale them")
            if divisor != 1.0:
                return x / divisor  # pixel values, read as training read them (cvae.data.sources.pixel_divisor)
            x = x.clamp(0.0, 1.0)
        return x

    def set_units(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """The data's feature means and deviations (a standardising model keeps them with its weights)."""
        self.x_loc.copy_(loc)
        self.x_scale.copy_(scale)

    def to_data_units(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.x_scale + self.x_loc if self.config.standardize else x

    @torch.no_grad()
    def encode(self, x, condition=None):
        """q(z | x, c) for a batch of inputs (in the model's data units)."""
        x = self.to_model_units(x)
        return self.q_z(x, self.condition_vector(condition, len(x)))

    @torch.no_grad()
    def decode(self, z, condition=None, *, mean: bool = True, guidance: float = 0.0) -> torch.Tensor:
        """Decode latent codes: the mean of p(x | z, c) (or a draw from it with ``mean=False``);
        ``guidance`` w > 0 decodes p(x | z, c)^(1 + w) / p(x | z)^w (a run trained with condition dropout)."""
        try:
            z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        except (TypeError, ValueError, RuntimeError):
            raise CvaeError(f"codes must be an array of numbers of shape (N, {self.config.latent_dim})") from None
        if z.ndim == 1 and len(z) == self.config.latent_dim:
            z = z[None]  # one code without its batch axis
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise CvaeError(f"codes have shape {tuple(z.shape)}; this model decodes (N, {self.config.latent_dim}) codes")
        if not torch.isfinite(z).all():
            raise CvaeError("codes contain NaN or infinite values; the decoder's outputs would be too")
        c = self.generating_condition(condition, len(z))
        w = self.guidance_weight(guidance)
        px = self.p_x_guided(z, c, w) if w and c is not None else self.p_x(z, c)
        return self.to_data_units(px.mean if mean else px.sample())

    def sampling_codes(self, codes: str | None = None) -> str:
        """Where generated codes come from: ``"aggregate"`` (the run's fitted aggregate posterior) or
        ``"prior"``; None chooses the fit where the run has one. Asking for a fit the run lacks is refused."""
        if codes not in (None, "prior", "aggregate"):
            raise CvaeError(f"codes must be prior or aggregate, got {codes!r}")
        if codes != "prior" and self.aggregate is None and self.aggregate_problem:
            raise CvaeError(self.aggregate_problem)
        if codes == "aggregate" and self.aggregate is None and not self.aggregate_codes:
            raise CvaeError(f"the {self.name} model samples its prior (no aggregate posterior is fitted for it); "
                            "leave --codes out or use --codes prior")
        if codes == "aggregate" and self.aggregate is None:
            raise CvaeError("this run has no fitted aggregate posterior (aggregate.safetensors, written at the end of "
                            "training for image runs with no condition or one categorical condition; `cvae aggregate "
                            "RUN` fits it for a run trained before); or draw from the prior (--codes prior)")
        return "aggregate" if self.aggregate is not None and codes != "prior" else "prior"

    def sampling_temperature(self, temperature=None, codes: str | None = None):
        """The temperature to sample at: ``temperature``, or by default 0.9 for prior draws and 1 for the
        fitted aggregate posterior's."""
        if temperature is not None:
            return temperature
        return AGGREGATE_TEMPERATURE if self.sampling_codes(codes) == "aggregate" else SAMPLING_TEMPERATURE

    @torch.no_grad()
    def sample(self, n: int | None = None, condition=None, *, mean: bool = True,
               generator: torch.Generator | None = None, temperature: float | None = None,
               guidance: float | None = None, codes: str | None = None) -> torch.Tensor:
        """Draw codes z and decode. Leaving a categorical condition out cycles through its classes.

        ``codes``: ``"prior"`` draws z ~ p(z | c); ``"aggregate"`` draws from the aggregate posterior
        fitted after training (``aggregate.safetensors`` of the run, cvae.aggregate: codes where the
        training examples' lie); None (the default) takes the fit where the run has one, else the prior.
        ``temperature`` scales the standard deviations (the prior's, or each component's of a mixture):
        1 draws from the distribution exactly; the prior's default 0.9 trades a little variety for samples
        that are more typical of their condition (benchmarks/defaults.py measures it), the fit's is 1
        (:meth:`sampling_temperature`). ``guidance`` is
        the classifier-free guidance weight w (None: the run's default; a run trained with
        ``condition_dropout`` only): the decoder's distribution becomes p(x | z, c)^(1 + w) / p(x | z)^w."""
        if temperature is not None:
            self.check_temperature(temperature)
        use_fit = self.sampling_codes(codes) == "aggregate"
        # a class the fit has no codes of draws from the prior, at the prior's own default temperature
        prior_temperature = SAMPLING_TEMPERATURE if temperature is None else temperature
        temperature = self.sampling_temperature(temperature, codes)
        w = self.guidance_weight(guidance)
        n = check_count(n, self.config.data_shape)
        c = self.generating_condition(condition, n)
        n = len(c) if c is not None and n is None else (n or 1)
        z = self.sample_z(n, c, generator, prior_temperature if use_fit else temperature)
        if use_fit:
            index = self.aggregate.class_of(c, n)
            fitted = self.aggregate.fitted(index).to(z.device)
            drawn = self.aggregate.sample(index, generator, temperature).to(z.device, z.dtype)
            z = torch.where(fitted[:, None], drawn, z)  # a class the fit has no examples of: the prior's
        px = self.p_x_guided(z, c, w) if w and c is not None else self.p_x(z, c)
        return self.to_data_units(px.mean if mean else px.sample())

    @torch.no_grad()
    def reconstruct(self, x, condition=None, *, sample_z: bool = False) -> torch.Tensor:
        """Encode then decode (the posterior mean by default): the mean of p(x | z, c)."""
        x = self.to_model_units(x)
        c = self.condition_vector(condition, len(x))
        qz = self.q_z(x, c)
        return self.to_data_units(self.p_x(qz.rsample() if sample_z else qz.mu, c).mean)


    def log_weights_at(self, x, c, qz, z, dtype=torch.float32) -> torch.Tensor:
        """log p(x | z, c) + log p(z | c) - log q(z | x, c) at given codes z (S, B, latent): the logs of the
        importance weights, (S, B), each term in ``dtype``."""
        return (self.p_x(z, c).log_prob(x).to(dtype) + self.prior.log_prob(z, c).to(dtype)
                - qz.log_prob(z).to(dtype))

    def classifies(self) -> list[str]:
        """The categorical conditions :meth:`classify` answers: a model's one condition when it is
        categorical and alone (Bayes' rule over its classes), none otherwise."""
        blocks = self.schema.categorical_blocks()
        return [blocks[0][0].name] if blocks and len(self.schema.attributes) == 1 else []

    @torch.no_grad()
    def classify(self, x, attribute: str | None = None, *, samples: int = 16, batch_size: int = 250,
                 seed: int = 0) -> torch.Tensor:
        """p(y | x) of the categorical condition by Bayes' rule with p(y) uniform: log p(x | y) from the
        importance-weighted bound with ``samples`` draws of q(z | x, y) per class (a generative
        classifier), every example's and class's codes made from the same ``seed``'s standard normals
        (an example's answer does not depend on the rows beside it). Class probabilities (N, classes).
        A semi-supervised model answers from q(y | x)."""
        if not self.classifies() or attribute not in (None, *self.classifies()):
            raise CvaeError("this model classifies only when its one condition is categorical; train the "
                            "semi-supervised model (--model m2) to classify with several conditions")
        a = self.schema.categorical_blocks()[0][0]
        samples, batch_size = check_positive("samples", samples), check_positive("batch_size", batch_size)
        x = self.to_model_units(x)
        g = torch.Generator().manual_seed(int(seed))
        eps = None
        out = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            ll = torch.empty((len(xb), a.dim), device=self.device)
            for k in range(a.dim):
                c = torch.nn.functional.one_hot(torch.full((len(xb),), k, device=self.device), a.dim).float()
                qz = self.q_z(xb, c)
                if eps is None:  # (samples, 1, D): one set of draws for every example and class
                    eps = torch.randn((samples, 1, qz.mu.shape[-1]), generator=g).to(qz.mu)
                lw = self.log_weights_at(xb, c, qz, qz.mu + eps * qz.std)
                ll[:, k] = torch.logsumexp(lw, 0) - math.log(samples)
            out.append(ll.softmax(1))
        return torch.cat(out) if out else torch.zeros((0, a.dim))


def flatten_samples(z: torch.Tensor, c: torch.Tensor | None):
    """Codes with leading sample dimensions (S, B, latent) as rows (S * B, latent) for a decoder, the
    condition repeated to match; returns them and the leading shape to restore."""
    lead = z.shape[:-1]
    if z.ndim > 2:
        z = z.reshape(-1, z.shape[-1])
        if c is not None:
            c = c.expand(*lead, c.shape[-1]).reshape(-1, c.shape[-1])
    return z, c, lead


def build_model(config: ModelConfig | dict, *, run: RunInfo | None = None) -> VAEModel:
    """The registered class that ``config`` names, built from it."""
    name = config.get("model_class", "cvae") if isinstance(config, dict) else config.model_class
    cls = MODELS.get(name)
    if isinstance(config, dict):
        config = cls.config_class.from_dict(config)
    return cls(config, run=run)
