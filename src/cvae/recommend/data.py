"""Interaction data for recommendation: (user, item[, rating, timestamp]) rows, kept sparse.

Sources: ``ml-100k`` (MovieLens-100K, read from the files the ``recbole`` package ships: install it
with ``python -m pip install --no-deps recbole==1.2.1``; none of its code is imported), a CSV or
TSV file of rows (a header naming the columns, or user, item[, rating[, timestamp]] in that order),
or a scipy sparse matrix saved with ``scipy.sparse.save_npz`` (rows users, columns items).

The user-item matrix is a ``scipy.sparse.csr_matrix`` throughout: it becomes dense only a batch of
users at a time (:func:`dense_rows`).

The protocol of Liang et al. (2018) and their code (github.com/dawenl/vae_cf) is :func:`split`:
ratings binarised (``min_rating``), users with at least ``min_user_interactions`` kept, whole users
held out for validation and test, the items those of the training users, and each held-out user's
items split at random into 80% folded in (the model's input) and 20% scored.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..conditions import (
    CONDITION_LIMIT,
    ConditionSchema,
    categorical_from_values,
    continuous_from_values,
)
from ..data.files import find_file
from ..errors import CvaeError, CvaeWarning

RECBOLE_INSTALL = "python -m pip install --no-deps recbole==1.2.1"
NAMED = {
    # name: (folder inside recbole's package, interactions file, user attributes file, defaults)
    "ml-100k": ("dataset_example/ml-100k", "ml-100k.inter", "ml-100k.user",
                {"min_rating": 4.0, "condition": "age:continuous,gender,occupation"}),
}
USER_NAMES = ("user", "userid", "user_id", "uid", "users", "customer", "customer_id")
ITEM_NAMES = ("item", "itemid", "item_id", "iid", "items", "movieid", "movie_id", "product", "product_id")
RATING_NAMES = ("rating", "ratings", "score", "value", "stars")
TIME_NAMES = ("timestamp", "time", "ts", "date")


@dataclass
class Interactions:
    """Who interacted with what: a sparse (users x items) matrix of 0/1, the ids of its rows and
    columns, and the users' attributes (raw columns aligned with the rows; empty when none)."""

    name: str
    users: np.ndarray  # (U,) str
    items: np.ndarray  # (I,) str
    matrix: sp.csr_matrix  # (U, I) float32, 1 where the user interacted with the item
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)  # the source's own settings (ml-100k: min_rating, condition)
    notes: list[str] = field(default_factory=list)  # what reading did (rows dropped, duplicates)


# -- reading ---------------------------------------------------------------------------------------

def _column_name(text: str) -> str:
    """``user_id:token`` (RecBole's atomic files) -> ``user_id``; case and spaces ignored."""
    return text.strip().split(":", 1)[0].strip().lower()


def _delimiter(first_line: str) -> str:
    return "\t" if "\t" in first_line else ","


def _open_text(path: Path, what: str):
    if not path.is_file():
        raise CvaeError(f"{what} {path}: no such file")
    try:
        f = open(path, newline="", encoding="utf-8")
        f.readline()
        f.seek(0)
        return f
    except UnicodeDecodeError:
        raise CvaeError(f"{what} {path} is not UTF-8 text; save it as a UTF-8 CSV file") from None
    except OSError as e:
        raise CvaeError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_rows(path: str | os.PathLike, *, what: str = "interaction file",
              need_rating: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The (user, item, rating-or-None) columns of a CSV/TSV file of interactions.

    A first line naming a user and an item column (``user``, ``userId``, ``item``, ``movieId``, ...)
    is a header; otherwise the columns are user, item[, rating[, timestamp]]. A rating that is not a
    finite number, an empty user or item, or a short row is an error naming the line."""
    path = Path(path)
    with _open_text(path, what) as f:
        try:
            first = f.readline()
            f.seek(0)
            reader = csv.reader(f, delimiter=_delimiter(first))
            rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as e:
            raise CvaeError(f"cannot read {what} {path}: {e}; save it as a UTF-8 CSV file") from None
    if not rows:
        raise CvaeError(f"{what} {path} is empty; it needs one (user, item) row per interaction")
    names = [_column_name(c) for c in rows[0]]
    if any(n in USER_NAMES for n in names) and any(n in ITEM_NAMES for n in names):
        cols = {"user": _find(names, USER_NAMES), "item": _find(names, ITEM_NAMES),
                "rating": _find(names, RATING_NAMES)}
        start = 1
    else:
        if len(rows[0]) < 2:
            raise CvaeError(f"{path}, line 1: one column; an interaction file needs user and item columns "
                            "(a header such as 'user,item,rating' names them)")
        cols = {"user": 0, "item": 1, "rating": 2 if len(rows[0]) > 2 else None}
        start = 0
    body = rows[start:]
    width = max(v for v in cols.values() if v is not None) + 1
    users, items, ratings = [], [], []
    rc = cols["rating"]
    for number, row in enumerate(body, start=start + 1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line
        if len(row) < width:
            raise CvaeError(f"{path}, line {number}: {len(row)} column(s) where {width} were expected")
        u, i = row[cols["user"]].strip(), row[cols["item"]].strip()
        if not u or not i:
            raise CvaeError(f"{path}, line {number}: an empty {'user' if not u else 'item'} id; fill or drop that row")
        users.append(u)
        items.append(i)
        if rc is not None:
            text = row[rc].strip()
            try:
                r = float(text)
            except ValueError:
                header = (" (the first line was read as data: a header must name a user column such as 'user' or "
                          "'userId' and an item column such as 'item' or 'movieId')") if number == 1 and not start else ""
                raise CvaeError(f"{path}, line {number}, column {rows[0][rc] if start else rc + 1}: rating {text!r} is "
                                f"not a number; fix or drop that row{header}") from None
            if not math.isfinite(r):
                raise CvaeError(f"{path}, line {number}: rating {text!r} is not a finite number; fix or drop that row")
            ratings.append(r)
    if not users:
        raise CvaeError(f"{what} {path} holds no interactions (only a header); it needs one (user, item) row each")
    if not start and len(users) > 1 and all(c.strip().replace("_", "").isalpha() for c in rows[0][:width]) \
            and users[0] not in users[1:] and items[0] not in items[1:]:
        warnings.warn(f"{path}: line 1 ({', '.join(c.strip() for c in rows[0][:width])}) is read as an interaction; "
                      "if it is a header, name the columns as cvae knows them: a user column "
                      f"({', '.join(USER_NAMES[:4])}, ...) and an item column ({', '.join(ITEM_NAMES[:4])}, ...)",
                      CvaeWarning, stacklevel=2)
    if need_rating and rc is None:
        raise CvaeError(f"{path} has no rating column, so --min-rating cannot apply; leave it out (every row is "
                        "then an interaction) or add a 'rating' column")
    return np.array(users), np.array(items), (np.array(ratings, dtype=np.float64) if rc is not None else None)


def _find(names: list[str], aliases: tuple[str, ...]) -> int | None:
    for alias in aliases:
        if alias in names:
            return names.index(alias)
    return None


def read_user_attributes(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A CSV/TSV of users' attributes: a user column (named like ``user``/``user_id``, else the first)
    and one column per attribute. Returns the user ids and the raw columns (strings)."""
    path = Path(path)
    with _open_text(path, "user attribute file") as f:
        try:
            first = f.readline()
            f.seek(0)
            rows = list(csv.reader(f, delimiter=_delimiter(first)))
        except (UnicodeDecodeError, csv.Error) as e:
            raise CvaeError(f"cannot read user attribute file {path}: {e}; save it as a UTF-8 CSV file") from None
    if len(rows) < 2:
        raise CvaeError(f"user attribute file {path} needs a header (user, then attribute names) and one row per user")
    names = [_column_name(c) for c in rows[0]]
    uc = _find(names, USER_NAMES)
    uc = 0 if uc is None else uc
    body = [r for r in rows[1:] if r and any(c.strip() for c in r)]
    for number, r in enumerate(body, start=2):
        if len(r) != len(names):
            raise CvaeError(f"{path}, line {number}: {len(r)} column(s) where the header has {len(names)}")
    users = np.array([r[uc].strip() for r in body])
    uniq, counts = np.unique(users, return_counts=True)
    if (counts > 1).any():
        raise CvaeError(f"{path}: user {uniq[counts > 1][0]!r} has {counts[counts > 1][0]} rows; give each user one row")
    columns = {n: np.array([r[j].strip() for r in body]) for j, n in enumerate(names) if j != uc}
    return users, columns


def _recbole_folder(sub: str) -> Path | None:
    spec = find_spec("recbole")  # finds the package without importing it (its dependencies are heavy)
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        if (Path(base) / sub).is_dir():
            return Path(base) / sub
    return None


def named_files(name: str, data_dir=None) -> tuple[Path, Path | None]:
    """The interaction and user files of a named data set: --data-dir, $CVAE_DATA, the cache, then the
    files of the installed ``recbole`` package."""
    sub, inter, user, _ = NAMED[name]
    found = find_file(name, [inter], data_dir)
    if found is not None:
        return found, find_file(name, [user], data_dir)
    folder = _recbole_folder(sub)
    if folder is not None and (folder / inter).is_file():
        return folder / inter, (folder / user if (folder / user).is_file() else None)
    raise CvaeError(f"MovieLens-100K ({name}) was not found: install the package that ships its files with "
                    f"`{RECBOLE_INSTALL}` (cvae reads its data files and imports none of its code), or put "
                    f"{inter} and {user} in {name}/ under --data-dir DIR")


def load_interactions(source: str, *, data_dir=None, min_rating: float | None = None,
                      user_attributes: str | None = None) -> Interactions:
    """Read ``source`` (``ml-100k``, a CSV/TSV file, or a ``.npz`` sparse matrix) into
    :class:`Interactions`: rows with a rating below ``min_rating`` dropped, duplicates counted once."""
    notes: list[str] = []
    defaults: dict = {}
    attr_path = Path(user_attributes) if user_attributes else None
    if source in NAMED:
        inter, user_file = named_files(source, data_dir)
        defaults = dict(NAMED[source][3])
        attr_path = attr_path or user_file
        min_rating = defaults["min_rating"] if min_rating is None else min_rating
        users, items, ratings = read_rows(inter)
        name = source
    elif str(source).endswith(".npz"):
        if min_rating is not None:
            raise CvaeError("--min-rating applies to a file of ratings; a sparse matrix file is read as it is "
                            "(every non-zero entry an interaction)")
        return _from_matrix(Path(source), attr_path, notes)
    else:
        path = Path(source)
        if not path.exists():
            known = ", ".join(NAMED)
            raise CvaeError(f"--data {source}: no such file, and not a named data set ({known})")
        users, items, ratings = read_rows(path, need_rating=min_rating is not None)
        name = path.stem
    if ratings is not None and min_rating is not None:
        keep = ratings >= min_rating
        notes.append(f"{int((~keep).sum()):,} of {len(keep):,} rows have a rating below {min_rating:g} and are "
                     f"dropped (the ratings binarised as Liang et al. 2018 do)")
        users, items = users[keep], items[keep]
        if not len(users):
            raise CvaeError(f"no rating reaches --min-rating {min_rating:g}; lower it")
    uid, urow = np.unique(users, return_inverse=True)
    iid, icol = np.unique(items, return_inverse=True)
    matrix = sp.csr_matrix((np.ones(len(urow), np.float32), (urow, icol)), shape=(len(uid), len(iid)))
    duplicates = len(urow) - matrix.nnz  # csr_matrix sums duplicates: count them, then set them to 1
    matrix.data[:] = 1.0
    if duplicates:
        notes.append(f"{duplicates:,} duplicate (user, item) row(s) counted once")
        warnings.warn(f"{source}: {duplicates:,} duplicate (user, item) row(s) are counted once", CvaeWarning,
                      stacklevel=2)
    attributes = _attributes_for(uid, attr_path) if attr_path else {}
    return Interactions(name, uid.astype(str), iid.astype(str), matrix, attributes, defaults, notes)


def _from_matrix(path: Path, attr_path: Path | None, notes: list[str]) -> Interactions:
    try:
        matrix = sp.load_npz(path).tocsr().astype(np.float32)
    except FileNotFoundError:
        raise CvaeError(f"--data {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a .npy named .npz: TypeError
        raise CvaeError(f"cannot read {path} as a sparse matrix saved by scipy.sparse.save_npz ({e})") from None
    if matrix.nnz and not np.isfinite(matrix.data).all():
        raise CvaeError(f"{path} holds NaN or infinite entries; a sparse interaction matrix holds counts")
    matrix.data = (matrix.data != 0).astype(np.float32)
    matrix.eliminate_zeros()
    users = np.array([str(i) for i in range(matrix.shape[0])])
    items = np.array([str(i) for i in range(matrix.shape[1])])
    attributes = _attributes_for(users, attr_path) if attr_path else {}
    return Interactions(path.stem, users, items, matrix, attributes, {}, notes)


def _attributes_for(users: np.ndarray, path: Path) -> dict[str, np.ndarray]:
    ids, columns = read_user_attributes(path)
    where = {u: i for i, u in enumerate(ids)}
    missing = [str(u) for u in users if u not in where]
    if missing:
        raise CvaeError(f"{path} has no row for {len(missing):,} user(s) of the interactions (e.g. "
                        f"{', '.join(map(repr, missing[:3]))}); add them, or train without --user-attributes")
    rows = np.array([where[u] for u in users])
    return {n: col[rows] for n, col in columns.items()}


def condition_schema(attributes: dict[str, np.ndarray], spec: str | None,
                     where: str = "the user attributes") -> tuple[ConditionSchema, np.ndarray | None]:
    """The schema of the attributes ``spec`` names (``age:continuous,gender``; ``none``) and their raw
    codes per user (U, A). A column of numbers is continuous unless it has few whole values or says
    ``:categorical``; text is categorical."""
    from ..data.core import parse_condition_spec

    if spec is None or str(spec).strip() in ("", "none"):
        return ConditionSchema(), None
    parts = parse_condition_spec(spec, list(attributes), where)
    attrs, codes = [], []
    for name, kind in parts:
        values = attributes[name]
        numbers = _as_numbers(values)
        if kind is None:
            whole = numbers is not None and np.all(numbers == np.round(numbers))
            kind = "categorical" if numbers is None or (whole and len(np.unique(numbers)) <= 50) else "continuous"
        if kind == "continuous":
            if numbers is None:
                bad = next(v for v in values if _as_numbers(np.array([v])) is None)
                raise CvaeError(f"condition {name!r} was declared continuous but holds {bad!r}, not a number")
            attr, code = continuous_from_values(name, numbers)
        else:
            attr, code = categorical_from_values(name, values)
        attrs.append(attr)
        codes.append(code)
    return ConditionSchema(attrs), np.stack(codes, axis=1).astype(np.float32)


def _as_numbers(values: np.ndarray) -> np.ndarray | None:
    try:
        out = values.astype(np.float64)
    except ValueError:
        return None
    return out if np.isfinite(out).all() else None


def user_codes(schema: ConditionSchema, attributes: dict[str, np.ndarray], users: list | None = None) -> np.ndarray:
    """Raw codes (U, A) of users' attribute values under a trained model's ``schema`` (an unknown
    category or a value that is not a number is an error naming it, and the user where ``users`` are given)."""
    cols = []
    for a in schema.attributes:
        if a.name not in attributes:
            raise CvaeError(f"the user attributes have no column {a.name!r}; this model is conditioned on "
                            f"{', '.join(schema.names)}")
        col = []
        for i, v in enumerate(attributes[a.name]):
            try:
                col.append(a.code(v))
            except CvaeError as e:
                raise (CvaeError(f"user {str(users[i])!r}: {e}") if users is not None else e) from None
        cols.append(col)
    codes = np.array(cols, dtype=np.float64).T.reshape(-1, len(schema.attributes))
    far = schema.far_value(codes)  # past it the model's outputs overflow (a user silently dropped)
    if far is not None:
        j, i = far
        a = schema.attributes[j]
        raise CvaeError(f"user attribute {a.name!r} = {attributes[a.name][i]} is more than {CONDITION_LIMIT:,.0f} "
                        f"standard deviations from its training mean ({a.mean:.4g}, standard deviation {a.std:.4g}); "
                        "give values near the training range")
    return codes.astype(np.float32)


# -- the protocol of Liang et al. (2018) -------------------------------------------------------------

@dataclass
class HeldOut:
    """Held-out users: the items folded in (the model's input) and those scored, (N, items) each."""

    users: np.ndarray  # (N,) ids
    fold_in: sp.csr_matrix
    scored: sp.csr_matrix
    y: np.ndarray | None  # (N, A) raw attribute codes

    def __len__(self) -> int:
        return self.fold_in.shape[0]


@dataclass
class Splits:
    """Training users (all their items) and validation / test users (fold-in and scored items)."""

    name: str
    items: np.ndarray  # (I,) ids of the model's items: those of the training users
    train_users: np.ndarray
    train: sp.csr_matrix  # (U_train, I)
    y_train: np.ndarray | None
    val: HeldOut
    test: HeldOut
    schema: ConditionSchema
    meta: dict


def split(data: Interactions, *, condition: str | None = None, heldout_users: float = 0.1,
          heldout_fraction: float = 0.2, min_user_interactions: int = 5, seed: int = 0, folds: int = 0,
          fold: int = 0) -> Splits:
    """The paper's protocol on ``data`` (see the module's docstring). ``heldout_users`` below 1 is the
    share of users held out for validation and again for test; from 1 on, their number each.

    ``folds`` K >= 3 instead cuts the users (shuffled by ``seed``) into K folds: fold ``fold`` is the
    test users, the next one (cyclically) the validation users, the other K - 2 train. Run over every
    fold, each user is a test user once, with a model that never saw them."""
    if not 0 < heldout_fraction < 1:
        raise CvaeError(f"--heldout-fraction must lie between 0 and 1, got {heldout_fraction}")
    if folds and not (isinstance(folds, int) and folds >= 3 and isinstance(fold, int) and 0 <= fold < folds):
        raise CvaeError(f"--folds K needs a whole K of at least 3 and --fold from 0 to K - 1, got --folds {folds!r} "
                        f"--fold {fold!r}")
    if condition not in (None, "none") and not data.attributes:
        raise CvaeError(f"{data.name} has no user attributes to condition on; pass --user-attributes FILE or "
                        "--condition none")
    schema, codes = condition_schema(data.attributes, condition, f"the user attributes of {data.name}")
    matrix = data.matrix
    counts = np.diff(matrix.indptr)
    kept = np.flatnonzero(counts >= min_user_interactions)
    if len(kept) < 3:
        raise CvaeError(f"{len(kept):,} of the {len(counts):,} users have at least --min-user-interactions "
                        f"{min_user_interactions} interactions; training, validation and test need at least one each: "
                        "lower --min-user-interactions (default 5) or give more data")
    n = len(kept)
    rng = np.random.default_rng(seed)
    if folds:
        if n < folds:
            raise CvaeError(f"{n:,} users have at least {min_user_interactions} interactions, fewer than --folds "
                            f"{folds}: give more data or fewer folds")
        order = kept[rng.permutation(n)]
        parts = np.array_split(order, folds)
        test_rows, val_rows = parts[fold], parts[(fold + 1) % folds]
        train_rows = np.sort(np.concatenate([p for j, p in enumerate(parts) if j not in (fold, (fold + 1) % folds)]))
        rng = np.random.default_rng([seed, fold])  # each fold's own fold-in draws
    else:
        n_h = int(round(heldout_users * n)) if heldout_users < 1 else int(heldout_users)
        if heldout_users <= 0 or n - 2 * n_h < 1 or n_h < 1:
            raise CvaeError(f"{n:,} users have at least {min_user_interactions} interactions; --heldout-users "
                            f"{heldout_users:g} leaves {max(n - 2 * n_h, 0):,} of them to train on and {n_h:,} each "
                            "for validation and test: give more data or change --heldout-users")
        order = kept[rng.permutation(n)]
        val_rows, test_rows, train_rows = order[:n_h], order[n_h:2 * n_h], np.sort(order[2 * n_h:])
    train_full = matrix[train_rows]
    item_cols = np.flatnonzero(np.asarray(train_full.sum(0)).ravel() > 0)
    train = train_full[:, item_cols].tocsr()
    held = {}
    dropped = 0
    for name, rows in (("val", val_rows), ("test", test_rows)):
        part, _ = _fold_in_split(matrix[rows][:, item_cols].tocsr(), heldout_fraction, rng)
        keep = np.flatnonzero(part[1].getnnz(axis=1) > 0)  # users with nothing to score are not evaluated
        dropped += len(rows) - len(keep)
        if not len(keep):
            raise CvaeError(f"none of the {len(rows):,} {'validation' if name == 'val' else 'test'} users has an item to "
                            f"score: a held-out user is scored on --heldout-fraction {heldout_fraction:g} of their items, "
                            "which must come to at least 1 of 5 or more items; raise --heldout-fraction (default 0.2) "
                            "or --min-user-interactions (default 5), or give the users more items")
        held[name] = HeldOut(data.users[rows][keep], part[0][keep], part[1][keep], None if codes is None
                             else codes[rows][keep])
    meta = {"users": int(matrix.shape[0]), "items": int(matrix.shape[1]), "interactions": int(matrix.nnz),
            "users_kept": n, "train_users": len(train_rows), "val_users": len(held["val"]),
            "test_users": len(held["test"]), "model_items": len(item_cols),
            "heldout_users_not_evaluated": dropped, "notes": list(data.notes)}
    return Splits(data.name, data.items[item_cols], data.users[train_rows], train,
                  None if codes is None else codes[train_rows], held["val"],
                  held["test"], schema, meta)


def _fold_in_split(m: sp.csr_matrix, fraction: float, rng: np.random.Generator):
    """Each row's items split at random: ``int(fraction * n)`` scored, the rest folded in (rows with
    fewer than 5 items are all folded in, as in the paper's code)."""
    scored = np.zeros(m.nnz, dtype=bool)
    lost = 0
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        if hi - lo < 5:
            lost += 1
            continue
        scored[lo + rng.choice(hi - lo, size=int(fraction * (hi - lo)), replace=False)] = True
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    ones = np.ones(m.nnz, np.float32)

    def part(mask):
        return sp.csr_matrix((ones[mask], (rows[mask], m.indices[mask])), shape=m.shape)

    return (part(~scored), part(scored)), lost


def truncate_fold_in(part: HeldOut, max_items: int, seed: int) -> HeldOut:
    """The same users and scored items, each user's fold-in cut to at most ``max_items`` random items:
    cold-start users."""
    rng = np.random.default_rng(seed)
    m = part.fold_in
    rows, cols = [], []
    for r in range(m.shape[0]):
        items = m.indices[m.indptr[r]:m.indptr[r + 1]]
        if len(items) > max_items:
            items = rng.choice(items, size=max_items, replace=False)
        rows.extend([r] * len(items))
        cols.extend(items)
    fold = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=m.shape)
    return HeldOut(part.users, fold, part.scored, part.y)


def dense_rows(m: sp.csr_matrix, rows, device="cpu") -> torch.Tensor:
    """Rows of a sparse matrix as a dense float32 tensor: the only place a batch becomes dense."""
    return torch.from_numpy(m[rows].toarray().astype(np.float32, copy=False)).to(device)
