"""The ELBO (Kingma & Welling 2014), with the beta-VAE weight (Higgins et al. 2017), linear KL
warm-up (Bowman et al. 2016) and free bits (Kingma et al. 2016).

    loss = E_q[-log p(x | z, c)] + beta * w(t) * KL_term,   one reparameterised z per example

KL_term is KL(q(z | x, c) || p(z | c)) averaged over the batch; with free bits lambda > 0 it is
sum_d max(lambda, E_batch KL_d) over the latent dimensions d (a dimension whose KL is below lambda
nats gets no pressure to shrink it further). For a prior whose KL does not split by dimension (a
mixture, a VampPrior) all D dimensions form one group: max(lambda * D, E_batch KL).
"""

from __future__ import annotations

from .base import OBJECTIVES, Objective, ObjectiveOutput, kl_warmup, with_auxiliary


@OBJECTIVES.register("elbo")
class ELBO(Objective):
    uses = ("beta", "kl_warmup", "free_bits")

    def __init__(self, beta: float = 1.0, kl_warmup: float = 0.0, free_bits: float = 0.0):
        self.beta, self.warmup, self.free_bits = float(beta), float(kl_warmup), float(free_bits)

    def __call__(self, model, x, c, *, progress=0.0):
        out = model(x, c)
        rec = -out.px.log_prob(x).mean()
        kl_each = out.kl()  # (B,)
        kl = kl_each.float().mean()
        weight = self.kl_weight(progress)
        terms = {}
        if self.free_bits > 0:
            prior = out.prior
            if prior.factorized:
                per_dim = prior.kl_per_dim(out.qz, out.z, out.c).float().mean(0)  # (D,)
                kl_term = per_dim.clamp_min(self.free_bits).sum()
            else:
                kl_term = kl.clamp_min(self.free_bits * out.z.shape[-1])
            terms["kl_free_bits"] = kl_term.detach()
        else:
            kl_term = kl
        loss, terms = with_auxiliary(out, rec + weight * kl_term, terms)
        return ObjectiveOutput(loss=loss, reconstruction=rec, kl=kl, terms=terms)

    def kl_weight(self, progress: float) -> float:
        """The KL term's weight at ``progress`` epochs: beta times the warm-up's factor."""
        return self.beta * kl_warmup(progress, self.warmup)

    def schedule(self, progress):
        return {"kl_weight": kl_warmup(progress, self.warmup)}


def elbo(model, x, c=None, *, beta: float = 1.0, kl_weight: float = 1.0) -> ObjectiveOutput:
    """The ELBO with a fixed KL weight (``beta * kl_weight``): the training objective's figures."""
    return ELBO(beta=beta * kl_weight)(model, x, c)
