"""Data sets with known factors of variation, rendered on demand (offline, deterministic).

``dsprites``: the dSprites images (Matthey, Higgins, Hassabis & Lerchner 2017,
github.com/deepmind/dsprites-dataset): every combination of shape (square, ellipse, heart), scale
(6 values, 0.5 to 1), orientation (40 values, 0 to 2 pi inclusive, as published) and position x, y
(32 values each, 0 to 1): 3 x 6 x 40 x 32 x 32 = 737,280 binary 64 x 64 images, in the published
order (the last factor fastest). When the published ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``
is in ``--data-dir``, ``$CVAE_DATA`` or the cache (``dsprites/``), its images are used; the file's
MD5 (``7da33b31b13a06f4b04a70402ce90c2e``, the checksum that public loaders of this file check) is
checked first, then its arrays' shapes and its factor table (exactly the published grid). Otherwise
the images are rendered here from the published definition; what differs from the published pixels: the sprites' exact outlines (the
published ones were drawn by DeepMind's unreleased code; here a pixel is on when its centre lies
inside the shape: a square of half-side 0.16, an ellipse of half-axes 0.2 x 0.1, a heart of the
curve (x^2 + y^2 - 1)^3 = x^2 y^3 scaled to half-width 0.18, each times the scale, in units of the
image's width) and the span of the positions (centres from 0.2 to 0.8 of the width).

``color-shapes``: a small coloured, Shapes3D-like set: 32 x 32 RGB images of a shape (square,
circle, triangle) of one of 8 hues on a background of one of 8 hues, 4 scales, 8 x 8 positions:
3 x 8 x 8 x 4 x 8 x 8 = 49,152 images.

Images are rendered a chunk at a time, only those asked for (:class:`RenderedImages` indexes like an
array), so ``--limit N`` renders about N images, not the whole grid. The factors are carried as
columns (``shape``, ``scale``, ...: class indices) named in ``meta["factors"]``: held out for
evaluation, and conditions only when asked (``--condition shape``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import CvaeError
from ..memory import free_memory
from .files import find_file

MAX_RENDER_BYTES = 4 * 2**30  # rendered by default at most (float32); a larger --limit may take half the free memory
CHUNK = 2048  # images per rendering pass


def render_budget() -> int:
    """Bytes of float32 images rendered at once at most: half the free memory, and at least
    MAX_RENDER_BYTES (the default subset's; all of dSprites, 11.2 GiB, was refused even on a machine with
    128 GiB, so the README's full command could not run)."""
    free = free_memory()
    return max(MAX_RENDER_BYTES, free // 2) if free else MAX_RENDER_BYTES


@dataclass(frozen=True)
class FactorGrid:
    """A full factorial grid of factors, examples in row-major order (the last factor fastest)."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    values: tuple[tuple, ...]  # the value of each class of each factor (for labels)

    @property
    def count(self) -> int:
        return math.prod(self.sizes)

    def factors(self, index: np.ndarray) -> np.ndarray:
        """(n, F) class indices of the examples ``index``."""
        return np.stack(np.unravel_index(np.asarray(index, np.int64), self.sizes), 1)


class RenderedImages:
    """An array-like (N, C, H, W) float32 whose rows are rendered when indexed (or read from ``source``,
    a uint8 array of the published images). Indexing with an int, a slice or an index array returns
    numpy arrays; the grid's factors of any rows come from :meth:`factors`."""

    def __init__(self, grid: FactorGrid, shape: tuple[int, ...], render, name: str, source: np.ndarray | None = None):
        self.grid, self._render, self.name, self.source = grid, render, name, source
        self.shape = (grid.count, *shape)
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        if isinstance(key, slice):
            index = np.arange(len(self))[key]
        else:
            index = np.asarray(key)
            if index.dtype == bool:
                index = np.flatnonzero(index)
        need = len(index) * math.prod(self.shape[1:]) * 4
        budget = render_budget()
        if need > budget:
            raise CvaeError(f"{self.name}: {len(index):,} images take {need / 2**30:.1f} GiB as float32, more than "
                            f"the {budget / 2**30:.1f} GiB this machine has for them (half its free memory); train on "
                            f"a subset with --limit N (e.g. --limit 50000), or embed / evaluate with --n N")
        out = np.empty((len(index), *self.shape[1:]), np.float32)
        for start in range(0, len(index), CHUNK):
            rows = index[start:start + CHUNK]
            if self.source is not None:
                out[start:start + len(rows)] = self.source[np.sort(rows)][np.argsort(np.argsort(rows))].reshape(
                    len(rows), *self.shape[1:])
            else:
                out[start:start + len(rows)] = self._render(self.grid.factors(rows))
        return out

    def __array__(self, dtype=None, copy=None):
        a = self[np.arange(len(self))]
        return a if dtype is None else a.astype(dtype)

    def factors(self, index) -> np.ndarray:
        return self.grid.factors(index)


# -- dSprites -------------------------------------------------------------------------------------

DSPRITES = FactorGrid(
    names=("shape", "scale", "orientation", "pos_x", "pos_y"),
    sizes=(3, 6, 40, 32, 32),
    values=(("square", "ellipse", "heart"), tuple(np.linspace(0.5, 1.0, 6).round(4)),
            tuple(np.linspace(0.0, 2 * np.pi, 40).round(4)), tuple(np.linspace(0.0, 1.0, 32).round(4)),
            tuple(np.linspace(0.0, 1.0, 32).round(4))),
)
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_MD5 = "7da33b31b13a06f4b04a70402ce90c2e"  # of the published .npz (github.com/deepmind/dsprites-dataset)


def _md5(path) -> str:
    import hashlib

    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inside(shape: np.ndarray, u: np.ndarray, v: np.ndarray, kinds: tuple[str, ...]) -> np.ndarray:
    """Whether the points (u, v) (sprite coordinates, unit scale, y up) lie inside each sprite's shape."""
    out = np.zeros(u.shape, bool)
    for k, kind in enumerate(kinds):
        rows = shape == k
        if not rows.any():
            continue
        a, b = u[rows], v[rows]
        if kind == "square":
            inside = (np.abs(a) <= 0.16) & (np.abs(b) <= 0.16)
        elif kind == "ellipse":
            inside = (a / 0.2) ** 2 + (b / 0.1) ** 2 <= 1.0
        elif kind == "heart":
            x, y = a / 0.15, b / 0.15 - 0.1  # the curve's half-width is 1.2 units
            inside = (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
        elif kind == "circle":
            inside = a * a + b * b <= 0.18 ** 2
        elif kind == "triangle":
            inside = (b >= -0.12) & (b <= 0.2 - 1.7 * np.abs(a))
        else:
            raise ValueError(kind)
        out[rows] = inside
    return out


def _sprite_masks(size: int, shape, scale, angle, cx, cy, kinds) -> np.ndarray:
    """(n, size, size) bool: pixel centres inside each sprite (centre (cx, cy) in [0, 1], y down)."""
    grid = (np.arange(size) + 0.5) / size
    px = grid[None, None, :] - np.asarray(cx)[:, None, None]  # (n, 1, W)
    py = np.asarray(cy)[:, None, None] - grid[None, :, None]  # (n, H, 1), y up
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    s = np.asarray(scale)[:, None, None]
    u = (cos * px + sin * py) / s  # rotate the image by -angle into the sprite's frame
    v = (-sin * px + cos * py) / s
    shape_b = np.broadcast_to(np.asarray(shape)[:, None, None], u.shape)
    return _inside(shape_b, u, v, kinds)


def render_dsprites(factors: np.ndarray) -> np.ndarray:
    """(n, 1, 64, 64) float32 0/1 images of dSprites factor indices (n, 5)."""
    f = np.asarray(factors, np.int64)
    scale = 0.5 + f[:, 1] / 10.0
    angle = f[:, 2] * (2 * np.pi / 39)
    cx, cy = 0.2 + 0.6 * f[:, 3] / 31, 0.2 + 0.6 * f[:, 4] / 31
    masks = _sprite_masks(64, f[:, 0], scale, angle, cx, cy, ("square", "ellipse", "heart"))
    return masks[:, None].astype(np.float32)


def _read_published_dsprites(path) -> np.ndarray:
    """The published images (uint8, (737280, 64, 64)), after checking the file's arrays."""
    from .sources import load_npz

    got = _md5(path)
    if got != DSPRITES_MD5:
        raise CvaeError(f"{path}: MD5 {got} is not the published dSprites file's ({DSPRITES_MD5}); it is damaged or "
                        "another file: replace it with a fresh copy from github.com/deepmind/dsprites-dataset, or "
                        "delete it to use the images cvae renders")
    arrays = load_npz(path)
    imgs, classes = arrays.get("imgs"), arrays.get("latents_classes")
    if imgs is None or classes is None:
        raise CvaeError(f"{path} lacks the arrays 'imgs' and 'latents_classes' of the published dSprites file; "
                        "replace it with a fresh copy from github.com/deepmind/dsprites-dataset or delete it")
    if imgs.shape != (DSPRITES.count, 64, 64) or classes.shape != (DSPRITES.count, 6):
        raise CvaeError(f"{path}: imgs {imgs.shape} and latents_classes {classes.shape}; the published file holds "
                        f"({DSPRITES.count}, 64, 64) and ({DSPRITES.count}, 6): replace it with a fresh copy")
    expected = DSPRITES.factors(np.arange(DSPRITES.count))
    if not np.array_equal(classes[:, 1:], expected) or (classes[:, 0] != 0).any():
        raise CvaeError(f"{path}: latents_classes is not the published factor grid in its order; replace the file")
    return imgs


def load_dsprites(data_dir=None):
    from .sources import RawData

    path = find_file("dsprites", [DSPRITES_FILE], data_dir)
    source = _read_published_dsprites(path) if path is not None else None
    images = RenderedImages(DSPRITES, (1, 64, 64), render_dsprites, "dsprites", source)
    return _factor_raw(RawData, "dsprites", images, binary=True,
                       origin=str(path) if path else "rendered by cvae from the published definition")


# -- coloured shapes ----------------------------------------------------------------------------

COLOR_SHAPES = FactorGrid(
    names=("shape", "object_hue", "background_hue", "scale", "pos_x", "pos_y"),
    sizes=(3, 8, 8, 4, 8, 8),
    values=(("square", "circle", "triangle"), tuple(np.arange(8) / 8), tuple(np.arange(8) / 8 + 1 / 16),
            tuple(np.linspace(0.6, 1.0, 4).round(4)), tuple(np.linspace(0, 1, 8).round(4)),
            tuple(np.linspace(0, 1, 8).round(4))),
)


def _hue_rgb(hue: np.ndarray, saturation: float, value: float) -> np.ndarray:
    """(n, 3) RGB of HSV colours (``matplotlib.colors.hsv_to_rgb``)."""
    from matplotlib.colors import hsv_to_rgb

    hsv = np.stack([hue, np.full_like(hue, saturation), np.full_like(hue, value)], 1)
    return hsv_to_rgb(hsv)


def render_color_shapes(factors: np.ndarray) -> np.ndarray:
    """(n, 3, 32, 32) float32 RGB images of color-shapes factor indices (n, 6)."""
    f = np.asarray(factors, np.int64)
    scale = 0.6 + f[:, 3] * (0.4 / 3)
    cx, cy = 0.25 + 0.5 * f[:, 4] / 7, 0.25 + 0.5 * f[:, 5] / 7
    masks = _sprite_masks(32, f[:, 0], scale, np.zeros(len(f)), cx, cy, ("square", "circle", "triangle"))
    obj = _hue_rgb(f[:, 1] / 8, 0.9, 0.95)[:, :, None, None]
    bg = _hue_rgb(f[:, 2] / 8 + 1 / 16, 0.35, 0.6)[:, :, None, None]
    return np.where(masks[:, None], obj, bg).astype(np.float32)


def load_color_shapes(data_dir=None):
    from .sources import RawData

    images = RenderedImages(COLOR_SHAPES, (3, 32, 32), render_color_shapes, "color-shapes")
    return _factor_raw(RawData, "color-shapes", images, binary=False, origin="rendered by cvae")


def _factor_raw(raw_class, name: str, images: RenderedImages, *, binary: bool, origin: str):
    grid = images.grid
    all_factors = grid.factors(np.arange(grid.count))
    columns = {n: all_factors[:, k] for k, n in enumerate(grid.names)}
    class_names = {"shape": list(grid.values[0])}
    meta = {"factors": list(grid.names), "factor_values": {n: [str(v) for v in vals] for n, vals in
                                                           zip(grid.names, grid.values)}, "origin": origin,
            "rendered": images.source is None}
    return raw_class(name, "image", {"train": (images, columns)}, class_names, binary=binary, meta=meta)
