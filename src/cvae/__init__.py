"""cvae: conditional, beta- and plain variational autoencoders, trained and used in one command."""

from .api import load, train
from .conditions import ConditionSchema
from .config import TrainConfig
from .errors import CvaeError
from .likelihoods import LIKELIHOODS, Likelihood
from .models import CVAE, MODELS, PRESETS, ModelConfig, VAEModel
from .objectives import OBJECTIVES, Objective
from .priors import PRIORS, Prior

__version__ = "0.1.0"
__all__ = ["CVAE", "ConditionSchema", "CvaeError", "LIKELIHOODS", "Likelihood", "MODELS", "ModelConfig", "OBJECTIVES",
           "Objective", "PRESETS", "PRIORS", "Prior", "TrainConfig", "VAEModel", "load", "train", "__version__"]
