"""The training configuration: typed, validated, read from YAML and/or flags, written to JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import CvaeError
from .models import PRESETS
from .objectives import OBJECTIVES
from .priors import PRIORS


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
    # model (None: from the preset / the data)
    preset: str = "mlp-400"
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
    # objective: a registered one (cvae.objectives.OBJECTIVES): elbo | iwae | dreg
    objective: str = "elbo"
    iwae_k: int = 5  # samples per example of the iwae and dreg objectives
    beta: float = 1.0  # beta-VAE weight on the KL term (Higgins et al., 2017)
    kl_warmup: float = 0.0  # epochs of linear KL annealing (Bowman et al., 2016)
    free_bits: float = 0.0  # nats per latent dimension below which the KL is not pressed (Kingma et al., 2016)
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
    compile: bool = False  # torch.compile the model (measured: see benchmarks/speed.py)
    stream: bool = False  # read a .npy data set from its memory map a chunk at a time (automatic when it does not fit)
    # output
    out: str | None = None  # the run folder; default runs/DATA-PRESET (numbered if taken)
    tensorboard: bool = True
    progress: bool = True

    MODEL_KEYS = ("arch", "hidden", "channels", "latent_dim", "activation", "condition_at", "likelihood", "sigma", "prior")
    # settings that become a part's options in the ModelConfig: setting -> (ModelConfig field, option)
    PART_OPTIONS = {"prior_components": ("prior_options", "components")}

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def need(ok, message):
            if not ok:
                raise CvaeError(message)

        need(self.preset in PRESETS, f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        need(isinstance(self.epochs, int) and self.epochs >= 1, f"--epochs must be a positive whole number, got {self.epochs}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, f"--batch-size must be a positive whole number, got {self.batch_size}")
        need(self.lr > 0, f"--lr must be positive, got {self.lr}")
        need(self.lr_schedule in ("cosine", "constant", "burda"),
             f"--lr-schedule must be cosine, constant or burda, not {self.lr_schedule!r}")
        need(isinstance(self.iwae_k, int) and self.iwae_k >= 1, f"--iwae-k must be a positive whole number, got {self.iwae_k}")
        need(self.beta >= 0, f"--beta must be zero or positive, got {self.beta}")
        need(self.free_bits >= 0, f"--free-bits must be zero or positive (nats per latent dimension), got {self.free_bits}")
        need(self.prior in (None, "auto") or self.prior in PRIORS,
             f"unknown prior {self.prior!r} (--prior); choose one of auto, {', '.join(PRIORS.names())}")
        need(self.prior_components is None or self.prior_components >= 1,
             f"--prior-components must be a positive whole number, got {self.prior_components}")
        OBJECTIVES.get(self.objective).from_config(self)  # an unknown objective, or a flag it does not read
        need(self.kl_warmup >= 0, f"--kl-warmup must be zero or positive, got {self.kl_warmup}")
        need(self.latent_dim is None or self.latent_dim >= 1, f"--latent-dim must be at least 1, got {self.latent_dim}")
        need(self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be positive, got {self.grad_clip}")
        need(self.patience is None or self.patience >= 1, f"--patience must be at least 1, got {self.patience}")
        need(self.precision in ("float32", "bfloat16", "auto"), f"--precision must be float32, bfloat16 or auto, not {self.precision!r}")
        need(self.binarize in ("none", "static", "dynamic"), f"--binarize must be none, static or dynamic, not {self.binarize!r}")
        need(self.data_layout in ("auto", "signal", "table"), f"--data-layout must be auto, signal or table, not {self.data_layout!r}")
        need(0.0 <= self.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {self.val_fraction}")

    def model_overrides(self) -> dict:
        out = {k: getattr(self, k) for k in self.MODEL_KEYS if getattr(self, k) is not None}
        for key, (field_name, option) in self.PART_OPTIONS.items():
            if getattr(self, key) is not None:
                out.setdefault(field_name, {})[option] = getattr(self, key)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

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
        for k, v in d.items():
            clean[k] = _coerce(k, v, types[k])
        try:
            return cls(**clean)
        except TypeError as e:
            raise CvaeError(f"bad settings in {where}: {e}") from None

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _coerce(key: str, value, type_text: str):
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
            return [int(v) for v in value]
        if t.startswith("str"):
            if isinstance(value, (list, tuple)):
                return ",".join(str(v) for v in value)
            return str(value)
    except (TypeError, ValueError):
        raise CvaeError(f"setting {key!r}: {value!r} is not a valid {t.split(' |')[0]}") from None
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
