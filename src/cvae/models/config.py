"""What rebuilds a model (written to ``config.json`` of every run) and the published presets."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from ..conditions import ConditionSchema
from ..errors import CvaeError
from ..likelihoods import LIKELIHOODS
from ..memory import machine_memory
from ..nn import ACTIVATIONS, ENCODERS
from ..priors import PRIORS


def check_weight(w, flag: str = "--guidance") -> None:
    """A generation weight (classifier-free ``--guidance``, the sequence model's ``--steer``): a
    number from 0 (none) to 20."""
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not 0 <= w <= 20:
        raise CvaeError(f"{flag} must be a number from 0 to 20, got {w!r}")


@dataclass
class ModelConfig:
    """Everything that rebuilds a model; written to ``config.json`` of every run."""

    data_shape: tuple[int, ...]
    schema: dict = field(default_factory=dict)  # ConditionSchema.to_dict()
    model_class: str = "cvae"  # a registered model class (cvae.models.MODELS)
    arch: Literal["mlp", "conv"] = "mlp"
    hidden: list[int] = field(default_factory=lambda: [400])
    channels: list[int] = field(default_factory=lambda: [32])
    latent_dim: int = 20
    activation: str = "relu"
    condition_at: int = 0  # layer at which c joins the MLP (0 = input; textbook: 1; -1 = every layer)
    likelihood: str = "bernoulli"  # a registered likelihood (cvae.likelihoods.LIKELIHOODS)
    sigma: float = 1.0  # fixed decoder standard deviation (likelihood="gaussian"), also the init of a learned one
    likelihood_options: dict = field(default_factory=dict)
    # a registered prior (cvae.priors.PRIORS); "auto": conditional when the model has a condition, else
    # standard. Saved configs hold the resolved value.
    prior: str = "auto"
    prior_options: dict = field(default_factory=dict)  # e.g. {"components": 500} for mog / vamp
    standardize: bool = False  # features are standardised; the model keeps their mean/std as buffers
    # classifier-free guidance (Ho & Salimans 2022): in training a share of the examples reach the
    # decoder without their condition, so that it also learns p(x | z); ``guidance`` is the run's
    # default weight w when generating (needs condition_dropout; model classes that support it say so)
    condition_dropout: float = 0.0
    guidance: float = 0.0
    # a decoder that must learn p(x | z, c) needs some rows with c: below 1 unless a class says otherwise
    full_condition_dropout = False  # a class attribute, not a setting

    def __post_init__(self):
        """Check every setting's type and range, then the size of the model it makes, before any
        weight is allocated (a hand-edited config.json, a flag such as --latent-dim 100000000)."""
        self.data_shape = tuple(_whole_list("data_shape", self.data_shape, low=1, empty=False))
        self.hidden = _whole_list("hidden", self.hidden, low=1)
        self.channels = _whole_list("channels", self.channels, low=1)
        self.latent_dim = _whole("latent_dim", self.latent_dim, low=1)
        self.condition_at = _whole("condition_at", self.condition_at, low=-1)
        for name in ("model_class", "arch", "activation", "likelihood", "prior"):
            if not isinstance(getattr(self, name), str):
                raise CvaeError(f"model setting {name} must be a name (a string), got {getattr(self, name)!r}")
        for name in ("schema", "likelihood_options", "prior_options"):
            if not isinstance(getattr(self, name), Mapping):
                raise CvaeError(f"model setting {name} must be a mapping (a JSON object), got {getattr(self, name)!r}")
        if not isinstance(self.standardize, bool):
            raise CvaeError(f"model setting standardize must be true or false, got {self.standardize!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, numbers.Real):
            raise CvaeError(f"model setting sigma must be a number, got {self.sigma!r}")
        self.sigma = float(self.sigma)
        v = self.condition_dropout
        full = self.full_condition_dropout  # a model class that may blank every row's condition
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 <= v <= 1 if full else 0 <= v < 1):
            raise CvaeError(f"--condition-dropout must be a number from 0 to {'1' if full else 'below 1'}, got {v!r}")
        self.condition_dropout = float(v)
        check_weight(self.guidance)
        self.guidance = float(self.guidance)
        if self.guidance and not self.condition_dropout:
            raise CvaeError("--guidance needs a decoder that also learnt to decode without the condition; "
                            "train with --condition-dropout (e.g. 0.2)")
        _check_schema(self.schema)
        if "components" in self.prior_options:
            _whole("prior_options.components (--prior-components)", self.prior_options["components"], low=1)
        checks = [
            (self.arch in ENCODERS, f"unknown architecture {self.arch!r}; choose one of {', '.join(ENCODERS)}"),
            (self.activation in ACTIVATIONS, f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}"),
            (math.isfinite(self.sigma) and self.sigma > 0, f"sigma must be a positive number, got {self.sigma}"),
        ]
        for ok, message in checks:
            if not ok:
                raise CvaeError(message)
        LIKELIHOODS.get(self.likelihood)
        if self.prior == "auto":
            self.prior = "conditional" if ConditionSchema.from_dict(self.schema) else "standard"
        PRIORS.get(self.prior)
        self.check_size()

    # -- size -------------------------------------------------------------------------------------
    def parameter_count(self) -> int | None:
        """The number of parameters of the model these settings build, counted on the meta device
        (nothing is allocated); None when the model class cannot be built there."""
        return _meta_count(self)

    def check_size(self) -> None:
        """Refuse settings whose model would not fit: more than :func:`max_parameters` parameters.
        The error names the setting that makes it large."""
        count = self.parameter_count()
        limit = max_parameters()
        if count is None or count <= limit:
            return
        name, value = self._largest_setting(count)
        memory = machine_memory()
        where = f", with the float32 weights in at most half of this machine's {memory / 1e9:,.1f} GB" if memory else ""
        head = (f"this model would have {count:,} parameters ({4 * count / 1e9:,.1f} GB of float32 weights), more "
                f"than cvae builds (at most {limit:,} parameters{where})")
        shown = "prior_options.components" if name == "prior_options" else name
        raise ModelTooLarge(f"{head}; lower {SIZE_FLAGS[name]} ({shown} = {value})", head=head, setting=name,
                            parameters=count)

    def _largest_setting(self, count: int) -> tuple[str, object]:
        """The size setting whose reduction to its smallest value shrinks the model most."""
        smallest = {"latent_dim": 1, "hidden": [1] * len(self.hidden), "channels": [1] * len(self.channels),
                    "data_shape": (1,) * len(self.data_shape)}
        if "components" in getattr(PRIORS.get(self.prior), "options", {}):
            smallest["prior_options"] = {**self.prior_options, "components": 1}
        best, best_cut = "latent_dim", -1
        for name, small in smallest.items():
            trial = copy.copy(self)
            setattr(trial, name, small)
            try:
                cut = count - (_meta_count(trial) or count)
            except CvaeError:
                continue
            if cut > best_cut:
                best, best_cut = name, cut
        value = self.prior_options.get("components", "default") if best == "prior_options" else getattr(self, best)
        return best, list(value) if isinstance(value, tuple) else value

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data_shape"] = list(self.data_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        if not isinstance(d, Mapping):
            raise CvaeError(f"the model settings must be a mapping (a JSON object), got {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CvaeError(f"unknown model setting(s) {', '.join(unknown)} in config")
        return cls(**d)

    @classmethod
    def from_saved(cls, d: dict) -> ModelConfig:
        """The settings of a run's config.json: every key a saved config has held since format 1
        must be there (a missing one would silently take its default)."""
        if not isinstance(d, Mapping):
            raise CvaeError(f"the model settings must be a mapping (a JSON object), got {d!r}")
        missing = [k for k in SAVED_KEYS if k not in d]
        if missing:
            raise CvaeError(f"model setting(s) {', '.join(missing)} are missing")
        return cls.from_dict(d)


# Every config.json since format 1 holds these model settings (later ones have defaults).
SAVED_KEYS = ("data_shape", "schema", "arch", "hidden", "channels", "latent_dim", "activation", "condition_at",
              "likelihood", "sigma", "prior", "standardize")
# The settings that set a model's size, and how a user changes them.
SIZE_FLAGS = {"latent_dim": "--latent-dim", "hidden": "--hidden", "channels": "--channels",
              "data_shape": "the size of the data (--image-size for an image folder)",
              "prior_options": "--prior-components"}
MAX_PARAMETERS = 2_000_000_000
MEMORY_SHARE = 0.5  # the float32 weights must fit in this share of the machine's memory


class ModelTooLarge(CvaeError):
    """Settings whose model exceeds :func:`max_parameters`; ``setting`` names the culprit."""

    def __init__(self, message: str, *, head: str, setting: str, parameters: int):
        super().__init__(message)
        self.head, self.setting, self.parameters = head, setting, parameters


def max_parameters() -> int:
    """The most parameters cvae builds a model with: 2e9, and the float32 weights within half the memory."""
    memory = machine_memory()
    return min(MAX_PARAMETERS, int(memory * MEMORY_SHARE / 4)) if memory else MAX_PARAMETERS


def build_on_meta(config: ModelConfig):
    """The model ``config`` builds, on the meta device (no memory, no random draws): for its size and
    its tensors' shapes. None when the model class cannot be built there (then neither is checked)."""
    import torch

    from .base import MODELS

    cls = MODELS.get(config.model_class)
    try:
        with torch.device("meta"):
            return cls(config)
    except CvaeError:
        raise
    except Exception:
        return None


def _meta_count(config: ModelConfig) -> int | None:
    """Parameters of the model ``config`` builds."""
    model = build_on_meta(config)
    return None if model is None else sum(p.numel() for p in model.parameters())


def _whole(name: str, value, *, low: int | None = None) -> int:
    """A whole number (an integral float from JSON, such as 1e3, counts), at least ``low``."""
    if isinstance(value, bool) or not (isinstance(value, numbers.Integral)
                                       or (isinstance(value, float) and value.is_integer())):
        raise CvaeError(f"model setting {name} must be a whole number, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise CvaeError(f"model setting {name} must be at least {low}, got {value}")
    return value


def _whole_list(name: str, values, *, low: int, empty: bool = True) -> list[int]:
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__iter__"):
        raise CvaeError(f"model setting {name} must be a list of whole numbers, got {values!r}")
    out = [_whole(name, v) for v in values]
    if not empty and not out:
        raise CvaeError(f"model setting {name} must not be empty")
    if any(v < low for v in out):
        raise CvaeError(f"model setting {name} must hold whole numbers of at least {low}, got {out}")
    return out


def _check_schema(schema: Mapping) -> None:
    """The condition schema: a list of attributes, each categorical (classes) or continuous (mean, std)."""
    attributes = schema.get("attributes", [])
    if not isinstance(attributes, list):
        raise CvaeError(f"model setting schema.attributes must be a list, got {attributes!r}")
    names = set()
    for i, a in enumerate(attributes):
        where = f"schema.attributes[{i}]"
        if not isinstance(a, Mapping):
            raise CvaeError(f"model setting {where} must be a mapping (a JSON object), got {a!r}")
        unknown = sorted(set(a) - {"name", "kind", "classes", "mean", "std"})
        if unknown:
            raise CvaeError(f"model setting {where} has unknown key(s) {', '.join(unknown)}")
        name, kind = a.get("name"), a.get("kind")
        if not isinstance(name, str) or not name or name in names:
            raise CvaeError(f"model setting {where}.name must be a distinct, non-empty name, got {name!r}")
        names.add(name)
        if kind not in ("categorical", "continuous"):
            raise CvaeError(f"model setting {where}.kind must be categorical or continuous, got {kind!r}")
        classes = a.get("classes", [])
        if not isinstance(classes, list) or not all(isinstance(c, (str, int)) for c in classes) or \
                (kind == "categorical" and not classes):
            raise CvaeError(f"model setting {where}.classes must be a list of class names"
                            f"{' (at least one)' if kind == 'categorical' else ''}, got {classes!r}")
        for key, positive in (("mean", False), ("std", True)):
            v = a.get(key, 1.0 if positive else 0.0)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or (positive and v <= 0):
                raise CvaeError(f"model setting {where}.{key} must be a finite number{' above 0' if positive else ''}, "
                                f"got {v!r}")


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
    # The hierarchical model (cvae.models.hvae): top-down latent groups, LVAE / NVAE / VDVAE style, sized
    # for a CPU (benchmarks/hvae.py); --depth, --width, --groups and --z-channels change it.
    "hvae": dict(model_class="hvae", arch="conv", activation="gelu", depth=2, width=32, groups=2, z_channels=4),
}
