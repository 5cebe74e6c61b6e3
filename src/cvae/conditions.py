"""Condition schemas: zero or more attributes, each categorical (named classes) or continuous.

Raw conditions are stored as a float tensor ``y`` of shape (N, A), one column per attribute: the
class index for a categorical attribute, the value in original units for a continuous one. The
model sees ``c = schema.encode(y)``: one-hot blocks and standardised values, shape (N, schema.dim).

A categorical value may be missing (semi-supervised data: an empty CSV cell, ``-1`` or NaN in an
``.npz`` label array, an image in ``unlabelled/``): its raw code is NaN and its one-hot block is all
zeros. Only a model that treats the label as a latent variable (``cvae.models.M2``) accepts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CvaeError

# a continuous condition this many training standard deviations from its mean is refused (cvae sample warns
# past 10): 1e6 sent a molecule model's token probabilities to NaN
CONDITION_LIMIT = 1000.0
EXTRAPOLATION_SD = 10.0  # a continuous condition this far from its training mean is extrapolation: said, not refused


@dataclass
class Attribute:
    name: str
    kind: str  # "categorical" | "continuous"
    classes: list[str] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0

    @property
    def dim(self) -> int:
        return len(self.classes) if self.kind == "categorical" else 1

    def code(self, value, *, missing_ok: bool = False) -> float:
        """The raw code of one user-given value: a class index, or a float; NaN for a missing
        categorical value when ``missing_ok`` (else a missing value is an error)."""
        if self.kind == "categorical" and is_missing(value):
            if missing_ok:
                return math.nan
            raise CvaeError(f"condition {self.name!r} has a missing value; give one of its classes "
                            f"({', '.join(self.classes[:20])}{' ...' if len(self.classes) > 20 else ''})")
        if isinstance(value, np.generic):
            value = value.item()  # messages show 'abc', not np.str_('abc')
        if self.kind == "continuous":
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise CvaeError(f"condition {self.name!r} is continuous; {value!r} is not a number") from None
            if not np.isfinite(v):
                raise CvaeError(f"condition {self.name!r} must be a finite number, got {value!r}")
            return v
        text = str(value)
        if text in self.classes:
            return float(self.classes.index(text))
        try:  # a number written another way: 3.0 for the class '3', 0.50 for '0.5'
            named = class_text(float(text))
        except ValueError:
            named = None
        if named in self.classes:
            return float(self.classes.index(named))
        if isinstance(value, bool) or any(_numeric(c) for c in self.classes):
            pass  # True is not class 1; nor is 0 the first of classes named 1, 2, 5 (a number names a class)
        elif isinstance(value, (int, np.integer)) or text.lstrip("-").isdigit():
            i = int(text)
            if 0 <= i < len(self.classes):
                return float(i)
        shown = ", ".join(self.classes[:20]) + (" ..." if len(self.classes) > 20 else "")
        raise CvaeError(f"unknown value {text!r} for condition {self.name!r}; known values: {shown}")


@dataclass
class ConditionSchema:
    attributes: list[Attribute] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return sum(a.dim for a in self.attributes)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def __len__(self) -> int:
        return len(self.attributes)

    def __bool__(self) -> bool:
        return bool(self.attributes)

    def attribute(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise CvaeError(
            f"unknown condition {name!r}; this model is conditioned on "
            + (", ".join(self.names) if self.attributes else "nothing (a plain VAE)")
        )

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"attributes": [asdict(a) for a in self.attributes]}

    @classmethod
    def from_dict(cls, d: Mapping | None) -> ConditionSchema:
        attributes = [Attribute(**a) for a in (d or {}).get("attributes", [])]
        for a in attributes:  # a hand-edited schema: two classes of one name could not be told apart
            twice = sorted({str(c) for c in a.classes if list(a.classes).count(c) > 1})
            if twice:
                raise CvaeError(f"condition {a.name!r} lists the class(es) {', '.join(twice)} more than once (each "
                                "class is one input of the model)")
        return cls(attributes)

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """Raw codes (N, A) -> model input c (N, dim): one-hot and standardised blocks."""
        if not self.attributes:
            return y.new_zeros((y.shape[0], 0))
        parts = []
        for j, a in enumerate(self.attributes):
            col = y[:, j]
            if a.kind == "categorical":
                known = ~torch.isnan(col)
                hot = F.one_hot(torch.where(known, col, 0.0).long(), len(a.classes)).to(y.dtype)
                parts.append(hot * known.unsqueeze(1).to(y.dtype))  # a missing value: all zeros
            else:
                parts.append(((col - a.mean) / a.std).unsqueeze(1))
        return torch.cat(parts, dim=1)

    def parse(self, spec, n: int | None = None) -> torch.Tensor:
        """User-given conditions -> raw codes (N, A).

        ``spec`` may be a string ``"label=7"`` / ``"color=red,size=10"``, a mapping of attribute name
        to one value or a sequence of values, or an (N, A) array of raw codes. Attributes left out
        take, for a categorical one, every class in turn; for a continuous one, its training mean.
        """
        if isinstance(spec, torch.Tensor) or isinstance(spec, np.ndarray):
            try:
                y = torch.as_tensor(spec, dtype=torch.float32).cpu()
            except (TypeError, ValueError, RuntimeError):
                raise CvaeError(f"conditions must be an (N, {len(self.attributes)}) array of numbers (class indices "
                                f"and values), got an array of {spec.dtype}") from None
            if y.ndim != 2 or y.shape[1] != len(self.attributes):
                raise CvaeError(f"conditions must have shape (N, {len(self.attributes)}), got {tuple(y.shape)}")
            if n is not None and len(y) != n:
                raise CvaeError(f"the conditions array has {len(y)} rows but there are {n} examples; give one row per example")
            for j, a in enumerate(self.attributes):
                col = y[:, j][~torch.isnan(y[:, j])] if a.kind == "categorical" else y[:, j]
                if a.kind == "categorical" and len(col) and not bool(
                        ((col == col.round()) & (col >= 0) & (col < len(a.classes))).all()):
                    bad = col[~((col == col.round()) & (col >= 0) & (col < len(a.classes)))][0]
                    raise CvaeError(f"the conditions array's column {j} ({a.name!r}) holds {float(bad):g}; a categorical "
                                    f"condition's column holds class indices 0..{len(a.classes) - 1} (or NaN for a "
                                    "missing label); to name classes, give a mapping, e.g. {" + repr(a.name) + ": [...]}")
            return y
        if spec is None or spec == "" or spec == "none":
            spec = {}
        if isinstance(spec, str):
            spec = parse_assignments(spec)
        if not isinstance(spec, Mapping):
            raise CvaeError(f"cannot read conditions from {spec!r}; use e.g. 'label=7' or {{'label': 7}}")
        for name in spec:
            self.attribute(name)  # raises for an unknown name
        columns, lengths = [], set()
        for a in self.attributes:
            if a.name in spec:
                v = spec[a.name]
                if isinstance(v, torch.Tensor):
                    v = v.detach().cpu().numpy()  # values, not tensor(3)
                if isinstance(v, np.ndarray) and v.ndim == 0:
                    v = v.item()  # one value (np.array(3), torch.tensor(3))
                vals = list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]
                col = [a.code(x) for x in vals]
                if len(col) > 1:
                    lengths.add(len(col))
            else:
                col = None
            columns.append(col)
        if len(lengths) > 1:
            raise CvaeError(f"conditions given as lists must all have the same length, got {sorted(lengths)}")
        if n is None:
            n = lengths.pop() if lengths else None
            if n is None:
                free = [a for a, col in zip(self.attributes, columns) if col is None and a.kind == "categorical"]
                n = int(np.prod([len(a.classes) for a in free])) if free else 1
        out = torch.empty((n, len(self.attributes)))
        free = [j for j, (a, col) in enumerate(zip(self.attributes, columns)) if col is None and a.kind == "categorical"]
        # Free categorical attributes take every combination of classes in turn, rows of one
        # combination adjacent: row i gets combination floor(i * P / n), read in mixed radix.
        combo = torch.div(torch.arange(n) * int(np.prod([len(self.attributes[j].classes) for j in free] or [1])), n, rounding_mode="floor")
        for j in reversed(free):
            k = len(self.attributes[j].classes)
            out[:, j] = (combo % k).float()
            combo = combo // k
        for j, (a, col) in enumerate(zip(self.attributes, columns)):
            if col is None and a.kind != "categorical":
                out[:, j] = a.mean
            elif col is not None:
                if len(col) not in (1, n):
                    raise CvaeError(f"condition {a.name!r} has {len(col)} values for {n} examples (give one value, or one per example)")
                out[:, j] = torch.tensor(col, dtype=torch.float32)
        return out

    def far_value(self, y) -> tuple[int, int] | None:
        """(attribute, row) of the first continuous value of the raw codes ``y`` (N, A) more than
        CONDITION_LIMIT training standard deviations from its mean, where the networks' products overflow;
        None when every value is nearer."""
        y = torch.as_tensor(y, dtype=torch.float64)
        for j, a in enumerate(self.attributes):
            if a.kind == "continuous":
                far = torch.nonzero(((y[:, j] - a.mean) / a.std).abs() > CONDITION_LIMIT)
                if len(far):
                    return j, int(far[0, 0])
        return None

    def extrapolated(self, y, limit: float = EXTRAPOLATION_SD) -> list[str]:
        """One line per continuous attribute of the raw codes ``y`` (N, A) with a value more than ``limit``
        training standard deviations from its mean: what the model has seen nothing like."""
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1, len(self.attributes))
        out = []
        for j, a in enumerate(self.attributes):
            if a.kind == "continuous" and len(y):
                sd = ((y[:, j] - a.mean) / a.std).abs()
                sd = torch.where(torch.isnan(sd), torch.zeros_like(sd), sd)
                i = int(sd.argmax())
                if float(sd[i]) > limit:
                    out.append(f"{a.name}={float(y[i, j]):g} is {float(sd[i]):.3g} standard deviations from the training "
                               f"mean ({a.mean:.4g}, standard deviation {a.std:.4g}): the model has seen nothing like it, "
                               "so its outputs are extrapolation")
        return out

    def categorical_blocks(self) -> list[tuple[Attribute, int, int]]:
        """(attribute, start, end) of each categorical attribute's one-hot block in ``encode``'s output."""
        out, start = [], 0
        for a in self.attributes:
            if a.kind == "categorical":
                out.append((a, start, start + a.dim))
            start += a.dim
        return out

    def missing(self, y: torch.Tensor) -> torch.Tensor:
        """(N,) True where a row of raw codes lacks a categorical value."""
        if not self.attributes:
            return torch.zeros(len(y), dtype=torch.bool)
        return torch.isnan(y).any(dim=1)

    def describe(self, y_row) -> str:
        """A short label such as ``label=7`` for one row of raw codes (``label=?`` when missing)."""
        parts = []
        for a, v in zip(self.attributes, list(y_row)):
            v = float(v)
            if math.isnan(v):
                parts.append(f"{a.name}=?")
                continue
            parts.append(f"{a.name}={a.classes[int(v)]}" if a.kind == "categorical" else f"{a.name}={v:g}")
        return ",".join(parts)


def parse_assignments(text: str) -> dict[str, str]:
    """``"color=red,size=10"`` -> ``{"color": "red", "size": "10"}``. A value holding a comma is quoted:
    ``label="x,y"`` (or single quotes)."""
    out: dict[str, str] = {}
    for part in split_quoted(text, after="="):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise CvaeError(f"cannot read condition {part!r}: write NAME=VALUE, e.g. label=7 or color=red,size=10 "
                            "(quote a value that holds a comma: label=\"x,y\")")
        k, v = part.split("=", 1)
        if k.strip() in out:
            raise CvaeError(f"condition {k.strip()!r} is given twice in {text!r}; give each condition once "
                            "(several samples of other values: one command per value, or a list in Python)")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def split_quoted(text: str, *, after: str) -> list[str]:
    """``text`` split at the commas outside quotes. A quote opens only right after ``after`` ("=" for the
    value of ``name="x,y"``, "," for an element ``"city, state"``) or at the start: an apostrophe inside a
    word (O'Brien) is a letter, and a quote never closed is too (the text is split at every comma)."""
    parts, current, quote = [], [], None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            before = "".join(current).strip()
            if (not before) if after == "," else before.endswith(after):
                quote = ch
        elif ch == ",":
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quote:  # a quote that never closes was a letter (cls='90s): split at every comma, as before quoting
        return text.split(",")
    parts.append("".join(current))
    return parts


# a condition cell that says "no value" (numbers: NaN): pandas' default NA strings (pandas.read_csv's
# na_values), so that a file written by pandas, R or a spreadsheet means what it meant there
MISSING_TEXT = frozenset(("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                          "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"))


def is_missing(value) -> bool:
    """Whether one raw categorical value is missing: None, NaN or an empty cell."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return isinstance(value, (str, np.str_)) and value.strip() in MISSING_TEXT


def missing_mask(values: Sequence) -> np.ndarray:
    """(N,) True where a raw categorical value is missing."""
    arr = np.asarray(values)
    if arr.dtype.kind in "fc":
        return ~np.isfinite(arr)
    if arr.dtype.kind in "iub":
        return np.zeros(arr.shape, bool)
    return np.array([is_missing(v) for v in arr.tolist()], bool).reshape(arr.shape)


def categorical_from_values(name: str, values: Sequence) -> tuple[Attribute, np.ndarray]:
    """Build a categorical attribute from raw values (strings or numbers) and return their codes;
    a missing value (empty, NaN) gets the code NaN. A column with no value at all is an error."""
    arr = np.asarray(values)
    gone = missing_mask(arr)
    if gone.all():
        raise CvaeError(f"condition column {name!r} has no values at all (every row is empty); fill in some labels, "
                        "or train without it (--condition none)")
    if arr.dtype.kind in "fc" and np.isinf(arr).any():
        raise CvaeError(f"condition column {name!r} has infinite values; fix or drop those rows")
    known = arr[~gone]
    codes = np.full(arr.shape, np.nan, np.float32)
    texts = [class_text(v) for v in known.tolist()]
    if known.dtype.kind in "iuf":  # numbers in numeric order (2 before 10), named as class_text names them
        order = sorted(set(texts), key=float)
    elif all(whole_number_text(t) for t in texts):  # whole numbers kept as text (17-digit codes): in order too
        order = sorted(set(texts), key=int)
    else:
        order = sorted(set(texts))
    index = {t: i for i, t in enumerate(order)}
    codes[~gone] = [index[t] for t in texts]
    return Attribute(name, "categorical", order), codes


def _numeric(name: str) -> bool:
    try:
        float(name)
    except (TypeError, ValueError):
        return False
    return True


def whole_number_text(text: str) -> bool:
    """Whether ``text`` writes a whole number in digits ('17', '-3', '12345678901234567'): read exactly, as
    an int, never through a float (past 2^53 neighbouring codes would become one float)."""
    return text.lstrip("+-").isdecimal()  # isdigit would take "²", which int() refuses


def class_text(value) -> str:
    """The class name of one raw categorical value, the same in every split and file: whole numbers
    without a decimal point (3.0 and 3 are class '3'), other numbers as Python writes them ('0.5'),
    booleans 'True' / 'False', bytes decoded as UTF-8."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return str(int(v)) if v.is_integer() and abs(v) < 2**53 else str(v)
    return str(value)


def continuous_from_values(name: str, values: Sequence) -> tuple[Attribute, np.ndarray]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise CvaeError(f"condition column {name!r} was declared continuous but holds non-numeric values") from None
    if not np.all(np.isfinite(arr)):
        raise CvaeError(f"condition column {name!r} has missing or non-finite values; fill or drop those rows")
    if not len(arr):  # an empty split (one row, all of it in training): codes only, no statistics
        return Attribute(name, "continuous"), arr.astype(np.float32)
    std = float(arr.std()) or 1.0
    return Attribute(name, "continuous", mean=float(arr.mean()), std=std), arr.astype(np.float32)
