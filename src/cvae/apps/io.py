"""Reading user inputs for a trained model and writing outputs in the format the name asks for."""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.core import NAMED_SOURCES, read_source
from ..data.sources import IMAGE_SUFFIXES, TABLE_SUFFIXES, UNIT_SLACK, NotANumber
from ..errors import CvaeError, CvaeWarning
from ..models import CVAE


@dataclass
class Inputs:
    x: torch.Tensor  # (N, *data_shape) in data units
    y: torch.Tensor | None  # (N, A) raw condition codes, or None when the input has no conditions
    ids: list
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # extra columns asked for (class names decoded)
    missing: str = ""  # why rows of y whose categorical value is missing (NaN) cannot be used as they are

    def own_conditions(self) -> torch.Tensor | None:
        """``y``, refused (one line) where a row lacks a value that the model cannot infer."""
        if self.missing and self.y is not None and bool(torch.isnan(self.y).any()):
            raise CvaeError(self.missing)
        return self.y


def read_inputs(model: CVAE, source: str, *, data_dir=None, n: int | None = None, split: str = "test",
                columns: Sequence[str] = (), missing_ok: bool | None = None, scored: bool = False) -> Inputs:
    """Examples for ``model`` from a named data set (its test split, else train), a .npz/.npy/.csv file,
    an image folder or a single image file. Condition columns named like the model's are read too;
    ``columns`` names further columns to read into ``Inputs.columns`` (and to keep out of the features).
    ``missing_ok``: whether a missing categorical value may be used as NaN (default: where the model infers
    it, a semi-supervised one; a caller that only scores against the labels, such as classify, too). Where
    not, it is still read as NaN and ``Inputs.missing`` says why those rows' own conditions cannot be
    used: a condition given for them (``conditions_of``) takes their place, else that is the error.
    ``scored``: the caller measures something against these examples' labels (an error, an AUROC): a
    named set without ``split`` warns that its training rows are read instead."""
    if missing_ok is None:
        missing_ok = model.fills_missing
    path = Path(source)
    if data_dir is None:  # a named data set is looked for where the run found its own, as the CLI does
        data_dir = (getattr(model, "run_config", None) or {}).get("train", {}).get("data_dir")
    columns = [c for c in columns if c not in schema_names(model)]
    shape = model.config.data_shape
    schema = model.schema
    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
        x = _read_image(path, shape)
        return Inputs(x[None], None, [path.name])
    info = getattr(model, "run_config", {}).get("data", {})
    layout = "signal" if info.get("kind") == "signal" else "auto"
    if path.suffix.lower() in TABLE_SUFFIXES and path.is_file():
        missing = [c for c in columns if not _has_column(path, c)]
        if missing:
            from ..data.sources import read_csv_table

            raise CvaeError(f"{source} has no column(s) {', '.join(missing)}; its columns are: "
                            + ", ".join(read_csv_table(path)[0]))
    wanted = [a.name for a in schema.attributes if _has_column(path, a.name)] + list(columns)
    condition = ",".join(wanted) or "none"
    table = path.suffix.lower() in TABLE_SUFFIXES
    if len(shape) == 3 and path.is_dir() and source not in NAMED_SOURCES:  # a built-in name is the built-in set
        # an image folder is read at the run's size and channels, as a single image is (a folder of mixed
        # sizes too: the commands that read inputs have no --image-size, the run's size is the one)
        from ..data.sources import load_image_folder

        raw = load_image_folder(path, tuple(shape[1:]), shape[0] if shape[0] in (1, 3) else None, unlabelled_ok=True)
    else:  # a table's own feature columns, read by name: another column (notes, a date) is not the input
        try:
            raw = read_source(source, data_dir=data_dir, condition=condition if table else None, data_layout=layout,
                              features=info.get("features") if table and info.get("features") else None)
        except NotANumber as e:
            if len(shape) != 3:
                raise
            # an image run's .csv is pixels: the reader's advice (--condition, --factors) is for training
            raise CvaeError(f"{e.where}; this run's examples are images, so a .csv for it holds one column per pixel "
                            f"({math.prod(shape)}) and the run's condition columns "
                            f"({', '.join(schema_names(model)) or 'none'})") from None
    if len(shape) == 3 and raw.kind == "image" and not hasattr(raw.splits["train"][0], "grid"):
        from ..data.core import resized

        raw = resized(raw, tuple(shape[1:]))  # images of another size: resized as training's were (--image-size)
    part = split if split in raw.splits else "train"
    if scored and part != split and split != "train" and not path.exists():  # a named set without that split
        warnings.warn(f"{source} has no {split} split; its training split is read (a run trained on {source} has "
                      "seen these examples)", CvaeWarning, stacklevel=2)
    x, raw_columns = raw.splits[part]
    # ids: a table's id column, an image folder's file names (class/name.png), else the row numbers
    ids = (raw.meta.get("ids") or raw.meta.get("files")) if part == "train" else None
    if hasattr(x, "grid"):
        # a set rendered on demand (dSprites: 11 GiB whole) is never read whole: the rows the run trained
        # and validated on (what `cvae evaluate --metrics disentanglement` scores), in the grid's order
        from ..data.core import run_rows

        cfg = (getattr(model, "run_config", None) or {}).get("train", {})
        rows = run_rows(raw, cfg.get("limit"), cfg.get("val_fraction", 0.1), cfg.get("seed", 0), quiet=True)[:n]
        x, ids = x[rows], rows.tolist()
        raw_columns = {k: np.asarray(v)[rows] for k, v in raw_columns.items()}
    elif n is not None:
        x = x[:n]
        raw_columns = {k: v[:n] for k, v in raw_columns.items()}
        ids = ids[:n] if ids else ids
    extra = {}
    for c in columns:
        if c not in raw_columns:
            have = ", ".join(raw_columns) or "none"
            raise CvaeError(f"{source} has no column {c!r} (its label/condition columns: {have})")
        vals = np.asarray(raw_columns[c])
        if c in raw.class_names:  # an unlabelled/ image's NaN label: an empty cell
            vals = np.array(["" if not np.isfinite(v) else raw.class_names[c][int(v)] for v in vals])
        extra[c] = vals
    columns = raw_columns
    x = np.asarray(x, np.float32)
    features = info.get("features")
    if features and raw.meta.get("features") and raw.meta["features"] != features:
        missing = [f for f in features if f not in raw.meta["features"]]
        if missing:
            raise CvaeError(f"{source} lacks the feature column(s) {', '.join(missing)} the model was trained on")
        order = [raw.meta["features"].index(f) for f in features]
        x = x[..., order]
    if len(shape) == 3 and x.ndim == 2 and x.shape[1] == math.prod(shape):
        x = x.reshape(len(x), *shape)  # images as flat rows (augment's .csv of an image run): C x H x W each
    if tuple(x.shape[1:]) != shape:
        raise CvaeError(f"{source} has examples of shape {tuple(x.shape[1:])}; this model expects {shape}"
                        + (f" (or flat rows of {math.prod(shape)} values)" if len(shape) == 3 else ""))
    if not model.config.standardize and len(shape) == 3 and x.size:
        low, high = float(x.min()), float(x.max())  # the run's images are grey levels in [0, 1]
        if low < -UNIT_SLACK or high > 1.0 + UNIT_SLACK:
            raise CvaeError(f"{source} holds values from {low:g} to {high:g}, but this run's images are grey levels in "
                            "[0, 1]: divide 8-bit pixel values by 255 (or save them as uint8)")
        np.clip(x, 0.0, 1.0, out=x)
    y, why = None, ""
    # a model that infers a missing class reads an absent categorical column as missing in every row
    inferred = bool(schema) and model.fills_missing and any(a.name in columns for a in schema.attributes) and all(
        a.name in columns or a.kind == "categorical" for a in schema.attributes)
    if schema and (inferred or all(a.name in columns for a in schema.attributes)):
        cols = []
        for a in schema.attributes:
            vals = columns[a.name] if a.name in columns else [math.nan] * len(x)
            if a.name in raw.class_names:
                vals = [math.nan if np.isnan(v) else raw.class_names[a.name][int(v)] for v in np.asarray(vals, float)]
            cols.append([a.code(_plain(v), missing_ok=True) for v in vals])
            lacking = int(np.isnan(cols[-1]).sum())
            if lacking and not missing_ok and not why:
                why = (f"{lacking} of the {len(vals)} examples of {source} have no value for the condition {a.name!r} "
                       "(an empty cell, an image in unlabelled/) and this model cannot infer it: give them a label, or "
                       f"pass --condition {a.name}=... (one of {', '.join(a.classes[:10])}"
                       f"{' ...' if len(a.classes) > 10 else ''}; reconstruct uses it for every example, the other "
                       "commands for those without one)")
        y = torch.tensor(np.array(cols, np.float32).T.reshape(len(x), len(cols)))
    return Inputs(torch.from_numpy(np.ascontiguousarray(x)), y, list(ids) if ids else list(range(len(x))), extra,
                  why)


def schema_names(model: CVAE) -> list[str]:
    return model.schema.names if model.schema else []


def conditions_of(model: CVAE, inputs: Inputs, condition=None, *, source: str = "the input",
                  own_first: bool = False) -> torch.Tensor | None:
    """The raw condition codes to encode ``inputs`` with: ``condition`` when given (it overrides the
    inputs' own), else the inputs' own; ``None`` for a plain VAE. A conditional model needs one of them.
    ``own_first``: the inputs' own conditions win, and ``condition`` stands in only where they have none
    (no condition columns at all, or a row whose missing value the model cannot infer)."""
    if not model.schema:
        if condition not in (None, "", "none"):
            raise CvaeError("this model is a plain VAE (no condition); leave --condition out")
        return None
    given = condition not in (None, "")
    if given and (not own_first or inputs.y is None):
        return model.schema.parse(condition, len(inputs.x))
    if inputs.y is None and model.fills_missing and all(a.kind == "categorical" for a in model.schema.attributes):
        return torch.full((len(inputs.x), len(model.schema.attributes)), math.nan)  # q(y | x) infers each
    if inputs.y is None:
        names = ", ".join(model.schema.names)
        raise CvaeError(f"{source} has no condition column(s) {names}; pass --condition (e.g. {model.schema.names[0]}=...)")
    if given and inputs.missing:
        rows = model.schema.missing(inputs.y)
        if bool(rows.any()):
            y = inputs.y.clone()
            y[rows] = model.schema.parse(condition, int(rows.sum()))
            return y
    return inputs.own_conditions()


def _plain(v):
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return v.item() if hasattr(v, "item") else v


def _has_column(path: Path, name: str) -> bool:
    if path.suffix.lower() not in TABLE_SUFFIXES or not path.is_file():
        return True
    from ..data.sources import read_csv_table

    return name in read_csv_table(path)[0]


def _read_image(path: Path, shape) -> torch.Tensor:
    from ..data.sources import read_image

    if len(shape) != 3:
        raise CvaeError(f"{path} is an image but this model was trained on data of shape {shape}")
    # the reader (and the resampling) that training's image folders use; a bad file is one clear line
    return torch.from_numpy(read_image(path, shape[0], (shape[1], shape[2])))


def write_array_output(path: str | Path, model: CVAE, x: torch.Tensor, y: torch.Tensor | None, *,
                       extra: dict[str, np.ndarray] | None = None) -> Path:
    """``.npz`` (``x`` plus the conditions by name, plus ``extra`` arrays) or ``.csv`` (the one-value-per-row
    arrays of ``extra`` first, then the feature columns, then the conditions). A feature is written as the
    shortest text that reads back as the same float32 (6 digits changed merged real rows: 4481245.819
    came back as 4.48125e+06)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().cpu().float().numpy()
    schema = model.schema
    conds = {}
    if y is not None and schema:
        for j, a in enumerate(schema.attributes):
            col = y[:, j].cpu().numpy()
            conds[a.name] = np.array(["" if np.isnan(v) else a.classes[int(v)] for v in col]) if a.kind == "categorical" else col
    if path.suffix.lower() == ".npz":
        np.savez_compressed(path, x=x.astype(np.float32), **conds, **(extra or {}))
    elif path.suffix.lower() == ".csv":
        flat = x.reshape(len(x), -1)
        names = getattr(model, "run_config", {}).get("data", {}).get("features") or [f"x{i}" for i in range(flat.shape[1])]
        if len(names) != flat.shape[1]:
            names = [f"x{i}" for i in range(flat.shape[1])]
        lead = {k: np.asarray(v) for k, v in (extra or {}).items() if np.ndim(v) == 1 and len(v) == len(flat)}
        whole = set(getattr(model, "run_config", {}).get("data", {}).get("whole_features") or [])
        whole = np.array([n in whole for n in names])  # features the data held as whole numbers: rounded back
        write_csv(path, list(lead) + list(names) + list(conds),
                  ([csv_cell(lead[k][i]) for k in lead]
                   + [f"{round(v):d}" if w else float32_text(v) for v, w in zip(flat[i], whole)]
                   + [csv_cell(conds[k][i]) for k in conds]
                   for i in range(len(flat))))
    else:
        raise CvaeError(f"cannot write {path}: use a .png, .npz or .csv file name")
    return path


def float32_text(v) -> str:
    """The shortest text that reads back as the same float32, without an exponent where one is not needed
    (4481246, -132104.86, 0.1; 1e-30)."""
    v = np.float32(v)
    if v == 0:
        return "0"
    if 1e-4 <= abs(v) < 1e16:
        return np.format_float_positional(v, unique=True, trim="-")
    return np.format_float_scientific(v, unique=True, trim="-")


def csv_cell(v):
    """A value as a CSV cell: floats with 6 significant digits, numpy scalars as Python values."""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return v.item() if hasattr(v, "item") else v


def write_csv(path: Path, header: Sequence[str], rows) -> None:
    """A header line, then the rows (an iterable of lists of cells)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
