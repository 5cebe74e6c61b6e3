"""A categorical over a vocabulary at every position of a token sequence: the likelihood of the
sequence model (``cvae.models.seqvae``). The decoder gives logits (..., L, V); positions after the
sequence's <eos> (the <pad> id 0) are not part of the sequence and add nothing to log p(x | z, c)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LIKELIHOODS, Likelihood

PAD = 0  # cvae.tokens.PAD


class TokenCategorical:
    """Independent categoricals over the vocabulary per position (given the decoder's inputs)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits  # (..., L, V)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p of the token ids ``x`` (..., L) summed over the positions before the padding."""
        ids = x.long()
        lp = F.log_softmax(self.logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return torch.where(ids != PAD, lp, torch.zeros_like(lp)).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        """The most probable token per position (the mode, as a float tensor of ids)."""
        return self.logits.argmax(-1).float()

    def sample(self) -> torch.Tensor:
        probs = F.softmax(self.logits.float(), dim=-1)
        return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1]).float()


@LIKELIHOODS.register("categorical")
class CategoricalLikelihood(Likelihood):
    def forward(self, params):
        return TokenCategorical(params)
