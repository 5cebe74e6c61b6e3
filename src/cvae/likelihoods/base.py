"""The likelihood p(x | z, c) as a registered part.

A likelihood turns the decoder's output into a distribution over the data. It says how many
decoder outputs it needs per data element (``params_per_element``: 1 for Bernoulli logits or a
Gaussian mean; a discretized logistic mixture or a categorical over a vocabulary needs more), and
the decoder then emits a tensor of shape (..., params_per_element, *data_shape) (or (..., *data_shape)
when it is 1). The distribution it returns has ``log_prob(x)`` (one value per example), ``mean``
and ``sample()``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CvaeError
from ..registry import Registry, check_options

LIKELIHOODS = Registry("likelihood", flag="--likelihood")


class Likelihood(nn.Module):
    """Base class: ``cls(data_shape, **options)``; ``forward(params)`` returns the distribution."""

    name: str = "?"
    options: dict = {}
    params_per_element: int = 1

    def __init__(self, data_shape: tuple[int, ...], **options):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.event_dims = len(self.data_shape)
        self.settings = check_options("likelihood", self.name, options, self.options)

    def forward(self, params: torch.Tensor):
        raise NotImplementedError

    def guided(self, cond: torch.Tensor, none: torch.Tensor, w: float):
        """Classifier-free guidance: the distribution proportional to p(x | z, c)^(1 + w) / p(x | z)^w
        per element, from the decoder's parameters with the condition (``cond``) and without it
        (``none``). A likelihood that has this in closed form overrides it."""
        raise CvaeError(f"classifier-free guidance is not available for the {self.name} likelihood (it is for "
                        f"{', '.join(guided_likelihoods())}); leave --guidance out")


def guided_likelihoods() -> list[str]:
    """The likelihoods that have classifier-free guidance (override :meth:`Likelihood.guided`)."""
    return [name for name, cls in LIKELIHOODS.items() if cls.guided is not Likelihood.guided]


def build_likelihood(name: str, data_shape, options: dict | None = None, *, sigma: float | None = None) -> Likelihood:
    """The likelihood ``name`` over ``data_shape``; ``sigma`` is the default of a likelihood that
    takes one (the model config's), which ``options`` override."""
    cls, options = LIKELIHOODS.get(name), dict(options or {})
    if sigma is not None and "sigma" in cls.options:
        options.setdefault("sigma", sigma)
    return cls(data_shape, **options)
