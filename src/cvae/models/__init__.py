"""Model classes: registered by name (``config.json`` names the class; ``cvae.load`` rebuilds it)."""

from .base import MODELS, ModelOutput, RunInfo, VAEModel, build_model
from .config import PRESETS, ModelConfig
from .cvae import CVAE

__all__ = ["CVAE", "MODELS", "ModelConfig", "ModelOutput", "PRESETS", "RunInfo", "VAEModel", "build_model"]
