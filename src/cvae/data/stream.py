"""Data larger than memory: a ``.npy`` file read through its memory map, a chunk of rows at a time.

``load_npy_stream(path, ...)`` returns the same :class:`DataSplits` as ``load_data`` (the same split
of the same rows, the same model units), except that each split's ``x`` is an :class:`ArrayRows`:
indexing it with a slice or an array of positions reads just those rows from the file and returns
a float32 tensor. Nothing reads the whole file into memory; the statistics the loader needs (value
range, finiteness, feature means and standard deviations) are gathered in one pass over it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..conditions import ConditionSchema
from ..errors import CvaeError
from .core import Dataset, DataSplits, feature_scale, parse_condition_spec, split_positions
from .sources import (
    channel_last,
    check_examples_shape,
    check_values,
    grey_images,
    load_npy,
    pixel_divisor,
    warn_float_pixels,
)

CHUNK_BYTES = 64 * 2**20  # rows are read and converted this many bytes (as float32) at a time


class ArrayRows:
    """Rows ``rows`` of a (memory-mapped) array, read on demand in model units.

    ``x[i:j]`` and ``x[positions]`` return float32 tensors (N, *shape) of just those rows; uint8
    values are scaled to [0, 1] and, with ``loc``/``scale``, features are standardised. Channel-last
    images (N, H, W, C) are returned channel-first and grey ones (N, H, W) with a channel axis, as the
    in-memory loader does.
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray, *, loc: np.ndarray | None = None,
                 scale: np.ndarray | None = None, divisor: float | None = None):
        self.array = array
        self.divisor = divisor  # images: what the stored values are divided by (sources.pixel_divisor)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.loc, self.scale = loc, scale
        self.channel_last = channel_last(array.shape)
        self.grey = grey_images(array.shape)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        row = self.array.shape[1:]
        if self.grey:
            return (len(self.rows), 1, *row)
        return (len(self.rows), *((row[2], row[0], row[1]) if self.channel_last else row))

    @property
    def row_bytes(self) -> int:
        """Bytes of one row as float32 (what a batch of it takes in memory)."""
        return 4 * math.prod(self.array.shape[1:])

    def to(self, device) -> ArrayRows:
        return self  # the rows stay in the file; batches are moved to the device as they are read

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        rows = self.rows[key]
        return self.read(rows)[0] if np.ndim(rows) == 0 else self.read(rows)

    def read(self, file_rows: np.ndarray) -> torch.Tensor:
        """These rows of the file (in this order) as a float32 tensor in model units."""
        file_rows = np.atleast_1d(file_rows)
        order = np.argsort(file_rows, kind="stable")  # read in file order, then put back
        block = np.empty((len(file_rows), *self.array.shape[1:]), np.float32)
        block[order] = self.array[file_rows[order]]
        if self.channel_last:
            block = np.ascontiguousarray(block.transpose(0, 3, 1, 2))
        elif self.grey:
            block = block[:, None]
        if self.divisor is not None:
            if self.divisor != 1.0:
                block /= np.float32(self.divisor)  # as the in-memory loader does, to the last bit
        elif self.array.dtype == np.uint8:
            block /= 255.0
        if self.loc is not None:
            block -= self.loc
            block /= self.scale
        return torch.from_numpy(block)


def npy_float32_bytes(path: str | Path) -> int | None:
    """How many bytes the examples of a ``.npy`` file take as float32 (None when it is not one).
    A damaged ``.npy`` file is a CvaeError saying what is wrong with it."""
    path = Path(path)
    if path.suffix.lower() != ".npy" or not path.is_file():
        return None
    return 4 * math.prod(load_npy(path).shape)


def _chunks(n: int, row_bytes: int):
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def split_rows(n: int, *, val_fraction: float, seed: int, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation rows, exactly as :func:`cvae.data.load_data` draws them."""
    return split_positions(n, val_fraction, limit, np.random.default_rng(seed))


def load_npy_stream(path: str | Path, *, condition=None, val_fraction: float = 0.1, seed: int = 0,
                    limit: int | None = None) -> DataSplits:
    """A ``.npy`` file of examples (N, features), (N, C, L) or (N, C, H, W) (or (N, H, W, C)), read by rows
    on demand."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".npy" and not path.exists():
        raise CvaeError(f"--data {path}: no such file")
    if path.suffix.lower() != ".npy" or not path.is_file():
        raise CvaeError(f"--stream reads a .npy file of examples through its memory map; {str(path)!r} is not one "
                        "(save the examples with numpy.save, or drop --stream to load the data in memory)")
    parse_condition_spec(condition, [])  # a .npy file has no condition columns: only None/'none' pass
    x = load_npy(path)
    check_examples_shape(x.shape, str(path))
    if x.dtype.kind not in "fiub":
        raise CvaeError(f"{path} holds {x.dtype} values; expected real numbers (save them as float32)")
    kind = "image" if grey_images(x.shape) else {2: "table", 3: "signal", 4: "image"}[x.ndim]
    train_rows, val_rows = split_rows(len(x), val_fraction=val_fraction, seed=seed, limit=limit)
    if len(train_rows) == 0:
        raise CvaeError(f"no training examples left in {str(path)!r} (after the validation split)")

    # One pass over the file: range and finiteness of every row, mean and variance of the training rows.
    plain = ArrayRows(x, np.arange(len(x)))
    is_train = np.zeros(len(x), bool)
    is_train[train_rows] = True
    lo, hi, count = math.inf, -math.inf, 0
    mean = m2 = None
    for part in _chunks(len(x), plain.row_bytes):
        stored = np.asarray(x[part])
        check_values(stored, str(path), start=part.start)  # as stored: before float32 turns 1e300 into inf
        lo, hi = min(lo, float(stored.min())), max(hi, float(stored.max()))
        block = plain[part].numpy()
        rows = block[is_train[part]].astype(np.float64)
        if len(rows):  # merge the chunk's mean and squared deviations (Chan et al., 1979)
            m, d2, k = rows.mean(0), ((rows - rows.mean(0)) ** 2).sum(0), len(rows)
            if mean is None:
                mean, m2, count = m, d2, k
            else:
                delta, total = m - mean, count + k
                mean = mean + delta * (k / total)
                m2 = m2 + d2 + delta**2 * (count * k / total)
                count = total
    divisor = pixel_divisor(x.dtype, lo, hi) if kind == "image" else None  # the in-memory loader's rule
    unit_range = divisor is not None
    if divisor == 255.0 and x.dtype.kind == "f":
        warn_float_pixels(str(path), lo, hi)
    loc = scale = None
    if not unit_range:
        std = np.sqrt(m2 / count)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
            raise CvaeError(f"{path}: the feature means or standard deviations are not finite; "
                            "rescale the data (change its units or take logarithms)")
        loc, scale = mean.astype(np.float32), feature_scale(mean, std)

    def part(rows):
        if len(rows) == 0:
            return None
        return Dataset(ArrayRows(x, rows, loc=loc, scale=scale, divisor=divisor), torch.zeros((len(rows), 0)), None)

    return DataSplits(name=path.stem, kind=kind, schema=ConditionSchema([]), train=part(train_rows),
                      val=part(val_rows), test=None, binary=False, standardize=not unit_range, loc=loc,
                      scale=scale, meta={"source": str(path), "stream": True})
