"""Recommend items with a trained Mult-VAE / Mult-DAE run: the top items for users given their
histories (and their attributes, for a conditioned model), the items they have seen excluded.

Rules for what a history holds: duplicate (user, item) rows count once; items the model does not know
are dropped with one warning line naming a few; a user left with no known item is an error naming the
user and the items (the model has nothing to start from); with a rating column, rows below the run's
``min_rating`` are dropped, as in training.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import CvaeError, CvaeWarning
from ..runs import atomic_write
from .data import dense_rows, read_rows, read_user_attributes, user_codes
from .metrics import run_scorer
from .train import read_items


def load_recommender(run, *, device: str = "cpu"):
    """The model of a recommender run folder: a Mult-VAE / Mult-DAE, or an EASE run's item weights."""
    from ..api import load
    from ..runs import read_config
    from .ease import EaseRecommender

    if read_config(run).get("recommend", {}).get("model") == "ease":
        return EaseRecommender.load(run, device=device)
    return load(run, device=device)


def _load(run):
    model = load_recommender(run) if isinstance(run, (str, Path)) else run
    if getattr(model, "item_scores", None) is None or model.run_dir is None:
        raise CvaeError(f"{run} is not a recommender run (train one with `cvae recommend train`)")
    return model


def recommend(run, histories: dict[str, list[str]], *, top: int = 20,
              attributes: dict[str, dict[str, str]] | None = None, batch_size: int = 500) -> list[tuple]:
    """Rows (user, rank, item, score) of the ``top`` items for each user of ``histories`` (user -> the
    item ids they interacted with), best first; ``score`` is the model's probability of the item.
    ``attributes`` (user -> {attribute: value}) is needed by a conditioned model, which also recommends for
    new users, whose history is an empty list, from their attributes alone (the cold start measured in the
    README: better than the same model without attributes, and than the popularity within the user's group)."""
    model = _load(run)
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise CvaeError(f"--top must be a whole number of at least 1, got {top!r}")
    items, _ = read_items(model.run_dir)
    width = model.weights.shape[0] if hasattr(model, "weights") else model.config.data_shape[0]
    if len(items) != width:
        raise CvaeError(f"{model.run_dir / 'items.csv'} lists {len(items):,} items but the model scores {width:,}: the "
                        "run folder is damaged; restore items.csv from a copy of the run, or train the run again")
    index = {item: j for j, item in enumerate(items)}
    users = list(histories)
    if not users:
        raise CvaeError("the history holds no users; give at least one (user, item) row")
    histories = {user: _item_ids(user, histories[user]) for user in users}
    unknown: dict[str, list[str]] = {}
    rows, cols = [], []
    for r, user in enumerate(users):
        known = sorted({index[i] for i in histories[user] if i in index})
        missing = sorted({i for i in histories[user] if i not in index})
        if missing:
            unknown[user] = missing
        if not histories[user] and not model.schema:
            raise CvaeError(f"user {user!r} has no history, and this model uses no user attributes: it has nothing to "
                            "recommend from; give the user at least one item (a model trained with --condition "
                            "recommends for new users from their attributes alone)")
        if not known and histories[user]:
            shown = ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise CvaeError(f"user {user!r} has no item this model knows (unknown: {shown or 'none given'}); the "
                            f"model recommends from items of its training data ({len(items):,} items, listed in "
                            f"{model.run_dir / 'items.csv'}): give the user at least one of them")
        rows.extend([r] * len(known))
        cols.extend(known)
    if unknown:
        n = sum(len(v) for v in unknown.values())
        first = next(iter(unknown.items()))
        warnings.warn(f"{n:,} item(s) of {len(unknown):,} user(s) are unknown to the model and dropped (e.g. user "
                      f"{first[0]!r}: {', '.join(map(repr, first[1][:3]))})", CvaeWarning, stacklevel=2)
    x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), len(items)))
    codes = _codes(model, users, attributes)
    score = run_scorer(model)
    top = min(top, len(items))
    as_probability = getattr(model, "scores_are_log_probabilities", True)
    out, saw_all = [], []
    for start in range(0, len(users), batch_size):
        idx = np.arange(start, min(start + batch_size, len(users)))
        xb = dense_rows(x, idx, model.device)
        log_pi = score(xb, None if codes is None else codes[idx]).masked_fill(xb > 0, -np.inf)
        values, best = torch.topk(log_pi, top, dim=1)
        for b, r in enumerate(idx):
            ranked = [(j, v) for j, v in zip(best[b].tolist(), values[b].tolist()) if np.isfinite(v)]  # not seen
            out.extend((users[r], rank, str(items[j]), float(np.exp(v)) if as_probability else float(v))
                       for rank, (j, v) in enumerate(ranked, 1))
            if not ranked:
                saw_all.append(users[r])
    if saw_all:
        warnings.warn(f"{len(saw_all):,} user(s) have seen every item the model knows, so nothing is left to recommend "
                      f"to them (e.g. {', '.join(map(repr, saw_all[:3]))})", CvaeWarning, stacklevel=2)
    return out


def _item_ids(user, history) -> list[str]:
    """A user's items as the run's ids (text: items.csv's), from a list of strings or whole numbers."""
    if isinstance(history, (str, bytes)) or not hasattr(history, "__iter__"):
        raise CvaeError(f"the history of user {user!r} is {history!r}, not a list of item ids; give a list such as "
                        "['i1', 'i7'] (an empty list for a new user)")
    out = []
    for item in history:
        if isinstance(item, (bool, float, np.floating)) or not isinstance(item, (str, int, np.integer)):
            raise CvaeError(f"user {user!r} has the item {item!r}: item ids are text or whole numbers, as in the "
                            "run's items.csv")
        out.append(str(item))
    return out


def _codes(model, users: list[str], attributes: dict | None) -> np.ndarray | None:
    if not model.schema:
        return None
    names = ", ".join(model.schema.names)
    if not attributes:
        raise CvaeError(f"this model is conditioned on the user's {names}: pass --user-attributes FILE, a CSV with "
                        f"a user column and the columns {names}")
    missing = [u for u in users if u not in attributes]
    if missing:
        raise CvaeError(f"the user attributes have no row for user(s) {', '.join(map(repr, missing[:5]))}; this model "
                        f"is conditioned on {names}: add a row for each user")
    columns = {a: np.array([str(attributes[u].get(a, "")) for u in users]) for a in model.schema.names}
    return user_codes(model.schema, columns, users)


def read_histories(path, *, min_rating: float | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """user -> items of a CSV of (user, item[, rating]) rows, and notes on what was dropped."""
    users, items, ratings = read_rows(path, what="history file")
    notes = []
    # every user of the file, in its order: one whose rows are all dropped below is kept with no item, so that
    # recommend names them (or, for a conditioned model, recommends from their attributes alone)
    out: dict[str, list[str]] = {u: [] for u in users.tolist()}
    if ratings is not None and min_rating is not None:
        keep = ratings >= min_rating
        if (~keep).any():
            notes.append(f"{int((~keep).sum()):,} row(s) rated below {min_rating:g} (the run's --min-rating) dropped")
        users, items = users[keep], items[keep]
    pairs = set()
    duplicates = 0
    for u, i in zip(users.tolist(), items.tolist()):
        if (u, i) in pairs:
            duplicates += 1
            continue
        pairs.add((u, i))
        out[u].append(i)
    if duplicates:
        notes.append(f"{duplicates:,} duplicate (user, item) row(s) counted once")
    if not any(out.values()):
        raise CvaeError(f"{path}: no interaction is left (every row was rated below {min_rating:g}); the model needs "
                        "at least one item per user")
    return out, notes


def recommend_file(run, history: str | Path | None, output: str | Path, *, top: int = 20,
                   user_attributes: str | Path | None = None) -> tuple[Path, int, list[str]]:
    """``cvae recommend RUN --user-history FILE --top K -o recs.csv``: writes user, rank, item, score.
    Without a history file (``history`` None) a conditioned model recommends for every user of the
    attributes file from the attributes alone: new users."""
    model = _load(run)
    if history is None and not model.schema:
        raise CvaeError("--user-history FILE is needed: this model uses no user attributes, so it recommends from the "
                        "items a user has seen (a model trained with --condition recommends for new users from "
                        "--user-attributes alone)")
    if model.schema and not user_attributes:
        _codes(model, [], None)  # the error that says which attributes to give, before anything is read
    notes: list[str] = []
    if history is not None:
        min_rating = model.run_config.get("recommend", {}).get("min_rating")
        histories, notes = read_histories(history, min_rating=min_rating)
        emptied = [u for u, items in histories.items() if not items]  # every row below --min-rating
        if emptied:
            named = f"{', '.join(map(repr, emptied[:5]))}{' ...' if len(emptied) > 5 else ''}"
            if model.schema:
                notes.append(f"{len(emptied):,} user(s) have no row rated {min_rating:g} or more: recommended from "
                             f"their attributes alone ({named})")
            else:  # nothing to start from: left out, by name (the others still get theirs)
                histories = {u: items for u, items in histories.items() if items}
                notes.append(f"{len(emptied):,} user(s) have no row rated {min_rating:g} or more, so nothing to "
                             f"recommend from, and are left out: {named}")
        for note in notes:
            warnings.warn(f"{history}: {note}", CvaeWarning, stacklevel=2)
    attributes = None
    if user_attributes:
        ids, columns = read_user_attributes(user_attributes)
        attributes = {u: {k: v[j] for k, v in columns.items()} for j, u in enumerate(ids)}
        if history is None:
            histories = {u: [] for u in ids}  # new users: the attributes alone
    recs = recommend(model, histories, top=top, attributes=attributes)
    output = Path(output)
    if output.suffix.lower() != ".csv":
        raise CvaeError(f"-o {output}: recommendations are written as a .csv file (user, rank, item, score)")

    def w(tmp):
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["user", "rank", "item", "score"])
            out.writerows((u, r, i, f"{s:.6g}") for u, r, i, s in recs)

    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, w)
    return output, len(histories), notes
