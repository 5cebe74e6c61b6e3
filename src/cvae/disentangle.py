"""Disentanglement metrics as pure functions of (codes, factors).

``codes`` is (N, D): one representation per example (cvae uses the posterior means E_q[z | x]);
``factors`` is (N, F): the ground-truth factors of variation of the same examples, any values (each
column is mapped to class indices 0..K-1 in sorted order, as disentanglement_lib's ground-truth
factors are). Every metric follows google-research/disentanglement_lib
(``disentanglement_lib/evaluation/metrics/``), file by file; the choices are theirs unless said:

- **MIG** (``mig.py``; Chen et al. 2018): each code dimension discretised into 20 equal-width bins
  (``utils.histogram_discretize``: ``np.digitize(c, np.histogram(c, 20)[1][:-1])``); mutual
  information I(z_d; v_k) between binned codes and factors by ``sklearn.metrics.mutual_info_score``
  (nats); MIG = mean over factors of (largest - second largest I(z_d; v_k)) / H(v_k).
- **SAP** (``sap_score.py``; Kumar et al. 2018): for every (dimension, factor) pair a
  ``LinearSVC(C=0.01, class_weight="balanced")`` on that one dimension predicts the factor;
  its test accuracy is the score; SAP = mean over factors of (best - second best score).
- **DCI** (``dci.py``; Eastwood & Williams 2018): per factor a ``GradientBoostingClassifier()``
  (sklearn defaults: 100 trees of depth 3) on all dimensions; |feature_importances_| form the
  (D, F) importance matrix R. Disentanglement = sum_d rho_d (1 - H_F(R_d / sum R_d)) with rho_d =
  sum_k R_dk / sum R; completeness = sum_k rho_k (1 - H_D(R_k / sum R_k)) (entropies in base F
  and D, 1e-11 added as theirs); informativeness = mean test accuracy of the classifiers.
- **BetaVAE score** (``beta_vae.py``; Higgins et al. 2017): a point is a factor k drawn uniformly
  and 64 pairs of examples that share factor k; its feature is mean |z_a - z_b| over the pairs;
  ``LogisticRegression()`` predicts k; the score is its accuracy on held-out points (chance 1/F).
- **FactorVAE score** (``factor_vae.py``; Kim & Mnih 2018): dimensions with a standard deviation
  below 0.05 over the data are pruned; a vote is a factor k, 64 examples sharing one value of k,
  and the dimension with the least variance across them relative to its variance over the data;
  each dimension is assigned the factor it gets most votes from (a majority-vote classifier on
  the training votes); the score is the share of held-out votes it gets right (chance 1/F).
- **Modularity** (``modularity_explicitness.py``; Ridgeway & Mozer 2018): from the binned mutual
  information m (D, F): per dimension 1 - (sum_k m_dk^2 - max_k m_dk^2) / (max_k m_dk^2 (F - 1)),
  0 for a dimension with no information; modularity is their mean. (Its explicitness, a
  one-vs-rest logistic regression's AUC, is not computed.)

Where disentanglement_lib draws fresh examples from a ground-truth simulator, these functions
sample the given examples: examples "sharing factor k" are examples with equal values of factor k
in the data (on a full factorial grid such as dSprites this is the same distribution). Train and
test examples of SAP and DCI are disjoint random subsets (``num_train``, ``num_test``, drawn with
``seed``). Sample counts default to disentanglement_lib's (10,000 train / 5,000 test).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import CvaeError

BINS = 20  # histogram bins per code dimension (MIG, modularity): disentanglement_lib's configs
PRUNE_STD = 0.05  # FactorVAE score: dimensions whose std over the data is below this are ignored
ACTIVE_VARIANCE = 0.01  # an active unit (Burda et al. 2015): Var_x(E_q[z_d | x]) above this; none: collapse
PAIRS = 64  # BetaVAE / FactorVAE score: examples per training point
# a numeric factor with more distinct values than this is continuous: binned into BINS bins (dSprites' most
# finely sampled factor, orientation, has 40 values; MPI3D's 40; Shapes3D's 15)
MAX_FACTOR_VALUES = 64


def _check(codes, factors) -> tuple[np.ndarray, np.ndarray]:
    """Codes as float64 (N, D); factors as class indices int64 (N, F) in sorted order of their values
    (:func:`factor_classes`)."""
    codes, index, _ = _checked(codes, factors)
    return codes, index


def _checked(codes, factors) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """:func:`_check`, and per factor its number of distinct values where it was binned (0 where not)."""
    try:
        codes = np.asarray(codes, dtype=np.float64)
    except (TypeError, ValueError):
        raise CvaeError("the codes must be numbers (an (N, D) array of floats)") from None
    factors = np.asarray(factors)
    if codes.ndim == 1:
        codes = codes[:, None]
    if factors.ndim == 1:
        factors = factors[:, None]
    if codes.ndim != 2 or factors.ndim != 2:
        raise CvaeError(f"codes must be (N, D) and factors (N, F); got {codes.shape} and {factors.shape}")
    if len(codes) != len(factors):
        raise CvaeError(f"codes ({len(codes)} rows) and factors ({len(factors)} rows) must describe the same examples")
    if len(codes) < 2:
        raise CvaeError("the disentanglement metrics need at least 2 examples")
    if not np.isfinite(codes).all():
        raise CvaeError("the codes hold NaN or infinite values; the model has diverged")
    if factors.dtype.kind == "f" and not np.isfinite(factors).all():
        raise CvaeError("the factors hold NaN or infinite values; every example needs every factor")
    if codes.shape[1] == 0:
        raise CvaeError("the codes have no dimension (shape (N, 0)); a representation needs at least one")
    return (codes, *factor_classes(factors))


def factor_classes(factors: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Each factor column as class indices 0..K-1 in sorted order of its values; a numeric column with more
    than MAX_FACTOR_VALUES distinct values (a continuous factor: every example would be its own class, and
    "examples sharing a factor" only the example itself) is first cut into BINS equal-width bins, as the
    codes are. Returns the indices and, per column, its number of distinct values where it was binned
    (0 where it was not)."""
    index = np.empty(factors.shape, np.int64)
    binned = []
    for k in range(factors.shape[1]):
        column = factors[:, k]
        if column.dtype.kind == "O":
            if any(v is None or (isinstance(v, float) and v != v) for v in column):
                raise CvaeError(f"factor column {k} has missing values (None or NaN); every example needs every factor")
            column = column.astype(str)
        index[:, k], distinct = factor_index(column)
        binned.append(distinct)
    return index, binned


def factor_index(column: np.ndarray) -> tuple[np.ndarray, int]:
    """One factor's values as class indices 0..K-1 in sorted order, a continuous one's (numeric, more than
    MAX_FACTOR_VALUES distinct values) after cutting it into BINS equal-width bins; and its number of
    distinct values where it was binned, else 0."""
    values, inverse = np.unique(column, return_inverse=True)
    if column.dtype.kind in "iuf" and len(values) > MAX_FACTOR_VALUES:
        bins = np.digitize(column, np.histogram(column.astype(np.float64), BINS)[1][:-1])
        return np.unique(bins, return_inverse=True)[1].reshape(-1), len(values)
    return np.asarray(inverse).reshape(-1), 0


def varying(factors: np.ndarray) -> np.ndarray:
    """Which factor columns take more than one value (a constant factor has no entropy to explain)."""
    return np.array([len(np.unique(factors[:, k])) > 1 for k in range(factors.shape[1])], bool)


def histogram_discretize(codes: np.ndarray, bins: int = BINS) -> np.ndarray:
    """disentanglement_lib's ``utils.histogram_discretize``: each column into ``bins`` equal-width bins."""
    out = np.zeros(codes.shape, np.int64)
    for d in range(codes.shape[1]):
        out[:, d] = np.digitize(codes[:, d], np.histogram(codes[:, d], bins)[1][:-1])
    return out


def discrete_mutual_info(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """I(a_i; b_j) in nats for every column pair of two discrete (N, .) arrays: (A, B)."""
    from sklearn.metrics import mutual_info_score

    return np.array([[mutual_info_score(b[:, j], a[:, i]) for j in range(b.shape[1])] for i in range(a.shape[1])])


def discrete_entropy(b: np.ndarray) -> np.ndarray:
    """H(b_j) in nats per column of a discrete (N, B) array."""
    from sklearn.metrics import mutual_info_score

    return np.array([mutual_info_score(b[:, j], b[:, j]) for j in range(b.shape[1])])


@dataclass
class MutualInformation:
    """I(z_d; v_k) between binned codes and factors (D, F), in nats, and H(v_k) (F,)."""

    matrix: np.ndarray
    entropy: np.ndarray

    @property
    def normalized(self) -> np.ndarray:
        """I(z_d; v_k) / H(v_k): the share of each factor's entropy that each dimension explains."""
        return self.matrix / np.where(self.entropy > 0, self.entropy, 1.0)


def mutual_information(codes, factors, *, bins: int = BINS) -> MutualInformation:
    codes, factors = _check(codes, factors)
    return MutualInformation(discrete_mutual_info(histogram_discretize(codes, bins), factors), discrete_entropy(factors))


def mig(codes, factors, *, bins: int = BINS) -> dict:
    """Mutual information gap (Chen et al. 2018; disentanglement_lib ``mig.py``) over all the given
    examples: the mean over factors of the gap between the two dimensions that know it best,
    divided by its entropy. Constant factors are left out (they have no entropy)."""
    codes, factors = _check(codes, factors)
    keep = varying(factors)
    if not keep.any():
        raise CvaeError("every factor is constant over these examples; MIG needs a factor that varies")
    mi = mutual_information(codes, factors[:, keep], bins=bins)
    top = np.sort(mi.matrix, axis=0)[::-1]  # (D, F), descending per factor
    second = top[1] if len(top) > 1 else np.zeros_like(top[0])
    gaps = (top[0] - second) / mi.entropy
    per_factor = [None] * len(keep)  # one entry per given factor: None for a constant one
    for k, gap in zip(np.flatnonzero(keep), gaps):
        per_factor[k] = float(gap)
    return {"score": float(gaps.mean()), "per_factor": per_factor, "matrix": mi.matrix, "entropy": mi.entropy}


def modularity(codes, factors, *, bins: int = BINS) -> dict:
    """Modularity (Ridgeway & Mozer 2018; disentanglement_lib ``modularity_explicitness.py``)."""
    codes, factors = _check(codes, factors)
    keep = varying(factors)
    m = mutual_information(codes, factors[:, keep], bins=bins).matrix
    squared = m ** 2
    best = squared.max(axis=1)
    f = squared.shape[1]
    if f < 2:
        raise CvaeError("modularity needs at least two factors that vary")
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (squared.sum(axis=1) - best) / (best * (f - 1.0))
    per_dim = np.where(best == 0.0, 0.0, 1.0 - delta)
    return {"score": float(per_dim.mean()), "per_dimension": per_dim.tolist()}


def _split(n: int, num_train: int, num_test: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random train and test rows: at most num_train and num_test, the test part at least a
    third of what there is when the data is smaller than both."""
    order = rng.permutation(n)
    if n >= num_train + num_test:
        return order[:num_train], order[num_train:num_train + num_test]
    n_test = max(1, min(num_test, int(round(n * num_test / (num_train + num_test)))))
    return order[n_test:], order[:n_test]


def sap(codes, factors, *, num_train: int = 10000, num_test: int = 5000, seed: int = 0) -> dict:
    """Separated attribute predictability (Kumar et al. 2018; disentanglement_lib ``sap_score.py``,
    discrete factors): per (dimension, factor) the test accuracy of a linear SVM on that dimension alone."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    codes, factors = _check(codes, factors)
    factors = factors[:, varying(factors)]
    tr, te = _split(len(codes), num_train, num_test, np.random.default_rng(seed))
    d, f = codes.shape[1], factors.shape[1]
    scores = np.zeros((d, f))
    for i in range(d):
        for j in range(f):
            y_train, y_test = factors[tr, j], factors[te, j]
            if len(np.unique(y_train)) < 2:
                scores[i, j] = np.mean(y_test == y_train[0])
                continue
            clf = LinearSVC(C=0.01, class_weight="balanced")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(codes[tr, i:i + 1], y_train)
            scores[i, j] = np.mean(clf.predict(codes[te, i:i + 1]) == y_test)
    top = np.sort(scores, axis=0)
    gap = top[-1] - (top[-2] if d > 1 else 0.0)
    return {"score": float(gap.mean()), "matrix": scores}


def _entropy_rows(p: np.ndarray, base: int) -> np.ndarray:
    """scipy.stats.entropy(p.T, base=base) of each row of p (normalised), as disentanglement_lib calls it."""
    p = p / p.sum(axis=1, keepdims=True)
    return -(p * np.log(p)).sum(axis=1) / np.log(base)


def dci(codes, factors, *, num_train: int = 10000, num_test: int = 5000, seed: int = 0) -> dict:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018; disentanglement_lib
    ``dci.py``) from gradient-boosted trees' feature importances."""
    from sklearn.ensemble import GradientBoostingClassifier

    codes, factors = _check(codes, factors)
    factors = factors[:, varying(factors)]
    tr, te = _split(len(codes), num_train, num_test, np.random.default_rng(seed))
    d, f = codes.shape[1], factors.shape[1]
    importance = np.zeros((d, f))
    train_acc, test_acc = [], []
    for k in range(f):
        if len(np.unique(factors[tr, k])) < 2:  # one value among the training examples: nothing to learn
            train_acc.append(1.0)
            test_acc.append(float(np.mean(factors[te, k] == factors[tr[0], k])))
            continue
        model = GradientBoostingClassifier(random_state=seed)
        model.fit(codes[tr], factors[tr, k])
        importance[:, k] = np.abs(model.feature_importances_)
        train_acc.append(float(np.mean(model.predict(codes[tr]) == factors[tr, k])))
        test_acc.append(float(np.mean(model.predict(codes[te]) == factors[te, k])))
    total = importance.sum()
    if total <= 0:  # no dimension helps any factor: neither disentangled nor complete
        disent = complete = 0.0
    else:
        per_code = 1.0 - _entropy_rows(importance + 1e-11, f) if f > 1 else np.ones(d)
        code_weight = importance.sum(axis=1) / total
        disent = float((per_code * code_weight).sum())
        per_factor = 1.0 - _entropy_rows(importance.T + 1e-11, d) if d > 1 else np.ones(f)
        factor_weight = importance.sum(axis=0) / total
        complete = float((per_factor * factor_weight).sum())
    return {"disentanglement": disent, "completeness": complete, "informativeness": float(np.mean(test_acc)),
            "informativeness_train": float(np.mean(train_acc)), "importance": importance}


class _Groups:
    """Examples grouped by the value of each factor, for drawing examples that share one."""

    def __init__(self, factors: np.ndarray):
        self.factors = factors
        self.order = [np.argsort(factors[:, k], kind="stable") for k in range(factors.shape[1])]
        self.starts = [np.searchsorted(factors[o, k], np.arange(factors[:, k].max() + 2))
                       for k, o in enumerate(self.order)]

    def same(self, k: int, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each of ``rows``, a random example with the same value of factor k (itself possibly)."""
        v = self.factors[rows, k]
        lo, hi = self.starts[k][v], self.starts[k][v + 1]
        return self.order[k][lo + (rng.random(len(rows)) * (hi - lo)).astype(np.int64)]


def _beta_vae_points(codes, groups, n_factors, count, rng):
    x = np.zeros((count, codes.shape[1]))
    y = rng.integers(0, n_factors, count)
    n = len(codes)
    for i in range(count):
        a = rng.integers(0, n, PAIRS)
        b = groups.same(int(y[i]), a, rng)
        x[i] = np.abs(codes[a] - codes[b]).mean(axis=0)
    return x, y


def beta_vae_score(codes, factors, *, num_train: int = 10000, num_eval: int = 5000, seed: int = 0) -> dict:
    """BetaVAE score (Higgins et al. 2017; disentanglement_lib ``beta_vae.py``): accuracy of a logistic
    regression that tells, from mean |z_a - z_b| over 64 pairs sharing one factor, which factor it is."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    codes, factors = _check(codes, factors)
    factors = factors[:, varying(factors)]
    rng = np.random.default_rng(seed)
    groups = _Groups(factors)
    f = factors.shape[1]
    x_train, y_train = _beta_vae_points(codes, groups, f, num_train, rng)
    x_eval, y_eval = _beta_vae_points(codes, groups, f, num_eval, rng)
    model = LogisticRegression(random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    return {"score": float(np.mean(model.predict(x_eval) == y_eval)),
            "train_accuracy": float(np.mean(model.predict(x_train) == y_train)), "chance": 1.0 / f}


def _factor_vae_votes(codes, groups, global_var, active, n_factors, count, rng):
    votes = np.zeros((n_factors, codes.shape[1]), np.int64)
    n = len(codes)
    idx_active = np.flatnonzero(active)
    for _ in range(count):
        k = int(rng.integers(0, n_factors))
        anchor = rng.integers(0, n, 1)
        rows = groups.same(k, np.repeat(anchor, PAIRS), rng)  # 64 examples sharing the anchor's value of k
        local = codes[rows].var(axis=0, ddof=1)
        votes[k, idx_active[np.argmin(local[active] / global_var[active])]] += 1
    return votes


def factor_vae_score(codes, factors, *, num_train: int = 10000, num_eval: int = 5000,
                     num_variance_estimate: int = 10000, seed: int = 0) -> dict:
    """FactorVAE score (Kim & Mnih 2018; disentanglement_lib ``factor_vae.py``): the accuracy of a
    majority-vote classifier from the least-varying (normalised) dimension to the factor held fixed."""
    codes, factors = _check(codes, factors)
    factors = factors[:, varying(factors)]
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(codes), min(num_variance_estimate, len(codes)), replace=False)
    global_var = codes[rows].var(axis=0, ddof=1)
    active = np.sqrt(global_var) >= PRUNE_STD
    f = factors.shape[1]
    if not active.any():
        return {"score": 0.0, "train_accuracy": 0.0, "active_dimensions": 0, "chance": 1.0 / f}
    groups = _Groups(factors)
    train = _factor_vae_votes(codes, groups, global_var, active, f, num_train, rng)
    evals = _factor_vae_votes(codes, groups, global_var, active, f, num_eval, rng)
    assign = np.argmax(train, axis=0)  # dimension -> factor
    cols = np.arange(codes.shape[1])
    return {"score": float(evals[assign, cols].sum() / evals.sum()),
            "train_accuracy": float(train[assign, cols].sum() / train.sum()),
            "active_dimensions": int(active.sum()), "chance": 1.0 / f}


@dataclass
class DisentanglementReport:
    """Every metric of one (codes, factors) pair, with the protocol that produced it."""

    scores: dict[str, float]
    details: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    normalized_mi: np.ndarray | None = None  # (D, F) I(z_d; v_k) / H(v_k): the heat map's matrix
    factor_names: list[str] = field(default_factory=list)

    def follows(self) -> list[str | None]:
        """The factor each dimension knows most about (None where it knows nothing: normalised MI < 0.05)."""
        m = self.normalized_mi
        return [self.factor_names[int(np.argmax(row))] if row.max() >= 0.05 else None for row in m]

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, **{k: float(v) for k, v in self.scores.items()},
                "details": self.details, "factors": self.factor_names,
                "normalized_mutual_information": np.round(self.normalized_mi, 6).tolist(),
                "dimension_follows": self.follows()}


METRIC_NAMES = ("mig", "sap", "dci", "beta_vae", "factor_vae", "modularity")


def disentanglement(codes, factors, *, factor_names: list[str] | None = None, metrics=METRIC_NAMES,
                    num_train: int = 10000, num_test: int = 5000, dci_train: int | None = None,
                    dci_test: int | None = None, seed: int = 0,
                    binned: dict[str, int] | None = None) -> DisentanglementReport:
    """Every metric of :data:`METRIC_NAMES` asked for, on one pair. MIG and modularity use up to
    ``num_train`` examples (drawn with ``seed``); SAP and DCI disjoint train / test sets of
    ``num_train`` / ``num_test`` (DCI's can be made smaller: its boosted trees are the slow part);
    the BetaVAE and FactorVAE scores ``num_train`` training and ``num_test`` evaluation points.
    ``binned``: factors (name: distinct values) the caller already cut into bins, reported as this
    function reports those it cuts itself."""
    codes, index, cut = _checked(codes, factors)
    names = list(factor_names) if factor_names else [f"factor_{k}" for k in range(index.shape[1])]
    if len(names) != index.shape[1]:
        raise CvaeError(f"{len(names)} factor names for {index.shape[1]} factors")
    if len(set(names)) != len(names):
        raise CvaeError(f"factor names must differ; {sorted({n for n in names if names.count(n) > 1})} named twice")
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise CvaeError(f"unknown disentanglement metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    binned = {**(binned or {}), **{n: b for n, b in zip(names, cut) if b}}
    keep = varying(index)
    dropped = [n for n, k in zip(names, keep) if not k]
    index, names = index[:, keep], [n for n, k in zip(names, keep) if k]
    if not keep.any():
        raise CvaeError("every factor is constant over these examples; nothing to measure")
    rng = np.random.default_rng(seed)
    sub = rng.permutation(len(codes))[:num_train]
    scores, details, notes = {}, {}, []
    mi = mutual_information(codes[sub], index[sub])
    in_sub = varying(index[sub])  # a rare value may be absent from MIG's and modularity's examples
    if "mig" in metrics and in_sub.any():
        r = mig(codes[sub], index[sub])
        scores["mig"] = r["score"]
        details["mig_per_factor"] = {n: round(v, 6) for n, v in zip(names, r["per_factor"]) if v is not None}
    if not in_sub.all():
        notes.append(f"factor(s) {', '.join(n for n, k in zip(names, in_sub) if not k)} take one value over the "
                     f"{len(sub):,} examples MIG and modularity use, so those leave them out")
    one_factor = index.shape[1] < 2
    few = [m for m in ("beta_vae", "factor_vae", "modularity") if m in metrics] + (["dci_disentanglement"] if "dci" in metrics else [])
    if one_factor and few:
        notes.append(f"{', '.join(few)} compare factors and need at least two that vary (here: {', '.join(names)}); "
                     "not computed")
        metrics = [m for m in metrics if m not in few]
    if "modularity" in metrics and in_sub.sum() > 1:
        scores["modularity"] = modularity(codes[sub], index[sub])["score"]
    if "sap" in metrics:
        r = sap(codes, index, num_train=num_train, num_test=num_test, seed=seed)
        scores["sap"] = r["score"]
    if "dci" in metrics:
        r = dci(codes, index, num_train=dci_train or num_train, num_test=dci_test or num_test, seed=seed)
        scores.update({f"dci_{k}": r[k] for k in ("disentanglement", "completeness", "informativeness")
                       if not (one_factor and k == "disentanglement")})
        details["dci_importance"] = np.round(r["importance"], 6).tolist()
    if "beta_vae" in metrics:
        scores["beta_vae"] = beta_vae_score(codes, index, num_train=num_train, num_eval=num_test, seed=seed)["score"]
    if "factor_vae" in metrics:
        r = factor_vae_score(codes, index, num_train=num_train, num_eval=num_test, seed=seed)
        scores["factor_vae"] = r["score"]
        details["factor_vae_active_dimensions"] = r["active_dimensions"]
    protocol = {
        "follows": "google-research/disentanglement_lib, evaluation/metrics/{mig,sap_score,dci,beta_vae,factor_vae,"
                   "modularity_explicitness}.py",
        "codes": "posterior means E_q[z | x]", "n_examples": len(codes), "seed": seed,
        "bins": BINS, "mig_modularity_examples": len(sub), "sap_train_test": [num_train, num_test],
        "dci_train_test": [dci_train or num_train, dci_test or num_test],
        "dci_classifier": "sklearn GradientBoostingClassifier() defaults", "sap_classifier": "LinearSVC(C=0.01, balanced)",
        "beta_vae": f"{PAIRS} pairs per point, LogisticRegression(), {num_train} train / {num_test} eval points",
        "factor_vae": f"{PAIRS} examples per vote, dimensions with std < {PRUNE_STD} pruned, {num_train} train / "
                      f"{num_test} eval votes",
        "chance_of_beta_vae_and_factor_vae_scores": 1.0 / index.shape[1],
    }
    if dropped:
        protocol["constant_factors_left_out"] = dropped
    if binned:
        protocol["binned_factors"] = binned
        notes.append(f"factor(s) {', '.join(f'{n} ({b:,} values)' for n, b in binned.items())} have more than "
                     f"{MAX_FACTOR_VALUES} distinct values: continuous, so each was cut into {BINS} equal-width bins "
                     "(as the codes are) before scoring")
    active = int((codes.var(0) > ACTIVE_VARIANCE).sum())
    details["active_units"] = active
    if active == 0:
        notes.append(f"no latent dimension is active (the codes' variance over these examples is at most "
                            f"{ACTIVE_VARIANCE} in every dimension, Burda et al.'s test): the posterior has collapsed "
                            "and these scores measure noise; train longer (the default length for the data) or with "
                            "a smaller --beta")
    if notes:
        details["notes"] = notes
    return DisentanglementReport(scores=scores, details=details, protocol=protocol, normalized_mi=mi.normalized,
                                 factor_names=names)
