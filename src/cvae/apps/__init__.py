"""Applications of a trained model: they use the model, they do not live inside it."""

from .anomaly import (
    AnomalyFit,
    AnomalyScores,
    Detector,
    anomaly_metrics,
    anomaly_scores,
    fit_anomaly,
    load_detector,
    score_anomalies,
    write_scores,
)
from .augment import Augmented, augment, write_augmented
from .classify import Classification, classify_inputs, write_predictions
from .embed import Embedding, embed, embed_inputs, save_embedding_map, write_embedding
from .generate import generate, reconstruct_file, reconstruct_inputs, sample_to_file
from .io import Inputs, conditions_of, read_inputs, write_array_output
from .latent import (
    Interpolation,
    Transfer,
    Traversal,
    decode_at,
    interpolate_conditions,
    interpolate_inputs,
    kl_per_dimension,
    lerp,
    slerp,
    transfer,
    traverse,
    write_interpolation,
    write_transfer,
    write_traversal,
)

__all__ = [
    "AnomalyFit", "AnomalyScores", "Augmented", "Classification", "Detector", "Embedding", "Inputs", "Interpolation",
    "Transfer", "Traversal", "anomaly_metrics", "anomaly_scores", "augment", "classify_inputs", "conditions_of",
    "decode_at", "embed", "embed_inputs", "fit_anomaly", "generate", "interpolate_conditions", "interpolate_inputs",
    "kl_per_dimension", "lerp", "load_detector", "read_inputs", "reconstruct_file", "reconstruct_inputs",
    "sample_to_file", "save_embedding_map", "score_anomalies", "slerp", "transfer", "traverse", "write_array_output",
    "write_augmented", "write_embedding", "write_interpolation", "write_predictions",
    "write_scores", "write_transfer", "write_traversal",
]
