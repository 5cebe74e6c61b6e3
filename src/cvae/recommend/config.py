"""The settings of ``cvae recommend train`` (kept apart from the trainer, so that building the command
line imports neither scipy nor the data readers)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import CvaeError

MODEL_KINDS = {"multvae": True, "multdae": False}  # name -> variational
# The paper's code regularises Mult-DAE's weights with lam = 0.01 / batch_size on sum(W^2) (loss +
# lam ||W||^2): Adam's coupled weight decay 2 * lam. Mult-VAE has none.
DAE_WEIGHT_DECAY = 2 * 0.01 / 500


@dataclass
class RecommenderConfig:
    """Every setting of ``cvae recommend train``."""

    data: str = "ml-100k"  # ml-100k, a CSV/TSV of (user, item[, rating, timestamp]) rows, or a .npz sparse matrix
    data_dir: str | None = None
    user_attributes: str | None = None  # CSV of users' attributes (ml-100k: its own ml-100k.user)
    condition: str | None = None  # attribute columns, e.g. age:continuous,gender; none; default: the source's
    min_rating: float | None = None  # keep ratings >= this (ml-100k: 4, the paper's threshold)
    min_user_interactions: int = 5
    heldout_users: float = 0.1  # share (< 1) or number (>= 1) of users held out for validation, and for test
    heldout_fraction: float = 0.2  # share of each held-out user's items that is scored
    model: str = "multvae"  # multvae | multdae
    hidden: list[int] = field(default_factory=lambda: [600])
    latent_dim: int = 200
    condition_at: int = -1  # MLP layer where the condition joins (-1: every layer of encoder and decoder)
    dropout: float = 0.5
    beta: float = 1.0  # the KL weight annealing ends at (Mult-DAE: no KL)
    anneal_steps: int | None = None  # steps to anneal over (the paper: 200000); default: the whole run
    epochs: int = 200
    batch_size: int = 500
    lr: float = 1e-3
    weight_decay: float | None = None  # default: 0 for multvae, 2 * 0.01 / 500 for multdae (the paper's code)
    eval_every: int = 1
    seed: int = 0
    device: str = "cpu"
    out: str | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.model not in MODEL_KINDS:
            raise CvaeError(f"unknown --model {self.model!r}; choose one of {', '.join(MODEL_KINDS)}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("eval_every", 1), ("min_user_interactions", 1),
                          ("latent_dim", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise CvaeError(f"--{name.replace('_', '-')} must be a whole number of at least {low}, got {v!r}")
        for name in ("lr", "beta", "dropout", "heldout_users", "heldout_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise CvaeError(f"--{name.replace('_', '-')} must be a finite number of at least 0, got {v!r}")
        if self.anneal_steps is not None and self.anneal_steps < 1:
            raise CvaeError(f"--anneal-steps must be at least 1, got {self.anneal_steps}")
        if not self.lr > 0:
            raise CvaeError("--lr must be above 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RecommenderConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise CvaeError(f"unknown recommender setting(s) {', '.join(unknown)}")
        return cls(**d)
