"""cvae: conditional, beta- and plain variational autoencoders, trained and used in one command."""

from .api import load, train
from .conditions import ConditionSchema
from .config import TrainConfig
from .errors import CvaeError
from .model import CVAE, PRESETS, ModelConfig

__version__ = "0.1.0"
__all__ = ["CVAE", "ConditionSchema", "CvaeError", "ModelConfig", "PRESETS", "TrainConfig", "load", "train", "__version__"]
