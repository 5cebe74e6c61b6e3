"""Grey levels: the one rule for what image values are divided by to lie in [0, 1], shared by the data
readers and the models' own input checks (below both, so that models need not import data)."""

from __future__ import annotations

import numpy as np

UNIT_SLACK = 1e-5  # image values this far outside [0, 1] are rounding, clipped back into it


def pixel_divisor(dtype: np.dtype, low: float, high: float) -> float | None:
    """What image values of this type and range are divided by to become grey levels in [0, 1] (the one
    rule for files, streamed files and the Python API): 1 for values in [0, 1] (``uint8`` 0/1 masks
    included), 255 for 8-bit pixel values (``uint8``, a wider integer type, or floats up to 255), 65535
    for 16-bit integers; None for anything else (standardised features)."""
    if low < -UNIT_SLACK:
        return None
    if high <= 1.0 + UNIT_SLACK:
        return 1.0  # grey levels (a rounding below 0 or past 1 is clipped by the caller)
    if low < 0:
        return None
    if high <= 255 and (dtype == np.uint8 or np.dtype(dtype).kind in "iuf"):
        return 255.0
    if high <= 65535 and np.dtype(dtype).kind in "iu":
        return 65535.0
    return None
