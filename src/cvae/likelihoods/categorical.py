"""A categorical over ``classes`` values for every data element: the likelihood of token sequences
(the sequence model: one categorical over the vocabulary per position) and of any data whose
elements are class indices 0..classes-1 (e.g. 256 grey levels).

The decoder gives ``classes`` logits per element, shape (..., classes, *data_shape). With
``padding`` set (the sequence model: the <pad> id 0), elements equal to it are not part of the
example and add nothing to log p(x | z, c).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LIKELIHOODS, Likelihood


class Categorical:
    """Independent categoricals per element; ``logits`` (..., *event, K)."""

    def __init__(self, logits: torch.Tensor, event_dims: int, padding: int | None = None):
        self.logits = logits
        self.event_dims = event_dims
        self.padding = padding

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p of the class indices ``x`` (..., *event), summed over the event (padding excluded)."""
        ids = x.long().expand(self.logits.shape[:-1])  # x broadcasts over leading sample dimensions
        lp = F.log_softmax(self.logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        if self.padding is not None:
            lp = torch.where(ids != self.padding, lp, torch.zeros_like(lp))
        return lp.sum(dim=tuple(range(-self.event_dims, 0)))

    @property
    def mean(self) -> torch.Tensor:
        """The most probable class per element (the mode), as floats."""
        return self.logits.argmax(-1).float()

    def sample(self) -> torch.Tensor:
        probs = F.softmax(self.logits.float(), dim=-1)
        return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1]).float()


@LIKELIHOODS.register("categorical")
class CategoricalLikelihood(Likelihood):
    options = {"classes": 256, "padding": None}

    def __init__(self, data_shape, **options):
        super().__init__(data_shape, **options)
        self.params_per_element = int(self.settings["classes"])

    def forward(self, params):
        # (..., K, *shape) -> (..., *shape, K)
        return Categorical(params.movedim(-self.event_dims - 1, -1), self.event_dims, self.settings["padding"])
