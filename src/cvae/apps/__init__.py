"""Applications of a trained model: they use the model, they do not live inside it."""

from .generate import reconstruct_file, sample_to_file
from .io import read_inputs, write_array_output

__all__ = ["read_inputs", "reconstruct_file", "sample_to_file", "write_array_output"]
