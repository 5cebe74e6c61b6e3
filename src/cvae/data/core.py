"""From a source name or path to train / validation / test tensors and a condition schema."""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..conditions import (
    Attribute,
    ConditionSchema,
    categorical_from_values,
    class_text,
    continuous_from_values,
    missing_mask,
    split_quoted,
)
from ..errors import CvaeError, CvaeWarning
from .sources import (
    MAX_ABS,
    NAMED_SOURCES,
    TABLE_SUFFIXES,
    RawData,
    load_array_file,
    load_csv,
    load_image_folder,
)


@dataclass
class Dataset:
    """``x``: (N, *shape) float32 in model units; ``y``: (N, A) raw condition codes."""

    x: torch.Tensor
    y: torch.Tensor
    ids: list | None = None
    labels: np.ndarray | None = None  # class indices of the data's 'label' column, condition or not (for pictures)
    factors: np.ndarray | None = None  # (N, F) class indices of the data's factors of variation (held out)

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device) -> Dataset:
        return Dataset(self.x.to(device), self.y.to(device), self.ids, self.labels, self.factors)


@dataclass
class DataSplits:
    name: str
    kind: str  # "image" | "table" | "signal" | "sequence"
    schema: ConditionSchema
    train: Dataset
    val: Dataset | None
    test: Dataset | None
    binary: bool = False
    standardize: bool = False
    loc: np.ndarray | None = None  # feature means (standardize)
    scale: np.ndarray | None = None  # feature standard deviations (standardize)
    meta: dict = field(default_factory=dict)
    label_classes: list[str] | None = None  # names of the classes in Dataset.labels
    factor_names: list[str] = field(default_factory=list)  # the columns of Dataset.factors

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def semi_supervised(self) -> bool:
        """Whether some training examples lack a categorical condition (a label to be inferred)."""
        return bool(self.schema) and bool(torch.isnan(self.train.y).any())

    def labels_seen(self) -> dict[str, dict[str, int]]:
        """Labelled training examples per class of each categorical condition."""
        out = {}
        for j, a in enumerate(self.schema.attributes):
            if a.kind == "categorical":
                col = self.train.y[:, j]
                col = col[~torch.isnan(col)].long()
                counts = torch.bincount(col, minlength=len(a.classes)).tolist()
                out[a.name] = dict(zip(a.classes, counts))
        return out

    @property
    def default_likelihood(self) -> str:
        if self.kind == "sequence":
            return "categorical"
        return "gaussian-learned" if self.standardize else "bernoulli"


LABEL_COLUMNS = ("label", "labels", "class", "target")  # a column named so is the default condition


def default_condition(available: list[str]) -> str | None:
    """The column that is the condition when none is named: ``label``, else the first whose name is one of
    LABEL_COLUMNS in any case (``Class``, ``target``), else None."""
    if "label" in available:
        return "label"
    for want in LABEL_COLUMNS:
        for name in available:
            if name.lower() == want:
                return name
    return None


def parse_condition_spec(spec, available: list[str], where: str = "the data") -> list[tuple[str, str | None]]:
    """``None`` -> the default condition (:func:`default_condition`), else none; ``"none"``; ``"a,b:continuous"``."""
    if spec is None:
        name = default_condition(available)
        return [(name, None)] if name else []
    if isinstance(spec, (list, tuple)):
        spec = ",".join(spec)
    spec = str(spec).strip()
    if spec in ("", "none"):
        return []
    out = []
    for part in split_quoted(spec, after=","):  # a column named "city, state" is given in quotes
        part = part.strip()
        end = part.find(part[0], 1) if part[:1] in ("'", '"') else -1
        if end > 0:  # "name":kind
            name, rest = part[1:end], part[end + 1:].strip()
            kind = rest[1:] if rest.startswith(":") else rest
        else:
            name, _, kind = part.partition(":")
            name = name.strip()
        kind = kind.strip() or None
        if kind not in (None, "categorical", "continuous"):
            raise CvaeError(f"condition {part!r}: the kind after ':' must be categorical or continuous")
        if name not in available:
            raise CvaeError(
                f"{where} has no condition column {name!r}; "
                + (f"available: {', '.join(available)}" if available else "it has no labels (use --condition none)")
            )
        out.append((name, kind))
    return out


def _infer_kind(values: np.ndarray) -> str:
    if values.dtype.kind not in "fiub":
        return "categorical"
    uniq = np.unique(values[np.isfinite(values)] if values.dtype.kind == "f" else values)
    integral = bool(np.all(uniq == np.round(uniq)))
    return "categorical" if integral and len(uniq) <= 50 else "continuous"


def _warn_if_mostly_numbers(name: str, values: np.ndarray, source: str) -> None:
    """A column of numbers with a few stray words reads as categorical, every number a class of its own:
    said in one warning, with what to write to have it continuous."""
    text = [class_text(v) for v, gone in zip(values.tolist(), missing_mask(values)) if not gone]
    words = []
    for t in text:
        try:
            float(t)
        except ValueError:
            words.append(t)
    if text and 0 < len(words) <= max(5, 0.05 * len(text)) and len(set(text) - set(words)) >= 3:
        shown = ", ".join(repr(w) for w in list(dict.fromkeys(words))[:3])
        warnings.warn(f"{source}: condition {name!r} is read as categorical (each value a class) because {len(words)} "
                      f"of its {len(text):,} training values are not numbers ({shown}); if it is a quantity, write "
                      f"{name}:continuous and rows whose value is not a number are skipped", CvaeWarning, stacklevel=3)


def _check_condition_values(name: str, split: str, values: np.ndarray, source: str) -> None:
    """Numbers beyond ``MAX_ABS`` would wrap in the integer class codes or overflow float32: refused."""
    values = np.asarray(values)
    if values.dtype.kind not in "iuf" or values.size == 0:
        return
    big = (values > MAX_ABS) | (values < -MAX_ABS)
    if big.any():
        i = int(np.argmax(big))
        raise CvaeError(f"{source}: condition {name!r} has the value {float(values[i]):.3g} (example {i} of the {split} "
                        f"split); condition values must lie within ±{MAX_ABS:.0e}: rescale or recode that column")


def build_schema(raw: RawData, spec, source: str | None = None) -> tuple[ConditionSchema, dict[str, np.ndarray]]:
    """Fit the condition schema on the training split; return it and the codes for every split.
    ``source`` names the data in messages."""
    wanted = parse_condition_spec(spec, raw.columns)
    attrs: list[Attribute] = []
    codes = {split: [] for split in raw.splits}
    for name, kind in wanted:
        for split, (_, cols) in raw.splits.items():
            _check_condition_values(name, split, cols[name], source or raw.name)
        train_vals = raw.splits["train"][1][name]
        if not kind and _infer_kind(train_vals) == "categorical" and name not in raw.class_names:
            _warn_if_mostly_numbers(name, train_vals, source or raw.name)
        kind = kind or _infer_kind(train_vals)
        if kind == "categorical" and name in raw.class_names:
            attr = Attribute(name, "categorical", list(raw.class_names[name]))
        elif kind == "categorical":
            attr, _ = categorical_from_values(name, train_vals)
        else:
            attr, _ = continuous_from_values(name, train_vals)
        attrs.append(attr)
        for split, (_, cols) in raw.splits.items():
            vals = cols[name]
            if kind == "categorical" and name in raw.class_names:
                codes[split].append(vals.astype(np.float32))
            elif kind == "categorical":
                gone = missing_mask(vals)
                text = [class_text(v) for v in vals.tolist()]
                unknown = sorted({t for t, g in zip(text, gone) if not g} - set(attr.classes))
                if unknown:
                    raise CvaeError(f"{split} split: condition {name!r} has value(s) {unknown[:5]} not seen in training"
                                    + (" among the labelled examples" if gone.any() else ""))
                lookup = {c: i for i, c in enumerate(attr.classes)}
                codes[split].append(np.array([math.nan if g else lookup[t] for t, g in zip(text, gone)], np.float32))
            else:
                codes[split].append(continuous_from_values(name, vals)[1])
    out = {}
    for split, (x, _) in raw.splits.items():
        out[split] = np.stack(codes[split], axis=1) if codes[split] else np.zeros((len(x), 0), np.float32)
    return ConditionSchema(attrs), out


def feature_scale(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The standardising scale of each feature: its standard deviation, in whatever units (a concentration
    of 2e-6 +- 5e-7 mol/L keeps its 5e-7: a floor of 1e-6 gave it the decoder's noise in units of 1, 50,000
    times its spread); 1 only where the feature is constant, or constant within float32's precision of its
    mean."""
    scale = np.asarray(std, np.float64).copy()
    scale[~(scale > np.finfo(np.float32).eps * np.abs(np.asarray(mean, np.float64)))] = 1.0  # float32's resolution
    scale[scale < np.finfo(np.float32).tiny] = 1.0  # below float32's normal range (and 0): constant
    return scale.astype(np.float32)


def _mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature means and standard deviations in float64 (float32 squares of large values overflow),
    a block of rows at a time (no float64 copy of the whole array)."""
    mean = x.mean(axis=0, dtype=np.float64)
    m2 = np.zeros_like(mean)
    step = max(1, 2**22 // max(1, int(np.prod(x.shape[1:]))))
    for first in range(0, len(x), step):
        m2 += ((x[first:first + step].astype(np.float64) - mean) ** 2).sum(axis=0)
    return mean, np.sqrt(m2 / len(x))


def read_source(source: str, *, data_dir=None, condition=None, data_layout: str = "auto",
                image_size=None, factors=None, features: list[str] | None = None) -> RawData:
    """The raw data of a named source or a path. ``factors`` names columns of a .npz / CSV file that
    are factors of variation: held out of the features, recorded in ``meta["factors"]``."""
    if source in NAMED_SOURCES:
        raw = NAMED_SOURCES[source](data_dir)
        if image_size:
            raw = resized(raw, image_size)
        if factors not in (None, "", "none") and _factor_list(factors) != raw.meta.get("factors"):
            have = ", ".join(raw.meta.get("factors", [])) or "none"
            raise CvaeError(f"--factors names the factor columns of a .npz or CSV file; {source!r} has its own "
                            f"({have}): leave --factors out")
        return raw
    raw = _read_path(source, data_dir=data_dir, condition=condition, data_layout=data_layout, image_size=image_size,
                     factors=factors, features=features)
    names = _factor_list(factors)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CvaeError(f"--factors names {', '.join(twice)} more than once; name each factor column once")
    if names:
        missing = [n for n in names if n not in raw.columns]
        if missing:
            raise CvaeError(f"{source} has no factor column(s) {', '.join(missing)} (--factors); its per-example "
                            f"columns: {', '.join(raw.columns) or 'none'}")
        raw.meta["factors"] = names
    return raw


def _factor_list(spec) -> list[str]:
    if spec in (None, "", "none"):
        return []
    parts = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    return [p.strip() for p in parts if p.strip()]


def _read_path(source: str, *, data_dir=None, condition=None, data_layout: str = "auto", image_size=None,
               factors=None, features: list[str] | None = None) -> RawData:
    path = Path(source).expanduser()
    if not path.exists():
        raise CvaeError(
            f"no data set or file {source!r}: use one of {', '.join(NAMED_SOURCES)}, "
            "or a path to a .npz/.npy file, an image folder (one subfolder per class) or a .csv file"
        )
    if path.is_dir():
        return load_image_folder(path, image_size)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        raw = load_array_file(path)
        return resized(raw, image_size) if image_size else raw
    if suffix in TABLE_SUFFIXES:
        if image_size:
            raise CvaeError(f"--image-size resizes images; {path.name} is a table (leave --image-size out)")
        names = [n for n, _ in parse_condition_spec(condition, _csv_header(path), str(path))]
        extra = [f for f in _factor_list(factors) if f not in names]
        missing = [f for f in extra if f not in _csv_header(path)]
        if missing:
            raise CvaeError(f"{path} has no factor column(s) {', '.join(missing)} (--factors); its columns are: "
                            f"{', '.join(_csv_header(path))}")
        raw = load_csv(path, names + extra, layout="signal" if data_layout == "signal" else "table",
                       feature_columns=features)
        return raw
    raise CvaeError(f"cannot read {path}: expected a .npz, .npy or .csv file or an image folder")


def resized(raw: RawData, image_size: tuple[int, int]) -> RawData:
    """The images of an array file resized to ``image_size`` (height, width), as an image folder's are
    (bilinear, antialiased when shrinking); anything but images is refused."""
    import torch.nn.functional as F

    x = raw.splits["train"][0]
    if raw.kind != "image":
        raise CvaeError(f"--image-size resizes images; {raw.name} holds {raw.kind} data (leave --image-size out)")
    h, w = image_size
    if tuple(x.shape[2:]) == (h, w):
        return raw
    if hasattr(x, "grid"):
        raise CvaeError(f"--image-size resizes images read from files; {raw.name} is rendered at its own size "
                        "(leave --image-size out)")
    splits = {}
    for split, (x, columns) in raw.splits.items():
        out = []
        for i in range(0, len(x), 4096):  # a chunk at a time: the whole set as float32 once more at most
            part = torch.from_numpy(np.ascontiguousarray(x[i:i + 4096], np.float32))
            out.append(F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False,
                                     antialias=h < x.shape[2] or w < x.shape[3]).numpy())
        resized = np.concatenate(out)
        if raw.unit_range:
            np.clip(resized, 0.0, 1.0, out=resized)
        splits[split] = (resized, columns)
    shape = raw.splits["train"][0].shape
    return RawData(raw.name, raw.kind, splits, raw.class_names, False, raw.unit_range,  # resampled: grey levels, not 0/1
                   dict(raw.meta, resized=f"{shape[2]}x{shape[3]} -> {h}x{w}"))


def _csv_header(path: Path) -> list[str]:
    from .sources import read_csv_table

    return read_csv_table(path)[0]


def load_data(source: str, *, data_dir=None, condition=None, val_fraction: float = 0.1, seed: int = 0,
              binarize: str = "none", limit: int | None = None, data_layout: str = "auto",
              image_size=None, labelled: int | None = None, factors=None) -> DataSplits:
    """Read a data set and make its splits.

    The validation split is the data set's own where it has one, else ``val_fraction`` of the training
    examples drawn with ``seed``. ``binarize="static"`` samples 0/1 pixels once (fixed seed);
    ``"dynamic"`` is applied by the trainer every epoch. ``limit`` keeps that many training examples.
    ``labelled`` keeps the labels of that many training examples, the same number per class of the
    first categorical condition, drawn with ``seed``, and hides the others' and the validation
    split's (an experiment in semi-supervised learning; the test split keeps its labels).
    ``factors`` names the factor columns of a .npz / CSV file (named factor data sets bring their own):
    every split carries them as ``Dataset.factors``. A data set rendered on demand (dSprites) with
    ``limit`` is first subsampled to ``limit / (1 - val_fraction)`` examples drawn with ``seed``, so
    that only those are rendered and the validation split is ``val_fraction`` of them.
    """
    if binarize not in ("none", "static", "dynamic"):
        raise CvaeError(f"--binarize must be none, static or dynamic, not {binarize!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise CvaeError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    raw = read_source(source, data_dir=data_dir, condition=condition, data_layout=data_layout, image_size=image_size,
                      factors=factors)
    if hasattr(raw.splits["train"][0], "grid") and "val" not in raw.splits:
        rows = rendered_rows(raw, limit, val_fraction, seed)
        if rows is not None:
            raw = _subsample(raw, rows, seed)
    factor_names = list(raw.meta.get("factors", []))
    factor_codes = _factor_codes(raw, factor_names)
    if condition is None and default_condition(raw.columns) in factor_names:
        condition = "none"  # a factor is held out: the default condition is not taken from it
    elif condition is None and default_condition(raw.columns) not in (None, "label"):
        warnings.warn(f"{source}: column {default_condition(raw.columns)!r} is the condition (its name says so); "
                      "--condition none trains without one, --condition COLUMN names another", CvaeWarning, stacklevel=2)
    schema, codes = build_schema(raw, condition, source)
    label_schema, label_codes = build_schema(raw, "label:categorical", source) if "label" in raw.columns else (None, None)
    labels_of = ({split: np.nan_to_num(label_codes[split][:, 0], nan=-1).astype(np.int64) for split in raw.splits}
                 if label_codes else {})  # -1: no label
    rng = np.random.default_rng(seed)
    x_train, y_train = raw.splits["train"][0], codes["train"]
    ids_train = raw.meta.get("ids") or list(range(len(x_train)))
    order, val_idx = split_positions(len(x_train), None if "val" in raw.splits else val_fraction, limit, rng)
    if "val" in raw.splits:
        x_val, y_val = raw.splits["val"][0], codes["val"]
        val_ids, val_labels = None, labels_of.get("val")
        val_factors = factor_codes.get("val")
    else:
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        val_ids = [ids_train[i] for i in val_idx]
        val_factors = factor_codes["train"][val_idx] if factor_names else None
        val_labels = labels_of["train"][val_idx] if labels_of else None
    x_train, y_train = np.asarray(x_train[order]), y_train[order]
    train_ids = [ids_train[i] for i in order]
    train_labels = labels_of["train"][order] if labels_of else None
    train_factors = factor_codes["train"][order] if factor_names else None
    if len(x_train) == 0:
        raise CvaeError(f"no training examples left in {source!r} (after the validation split)")
    if labelled is not None:
        y_train, y_val = hide_labels(schema, y_train, y_val, labelled, seed)
    _check_labelled(schema, y_train, source)

    standardize = not raw.unit_range
    loc = scale = None
    if standardize:
        loc64, scale64 = _mean_std(x_train)
        if not (np.all(np.isfinite(loc64)) and np.all(np.isfinite(scale64))):
            raise CvaeError(f"{source!r}: the feature means or standard deviations are not finite; "
                            "rescale the data (change its units or take logarithms)")
        loc, scale = loc64.astype(np.float32), feature_scale(loc64, scale64)

    def tensor(x):
        x = np.asarray(x, np.float32)
        if standardize:
            x = (x - loc) / scale
        return torch.from_numpy(np.ascontiguousarray(x))

    def dataset(x, y, ids=None, labels=None, factors=None):
        if x is None or len(x) == 0:
            return None
        return Dataset(tensor(x), torch.from_numpy(np.ascontiguousarray(y, np.float32)), ids, labels, factors)

    splits = DataSplits(
        name=raw.name,
        kind=raw.kind,
        schema=schema,
        train=dataset(x_train, y_train, train_ids, train_labels, train_factors),
        val=dataset(x_val, y_val, val_ids, val_labels, val_factors),
        test=dataset(raw.splits["test"][0], codes["test"], None, labels_of.get("test"),
                     factor_codes.get("test")) if "test" in raw.splits else None,
        binary=raw.binary,
        standardize=standardize,
        loc=loc,
        scale=scale,
        meta=dict(raw.meta, source=source),
        label_classes=label_schema.attributes[0].classes if label_schema else None,
        factor_names=factor_names,
    )
    if binarize == "static":
        g = torch.Generator().manual_seed(seed)
        for part in (splits.train, splits.val, splits.test):
            if part is not None:
                part.x = torch.bernoulli(part.x, generator=g)
        splits.binary = True
    return splits


def split_positions(n: int, val_fraction: float | None, limit: int | None,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation positions (each sorted) of ``n`` examples: a random ``val_fraction`` of
    them for validation (at least one where the fraction is above 0; None: the data has its own validation
    split), then the first ``limit`` of the rest, in the order ``rng`` drew them, for training."""
    order = rng.permutation(n)
    val_idx = order[:0]
    if val_fraction is not None:
        n_val = int(round(val_fraction * n))
        if val_fraction > 0 and n > 1:
            n_val = max(n_val, 1)
        val_idx, order = np.sort(order[:n_val]), order[n_val:]
    if limit is not None:
        if limit < 1:
            raise CvaeError(f"--limit must be a positive number of examples, got {limit}")
        order = order[:limit]
    return np.sort(order), val_idx


def rendered_rows(raw: RawData, limit: int | None, val_fraction: float, seed: int, *,
                  quiet: bool = False) -> np.ndarray | None:
    """The rows of a data set rendered on demand that a run with these settings trains and validates on,
    drawn with ``seed`` (``limit`` training examples and their validation share, or, when ``limit`` is
    None, as many as fit in memory); None when that is every row."""
    x = raw.splits["train"][0]
    keep = (_rows_in_memory(raw, val_fraction, quiet=quiet) if limit is None
            else int(math.ceil(limit / (1.0 - val_fraction))))
    if keep is None or keep >= len(x):
        return None
    return np.sort(np.random.default_rng([seed, 12]).choice(len(x), keep, replace=False))


def run_rows(raw: RawData, limit: int | None, val_fraction: float, seed: int, *, quiet: bool = False) -> np.ndarray:
    """The rows of a data set rendered on demand that a run trained and validated on, in the grid's order:
    of the :func:`rendered_rows` (every row when None), those :func:`load_data` keeps (the validation share,
    then at most ``limit`` for training; ``ceil(limit / (1 - val_fraction))`` are rendered, one more than
    that where the rounding falls so)."""
    rows = rendered_rows(raw, limit, val_fraction, seed, quiet=quiet)
    rows = np.arange(len(raw.splits["train"][0])) if rows is None else rows
    train, val = split_positions(len(rows), val_fraction, limit, np.random.default_rng(seed))
    return rows[np.sort(np.concatenate([train, val]))]


def _rows_in_memory(raw: RawData, val_fraction: float, *, quiet: bool = False) -> int | None:
    """For a data set rendered on demand whose every image would not fit the rendering budget as float32
    (all 737,280 dSprites images: 11.2 GiB), how many do (262,144 of dSprites: 4.0 GiB, of which the
    validation split takes its share), said on stderr; None when all of them fit."""
    from .factors import MAX_RENDER_BYTES

    images = raw.splits["train"][0]
    per_image = math.prod(images.shape[1:]) * 4
    if len(images) * per_image <= MAX_RENDER_BYTES:
        return None
    keep = int(MAX_RENDER_BYTES // per_image)
    if not quiet:
        train = keep - max(int(round(val_fraction * keep)), int(val_fraction > 0))
        print(f"{raw.name}: training on {train:,} of its {len(images):,} images, drawn at random with --seed "
              f"({MAX_RENDER_BYTES / 2**30:.1f} GiB as float32 with the validation split; all of them would take "
              f"{len(images) * per_image / 2**30:.1f} GiB); --limit N sets another number", file=sys.stderr)
    return keep


def _subsample(raw: RawData, rows: np.ndarray, seed: int) -> RawData:
    """A data set rendered on demand, cut to the examples ``rows`` (from :func:`rendered_rows`)."""
    x, columns = raw.splits["train"]
    meta = dict(raw.meta, ids=rows.tolist(), subsample=f"{len(rows)} of {len(x)} examples, drawn with seed {seed}")
    return RawData(raw.name, raw.kind, {"train": (x[rows], {k: v[rows] for k, v in columns.items()})},
                   raw.class_names, raw.binary, raw.unit_range, meta)


def _factor_codes(raw: RawData, names: list[str]) -> dict[str, np.ndarray]:
    """Per split, the factor columns as class indices (N, F) in the sorted order of their values."""
    if not names:
        return {}
    from ..disentangle import factor_index

    out = {split: np.zeros((len(x), len(names)), np.int64) for split, (x, _) in raw.splits.items()}
    binned = {}
    for k, name in enumerate(names):
        values = [np.asarray(cols[name]) for _, cols in raw.splits.values()]
        allv = np.concatenate(values)
        if (allv.dtype.kind == "f" and not np.isfinite(allv).all()) or (
                allv.dtype.kind in "OUS" and missing_mask(allv).any()):
            raise CvaeError(f"{raw.name}: factor {name!r} has missing or non-finite values; every example needs "
                            "every factor")
        codes, distinct = factor_index(allv)  # a continuous factor: cut into bins, as the metrics would
        if distinct:
            binned[name] = distinct
        start = 0
        for split, v in zip(raw.splits, values):
            out[split][:, k] = codes[start:start + len(v)]
            start += len(v)
    if binned:
        raw.meta["binned_factors"] = binned
    return out


def hide_labels(schema: ConditionSchema, y_train: np.ndarray, y_val: np.ndarray | None, labelled: int,
                seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Keep the categorical conditions of ``labelled`` training rows, balanced over the classes of the
    first categorical condition (the remainder to randomly chosen classes), and hide the rest (NaN)."""
    cats = [j for j, a in enumerate(schema.attributes) if a.kind == "categorical"]
    if not cats:
        raise CvaeError("--labelled needs a categorical condition (a label) to keep some of; this run has "
                        + ("only continuous ones" if schema else "none (--condition none, or data without labels)"))
    a = schema.attributes[cats[0]]
    k = len(a.classes)
    if not isinstance(labelled, int) or labelled < k:
        raise CvaeError(f"--labelled {labelled} keeps fewer labels than the {k} classes of {a.name!r}; every class "
                        f"needs at least one labelled example: use --labelled {k} or more")
    rng = np.random.default_rng([seed, 7])
    col = y_train[:, cats[0]]
    per_class = np.full(k, labelled // k)
    per_class[rng.permutation(k)[:labelled % k]] += 1
    if labelled % k:
        warnings.warn(f"--labelled {labelled} over the {k} classes of {a.name!r} is not the same number for each: "
                      f"{labelled % k} classes (drawn with --seed) keep {labelled // k + 1} labels, the others "
                      f"{labelled // k} (--labelled {labelled - labelled % k} or {labelled - labelled % k + k}: "
                      "the same for each)", CvaeWarning, stacklevel=2)
    keep = []
    for c in range(k):
        rows = np.flatnonzero(col == c)
        if len(rows) < per_class[c]:
            fix = ("ask for fewer" if len(rows) else "that class has no training example at all, so no number of "
                   "labels can include it: give it examples (or --val-fraction 0 if its rows went to validation)")
            raise CvaeError(f"--labelled {labelled} asks for {per_class[c]} labelled examples of {a.name}={a.classes[c]} "
                            f"but the training split has {len(rows)}; {fix}")
        keep.append(rng.choice(rows, per_class[c], replace=False))
    hidden = np.ones(len(y_train), bool)
    hidden[np.concatenate(keep)] = False
    y_train = y_train.copy()
    y_train[np.ix_(hidden, cats)] = np.nan
    if y_val is not None and len(y_val):
        y_val = y_val.copy()
        y_val[:, cats] = np.nan
    return y_train, y_val


def _check_labelled(schema: ConditionSchema, y_train: np.ndarray, source: str) -> None:
    """Semi-supervised data needs a labelled example of every class (of every categorical condition); a
    supervised run is warned of a class with no training example (its rows all went to validation, or
    --limit left it out): the model cannot learn to generate it."""
    if schema and not np.isnan(y_train).any():
        for j, a in enumerate(schema.attributes):
            if a.kind == "categorical":
                counts = np.bincount(y_train[:, j].astype(np.int64), minlength=len(a.classes))
                empty = [a.classes[i] for i in np.flatnonzero(counts == 0)]
                if empty:
                    warnings.warn(f"{source}: {len(empty)} class(es) of {a.name!r} have no training example ("
                                  f"{', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}): the model cannot learn "
                                  "to generate them; give each class more examples, or --val-fraction 0",
                                  CvaeWarning, stacklevel=2)
        return
    if not schema:
        return
    for j, a in enumerate(schema.attributes):
        if a.kind != "categorical":
            if np.isnan(y_train[:, j]).any():
                raise CvaeError(f"{source}: the continuous condition {a.name!r} has missing values; only categorical "
                                "conditions may be missing: fill them in or drop those rows")
            continue
        col = y_train[:, j]
        counts = np.bincount(col[~np.isnan(col)].astype(np.int64), minlength=len(a.classes))
        empty = [a.classes[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise CvaeError(f"{source}: no labelled training example of {a.name}={', '.join(empty[:5])}; a class "
                            "needs at least one (label some, or remove that class)")


EVALUATION_SEED = 1234  # the fixed binarization of held-out images of a dynamically binarized run


def fixed_binarization(x: torch.Tensor, seed: int) -> torch.Tensor:
    """0/1 images drawn once from grey levels with a fixed seed (held-out images of a run trained
    with dynamic binarization are scored on one such draw)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=g).to(x.device)


def parse_image_size(text) -> tuple[int, int] | None:
    """``"28x28"`` -> (28, 28); None or empty -> None."""
    if not text:
        return None
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
        return h, w
    except ValueError:
        raise CvaeError(f"--image-size must look like 28x28 (height x width), not {text!r}") from None


def local_path(source) -> str | None:
    """The absolute path of a data source that is a file or folder here (not a built-in set's name): what
    a run records beside the source as given, so that a relative path still finds the data from elsewhere."""
    if not isinstance(source, str) or source in NAMED_SOURCES or not Path(source).exists():
        return None
    return str(Path(source).resolve())


def file_stamp(source) -> dict | None:
    """Size and modification time of a data source that is one file here, recorded by a run so that a
    resume can tell the file was changed (same rows, other values: nothing else would tell)."""
    path = local_path(source)
    if path is None or not Path(path).is_file():
        return None
    st = Path(path).stat()
    return {"bytes": st.st_size, "modified_ns": st.st_mtime_ns}


def recorded_source(run_config: dict) -> str | None:
    """A run's data source as its commands should read it: the file or folder it trained on, by the
    absolute path it recorded (``data.path``; a same-named file in another folder is another file), else
    the source as given at training (a built-in name; a run from before the path was recorded). A
    recorded file that is gone, and not found by its given name either, is one line saying so."""
    data = run_config.get("data", {}) if isinstance(run_config.get("data"), dict) else {}
    train = run_config.get("train", {}) if isinstance(run_config.get("train"), dict) else {}
    given = data.get("source") or train.get("data")
    path = data.get("path")
    if not isinstance(path, str) or not isinstance(given, str) or given in NAMED_SOURCES:
        return given
    if Path(path).exists():
        return path
    if Path(given).exists():  # moved with the run folder: the same relative place
        return given
    elsewhere = "" if Path(given).is_absolute() else f" (nor at {given} from here)"
    raise CvaeError(f"the run's data is no longer at {path}{elsewhere}: put it back, or give the command the file "
                    "(--data or --input FILE, where the command has one)")
