"""Ranking metrics of Liang et al. (2018) and the scorers they are measured on.

For each held-out user the scorer ranks every item from the folded-in ones; the folded-in items are
excluded (score -inf), and the scored items are the relevant ones:

    NDCG@k    = sum_{r <= k} [item at rank r is relevant] / log2(r + 1), divided by its largest value,
                sum_{r <= min(k, n)} 1 / log2(r + 1), n the user's number of scored items
    Recall@k  = (relevant items in the top k) / min(k, n)   (the paper's normalisation, not / n)

Each is averaged over users, with its standard error (standard deviation / sqrt(users)).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from .data import HeldOut, dense_rows

# A scorer maps a batch of fold-in rows (B, items) and their attribute codes (B, A) or None to scores.
Scorer = Callable[[torch.Tensor, "np.ndarray | None"], torch.Tensor]
METRICS = (("ndcg", 100), ("recall", 20), ("recall", 50))
GROUPS_FILE = "groups.safetensors"  # a run's group popularity (RUN/groups.safetensors), for --popularity-mix


def per_user_metrics(scores: torch.Tensor, fold_in: torch.Tensor, scored: sp.csr_matrix,
                     metrics=METRICS) -> dict[str, np.ndarray]:
    """NDCG@k / Recall@k of each user (row) of a batch; the fold-in items are excluded."""
    scores = scores.float().masked_fill(fold_in > 0, -math.inf)
    kmax = min(max(k for _, k in metrics), scores.shape[1])
    top = torch.topk(scores, kmax, dim=1).indices.numpy()  # (B, kmax), best first
    relevant = np.take_along_axis(scored.toarray() > 0, top, axis=1)  # (B, kmax); a batch is dense anyway
    n = scored.getnnz(axis=1)
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    out = {}
    for name, k in metrics:
        k_eff = min(k, kmax)
        if name == "ndcg":
            dcg = (relevant[:, :k_eff] * discount[:k_eff]).sum(1)
            ideal = np.array([discount[:min(m, k_eff)].sum() for m in n])
            out[f"ndcg@{k}"] = dcg / ideal
        else:
            out[f"recall@{k}"] = relevant[:, :k_eff].sum(1) / np.minimum(k, n)
    return out


@dataclass
class Figure:
    mean: float
    se: float | None  # None over a single user: no spread to estimate (JSON null, never NaN)
    users: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "se": self.se, "users": self.users}


def per_user_scores(score: Scorer, part: HeldOut, *, batch_size: int = 500, metrics=METRICS) -> dict[str, np.ndarray]:
    """Each metric for each user of ``part`` (in its order)."""
    values: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(part), batch_size):
        rows = np.arange(start, min(start + batch_size, len(part)))
        x = dense_rows(part.fold_in, rows)
        y = None if part.y is None else part.y[rows]
        s = score(x, y).cpu()
        for k, v in per_user_metrics(s, x, part.scored[rows], metrics).items():
            values.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in values.items()}


def summarise(values: np.ndarray) -> Figure:
    """Mean and standard error over users."""
    n = len(values)
    return Figure(float(values.mean()), float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None, n)


def evaluate_scorer(score: Scorer, part: HeldOut, *, batch_size: int = 500, metrics=METRICS) -> dict[str, Figure]:
    """Mean and standard error of each metric over the users of ``part``."""
    return {k: summarise(v) for k, v in per_user_scores(score, part, batch_size=batch_size, metrics=metrics).items()}


# -- baselines ------------------------------------------------------------------------------------

def popularity_scorer(train: sp.csr_matrix) -> Scorer:
    """Every user gets the items ranked by how many training users interacted with them."""
    counts = torch.from_numpy(np.asarray(train.sum(0), dtype=np.float32).ravel())

    def score(x, y=None):
        return counts.expand(len(x), -1)

    return score


class GroupPopularity:
    """Popularity within the user's attribute group (demographic popularity), smoothed towards the
    coarser groups: the attributes are ordered coarse to fine (fewest values first; a continuous one
    cut into ``bands`` quantile bands of the training users), and the share of group g's users with
    item i is p_g(i) = (n_g(i) + alpha p_parent(i)) / (N_g + alpha), the parent the group without its
    finest attribute, the root the global popularity. A group with few users leans on its parent.
    With no attributes it is the global popularity. Saved in a run as ``groups.safetensors``."""

    def __init__(self, cuts: list, order: list[int], tables: list[dict[tuple, np.ndarray]], global_share: np.ndarray):
        self.cuts, self.order, self.tables, self.global_share = cuts, order, tables, global_share

    @classmethod
    def fit(cls, train: sp.csr_matrix, y_train: np.ndarray | None, schema, *, alpha: float = 20.0,
            bands: int = 4) -> GroupPopularity:
        x = train.tocsr().astype(np.float64)
        global_share = np.asarray(x.mean(0)).ravel()
        if y_train is None or not schema:
            return cls([], [], [], global_share)
        y_train = np.asarray(y_train, dtype=np.float64)
        cuts, sizes = [], []
        for j, a in enumerate(schema.attributes):
            if a.kind == "continuous":
                edges = np.unique(np.quantile(y_train[:, j], np.linspace(0, 1, bands + 1)[1:-1]))
                cuts.append(edges)
                sizes.append(len(edges) + 1)
            else:
                cuts.append(None)
                sizes.append(len(a.classes))
        order = sorted(range(len(sizes)), key=lambda j: sizes[j])
        self = cls(cuts, order, [], global_share)
        k_train = self.keys(y_train)
        for depth in range(1, len(order) + 1):
            table = {}
            prefixes = [tuple(r) for r in k_train[:, :depth]]
            for g in set(prefixes):
                rows = np.flatnonzero([p == g for p in prefixes])
                parent = self.tables[-1].get(g[:-1], global_share) if depth > 1 else global_share
                counts = np.asarray(x[rows].sum(0)).ravel()
                table[g] = (counts + alpha * parent) / (len(rows) + alpha)
            self.tables.append(table)
        return self

    def keys(self, y: np.ndarray) -> np.ndarray:
        """(N, A) raw codes -> (N, A) group indices, coarse to fine."""
        y = np.asarray(y, dtype=np.float64)
        out = np.zeros((len(y), len(self.order)), dtype=np.int64)
        for k, j in enumerate(self.order):
            out[:, k] = np.searchsorted(self.cuts[j], y[:, j], side="right") if self.cuts[j] is not None \
                else np.nan_to_num(y[:, j], nan=-1).astype(np.int64)
        return out

    def shares(self, y: np.ndarray | None, n: int) -> np.ndarray:
        """(n, items): each user's group's shares (the global ones without attributes)."""
        if y is None or not self.order:
            return np.broadcast_to(self.global_share, (n, len(self.global_share)))
        out = []
        for key in self.keys(y):
            value = self.global_share
            for depth in range(1, len(self.order) + 1):  # the finest group the training users know
                value = self.tables[depth - 1].get(tuple(key[:depth]), value)
            out.append(value)
        return np.stack(out)

    def save(self, path) -> None:
        from ..runs import save_tensors

        tensors = {"global": torch.from_numpy(self.global_share)}
        for j, c in enumerate(self.cuts):
            if c is not None:
                tensors[f"cuts.{j}"] = torch.from_numpy(np.asarray(c, dtype=np.float64))
        for d, table in enumerate(self.tables, 1):
            groups = sorted(table)
            tensors[f"keys.{d}"] = torch.tensor(groups, dtype=torch.int64).reshape(len(groups), d)
            tensors[f"shares.{d}"] = torch.from_numpy(np.stack([table[g] for g in groups]))
        save_tensors(path, tensors, {"order": json.dumps(self.order), "attributes": str(len(self.cuts))})

    @classmethod
    def load(cls, path) -> GroupPopularity:
        from safetensors import safe_open

        from ..runs import load_tensors

        t = load_tensors(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        order, n_attr = json.loads(meta.get("order", "[]")), int(meta.get("attributes", "0"))
        cuts = [t[f"cuts.{j}"].numpy() if f"cuts.{j}" in t else None for j in range(n_attr)]
        tables = [{tuple(k): v for k, v in zip(t[f"keys.{d}"].tolist(), t[f"shares.{d}"].numpy())}
                  for d in range(1, len(order) + 1)]
        return cls(cuts, order, tables, t["global"].numpy())


def group_popularity_scorer(train: sp.csr_matrix, y_train: np.ndarray, schema, *, alpha: float = 20.0,
                            bands: int = 4) -> Scorer:
    """Every user gets the items ranked by their group's smoothed popularity (:class:`GroupPopularity`)."""
    groups = GroupPopularity.fit(train, y_train, schema, alpha=alpha, bands=bands)

    def score(x, y=None):
        return torch.from_numpy(groups.shares(y, len(x)).astype(np.float32))

    return score


def popularity_mix(score: Scorer, groups: GroupPopularity, k: float) -> Scorer:
    """A network's scorer blended with (demographic) popularity, by the user's history length n:
    log((1 - w) pi_model + w p_group), w = k / (k + n). A user with no history gets the popularity of
    their group; one with many items, nearly the model alone. ``score`` gives log-probabilities."""

    def mixed(x, y=None):
        log_pi = score(x, y).float()
        n = (x > 0).sum(1, keepdim=True).to(log_pi.dtype).to(log_pi.device)
        w = k / (k + n)
        p = torch.from_numpy(np.asarray(groups.shares(y, len(x)), dtype=np.float32)).to(log_pi.device)
        p = p / p.sum(1, keepdim=True)
        return torch.log((1 - w) * log_pi.exp() + w * p)

    return mixed


def ease_weights(train: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck 2019): the item-item weights B = argmin ||X - XB||^2 + lam ||B||^2 with diag(B) = 0,
    in closed form: P = (X^T X + lam I)^-1, B = -P / diag(P), diag(B) = 0. Dense (items x items)."""
    gram = (train.T @ train).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return b.astype(np.float32)


def ease_scorer(weights: np.ndarray) -> Scorer:
    w = torch.from_numpy(weights)

    def score(x, y=None):
        return x @ w

    return score


def run_scorer(model) -> Scorer:
    """The scorer a trained run recommends with: the network's (or EASE's) scores, blended with the
    run's saved group popularity when it was trained with ``--popularity-mix k``."""
    score = model_scorer(model)
    k = float(model.run_config.get("recommend", {}).get("popularity_mix") or 0.0)
    if k and model.run_dir is not None:
        from ..errors import CvaeError

        path = Path(model.run_dir) / GROUPS_FILE
        if not path.is_file():
            raise CvaeError(f"{model.run_dir} was trained with --popularity-mix {k:g} but has no {GROUPS_FILE}; "
                            "train the run again")
        score = popularity_mix(score, GroupPopularity.load(path), k)
    return score


def model_scorer(model, schema=None) -> Scorer:
    """A trained Mult-VAE / Mult-DAE as a scorer: log pi at the posterior mean of z."""

    def score(x, y=None):
        c = None
        if model.schema:
            c = model.schema.encode(torch.as_tensor(y, dtype=torch.float32)).to(model.device)
        return model.item_scores(x.to(model.device), c)

    return score
