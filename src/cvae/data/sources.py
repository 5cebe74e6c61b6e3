"""Readers. Each returns :class:`RawData`: float32 arrays plus raw condition columns per split.

Named sources: ``digits`` (scikit-learn's bundled 8x8 digits, offline), ``mnist``, ``fashion-mnist``
(IDX files), ``binarized-mnist`` (Larochelle's ``.amat``, no labels), ``dsprites`` and ``color-shapes``
(images with known factors of variation, rendered on demand: :mod:`cvae.data.factors`). Generic sources, chosen by
the path: a ``.npz`` / ``.npy`` file, a folder of images with one subfolder per class, a ``.csv`` file.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
import struct
import tokenize
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..conditions import MISSING_TEXT, whole_number_text
from ..errors import CvaeError, CvaeWarning
from ..units import UNIT_SLACK, pixel_divisor  # noqa: F401 (read from here too)
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
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise CvaeError(f"cannot read {path}: {_reason(e)}. The file is damaged: delete it and put a fresh copy there") from None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array of its dimensions."""
    raw = _open_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CvaeError(f"{path} is not an IDX file of unsigned bytes (bad magic number); replace it with a fresh copy")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if ndim == 0 or len(raw) < offset:
        raise CvaeError(f"{path} is truncated or corrupt: its header names {ndim} dimensions; replace it with a fresh copy")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = math.prod(dims)  # Python integers: a corrupt header cannot overflow the count
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
        image_file, label_file = paths[f"{prefix}-images-idx3-ubyte.gz"], paths[f"{prefix}-labels-idx1-ubyte.gz"]
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) == 0:
            raise CvaeError(f"{image_file} holds an array of shape {images.shape}; {name} images are (N, 28, 28) "
                            "with N > 0: replace the file with a fresh copy")
        if labels.ndim != 1 or len(images) != len(labels):
            raise CvaeError(f"{name}: {split} images {images.shape} ({image_file.name}) and labels {labels.shape} "
                            f"({label_file.name}) do not match; replace both with fresh copies")
        if labels.max() >= len(class_names):
            bad = int(np.argmax(labels >= len(class_names)))
            raise CvaeError(f"{label_file}: label {int(labels[bad])} of example {bad} is not a {name} class "
                            f"(0-{len(class_names) - 1}); replace the file with a fresh copy")
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
        raise CvaeError(f"cannot parse {path}: {_reason(e)}; replace it with a fresh copy") from None
    if arr.size == 0:
        raise CvaeError(f"{path} holds no rows; replace it with a fresh copy")
    if arr.shape[1] != width:
        raise CvaeError(f"{path} has rows of {arr.shape[1]} values; expected {width}")
    if not np.all((arr == 0) | (arr == 1)):
        row = int(np.argwhere((arr != 0) & (arr != 1))[0][0])
        raise CvaeError(f"{path}, row {row + 1}: values other than 0 and 1; replace the file with a fresh copy")
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


def load_dsprites(data_dir=None) -> RawData:
    from .factors import load_dsprites as load

    return load(data_dir)


def load_color_shapes(data_dir=None) -> RawData:
    from .factors import load_color_shapes as load

    return load(data_dir)


NAMED_SOURCES = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "binarized-mnist": load_binarized_mnist,
    "dsprites": load_dsprites,  # factors of variation, held out (cvae.data.factors)
    "color-shapes": load_color_shapes,
}


# -- generic sources ---------------------------------------------------------------------------

# Larger magnitudes overflow the float32 statistics the model is fitted with (a square beyond 3.4e38
# makes the standard deviation infinite and every standardised value NaN): such values are refused.
MAX_ABS = 1e18


def _reason(e: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    text = str(e.args[0]) if isinstance(e, tokenize.TokenError) and e.args else str(e)
    text = re.sub(r" (object )?at 0x[0-9a-fA-F]+", "", " ".join(text.split()))
    return (text[:200] + "...") if len(text) > 200 else (text or type(e).__name__)


def check_values(x: np.ndarray, where: str, *, start: int = 0) -> None:
    """Refuse NaN, infinite and huge (|x| > MAX_ABS) values, naming the first: example and position.

    Runs on the array as read (before any cast to float32, which would turn huge values into inf).
    ``start`` is the file's example number of ``x[0]`` (for a chunk of a larger array).
    """
    if x.dtype == np.uint8 or x.dtype.kind == "b" or x.size == 0:
        return
    flat = x.reshape(len(x), -1)
    step = max(1, 2**22 // flat.shape[1])  # rows at a time: the temporaries stay small
    for first in range(0, len(flat), step):
        block = flat[first:first + step]
        if block.dtype.kind == "f":
            # compared in at least float32: MAX_ABS cast to float16 is inf, and inf <= inf let infinities pass
            bad = ~(np.abs(block.astype(np.float32) if block.dtype.itemsize < 4 else block) <= MAX_ABS)
        else:
            bad = (block > MAX_ABS) | (block < -MAX_ABS)
        if bad.any():
            break
    else:
        return
    i, j = (int(v) for v in np.argwhere(bad)[0])
    i += first
    value = flat[i, j]
    position = f"feature {j}" if x.ndim == 2 else f"position {tuple(int(v) for v in np.unravel_index(j, x.shape[1:]))}"
    if not np.isfinite(value):
        raise CvaeError(f"{where} contains NaN or infinite values (first at example {start + i}, {position}: {value}); "
                        "clean or drop those examples")
    raise CvaeError(f"{where} holds a value too large to standardise ({float(value):.3g} at example {start + i}, "
                    f"{position}; |x| must be at most {MAX_ABS:.0e}); rescale the data (change its units or take logarithms)")


def _array_kind(x: np.ndarray) -> str:
    return {2: "table", 3: "signal", 4: "image"}.get(x.ndim, "")


MIN_GREY_SIDE = 8  # (N, H, W) arrays are grey images from 8 x 8 (scikit-learn's digits) up; (N, 3, 3) are matrices


def grey_images(shape: tuple[int, ...]) -> bool:
    """Whether an array of this shape holds grey images without a channel axis (N, H, W): 3-D with its last
    two axes equally long, at least MIN_GREY_SIDE (an (N, 28, 28) array of digits), in a .npy file as in a
    .npz one. Signals are (N, C, L) with C != L; (N, 3, 3) arrays are tables of small matrices."""
    return len(shape) == 3 and shape[1] == shape[2] >= MIN_GREY_SIDE


def channel_last(shape: tuple[int, ...]) -> bool:
    """Whether an array of this shape holds channel-last images (N, H, W, C): 4-D, its last axis 1 to 4
    long (grey, grey + alpha, RGB, RGBA) and its second not, or its second and third equal (square images:
    (N, 4, 4, 3) is 4x4 RGB, not four channels of 4x3); an (N, 3, 8, 3) array stays channel-first."""
    if len(shape) != 4 or shape[-1] not in IMAGE_CHANNELS:
        return False
    return shape[1] not in IMAGE_CHANNELS or shape[1] == shape[2] != shape[3]


def check_examples_shape(shape: tuple[int, ...], where: str) -> None:
    """Examples are (N, features), (N, C, L) or (N, C, H, W) with N > 0 and no empty dimension."""
    if not 2 <= len(shape) <= 4 or shape[0] == 0 or 0 in shape[1:]:
        raise CvaeError(f"{where} has shape {tuple(shape)}; expected (N, features), (N, C, L) or (N, C, H, W) "
                        "with N > 0 and every other dimension at least 1")


def warn_float_pixels(where: str, low: float, high: float) -> None:
    warnings.warn(f"{where} holds floats from {low:g} to {high:g}: read as 8-bit pixel values and divided by 255 "
                  "(save grey levels in [0, 1] to read them as they are)", CvaeWarning, stacklevel=4)


def image_shaped(shape: tuple[int, ...]) -> bool:
    """Images: (N, C, H, W) / (N, H, W, C), or square grey (N, H, W) (:func:`grey_images`)."""
    return len(shape) == 4 or grey_images(shape)


def _as_float(x: np.ndarray, where: str) -> tuple[np.ndarray, bool]:
    """Floats, and whether they lie in [0, 1] (images in pixel values are divided: :func:`pixel_divisor`)."""
    images = image_shaped(x.shape)
    if x.dtype.kind not in "fiub":
        raise CvaeError(f"{where} holds {x.dtype} values; expected real numbers (save them as float32)")
    if x.dtype != np.uint8:
        check_values(x, where)
    if images and x.size:
        low, high = float(x.min()), float(x.max())
        divisor = pixel_divisor(x.dtype, low, high)
        if divisor is not None and divisor != 1.0:
            if x.dtype.kind == "f":
                warn_float_pixels(where, low, high)
            return x.astype(np.float32) / np.float32(divisor), True
    elif x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0, True
    x = x.astype(np.float32)
    if not x.size:
        return x, False
    low, high = float(x.min()), float(x.max())
    if images and -UNIT_SLACK <= low and high <= 1.0 + UNIT_SLACK and (low < 0.0 or high > 1.0):
        np.clip(x, 0.0, 1.0, out=x)  # grey levels a rounding away from [0, 1] (1.0000001 after a division)
        low, high = max(low, 0.0), min(high, 1.0)
    return x, bool(low >= 0.0 and high <= 1.0)


_NPY_MAGIC = b"\x93NUMPY"
# What numpy's header parser raises on a damaged header (tokenize and ast errors among them).
_HEADER_ERRORS = (ValueError, SyntaxError, tokenize.TokenError, TypeError, KeyError, IndexError, OverflowError,
                  RecursionError, MemoryError, EOFError, OSError, struct.error)
_SAVE_HINT = "save the arrays again with numpy.save / numpy.savez"


def npy_header(f, nbytes: int, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``.npy`` data in ``f`` (``nbytes`` long), checked: a numeric array, and
    exactly the bytes its header describes after the header. Leaves ``f`` past the header."""
    if nbytes == 0:
        raise CvaeError(f"{where} is empty (0 bytes); {_SAVE_HINT}")
    head = f.read(8)
    if head[:6] != _NPY_MAGIC or len(head) < 8:
        raise CvaeError(f"{where} is not a NumPy .npy array (its first bytes are not a .npy header); {_SAVE_HINT}")
    version = (head[6], head[7])
    if version not in ((1, 0), (2, 0)):
        raise CvaeError(f"{where} has a .npy header of version {version[0]}.{version[1]} (a damaged file, or an array of "
                        f"named fields); cvae reads plain numeric arrays: {_SAVE_HINT}")
    try:
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    except _HEADER_ERRORS as e:
        raise CvaeError(f"{where} has a damaged .npy header ({_reason(e)}); {_SAVE_HINT}") from None
    if dtype.hasobject:
        raise CvaeError(f"{where} holds Python objects (dtype {dtype}); cvae reads only numeric arrays: save the data "
                        "as numbers (e.g. x.astype('float32')) with numpy.save / numpy.savez")
    if any(d < 0 for d in shape):
        raise CvaeError(f"{where} has a damaged .npy header (shape {shape}); {_SAVE_HINT}")
    data = math.prod(shape) * dtype.itemsize
    if nbytes - offset != data:
        what = "truncated" if nbytes - offset < data else "damaged (extra bytes after the array)"
        raise CvaeError(f"{where} is {what}: its header says shape {shape} of {dtype} ({data} bytes) but "
                        f"{nbytes - offset} bytes follow it; {_SAVE_HINT}")
    return tuple(shape), dtype


def load_npy(path: Path, *, mmap: bool = True) -> np.ndarray:
    """The array of a ``.npy`` file (memory-mapped by default), after :func:`npy_header`'s checks."""
    try:
        with open(path, "rb") as f:
            npy_header(f, path.stat().st_size, str(path))
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except CvaeError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise CvaeError(f"cannot read {path}: {_reason(e)}; {_SAVE_HINT}") from None


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError, RuntimeError,
               struct.error, KeyError, UnicodeDecodeError)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` file by name, each checked like a ``.npy`` file."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy") or info.is_dir():
                    continue
                where = f"{path} (array {info.filename[:-4]!r})"
                with z.open(info) as f:
                    npy_header(f, info.file_size, where)
                with z.open(info) as f:
                    arrays[info.filename[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
    except CvaeError:
        raise
    except _ZIP_ERRORS as e:
        raise CvaeError(f"cannot read {path}: {_reason(e)} (not a .npz file, or a damaged one); {_SAVE_HINT}") from None
    if not arrays:
        raise CvaeError(f"{path} holds no arrays; {_SAVE_HINT}")
    return arrays


LABEL_ARRAYS = ("y", "labels", "targets")  # .npz arrays read as the 'label' column
# a column of row ids, by its name: id, ID, sample_id, "Sample Id", patient-id, patientID (not "valid", "grid")
ID_NAME = re.compile(r"^(?i:id)$|[ _-](?i:id)$|[a-z](?:Id|ID)$")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")  # delimited text files of rows (the delimiter is detected)
IMAGE_CHANNELS = (1, 2, 3, 4)  # grey, grey + alpha, RGB, RGBA: the channel counts channel_last recognises
# holds channel-last images (Shapes3D's, PIL's and TensorFlow's order)


def load_array_file(path: Path) -> RawData:
    """``.npy``: the examples. ``.npz``: an array ``x`` (or the only array) plus condition arrays
    of the same length (``y``/``labels`` are read as ``label``; (N, 1) columns count as (N,)). Images
    may be channel-first (N, C, H, W) or channel-last (N, H, W, C) with C 1, 3 or 4."""
    if path.suffix.lower() == ".npy":
        arrays = {"x": load_npy(path)}
    else:
        arrays = load_npz(path)
    if "x" not in arrays:
        if len(arrays) == 1:
            arrays = {"x": next(iter(arrays.values()))}
        else:
            raise CvaeError(f"{path} holds arrays {', '.join(arrays)}; name the examples 'x' (and labels 'y')")
    x = np.asarray(arrays.pop("x"))
    # the file's own shape and values, before the layout is changed: a bad value's position is named as
    # the file holds it, (h, w, c) in a channel-last array, as the streamed reader names it
    where = str(path) if path.suffix.lower() == ".npy" else f"{path} (array 'x')"  # a .npy is one array, unnamed
    check_examples_shape(x.shape, where)
    x, unit = _as_float(x, where)
    if grey_images(x.shape):
        x = x[:, None]  # (N, H, W) square images -> (N, 1, H, W)
    elif x.ndim == 3 and x.shape[2] <= 4 < x.shape[1]:  # many channels of a few steps: likely (N, L, C)
        warnings.warn(f"{path}: 'x' has shape {tuple(x.shape)}, read as {x.shape[1]} channels of {x.shape[2]} steps "
                      f"each; if it holds {x.shape[2]} channel(s) of {x.shape[1]} steps (channel-last), save it as "
                      f"x.transpose(0, 2, 1)", CvaeWarning, stacklevel=2)
    if channel_last(x.shape):
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)
    columns = {}
    for k, v in arrays.items():
        name = "label" if k in LABEL_ARRAYS else k
        if v.ndim == 2 and v.shape[1] == 1:
            v = v[:, 0]  # a column vector: one value per example
        if v.ndim != 1:
            if name == "label":
                raise CvaeError(f"{path}: array {k!r} has shape {v.shape}; expected one label per example, shape "
                                f"({len(x)},) (for one-hot labels save y.argmax(1))")
            continue  # not a per-example column
        if v.dtype.kind not in "biufUS":
            if name == "label":
                raise CvaeError(f"{path}: array {k!r} holds {v.dtype} values; labels must be numbers or text")
            continue  # dates, complex numbers, records: not a condition
        if len(v) != len(x):
            raise CvaeError(f"{path}: array {k!r} has {len(v)} entries but 'x' has {len(x)} examples")
        if name == "label" and _whole_numbers(v) and (v == -1).any():
            v = np.where(v == -1, np.nan, v.astype(np.float64))  # -1 (or -1.0): no label (semi-supervised)
        if name in columns:
            raise CvaeError(f"{path} holds more than one label array ({', '.join(a for a in LABEL_ARRAYS if a in arrays)}); "
                            "keep one, named 'y'")
        columns[name] = v
    kind = _array_kind(x)
    return RawData(path.stem, kind, {"train": (x, columns)}, unit_range=unit and kind == "image", binary=False)


def _whole_numbers(v: np.ndarray) -> bool:
    """Integer labels, or float ones whose values are all whole numbers or NaN (np.savez of a float array of
    class indices, as pandas and most numeric code write them)."""
    if v.dtype.kind in "iu":
        return True
    if v.dtype.kind != "f":
        return False
    finite = v[np.isfinite(v)]
    return bool(np.all(finite == np.round(finite)))


UNLABELLED_FOLDER = "unlabelled"  # an image folder's subfolder of images without a label
UNLABELLED_NAMES = {"unlabelled", "unlabeled"}  # either spelling, any case
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_GREY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def on_white(im):
    """An image with transparency (an alpha channel, or a transparent palette colour) drawn on a white
    background, as a viewer shows it on a page: where a pixel is transparent its colour channels can
    hold anything (black, or what the drawing program left there), so they are not read alone."""
    if not ("A" in im.mode or "a" in im.mode or "transparency" in im.info):
        return im
    from PIL import Image

    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba)


def open_image(path: Path):
    """The decoded PIL image of ``path``. Whatever a damaged, truncated, foreign or oversized file
    makes Pillow raise becomes one CvaeError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Image.DecompressionBombError as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise CvaeError(f"{path} is too large to decode ({size}; the limit is {2 * Image.MAX_IMAGE_PIXELS:,}); "
                        "shrink the image or remove it") from None
    except UnidentifiedImageError:
        raise CvaeError(f"{path} is not an image cvae can read (unknown format or a damaged header); "
                        "remove or replace it") from None
    except Exception as e:  # Pillow's decoders raise many types on a damaged file (OSError, SyntaxError, ...)
        raise CvaeError(f"cannot read the image {path} ({_reason(e)}): the file is damaged; remove or replace it") from None


def image_array(im, path: Path, mode: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded image as float32 (C, H, W) in [0, 1], ``mode`` "L" (C=1) or "RGB" (C=3), resized to
    ``size`` (width, height) when given; a transparent one drawn on white (:func:`on_white`). 8-bit values are divided by 255, 16-bit ones by 65535; 32-bit
    pixels are read when they lie in 0..255 (floating-point ones in [0, 1] as they are) and refused
    otherwise (never clipped)."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16"):
            a /= 65535.0
        elif not (np.all(np.isfinite(a)) and a.min() >= 0 and a.max() <= 255):
            raise CvaeError(f"{path} has 32-bit ({im.mode}) pixels outside 0..255; cvae reads 8- and 16-bit images: "
                            "save it as an 8- or 16-bit PNG")
        elif not (im.mode == "F" and a.max() <= 1.0):  # a float image in [0, 1] holds grey levels already
            a /= 255.0
        a = a.astype(np.float32)
        if size is not None and (a.shape[1], a.shape[0]) != size:
            a = np.asarray(Image.fromarray(a, "F").resize(size, Image.BILINEAR), np.float32).clip(0.0, 1.0)
        return np.repeat(a[None], 3, axis=0) if mode == "RGB" else a[None]
    im = on_white(im).convert(mode)
    if size is not None and im.size != size:
        im = im.resize(size, Image.BILINEAR)
    a = np.asarray(im, dtype=np.float32) / 255.0
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def read_image(path: Path, channels: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as float32 (C, H, W) in [0, 1]: ``channels`` 1 (grey) or 3 (RGB), by default the
    image's own; resized to ``size`` (height, width) when given. Bad files raise CvaeError."""
    path = Path(path)
    if channels not in (None, 1, 3):
        raise CvaeError(f"{path}: images have 1 (grey) or 3 (RGB) channels, not {channels}")
    im = open_image(path)
    mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if im.mode in _GREY_MODES else "RGB")
    return image_array(im, path, mode, (size[1], size[0]) if size else None)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def load_image_folder(root: Path, image_size: tuple[int, int] | None = None, channels: int | None = None, *,
                      unlabelled_ok: bool = False) -> RawData:
    """``root/CLASS/*.png``: one subfolder per class; grey or RGB, all of one size (or resized).
    Images in ``root/unlabelled/`` (or ``unlabeled/``, any case) have no label (semi-supervised
    training). Hidden files and folders are skipped; a class folder without images is refused.
    ``unlabelled_ok`` (inputs to a trained run): a folder without class subfolders holds images without
    a label, those at its top level too."""
    try:
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
        unlabelled = [c for c in folders if c.lower() in UNLABELLED_NAMES]
        classes = [c for c in folders if c not in unlabelled]
        files, labels, empty = [], [], []
        if unlabelled_ok and not classes:  # images alone: read at the top level, and in unlabelled/
            files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                           and not _hidden(p.name))
            labels = [math.nan] * len(files)
            unlabelled = unlabelled or [None]
        for cname in folders:
            # hidden files and folders (.ipynb_checkpoints, macOS's ._name copies, __MACOSX) are not images of
            # the class
            found = sorted(p for p in (root / cname).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                           and not any(_hidden(part) for part in p.relative_to(root / cname).parts))
            if not found and cname in classes:
                empty.append(cname)
            files += found
            labels += [classes.index(cname) if cname in classes else math.nan] * len(found)
    except OSError as e:
        raise CvaeError(f"cannot list the images in {root}: {_reason(e)}") from None
    if empty and len(empty) < len(classes):
        raise CvaeError(f"the class folder(s) {', '.join(root.name + '/' + c for c in empty)} hold no images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))}); a class the model never sees cannot be generated: add "
                        "images or remove the folder")
    if not classes and not unlabelled_ok:
        raise CvaeError(f"{root} has no class subfolders; put images in {root}/CLASS_NAME/*.png"
                        + (f" (images in {UNLABELLED_FOLDER}/ need labelled ones beside them)" if folders else ""))
    if not files:
        raise CvaeError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under the class folders of {root}"
                        if classes else f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")
    images = [open_image(f) for f in files]
    mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if all(im.mode in _GREY_MODES for im in images) else "RGB")
    size = (image_size[1], image_size[0]) if image_size else images[0].size
    arrays = []
    for f, im in zip(files, images):
        if im.size != size and image_size is None:
            raise CvaeError(
                f"{f} is {im.size[1]}x{im.size[0]} (height x width) but {files[0]} is {size[1]}x{size[0]}; "
                f"make all images one size or pass --image-size HxW to resize them (e.g. --image-size {size[1]}x{size[0]})"
            )
        arrays.append(image_array(im, f, mode, size))
    x = np.stack(arrays)
    labels = np.array(labels, np.float64) if unlabelled else np.array(labels)
    return RawData(root.name, "image", {"train": (x, {"label": labels})}, {"label": classes},
                   meta={"files": [str(f.relative_to(root)) for f in files]})


def read_csv_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file; ragged rows are an error naming the line."""
    rows, lines, reader = [], [], None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            # the first lines whole (a signal's line of 800 samples is longer than any fixed-size sample)
            sample = "".join(f.readline(1 << 20) for _ in range(5))
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            reader = csv.reader(f, dialect)
            for r in reader:
                if any(cell.strip() for cell in r):  # blank lines are skipped
                    rows.append(r)
                    lines.append(reader.line_num)
    except UnicodeDecodeError as e:
        raise CvaeError(f"cannot read {path}: it is not UTF-8 text ({_reason(e)}); save it as a UTF-8 CSV file") from None
    except OSError as e:
        raise CvaeError(f"cannot read {path}: {_reason(e)}") from None
    except csv.Error as e:
        line = reader.line_num if reader is not None else 1
        raise CvaeError(f"{path}, line {line}: not valid CSV ({_reason(e)}); fix or remove that line") from None
    if len(rows) < 2:
        raise CvaeError(f"{path} needs a header line and at least one data row")
    header, data = [h.strip() for h in rows[0]], CsvRows(rows[1:], lines[1:])
    if all(_is_number(h) for h in header):
        # No header line (e.g. the heartbeat CSVs of MIT-BIH / PTB): every line is data and the
        # columns are named x0, x1, ... in order.
        header, data = [f"x{i}" for i in range(len(header))], CsvRows(rows, lines)
    if header and header[-1] == "" and all(len(r) == len(header) and not r[-1].strip() for r in data):
        # a comma at the end of every line (some exporters write one): an unnamed, empty last column
        header, data = header[:-1], CsvRows([r[:-1] for r in data], data.lines)
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


def _beyond_float(text: str) -> bool:
    """A whole number past float64's exact integers (2^53: 17-digit codes, barcodes): as a float it
    would share its class with its neighbours (12345678901234567 and ...568 are one float), so such a
    condition column is read as text, each code exact."""
    return whole_number_text(text) and abs(int(text)) > 2**53


class NotANumber(CvaeError):
    """A feature cell of a CSV that is not a number: ``where`` says which, the message adds training's
    advice (name the column a condition or a factor), which a caller without those flags leaves out."""

    def __init__(self, where: str, advice: str = ""):
        super().__init__(where + advice)
        self.where = where


def load_csv(path: Path, condition_columns: list[str], *, layout: str = "table",
             feature_columns: list[str] | None = None, id_column: str | None = None) -> RawData:
    """Feature columns (numeric) plus named condition columns.

    ``layout="signal"`` reads each row's features as a 1-D signal of shape (1, L).
    """
    header, rows = read_csv_table(path)
    missing = [c for c in feature_columns or [] if c not in header]
    if missing:  # the columns a trained model reads
        raise CvaeError(f"{path} lacks the feature column(s) {', '.join(missing)} the model was trained on; its "
                        f"columns are: {', '.join(header)}")
    for c in condition_columns + (feature_columns or []) + ([id_column] if id_column else []):
        if c not in header:
            raise CvaeError(f"{path} has no column {c!r}; its columns are: {', '.join(header)}")
    if id_column is None:
        named = [h for h in header if ID_NAME.search(h) and h not in condition_columns and h not in (feature_columns or [])]
        id_column = "id" if "id" in named else (named[0] if named else None)
        if id_column not in (None, "id") and feature_columns is None:
            warnings.warn(f"{path}: column {id_column!r} is read as the rows' ids (its name says so), not as a feature",
                          CvaeWarning, stacklevel=2)
    exclude = set(condition_columns) | ({id_column} if id_column else set())
    features = feature_columns or [h for h in header if h not in exclude]
    if feature_columns is None and header == [f"x{i}" for i in range(len(header))] and header[-1] in features:
        last = {r[-1].strip() for r in rows}
        if len(last) <= 20 and all(v.lstrip("-").removesuffix(".0").isdigit() for v in last):
            warnings.warn(f"{path} has no header line and its last column holds whole numbers ({', '.join(sorted(last)[:10])}), "
                          f"like labels; it is read as data ({header[-1]}). If it is the label, pass --condition "
                          f"{header[-1]} (or add a header line naming it label)", CvaeWarning, stacklevel=2)
    if not features:
        raise CvaeError(f"{path}: no feature columns left after the condition columns {condition_columns}")
    idx = [header.index(h) for h in features]
    x = np.empty((len(rows), len(features)), np.float64)  # float64 first: 1e300 must not become inf unseen
    for i, r in enumerate(rows):
        for j, k in enumerate(idx):
            cell = r[k].strip()
            try:
                x[i, j] = float(cell)
            except ValueError:
                what = "an empty cell" if not cell else f"text {cell!r}"
                hint = "" if feature_columns else (f" (if {features[j]!r} is a condition, pass --condition {features[j]}; "
                                                   f"a factor of variation, --factors {features[j]})")
                raise NotANumber(f"{path}, line {rows.lines[i]}, column {features[j]!r}: {what} where a number was "
                                 "expected", hint) from None
    bad = ~(np.abs(x) <= MAX_ABS)  # NaN and inf too
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        cell = rows[i][idx[j]].strip()
        where = f"{path}, line {rows.lines[i]}, column {features[j]!r}"
        if not np.isfinite(x[i, j]):
            raise CvaeError(f"{where}: {cell!r} is NaN or infinite; put a number there or drop that row")
        raise CvaeError(f"{where}: {cell!r} is too large to standardise (|x| must be at most {MAX_ABS:.0e}); "
                        "rescale that column (change its units or take logarithms)")
    x = x.astype(np.float32)
    columns = {}
    for c in condition_columns:
        vals = [r[header.index(c)].strip() for r in rows]
        try:  # numbers, with empty cells as NaN (a missing label), else text
            columns[c] = np.array([math.nan if v in MISSING_TEXT else float(v) for v in vals])
            if np.isnan(columns[c]).all() or any(_beyond_float(v) for v in vals):
                columns[c] = np.array(vals)
        except ValueError:
            columns[c] = np.array(vals)
    meta = {"features": features}
    if layout != "signal" and len(x):  # counts, years, ratings: written back as whole numbers
        whole = np.all(x == np.round(x), axis=0)
        meta["whole_features"] = [f for f, w in zip(features, whole) if w]
    if id_column:
        meta["ids"] = [r[header.index(id_column)] for r in rows]
    if layout == "signal":
        x = x[:, None, :]
    return RawData(path.stem, "signal" if layout == "signal" else "table", {"train": (x, columns)},
                   unit_range=False, meta=meta)
