"""The training configuration: typed, validated, read from YAML and/or flags, written to JSON."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import CvaeError
from .likelihoods import LIKELIHOODS
from .models import MODELS, PRESETS
from .models.config import ModelTooLarge
from .nn import ACTIVATIONS, ENCODERS
from .objectives import OBJECTIVES
from .priors import PRIORS
from .registry import UnknownPart
from .tokens import TOKENIZERS


@dataclass
class TrainConfig:
    """Every setting of ``cvae train``. Model settings left as ``None`` come from the preset, then
    from the data (likelihood: Bernoulli for images in [0, 1], Gaussian with learned sigma otherwise)."""

    # data
    data: str = "digits"  # a named data set or a path (.npz/.npy, image folder, .csv)
    data_dir: str | None = None
    condition: str | None = None  # None: 'label' when the data has labels; 'none': a plain VAE
    data_layout: str = "auto"  # auto | signal (CSV rows read as 1-D signals)
    image_size: str | None = None  # HxW: resize the images of an image folder
    binarize: str = "none"  # none | static | dynamic
    val_fraction: float = 0.1
    limit: int | None = None  # keep this many training examples
    labelled: int | None = None  # keep this many labels (balanced per class, by --seed), hide the rest: semi-supervised
    factors: str | None = None  # columns of a .npz / CSV file that are factors of variation (held out for evaluation)
    # sequence data (molecules, text): the column of a .csv (or a .smi / .txt file) holding the strings
    sequence: str | None = None
    tokenizer: str | None = None  # char | smiles | selfies | word (default: selfies for molecules, word for text)
    max_length: int | None = None  # most tokens per sequence (longer rows are skipped; default: the longest)
    # model (None: from the preset / the data)
    preset: str = "mlp-400"
    # a registered model class (cvae.models.MODELS); None: m2 (semi-supervised) when some training
    # examples lack a label, else cvae
    model: str | None = None
    arch: str | None = None
    hidden: list[int] | None = None
    channels: list[int] | None = None
    latent_dim: int | None = None
    activation: str | None = None
    condition_at: int | None = None
    likelihood: str | None = None
    sigma: float | None = None
    prior: str | None = None
    prior_components: int | None = None  # K of a mixture prior (mog: 10, vamp: 500 by default)
    likelihood_components: int | None = None  # K of the logistic-mixture likelihood (10 by default)
    # any registered part's own options, "scale=2,b=x" (or a dict from Python / YAML): a user's part's too
    prior_options: str | None = None
    likelihood_options: str | None = None
    # the hierarchical model (--preset hvae): its ladder (None: the preset's)
    depth: int | None = None  # resolutions with latent groups (the image is halved this many times)
    width: int | None = None  # channels of the residual stream
    groups: int | None = None  # latent groups per resolution
    z_channels: int | None = None  # channels of each latent group
    # objective: a registered one (cvae.objectives.OBJECTIVES): elbo | iwae | dreg | m2; None: the
    # model class's own (m2 for the semi-supervised model, else elbo)
    objective: str | None = None
    alpha: float | None = None  # m2: weight of q(y | x)'s cross-entropy on the labels (default 0.1 * labels)
    consistency: float | None = None  # m2: weight of the FixMatch consistency term (default 1; 0 is M2 exactly)
    iwae_k: int = 5  # samples per example of the iwae and dreg objectives
    beta: float = 1.0  # beta-VAE weight on the KL term (Higgins et al., 2017)
    kl_warmup: float = 0.0  # epochs of linear KL annealing (Bowman et al., 2016)
    free_bits: float = 0.0  # nats per latent dimension below which the KL is not pressed (Kingma et al., 2016)
    word_dropout: float | None = None  # sequence model: decoder inputs replaced by <unk> (Bowman et al., 2016)
    condition_dropout: float | None = None  # share of examples whose decoder sees no condition (guidance)
    guidance: float | None = None  # the run's default classifier-free guidance weight when generating
    steer: float | None = None  # sequence model: train a prefix predictor; the run's default steering weight
    # disentangling objectives (cvae.objectives.disentangle); None: the objective's default
    gamma: float | None = None  # capacity: weight of |KL - C| (1000); factorvae: weight of the TC term (10)
    capacity_max: float | None = None  # capacity: the KL target C's final value, nats (25)
    capacity_epochs: float | None = None  # capacity: epochs over which C grows linearly from 0 (half of --epochs)
    tc_estimator: str | None = None  # btcvae: mss (minibatch-stratified, default) | mws (minibatch-weighted)
    dip_lambda_od: float | None = None  # dip-vae-i / dip-vae-ii: weight of the off-diagonal covariance term (10 / 10)
    dip_lambda_d: float | None = None  # dip-vae-i / dip-vae-ii: weight of the diagonal term (10 x / 1 x lambda_od)
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    # cosine: from --lr down to 0 over --epochs, step by step (Loshchilov & Hutter, 2017);
    # burda: stage i = 0..7 of 3^i epochs at lr * 10^(-i/7) (Burda et al., 2015); constant
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max gradient norm
    patience: int | None = None  # early stopping: epochs without validation improvement
    seed: int = 0
    # execution
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bfloat16 where the hardware multiplies it natively (AMX/AVX512-BF16 CPUs, recent GPUs),
    # else float32; the run's config.json records the precision used. bfloat16 is autocast: the
    # loss and log-likelihoods stay float32.
    precision: str = "auto"  # auto | float32 | bfloat16
    # auto: the hand-written fused step (cvae.fused) where it covers the model, objective and settings,
    # else autograd; fused: that step or an error saying why not; autograd: always the generic path
    step: str = "auto"  # auto | fused | autograd
    compile: bool = False  # torch.compile the model (measured: see benchmarks/speed.py)
    stream: bool = False  # read a .npy data set from its memory map a chunk at a time (automatic when it does not fit)
    # output
    out: str | None = None  # the run folder; default runs/DATA-PRESET (numbered if taken)
    tensorboard: bool = True
    progress: bool = True

    MODEL_KEYS = ("arch", "hidden", "channels", "latent_dim", "activation", "condition_at", "likelihood", "sigma", "prior",
                  "depth", "width", "groups", "z_channels")
    # settings that become a part's options in the ModelConfig: setting -> (ModelConfig field, option)
    PART_OPTIONS = {"prior_components": ("prior_options", "components"),
                    "likelihood_components": ("likelihood_options", "components")}

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Every setting's type and range, and the least size of the model they make: all before any
        data is read or any weight allocated."""
        def need(ok, message):
            if not ok:
                raise CvaeError(message)

        need(self.preset in PRESETS, f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        need(_whole(self.epochs) and self.epochs >= 1, f"--epochs must be a positive whole number, got {self.epochs}")
        need(_whole(self.batch_size) and self.batch_size >= 1, f"--batch-size must be a positive whole number, got {self.batch_size}")
        need(_whole(self.seed) and 0 <= self.seed < 2**63,
             f"--seed must be a whole number from 0 to 2**63 - 1 ({2**63 - 1}), got {self.seed}")
        need(_finite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}")
        need(_finite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be zero or a positive number, got {self.weight_decay}")
        need(self.lr_schedule in ("cosine", "constant", "burda"),
             f"--lr-schedule must be cosine, constant or burda, not {self.lr_schedule!r}")
        need(_whole(self.iwae_k) and self.iwae_k >= 1, f"--iwae-k must be a positive whole number, got {self.iwae_k}")
        need(_finite(self.beta) and self.beta >= 0, f"--beta must be zero or positive, got {self.beta}")
        need(_finite(self.free_bits) and self.free_bits >= 0,
             f"--free-bits must be zero or positive (nats per latent dimension), got {self.free_bits}")
        # (a prior of one model class's own, the hierarchy's top-down one, is named with that class's preset)
        usable = [n for n in PRIORS.names() if not getattr(PRIORS.get(n), "model_class", None)]
        if not (self.prior in (None, "auto") or self.prior in PRIORS):  # UnknownPart: a run's loader says "plug-in"
            raise UnknownPart(f"unknown prior {self.prior!r} (--prior); choose one of auto, {', '.join(usable)} (or "
                              "import the module that registers it: from the command line, name its file in "
                              "CVAE_PARTS, e.g. CVAE_PARTS=my_prior.py, or install the package whose cvae.parts entry "
                              "point names it)", "prior", str(self.prior))
        for key in ("prior_options", "likelihood_options"):
            given = part_options(getattr(self, key), "--" + key.replace("_", "-"))  # the form; the part checks names
            k = getattr(self, key.replace("options", "components"))
            need(k is None or given.get("components", k) == k,
                 f"--{key.replace('_options', '-components')} {k} and --{key.replace('_', '-')} components="
                 f"{given.get('components')} disagree; give the number of components once")
        need(self.prior_components is None or (_whole(self.prior_components) and self.prior_components >= 1),
             f"--prior-components must be a positive whole number, got {self.prior_components}")
        need(self.model is None or self.model in MODELS,
             f"unknown model class {self.model!r} (--model); choose one of {', '.join(MODELS.names())}")
        need(self.labelled is None or (_whole(self.labelled) and self.labelled >= 1),
             f"--labelled must be a positive whole number of labels to keep, got {self.labelled}")
        need(self.alpha is None or (_finite(self.alpha) and self.alpha >= 0), f"--alpha must be zero or positive, got {self.alpha}")
        need(self.consistency is None or (_finite(self.consistency) and self.consistency >= 0),
             f"--consistency must be zero or positive, got {self.consistency}")
        for name in ("gamma", "capacity_max", "dip_lambda_od", "dip_lambda_d"):
            value = getattr(self, name)
            need(value is None or (_finite(value) and value >= 0),
                 f"--{name.replace('_', '-')} must be zero or positive, got {value}")
        need(self.capacity_epochs is None or (_finite(self.capacity_epochs) and self.capacity_epochs > 0),
             f"--capacity-epochs must be a positive number of epochs, got {self.capacity_epochs}")
        need(self.tc_estimator in (None, "mss", "mws"), f"--tc-estimator must be mss or mws, not {self.tc_estimator!r}")
        if self.objective is not None:  # an unknown objective, or a flag it does not read
            OBJECTIVES.get(self.objective).from_config(self)
        need(_finite(self.kl_warmup) and self.kl_warmup >= 0, f"--kl-warmup must be zero or positive, got {self.kl_warmup}")
        need(self.latent_dim is None or (_whole(self.latent_dim) and self.latent_dim >= 1),
             f"--latent-dim must be a whole number of at least 1, got {self.latent_dim}")
        for name in ("hidden", "channels"):
            widths = getattr(self, name)
            need(widths is None or (isinstance(widths, (list, tuple)) and all(_whole(w) and w >= 1 for w in widths)),
                 f"--{name} must be positive whole numbers separated by commas (e.g. 512,256), got {widths}")
        need(self.condition_at is None or (_whole(self.condition_at) and self.condition_at >= -1),
             f"--condition-at must be -1 (every layer) or a layer number from 0, got {self.condition_at}")
        for name in ("depth", "width", "groups", "z_channels"):
            value = getattr(self, name)
            need(value is None or (_whole(value) and value >= 1),
                 f"--{name.replace('_', '-')} must be a positive whole number, got {value}")
        need(self.sigma is None or (_finite(self.sigma) and self.sigma > 0), f"--sigma must be a positive number, got {self.sigma}")
        need(self.arch is None or self.arch in ENCODERS, f"unknown architecture {self.arch!r} (--arch); choose one of {', '.join(ENCODERS)}")
        need(self.activation is None or self.activation in ACTIVATIONS,
             f"unknown activation {self.activation!r} (--activation); choose one of {', '.join(ACTIVATIONS)}")
        if self.likelihood is not None:
            LIKELIHOODS.get(self.likelihood)
        need(self.likelihood_components is None or (_whole(self.likelihood_components)
                                                    and 1 <= self.likelihood_components <= 64),
             f"--likelihood-components must be a whole number from 1 to 64, got {self.likelihood_components}")
        need(self.likelihood_components is None or self.likelihood in (None, "logistic-mixture"),
             f"--likelihood-components is the logistic mixture's number of components; --likelihood {self.likelihood} "
             "has none: drop the flag or use --likelihood logistic-mixture")
        need(self.grad_clip is None or (_finite(self.grad_clip) and self.grad_clip > 0),
             f"--grad-clip must be a positive number, got {self.grad_clip}")
        need(self.patience is None or (_whole(self.patience) and self.patience >= 1), f"--patience must be at least 1, got {self.patience}")
        need(self.limit is None or (_whole(self.limit) and self.limit >= 1), f"--limit must be a positive whole number, got {self.limit}")
        need(self.step in ("auto", "fused", "autograd"), f"--step must be auto, fused or autograd, not {self.step!r}")
        need(self.precision in ("float32", "bfloat16", "auto"), f"--precision must be float32, bfloat16 or auto, not {self.precision!r}")
        need(self.binarize in ("none", "static", "dynamic"), f"--binarize must be none, static or dynamic, not {self.binarize!r}")
        need(self.data_layout in ("auto", "signal", "table"), f"--data-layout must be auto, signal or table, not {self.data_layout!r}")
        need(_finite(self.val_fraction) and 0.0 <= self.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        need(self.tokenizer is None or self.tokenizer in TOKENIZERS,
             f"unknown --tokenizer {self.tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
        need(self.max_length is None or (_whole(self.max_length) and self.max_length >= 1),
             f"--max-length must be a positive whole number of tokens, got {self.max_length}")
        need(self.word_dropout is None or (_finite(self.word_dropout) and 0 <= self.word_dropout < 1),
             f"--word-dropout must be a number from 0 to below 1, got {self.word_dropout}")
        need(self.condition_dropout is None or (_finite(self.condition_dropout) and 0 <= self.condition_dropout < 1),
             f"--condition-dropout must be a number from 0 to below 1, got {self.condition_dropout}")
        need(self.guidance is None or (_finite(self.guidance) and 0 <= self.guidance <= 20),
             f"--guidance must be a number from 0 to 20, got {self.guidance}")
        need(not self.guidance or self.condition_dropout is None or self.condition_dropout,
             "--guidance needs a decoder that also learnt to decode without the condition; leave --condition-dropout "
             "above 0 (e.g. 0.2)")
        need(self.steer is None or (_finite(self.steer) and 0 <= self.steer <= 20),
             f"--steer must be a number from 0 to 20, got {self.steer}")
        for name in ("tokenizer", "max_length", "word_dropout", "steer"):
            need(getattr(self, name) is None or self.sequence,
                 f"--{name.replace('_', '-')} is for sequence data; name the text column with --sequence COLUMN")
        self._check_model_size()

    def _check_model_size(self) -> None:
        """Refuse, before the data is read, settings whose model is too large even for the smallest
        data (one feature, or one channel of --image-size): the real model is at least as large."""
        from .data.core import parse_image_size

        size = parse_image_size(self.image_size)
        settings = model_settings(PRESETS[self.preset], self.model_overrides(), self.model)
        config_class = MODELS.get(settings.pop("model_class", "cvae")).config_class
        conv = settings.get("arch") == "conv"
        shape = (1, *size) if size else ((1, 1, 1) if conv else (1,))
        prior = settings.get("prior")
        if prior in (None, "auto") or getattr(PRIORS.get(prior), "needs_condition", False):
            settings["prior"] = "standard"  # this stand-in has no condition; a conditional prior is no larger
            settings.pop("prior_options", None)
        try:
            config_class(data_shape=shape, **settings)
        except ModelTooLarge as e:
            if e.setting == "data_shape":
                raise CvaeError(f"{e.head}; lower --image-size ({self.image_size})") from None
            raise CvaeError(str(e)) from None
        except CvaeError:
            pass  # any other problem is reported with the real data's shape, as before

    def model_overrides(self) -> dict:
        out = {k: getattr(self, k) for k in self.MODEL_KEYS if getattr(self, k) is not None}
        for key in ("prior_options", "likelihood_options"):
            if getattr(self, key):
                out[key] = part_options(getattr(self, key), "--" + key.replace("_", "-"))
        for key, (field_name, option) in self.PART_OPTIONS.items():
            if getattr(self, key) is not None:
                out.setdefault(field_name, {})[option] = getattr(self, key)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    def differing(self) -> set[str]:
        """The settings whose values differ from TrainConfig's defaults: what a user gave, when all there is
        is a finished config (a default the model class would choose for the data must not replace them)."""
        plain = TrainConfig().to_dict()
        return {k for k, v in self.to_dict().items() if v != plain.get(k)}

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "config") -> TrainConfig:
        d = {k.replace("-", "_"): v for k, v in d.items()}
        known = set(cls.keys())
        unknown = sorted(set(d) - known)
        if unknown:
            raise CvaeError(
                f"unknown setting(s) {', '.join(unknown)} in {where}; known settings: {', '.join(sorted(known))}"
            )
        types = {f.name: f.type for f in fields(cls)}
        clean = {}
        for k, v in d.items():  # a part's options may be given as a mapping (Python, YAML): kept so
            clean[k] = v if k in ("prior_options", "likelihood_options") and isinstance(v, dict) else \
                _coerce(k, v, types[k], where)
        try:
            return cls(**clean)
        except TypeError as e:
            raise CvaeError(f"bad settings in {where}: {e}") from None

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def model_settings(preset: dict, overrides: dict, model: str | None = None) -> dict:
    """A preset's model settings updated with the flags' (``model_class`` included: the preset's, or
    --model). A flag that the model class has no setting for is an error that says which class has it."""
    settings = {**preset, **overrides}
    if model is not None:
        if preset.get("model_class", model) != model:
            raise CvaeError(f"this preset trains the {preset['model_class']} model; leave --model {model} out or "
                            "choose another --preset")
        settings["model_class"] = model
    cls = MODELS.get(settings.get("model_class", "cvae")).config_class
    known = {f.name for f in fields(cls)}
    foreign = [k for k in overrides if k not in known]
    if foreign:
        owners = [name for name, m in MODELS.items() if all(k in {f.name for f in fields(m.config_class)} for k in foreign)]
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise CvaeError(f"{flags} does not apply to the {settings.get('model_class', 'cvae')} model; it sets "
                        f"{' / '.join(owners) or 'no'} models (e.g. --preset hvae): leave it out or change the preset")
    return settings


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _coerce(key: str, value, type_text: str, where: str = "config"):
    """Check a YAML value against the field type written in the dataclass."""
    if value is None:
        return None
    t = str(type_text)
    try:
        if t.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if t.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if t.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if t.startswith("list[int]"):
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            elif not isinstance(value, (list, tuple)):
                value = [value]
            return [_coerce(key, v, "int", where) for v in value]
        if t.startswith("str"):
            if isinstance(value, (list, tuple)):
                return ",".join(str(v) for v in value)
            return str(value)
    except (TypeError, ValueError, OverflowError):
        kind = {"int": "a whole number", "float": "a number", "bool": "true or false",
                "list[int]": "whole numbers separated by commas (e.g. 512,256)"}.get(t.split(" |")[0], t.split(" |")[0])
        raise CvaeError(f"setting {key!r} (--{key.replace('_', '-')}) in {where}: {value!r} is not {kind}") from None
    return value


def read_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise CvaeError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise CvaeError(f"cannot parse {p} as YAML: {e}") from None
    if not isinstance(data, dict):
        raise CvaeError(f"{p} must hold a mapping of settings (key: value), not {type(data).__name__}")
    return data


def part_options(value, flag: str) -> dict:
    """A part's options from ``scale=2,mode=fast`` (numbers read as numbers) or a dict; {} for None."""
    if value in (None, ""):
        return {}
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, str):
        raise CvaeError(f"{flag} must be text such as scale=2,mode=fast, got {value!r}")
    out = {}
    for item in value.split(","):
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise CvaeError(f"{flag} {value!r}: give name=value pairs separated by commas, such as scale=2")
        text = text.strip()
        try:
            out[name.strip()] = int(text) if text.lstrip("-").isdecimal() else float(text)
        except ValueError:
            out[name.strip()] = {"true": True, "false": False}.get(text.lower(), text)
    return out
