"""The semi-supervised objective of model M2 (Kingma et al. 2014), with consistency regularisation of
the classifier (FixMatch, Sohn et al. 2020) as the default.

For a labelled example (x, y), the conditional ELBO, with p(y) uniform over K classes:

    L(x, y) = E_q(z|x,y)[-log p(x | y, z)] + KL(q(z | x, y) || p(z)) + log K      (>= -log p(x, y))

For an unlabelled x, the label is a latent variable, summed over exactly:

    U(x) = sum_y q(y | x) L(x, y) - H(q(y | x))                                    (>= -log p(x))

The loss of a batch is the mean of L and U over its rows, plus ``alpha`` times the mean cross-entropy
of q(y | x) on its labelled rows (the paper's J^alpha), plus ``consistency`` times the FixMatch term
on its unlabelled rows: q(y | x) of a strongly perturbed x is trained towards the class that a weakly
perturbed x gets, where that class has probability >= ``threshold`` (0.95).

Two variants, measured in benchmarks/semi.py:

- ``consistency 0`` is M2 exactly: q(y | x) learns from U (its gradient flows through the weights q)
  and from the labels with the paper's alpha = 0.1 N on a sum over the data set, which is
  0.1 * n_labelled on these per-example means.
- the default, ``consistency 1``: q(y | x) learns from the labels (alpha 1, FixMatch's weight) and the
  consistency term; U still trains the encoder and decoder with q's weights, but its gradient does
  not reach q (with it, the generative model's preferences pulled q towards wrong classes and the
  error went up: see the README).

Several categorical conditions: the sum runs over every combination of a row's missing ones (q
factorises over them), and each one's classifier learns from every row where it is known.

Reported as the ELBO's parts: ``reconstruction`` is the (q-weighted) reconstruction term and ``kl``
the rest of the bound (KL of z, KL(q(y|x) || p(y)) or log K), so that train_loss is the bound.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from .. import perturb
from ..errors import CvaeError
from .base import OBJECTIVES, Objective, ObjectiveOutput

MAX_COMBINATIONS = 256  # the most label combinations an unlabelled row is summed over
THRESHOLD = 0.95  # FixMatch's confidence threshold for a pseudo-label


@OBJECTIVES.register("m2")
class SemiSupervised(Objective):
    uses = ("alpha", "consistency")
    labelled_batches = True  # the trainer adds labelled rows to every batch
    model_class = "m2"

    def __init__(self, alpha: float | None = None, consistency: float | None = None):
        self.alpha_given = alpha
        self.alpha = alpha if alpha is not None else 1.0
        self.consistency = 1.0 if consistency is None else float(consistency)

    def attach(self, n_train: int, n_labelled: int) -> dict:
        """The data's sizes: the default alpha is M2's 0.1 * n_labelled (the paper's 0.1 N), or 1, FixMatch's
        weight of the labelled cross-entropy, with consistency."""
        if self.alpha_given is None:
            self.alpha = 1.0 if self.consistency > 0 else 0.1 * max(1, n_labelled)
        return {"alpha": self.alpha, "consistency": self.consistency, "threshold": THRESHOLD}

    def __call__(self, model, x, c, *, progress=0.0):
        core = getattr(model, "module", model)  # under DDP the parts live on .module
        core = getattr(core, "_orig_mod", core)  # and under torch.compile on ._orig_mod
        if not hasattr(core, "class_logits"):
            raise CvaeError("--objective m2 needs the semi-supervised model (--model m2)")
        blocks = core.blocks
        gone = core.missing_blocks(c)  # (B, A)
        labelled = ~gone.any(1)
        prior_y = sum(math.log(a.dim) for a, _, _ in blocks)
        logits = [lg.float() for lg in core.class_logits(x)]
        n = len(x)
        rec_sum = x.new_zeros((), dtype=torch.float32)
        kl_sum = x.new_zeros((), dtype=torch.float32)
        terms = {}

        if labelled.any():
            rec, kl = self._bound(model, x[labelled], c[labelled])
            rec_sum = rec_sum + rec.sum()
            kl_sum = kl_sum + kl.sum() + prior_y * int(labelled.sum())
        for pattern in torch.unique(gone[~labelled], dim=0):
            rows = (gone == pattern).all(1)
            rec, kl = self._summed(model, core, x[rows], c[rows], [lg[rows] for lg in logits], pattern.tolist(),
                                   prior_y)
            rec_sum, kl_sum = rec_sum + rec, kl_sum + kl
        loss = (rec_sum + kl_sum) / n

        # each condition's classifier learns from every row where that condition is known (a row that lacks
        # another one too: its known label was left out before)
        some = ~gone.all(1)
        if some.any():
            xl = x[some]
            if self.consistency > 0:  # the labelled rows as the weak view too, as FixMatch does
                xl = perturb.weak(xl, unit_range=not core.config.standardize)
            known, cl = ~gone[some], c[some]
            ce = sum(F.cross_entropy(lg[known[:, i]].float(), cl[known[:, i], s:e].argmax(1))
                     for i, (lg, (_, s, e)) in enumerate(zip(core.class_logits(xl), blocks)) if known[:, i].any())
            loss = loss + self.alpha * ce
            terms["classifier_ce"] = ce.detach()
        if self.consistency > 0 and (~labelled).any():
            cons, confident = self._consistency(core, x[~labelled], gone[~labelled])
            loss = loss + self.consistency * cons
            terms["consistency"], terms["confident"] = cons.detach(), confident
        return ObjectiveOutput(loss=loss, reconstruction=rec_sum / n, kl=kl_sum / n, terms=terms)

    @staticmethod
    def _bound(model, x, c):
        """Per row: E_q[-log p(x | y, z)] and KL(q(z | x, y) || p(z)), one reparameterised z."""
        out = model(x, c)
        return -out.px.log_prob(x).float(), out.kl().float()

    def _summed(self, model, core, x, c, logits, pattern, prior_y):
        """Sums over the rows of U(x): every combination of the missing conditions, weighted by q."""
        blocks = core.blocks
        missing = [i for i, g in enumerate(pattern) if g]
        sizes = [blocks[i][0].dim for i in missing]
        combos = math.prod(sizes)
        if combos > MAX_COMBINATIONS:
            names = ", ".join(blocks[i][0].name for i in missing)
            raise CvaeError(f"an example missing {names} would be summed over {combos:,} label combinations (at most "
                            f"{MAX_COMBINATIONS}); give more of its conditions, or train on fewer categorical ones")
        b = len(x)
        cs = c.unsqueeze(0).repeat(combos, 1, 1)  # (M, b, dim)
        log_q = x.new_zeros((combos, b), dtype=torch.float32)
        for m, combo in enumerate(itertools.product(*[range(k) for k in sizes])):
            for i, k in zip(missing, combo):
                _, s, e = blocks[i]
                cs[m, :, s + k] = 1.0
                log_q[m] += logits[i].log_softmax(1)[:, k]
        xs = x.unsqueeze(0).expand(combos, *x.shape).reshape(combos * b, *x.shape[1:])
        rec, kl = self._bound(model, xs, cs.reshape(combos * b, -1))
        q = log_q.exp()
        if self.consistency > 0:  # the classifier learns from the labels and the consistency term only
            q, log_q = q.detach(), log_q.detach()
        rec_w = (q * rec.view(combos, b)).sum()
        kl_y = (q * log_q).sum() + prior_y * b  # KL(q(y | x) || p(y)) of the missing ones; log K of the known
        kl_w = (q * kl.view(combos, b)).sum() + kl_y
        return rec_w, kl_w

    @staticmethod
    def _consistency(core, x, gone):
        """FixMatch: cross-entropy of q(y | strong(x)) against the confident classes of q(y | weak(x))."""
        unit = not core.config.standardize
        with torch.no_grad():
            weak = [lg.float().softmax(1) for lg in core.class_logits(perturb.weak(x, unit_range=unit))]
        strong = core.class_logits(perturb.strong(x, unit_range=unit))
        total, confident, count = 0.0, 0.0, 0
        for i, (pw, ls) in enumerate(zip(weak, strong)):
            rows = gone[:, i]
            if not rows.any():
                continue
            conf, target = pw[rows].max(1)
            mask = (conf >= THRESHOLD).float()
            total = total + (F.cross_entropy(ls[rows].float(), target, reduction="none") * mask).mean()
            confident += mask.mean().detach()
            count += 1
        return total / max(count, 1), torch.as_tensor(confident / max(count, 1))

    def bound(self, model, x, c):
        """The held-out figures: the bound without the classifier's extra terms (labelled rows: L(x, y),
        unlabelled ones: U(x))."""
        with torch.no_grad():
            return SemiSupervised(alpha=0.0, consistency=0.0)(model, x, c)
