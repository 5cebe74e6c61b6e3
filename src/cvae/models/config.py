"""What rebuilds a model (written to ``config.json`` of every run) and the published presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from ..conditions import ConditionSchema
from ..errors import CvaeError
from ..likelihoods import LIKELIHOODS
from ..nn import ACTIVATIONS, ENCODERS
from ..priors import PRIORS


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

    def __post_init__(self):
        self.data_shape = tuple(int(s) for s in self.data_shape)
        self.hidden = [int(h) for h in self.hidden]
        self.channels = [int(c) for c in self.channels]
        checks = [
            (self.arch in ENCODERS, f"unknown architecture {self.arch!r}; choose one of {', '.join(ENCODERS)}"),
            (self.activation in ACTIVATIONS, f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}"),
            (self.latent_dim >= 1, f"latent_dim must be at least 1, got {self.latent_dim}"),
            (all(h >= 1 for h in self.hidden + self.channels), "hidden and channel widths must be positive"),
            (self.sigma > 0, f"sigma must be positive, got {self.sigma}"),
        ]
        for ok, message in checks:
            if not ok:
                raise CvaeError(message)
        LIKELIHOODS.get(self.likelihood)
        if self.prior == "auto":
            self.prior = "conditional" if ConditionSchema.from_dict(self.schema) else "standard"
        PRIORS.get(self.prior)

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
