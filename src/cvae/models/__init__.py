"""Model classes: registered by name (``config.json`` names the class; ``cvae.load`` rebuilds it)."""

from .base import MODELS, ModelOutput, RunInfo, VAEModel, build_model
from .config import PRESETS, ModelConfig
from .cvae import CVAE
from .m2 import M2, M2Config

__all__ = ["CVAE", "M2", "M2Config", "MODELS", "ModelConfig", "ModelOutput", "PRESETS", "RunInfo", "VAEModel", "build_model"]
