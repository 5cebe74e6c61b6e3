"""Readers. Each returns :class:`RawData`: float32 arrays plus raw condition columns per split.

Named sources: ``digits`` (scikit-learn's bundled 8x8 digits, offline), ``mnist``, ``fashion-mnist``
(IDX files), ``binarized-mnist`` (Larochelle's ``.amat``, no labels). Generic sources, chosen by
the path: a ``.npz`` / ``.npy`` file, a folder of images with one subfolder per class, a ``.csv`` file.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CvaeError
from .files import require


@dataclass
class RawData:
    name: str
    kind: str  # "image" | "table" | "signal"
    splits: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]  # split -> (x, condition columns)
    class_names: dict[str, list[str]] = field(default_factory=dict)
    binary: bool = False  # values are already 0/1
    unit_range: bool = True  # values lie in [0, 1] (images); else the features get standardised
    meta: dict = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return list(self.splits["train"][1])


# -- IDX (MNIST, Fashion-MNIST) ----------------------------------------------------------------

def _open_maybe_gz(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise CvaeError(f"cannot read {path}: {e}. The file is damaged: delete it and put a fresh copy there") from None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array of its dimensions."""
    raw = _open_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CvaeError(f"{path} is not an IDX file of unsigned bytes (bad magic number); replace it with a fresh copy")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise CvaeError(
            f"{path} is truncated or corrupt: header says {dims} ({expected} bytes) but it holds {len(raw) - offset}; "
            "replace it with a fresh copy"
        )
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _idx_source(name, subdir, files, url, class_names, data_dir) -> RawData:
    paths = require(subdir, {f: (url + f, h) for f, h in files.items()}, data_dir, name)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"])
        labels = read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise CvaeError(f"{name}: {split} images {images.shape} and labels {labels.shape} do not match")
        x = images.astype(np.float32)[:, None] / 255.0
        splits[split] = (x, {"label": labels.astype(np.int64)})
    return RawData(name, "image", splits, {"label": class_names})


def load_mnist(data_dir=None) -> RawData:
    return _idx_source("mnist", "mnist", _MNIST_FILES, _MNIST_URL, [str(i) for i in range(10)], data_dir)


def load_fashion_mnist(data_dir=None) -> RawData:
    return _idx_source("fashion-mnist", "fashion-mnist", _FASHION_FILES, _FASHION_URL, FASHION_CLASSES, data_dir)


# -- statically binarized MNIST (Larochelle) ---------------------------------------------------

_BIN_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_BIN_FILES = {
    "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}


def read_amat(path: Path, width: int = 784) -> np.ndarray:
    """A ``.amat`` / ``.amat.gz`` file of 0/1 values separated by single spaces, one row per line."""
    raw = _open_maybe_gz(path)
    line = 2 * width  # "0 1 ... 1\n"
    buf = np.frombuffer(raw, np.uint8)
    if len(buf) % line == 0 and len(buf) > 0:
        rows = buf.reshape(-1, line)
        values, seps = rows[:, 0::2], rows[:, 1::2]
        if np.all((values == 48) | (values == 49)) and np.all(seps[:, :-1] == 32) and np.all(seps[:, -1] == 10):
            return (values - 48).astype(np.float32)
    try:  # a differently formatted file: slower general parser
        arr = np.loadtxt(io.BytesIO(raw), dtype=np.float32, ndmin=2)
    except ValueError as e:
        raise CvaeError(f"cannot parse {path}: {e}; replace it with a fresh copy") from None
    if arr.shape[1] != width:
        raise CvaeError(f"{path} has rows of {arr.shape[1]} values; expected {width}")
    return arr


def load_binarized_mnist(data_dir=None) -> RawData:
    files = {f: (_BIN_URL + f, h) for f, h in _BIN_FILES.items()}
    paths = require("binarized-mnist", files, data_dir, "binarized-mnist")
    splits = {}
    for split, key in (("train", "train"), ("val", "valid"), ("test", "test")):
        x = read_amat(paths[f"binarized_mnist_{key}.amat"])
        splits[split] = (x.reshape(-1, 1, 28, 28), {})
    return RawData("binarized-mnist", "image", splits, binary=True)


# -- scikit-learn's digits (bundled, offline) ----------------------------------------------------

def load_digits(data_dir=None) -> RawData:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return RawData("digits", "image", {"train": (x, {"label": d.target.astype(np.int64)})},
                   {"label": [str(i) for i in range(10)]})


NAMED_SOURCES = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "binarized-mnist": load_binarized_mnist,
}


# -- generic sources ---------------------------------------------------------------------------

def _check_finite(x: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0][0]
        raise CvaeError(f"{where} contains NaN or infinite values (first at example {bad}); clean or drop those examples")


def _array_kind(x: np.ndarray) -> str:
    return {2: "table", 3: "signal", 4: "image"}.get(x.ndim, "")


def _as_float(x: np.ndarray, where: str) -> tuple[np.ndarray, bool]:
    """Floats, and whether they lie in [0, 1] (uint8 images are scaled by 1/255)."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0, True
    if x.dtype.kind not in "fiub":
        raise CvaeError(f"{where} holds {x.dtype} values; expected numbers")
    x = x.astype(np.float32)
    _check_finite(x, where)
    return x, bool(x.size and x.min() >= 0.0 and x.max() <= 1.0)


def load_array_file(path: Path) -> RawData:
    """``.npy``: the examples. ``.npz``: an array ``x`` (or the only array) plus condition arrays
    of the same length (``y``/``labels`` are read as ``label``)."""
    try:
        if path.suffix == ".npy":
            arrays = {"x": np.load(path, allow_pickle=False, mmap_mode="r")}
        else:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CvaeError(f"cannot read {path}: {e}. Save arrays with numpy.save / numpy.savez (no pickled objects)") from None
    if "x" not in arrays:
        if len(arrays) == 1:
            arrays = {"x": next(iter(arrays.values()))}
        else:
            raise CvaeError(f"{path} holds arrays {', '.join(arrays)}; name the examples 'x' (and labels 'y')")
    x = np.asarray(arrays.pop("x"))
    if x.ndim == 1 or len(x) == 0:
        raise CvaeError(f"{path}: 'x' has shape {x.shape}; expected (N, features), (N, C, L) or (N, C, H, W) with N > 0")
    if x.ndim == 3 and path.suffix == ".npz" and x.shape[-1] == x.shape[-2]:
        x = x[:, None]  # (N, H, W) square images -> (N, 1, H, W)
    if x.ndim > 4:
        raise CvaeError(f"{path}: 'x' has shape {x.shape}; at most 4 dimensions (N, C, H, W) are supported")
    x, unit = _as_float(x, f"{path} (array 'x')")
    columns = {}
    for k, v in arrays.items():
        if v.ndim != 1:
            continue
        if len(v) != len(x):
            raise CvaeError(f"{path}: array {k!r} has {len(v)} entries but 'x' has {len(x)} examples")
        columns["label" if k in ("y", "labels", "targets") else k] = v
    kind = _array_kind(x)
    return RawData(path.stem, kind, {"train": (x, columns)}, unit_range=unit and kind == "image", binary=False)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_image_folder(root: Path, image_size: tuple[int, int] | None = None) -> RawData:
    """``root/CLASS/*.png``: one subfolder per class; grey or RGB, all of one size (or resized)."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CvaeError(f"{root} has no class subfolders; put images in {root}/CLASS_NAME/*.png")
    files, labels = [], []
    for i, cname in enumerate(classes):
        found = sorted(p for p in (root / cname).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [i] * len(found)
    if not files:
        raise CvaeError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under the class folders of {root}")
    images, modes = [], set()
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                modes.add("L" if im.mode in ("1", "L", "I;16", "I", "F") else "RGB")
                images.append(im.copy())
        except (UnidentifiedImageError, OSError) as e:
            raise CvaeError(f"cannot read image {f}: {e}; remove or replace it") from None
    mode = "RGB" if "RGB" in modes else "L"
    size = (image_size[1], image_size[0]) if image_size else images[0].size
    arrays = []
    for f, im in zip(files, images):
        im = im.convert(mode)
        if im.size != size:
            if image_size is None:
                raise CvaeError(
                    f"{f} is {im.size[0]}x{im.size[1]} but {files[0]} is {size[0]}x{size[1]}; "
                    "make all images one size or pass --image-size HxW to resize them"
                )
            im = im.resize(size, Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32) / 255.0
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x = np.stack(arrays)
    return RawData(root.name, "image", {"train": (x, {"label": np.array(labels)})}, {"label": classes},
                   meta={"files": [str(f.relative_to(root)) for f in files]})


def read_csv_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file; ragged rows are an error naming the line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(4096)
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            reader = csv.reader(f, dialect)
            rows, lines = [], []
            for r in reader:
                if any(cell.strip() for cell in r):  # blank lines are skipped
                    rows.append(r)
                    lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError) as e:
        raise CvaeError(f"cannot read {path}: {e}") from None
    if len(rows) < 2:
        raise CvaeError(f"{path} needs a header line and at least one data row")
    header, data = [h.strip() for h in rows[0]], CsvRows(rows[1:], lines[1:])
    if all(_is_number(h) for h in header):
        # No header line (e.g. the heartbeat CSVs of MIT-BIH / PTB): every line is data and the
        # columns are named x0, x1, ... in order.
        header, data = [f"x{i}" for i in range(len(header))], CsvRows(rows, lines)
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise CvaeError(f"{path}: duplicate column name(s) {', '.join(dup)}")
    for line, r in zip(data.lines, data):
        if len(r) != len(header):
            raise CvaeError(f"{path}, line {line}: {len(r)} values but the header has {len(header)} columns (ragged row)")
    return header, data


class CsvRows(list):
    """The data rows of a CSV file, with ``lines``: the file's line number of each (for messages)."""

    def __init__(self, rows, lines):
        super().__init__(rows)
        self.lines = list(lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_csv(path: Path, condition_columns: list[str], *, layout: str = "table",
             feature_columns: list[str] | None = None, id_column: str | None = None) -> RawData:
    """Feature columns (numeric) plus named condition columns.

    ``layout="signal"`` reads each row's features as a 1-D signal of shape (1, L).
    """
    header, rows = read_csv_table(path)
    for c in condition_columns + (feature_columns or []) + ([id_column] if id_column else []):
        if c not in header:
            raise CvaeError(f"{path} has no column {c!r}; its columns are: {', '.join(header)}")
    if id_column is None and "id" in header and "id" not in condition_columns:
        id_column = "id"
    exclude = set(condition_columns) | ({id_column} if id_column else set())
    features = feature_columns or [h for h in header if h not in exclude]
    if not features:
        raise CvaeError(f"{path}: no feature columns left after the condition columns {condition_columns}")
    idx = [header.index(h) for h in features]
    x = np.empty((len(rows), len(features)), np.float32)
    for i, r in enumerate(rows):
        for j, k in enumerate(idx):
            cell = r[k].strip()
            try:
                x[i, j] = float(cell)
            except ValueError:
                what = "an empty cell" if not cell else f"text {cell!r}"
                hint = "" if feature_columns else f" (if {features[j]!r} is a condition, pass --condition {features[j]})"
                raise CvaeError(f"{path}, line {rows.lines[i]}, column {features[j]!r}: {what} where a number was "
                                f"expected{hint}") from None
    _check_finite(x, str(path))
    columns = {}
    for c in condition_columns:
        vals = [r[header.index(c)].strip() for r in rows]
        try:
            columns[c] = np.array([float(v) for v in vals])
        except ValueError:
            columns[c] = np.array(vals)
    meta = {"features": features}
    if id_column:
        meta["ids"] = [r[header.index(id_column)] for r in rows]
    if layout == "signal":
        x = x[:, None, :]
    return RawData(path.stem, "signal" if layout == "signal" else "table", {"train": (x, columns)},
                   unit_range=False, meta=meta)
