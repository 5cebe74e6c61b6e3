"""A semi-supervised conditional VAE: the label is a latent variable where it is missing.

Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised learning with deep generative models",
model M2: a classifier q(y | x) beside the CVAE's encoder q(z | x, y) and decoder p(x | y, z), with
p(y) uniform. The objective (:mod:`cvae.objectives.semi`) gives a labelled example the conditional
ELBO and an unlabelled one the ELBO summed over the classes under q(y | x); q(y | x) also learns from
the labels directly. The trained model classifies (:meth:`M2.classify`) and generates any class.

Every categorical condition gets its own softmax head on one shared classifier network; continuous
conditions are inputs as in the CVAE and must always be given. Wherever a user gives an input without
its label (reconstruct, transfer, encode, anomaly scores), the most probable class under q(y | x)
stands in for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..conditions import ConditionSchema
from ..errors import CvaeError
from ..nn import CLASSIFIERS
from .base import MODELS, check_positive
from .config import ModelConfig, _whole_list
from .cvae import CVAE


@dataclass
class M2Config(ModelConfig):
    """The CVAE's settings plus those of the classifier q(y | x)."""

    model_class: str = "m2"
    # auto: convolutions for images and signals (first layer at full resolution, then stride 2), else dense
    classifier_arch: str = "auto"
    classifier_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    classifier_hidden: list[int] = field(default_factory=lambda: [128])

    def __post_init__(self):
        if self.classifier_arch == "auto":
            self.classifier_arch = "conv" if len(tuple(self.data_shape)) >= 2 else "mlp"
        if self.classifier_arch not in CLASSIFIERS:
            raise CvaeError(f"unknown classifier_arch {self.classifier_arch!r}; choose one of auto, {', '.join(CLASSIFIERS)}")
        self.classifier_channels = _whole_list("classifier_channels", self.classifier_channels, low=1)
        self.classifier_hidden = _whole_list("classifier_hidden", self.classifier_hidden, low=1)
        schema = ConditionSchema.from_dict(self.schema) if isinstance(self.schema, dict) else None
        if schema is not None and not schema.categorical_blocks():
            raise CvaeError("the semi-supervised model (m2) needs a categorical condition, a label to infer; this data "
                            + ("has only continuous ones" if schema else "has none (train a plain VAE instead)"))
        super().__post_init__()


@MODELS.register("m2")
class M2(CVAE):
    """The CVAE plus q(y | x): one head of logits per categorical condition."""

    config_class = M2Config
    fills_missing = True  # inputs may lack a categorical condition: q(y | x) infers it
    default_objective = "m2"
    # q(y | x) learns at a third of --lr (1e-3 by default): measured on MNIST with 100 labels, the
    # CVAE's 3e-3 made it worse, and 1e-3 for the whole model left the generative part ~10 nats behind
    CLASSIFIER_LR_SCALE = 1 / 3
    # the defaults were measured with 10 epochs of MNIST's 54,000 training images; consistency needs that
    # many steps whatever the data set's size (scikit-learn's 1,617 digits with 100 labels: 18.6% error
    # after 10 epochs, 11.6% after 30, 1.8% after 200), so a smaller data set gets more epochs unless --epochs is given
    EXAMPLES_SEEN = 540_000

    @classmethod
    def training_defaults(cls, data) -> dict:
        return {**cls.train_defaults, **cls.epochs_to_see(cls.EXAMPLES_SEEN, data)}

    def __init__(self, config: M2Config, *, run=None):
        super().__init__(config, run=run)
        self.blocks = self.schema.categorical_blocks()  # (attribute, start, end) in the condition vector
        n_logits = sum(a.dim for a, _, _ in self.blocks)
        self.classifier = CLASSIFIERS[config.classifier_arch](
            config.data_shape, n_logits, channels=config.classifier_channels, hidden=config.classifier_hidden,
            act=config.activation)

    def parameter_groups(self) -> list[dict]:
        own = {id(p) for p in self.classifier.parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in own]},
                {"params": list(self.classifier.parameters()), "lr_scale": self.CLASSIFIER_LR_SCALE}]

    # -- the maths --------------------------------------------------------------------------------
    def class_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unnormalised log q(y_a | x) of each categorical condition a, in schema order."""
        return list(self.classifier(x).split([a.dim for a, _, _ in self.blocks], dim=1))

    def missing_blocks(self, c: torch.Tensor) -> torch.Tensor:
        """(B, number of categorical conditions): True where a row's one-hot block is empty (missing)."""
        return torch.stack([c[:, s:e].sum(1) == 0 for _, s, e in self.blocks], dim=1)

    def complete(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor | None:
        """``c`` with every missing categorical block set to the most probable class under q(y | x)."""
        if c is None:
            raise CvaeError("this model is conditioned on " + ", ".join(self.schema.names) + "; give the condition")
        gone = self.missing_blocks(c)
        if not bool(gone.any()):
            return c
        c = c.clone()
        with torch.no_grad():
            logits = self.class_logits(x)
        for i, ((_, s, e), lg) in enumerate(zip(self.blocks, logits)):
            rows = gone[:, i]
            if rows.any():
                c[rows, s:e] = torch.nn.functional.one_hot(lg[rows].argmax(1), e - s).to(c.dtype)
        return c

    def forward(self, x, c=None, samples=None):
        return super().forward(x, self.complete(x, c), samples)

    def q_z(self, x, c=None):
        return super().q_z(x, self.complete(x, c) if c is not None else c)

    # -- the user's interface ---------------------------------------------------------------------
    def _categorical(self, attribute: str | None):
        if attribute is None:
            return 0, self.blocks[0][0]
        for i, (a, _, _) in enumerate(self.blocks):
            if a.name == attribute:
                return i, a
        raise CvaeError(f"{attribute!r} is not a categorical condition of this model; it classifies "
                        + ", ".join(a.name for a, _, _ in self.blocks))

    def classifies(self) -> list[str]:
        """Every categorical condition: q(y | x) answers each."""
        return [a.name for a, _, _ in self.blocks]

    @torch.no_grad()
    def classify(self, x, attribute: str | None = None, *, batch_size: int = 1000, seed: int = 0) -> torch.Tensor:
        """q(y | x): class probabilities (N, classes) of a categorical condition (the first by default)
        for inputs in the model's data units (``seed``: unused, q(y | x) draws nothing)."""
        i, _ = self._categorical(attribute)
        batch_size = check_positive("batch_size", batch_size)
        x = self.to_model_units(x)
        was = self.training
        self.eval()
        try:
            out = [self.class_logits(x[j:j + batch_size])[i].float().softmax(1) for j in range(0, len(x), batch_size)]
        finally:
            self.train(was)
        return torch.cat(out) if out else torch.zeros((0, self.blocks[i][0].dim))

    @torch.no_grad()
    def encode(self, x, condition=None):
        x_model = self.to_model_units(x)
        c = self.condition_vector(condition, len(x_model)) if condition is not None else self._unknown(len(x_model))
        return self.q_z(x_model, c)

    @torch.no_grad()
    def reconstruct(self, x, condition=None, *, sample_z: bool = False) -> torch.Tensor:
        x_model = self.to_model_units(x)
        c = self.condition_vector(condition, len(x_model)) if condition is not None else self._unknown(len(x_model))
        c = self.complete(x_model, c)
        qz = self.q_z(x_model, c)
        return self.to_data_units(self.p_x(qz.rsample() if sample_z else qz.mu, c).mean)

    def generating_condition(self, condition=None, n: int | None = None) -> torch.Tensor | None:
        c = self.condition_vector(condition, n)
        gone = self.missing_blocks(c).any(0)
        missing = [a for (a, _, _), g in zip(self.blocks, gone.tolist()) if g]
        if missing:
            raise CvaeError(f"generating needs every condition, but {', '.join(a.name for a in missing)} is missing in "
                            f"some rows (q(y | x) infers a label only from an input); give a class, e.g. "
                            f"{missing[0].name}={missing[0].classes[0]}")
        return c

    def _unknown(self, n: int) -> torch.Tensor:
        """The condition vector of n inputs whose every condition is unknown: all categorical blocks
        empty (q(y | x) fills them); continuous conditions cannot be inferred."""
        cont = [a.name for a in self.schema.attributes if a.kind != "categorical"]
        if cont:
            raise CvaeError(f"give the continuous condition(s) {', '.join(cont)} (q(y | x) infers only categorical ones)")
        return torch.zeros((n, self.schema.dim), device=self.device)
