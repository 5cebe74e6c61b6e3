"""cvae: conditional, beta- and plain variational autoencoders, trained and used in one command.

The names below load on first use, so that ``import cvae.cli`` can set the command-line tool's
OpenMP wait policy before PyTorch (and its OpenMP runtime) is loaded: see :mod:`cvae.cli`.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"
_WHERE = {
    "load": ".api", "train": ".api", "ConditionSchema": ".conditions", "TrainConfig": ".config",
    "CvaeError": ".errors", "LIKELIHOODS": ".likelihoods", "Likelihood": ".likelihoods", "CVAE": ".models",
    "MODELS": ".models", "PRESETS": ".models", "ModelConfig": ".models", "VAEModel": ".models",
    "OBJECTIVES": ".objectives", "Objective": ".objectives", "PRIORS": ".priors", "Prior": ".priors",
}
__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cvae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Importing the submodule ``cvae.train`` would bind the name ``train`` to it; the function
    ``cvae.train`` keeps the name (the submodule stays importable: ``from cvae.train import fit``)."""

    def __setattr__(self, name, value):
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
