"""The settings of ``cvae recommend train`` (kept apart from the trainer, so that building the command
line imports neither scipy nor the data readers)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import CvaeError

MODEL_KINDS = {"multvae": True, "multdae": False}  # name -> variational (the networks)
MODELS = (*MODEL_KINDS, "ease")  # ease: the closed form of Steck (2019), lambda chosen on validation users
EASE_LAMBDAS = (10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1200.0, 2000.0, 5000.0)
# How a conditioned network uses the user's attributes, unless told otherwise: chosen on the validation
# users of MovieLens-100K, every user validated once by 5-fold over users (benchmarks/recommend_kfold.py):
# the decoder conditioned and the conditional prior p(z | c) had the best validation NDCG@100 (mean of
# full and cold-start histories) of the conditioned networks; history dropout, the item bias, the
# fold-in towards p(z | c) and the blend with group popularity did not help there (their k: 0 mostly).
# An unconditioned run uses none of it (PLAIN_DEFAULTS: every cold-start aid off).
CONDITIONED_DEFAULTS = {"prior": "conditional", "condition_in": "decoder", "condition_embedding": 0, "condition_dropout": 0.0,
                        "truncate_share": 0.0, "truncate_items": 5, "history_dropout": 0.0, "condition_bias": 0.0,
                        "prior_fold_in": 0.0, "popularity_mix": 0.0}
PLAIN_DEFAULTS = {"prior": "standard", "condition_in": "both", "condition_embedding": 0, "condition_dropout": 0.0,
                  "truncate_share": 0.0, "truncate_items": 5, "history_dropout": 0.0, "condition_bias": 0.0,
                  "prior_fold_in": 0.0, "popularity_mix": 0.0}
# Settings of the run's scoring, not of the network (the others of the dicts above are MultVAEConfig's)
SCORING_SETTINGS = ("popularity_mix",)
# The smoothing of the demographic popularity that --popularity-mix blends in (fixed: on the three
# splits of benchmarks/recommend_ml100k.py validation chose 200, 100 and 50 for popularity alone)
GROUP_ALPHA = 50.0

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
    folds: int = 0  # K >= 3: users cut into K folds, --fold the test users, the next fold validation (0: off)
    fold: int = 0
    model: str = "multvae"  # multvae | multdae | ease
    hidden: list[int] = field(default_factory=lambda: [600])
    latent_dim: int = 200
    condition_at: int = -1  # MLP layer where the condition joins (-1: every layer of encoder and decoder)
    dropout: float = 0.5
    # standard N(0, I) (the paper) | conditional p(z | c) | any registered prior (None: the run's defaults above)
    prior: str | None = None
    # how a condition enters (None: CONDITIONED_DEFAULTS for a conditioned run, PLAIN_DEFAULTS otherwise)
    condition_in: str | None = None  # both | decoder
    condition_embedding: int | None = None  # width of a learned embedding of the attributes (0: none)
    condition_dropout: float | None = None  # training: share of users whose condition is blanked
    truncate_share: float | None = None  # training: share of users whose input is cut to 1..truncate_items items
    truncate_items: int | None = None
    history_dropout: float | None = None  # training: share of users whose whole input is blanked (DropoutNet)
    condition_bias: float | None = None  # k > 0: a per-condition item bias weighted k / (k + items in the history)
    prior_fold_in: float | None = None  # k > 0, scoring: z pulled to the prior's mean for c by k / (k + items)
    popularity_mix: float | None = None  # k > 0, scoring: blend in demographic popularity with weight k / (k + items)
    ease_lambda: float | None = None  # --model ease: its L2 weight (default: the best of EASE_LAMBDAS on validation)
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
        if self.model not in MODELS:
            raise CvaeError(f"unknown --model {self.model!r}; choose one of {', '.join(MODELS)}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("eval_every", 1), ("min_user_interactions", 1),
                          ("latent_dim", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise CvaeError(f"--{name.replace('_', '-')} must be a whole number of at least {low}, got {v!r}")
        for name in ("lr", "beta", "dropout", "heldout_users", "heldout_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise CvaeError(f"--{name.replace('_', '-')} must be a finite number of at least 0, got {v!r}")
        if not self.dropout < 1:
            raise CvaeError(f"--dropout must be a number from 0 to below 1, got {self.dropout!r} (1 would drop every item)")
        if self.fold and not self.folds:
            raise CvaeError(f"--fold {self.fold!r} needs --folds K (the number of folds the users are cut into)")
        if self.anneal_steps is not None and self.anneal_steps < 1:
            raise CvaeError(f"--anneal-steps must be at least 1, got {self.anneal_steps}")
        if not self.lr > 0:
            raise CvaeError("--lr must be above 0")
        if self.ease_lambda is not None and not (math.isfinite(self.ease_lambda) and self.ease_lambda > 0):
            raise CvaeError(f"--ease-lambda must be a finite number above 0, got {self.ease_lambda!r}")
        if self.condition_in is not None and self.condition_in not in ("both", "decoder"):
            raise CvaeError(f"--condition-in must be both or decoder, got {self.condition_in!r}")
        for name in ("condition_bias", "prior_fold_in", "popularity_mix"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v < 0):
                raise CvaeError(f"--{name.replace('_', '-')} must be a finite number of at least 0, got {v!r}")
        for name in ("condition_dropout", "truncate_share", "history_dropout"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1):
                raise CvaeError(f"--{name.replace('_', '-')} must be a number from 0 to 1, got {v!r}")
        for name, low in (("condition_embedding", 0), ("truncate_items", 1)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise CvaeError(f"--{name.replace('_', '-')} must be a whole number of at least {low}, got {v!r}")

    def conditioning(self, conditioned: bool) -> dict:
        """The settings of how the run uses the user's attributes and short histories (prior, condition_*,
        truncate_*, history_dropout, condition_bias, prior_fold_in, popularity_mix): those given, else
        the defaults of a conditioned (or an unconditioned) run."""
        base = CONDITIONED_DEFAULTS if conditioned else PLAIN_DEFAULTS
        return {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in base.items()}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RecommenderConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise CvaeError(f"unknown recommender setting(s) {', '.join(unknown)}")
        return cls(**d)
