"""Data: named and generic sources, condition schemas fitted on the training split, splits.

``load_data(source, ...)`` returns :class:`DataSplits`: float32 tensors ``x`` (N, *shape) and raw
condition codes ``y`` (N, A) for train / validation / test, with the schema, the data kind and
the settings the model needs (likelihood, standardisation).
"""

from .core import (
    EVALUATION_SEED,
    Dataset,
    DataSplits,
    fixed_binarization,
    load_data,
    parse_image_size,
)
from .sources import NAMED_SOURCES, read_image

__all__ = ["EVALUATION_SEED", "DataSplits", "Dataset", "fixed_binarization", "load_data", "parse_image_size", "NAMED_SOURCES",
           "read_image"]
