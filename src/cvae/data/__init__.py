"""Data: named and generic sources, condition schemas fitted on the training split, splits.

``load_data(source, ...)`` returns :class:`DataSplits`: float32 tensors ``x`` (N, *shape) and raw
condition codes ``y`` (N, A) for train / validation / test, with the schema, the data kind and
the settings the model needs (likelihood, standardisation).
"""

from .core import Dataset, DataSplits, load_data
from .sources import NAMED_SOURCES

__all__ = ["DataSplits", "Dataset", "load_data", "NAMED_SOURCES"]
