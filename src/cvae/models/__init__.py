"""Model classes: registered by name (``config.json`` names the class; ``cvae.load`` rebuilds it)."""

from .base import MODELS, ModelOutput, RunInfo, VAEModel, build_model
from .config import PRESETS, ModelConfig
from .cvae import CVAE
from .hvae import HVAE, HVAEConfig
from .m2 import M2, M2Config
from .multvae import MULTVAE_DEFAULTS, MultVAE, MultVAEConfig
from .seqvae import SeqVAE, SeqVAEConfig

__all__ = ["CVAE", "HVAE", "HVAEConfig", "M2", "M2Config", "MODELS", "MULTVAE_DEFAULTS", "ModelConfig", "ModelOutput",
           "MultVAE", "MultVAEConfig", "PRESETS", "RunInfo", "SeqVAE", "SeqVAEConfig", "VAEModel", "build_model"]
