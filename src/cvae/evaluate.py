"""Honest numbers for a trained model: likelihood bounds and posterior health.

Every figure is per example, in nats, with its standard error where it is an estimate, and carries
a name that says exactly what it is (:class:`Figure`).

Likelihood (Burda, Grosse & Salakhutdinov 2015, "Importance Weighted Autoencoders", eq. 8):

    log p(x | c)  ~  log (1/k) sum_i p(x | z_i, c) p(z_i | c) / q(z_i | x, c),   z_i ~ q(z | x, c)

The estimate is a lower bound on log p(x | c) in expectation and tightens as k grows; with k = 1
it is the ELBO. :func:`importance_sampled` draws the k samples in chunks of at most ``rows`` decoder
rows (memory stays bounded for any k), runs the encoder once per example, and accumulates the
log-sum-exp across chunks in float64. Models that a registered fast kernel covers
(:mod:`cvae.kernels`: MLP decoders with Bernoulli outputs) are decoded by it, about twice as fast
with the same numbers; every other model goes through its own ``p_x`` and likelihood. The prior
enters only through its ``distribution(c)``, built once per block of examples; its KL is analytic
where the prior has a closed form, else the average of log q - log p over the same k samples.

Posterior health (the numbers that show posterior collapse):

- KL per latent dimension, E_x KL(q(z_d | x, c) || p(z_d | c)), analytic for a Gaussian prior (for a
  mixture prior, a one-sample estimate against the prior's marginal in each dimension);
- active units: dimension d is active when Cov_x(E_q[z_d | x, c]) > 0.01 (Burda et al. 2015, sec. 5.2);
- mutual information I(x; z) under the aggregate posterior q(z) = (1/N) sum_n q(z | x_n, c_n)
  (Hoffman & Johnson 2016, "ELBO surgery"; the estimator of He et al. 2019): it cannot exceed log N.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import EVALUATION_SEED, fixed_binarization, parse_image_size
from .data.files import sha256
from .distributions import LOG_2PI
from .errors import CvaeError
from .figures import NATS, Figure, figure, mean_and_stderr  # noqa: F401  (re-exported)
from .kernels import kernel_for
from .models import CVAE
from .models.seqvae import GENERATE_DECODE, GENERATE_TOKEN_TEMPERATURE
from .registry import UnknownPart
from .threads import ThreadGovernor, kept_thread_count
from .tokens import PAD

# -- importance sampling ------------------------------------------------------------------------

@dataclass
class PerExample:
    """Per-example results of :func:`importance_sampled` (all shape (N,), float64, nats)."""

    log_likelihood: torch.Tensor  # log (1/k) sum_i w_i, the importance-sampled log p(x | c)
    reconstruction: torch.Tensor  # (1/k) sum_i -log p(x | z_i, c): the reconstruction term of -ELBO
    kl: torch.Tensor  # KL(q(z | x, c) || p(z | c)): analytic, or the k-sample estimate for priors without one
    ess: torch.Tensor  # effective sample size (sum w)^2 / sum w^2 of the k importance weights
    k: int
    draws: int | None = None  # the most draws an example had, where that is not k (class_summed: k / classes each)

    @property
    def negative_elbo(self) -> torch.Tensor:
        return self.reconstruction + self.kl

    @property
    def mc_variance(self) -> torch.Tensor:
        """Delta-method variance of each log-likelihood estimate from the sampling alone:
        Var[log mean w] ~ Var[w] / (k E[w]^2) ~ 1 / ESS - 1 / k (unreliable when the ESS is tiny)."""
        return (1.0 / self.ess - 1.0 / self.k).clamp_min(0.0)


def _log_px(model: CVAE, z: torch.Tensor, c: torch.Tensor | None, x: torch.Tensor, s: int) -> torch.Tensor:
    """log p(x | z, c) for ``z`` of shape (B * s, D) holding s samples per example, example-major;
    ``x`` is (B, *shape), ``c`` is (B * s, C) or None. Returns (B, s). Works for any decoder."""
    b = x.shape[0]
    px = model.p_x(z, c)
    if hasattr(px, "log_prob_grouped"):  # a likelihood may score s samples per example without copying x
        return px.log_prob_grouped(x, s).float()
    x_rep = x.unsqueeze(1).expand(b, s, *x.shape[1:]).reshape(b * s, *x.shape[1:])
    return px.log_prob(x_rep).reshape(b, s)


GOVERNOR_SECONDS = 2.0  # how often the importance sampler re-reads the machine's load


@torch.no_grad()
def importance_sampled(model: CVAE, x: torch.Tensor, c: torch.Tensor | None = None, *, k: int = 5000,
                       rows: int = 4096, generator: torch.Generator | None = None, fast: bool = True,
                       progress: bool = False) -> PerExample:
    """The importance-sampled log p(x | c) per example with k samples from q(z | x, c), plus the
    k-sample reconstruction term, the analytic KL and the effective sample size.

    Parameters
    ----------
    x, c : (N, *shape) inputs in model units and (N, C) encoded conditions (None for a plain VAE).
    k : samples per example, any size: they are drawn in chunks.
    rows : at most this many (example, sample) pairs go through the decoder at once; the memory used
        is about ``rows * prod(shape) * 4`` bytes per decoder layer whatever k and N are.
    generator : a CPU ``torch.Generator`` for reproducible draws.
    fast : use a registered fast kernel where one covers the model (:mod:`cvae.kernels`; same numbers).
    """
    if k < 1:
        raise CvaeError(f"k must be at least 1 importance sample, got {k}")
    if rows < 1:
        raise CvaeError(f"rows must be at least 1, got {rows}")
    was_training = model.training
    model.eval()
    n = len(x)
    n_chunks = math.ceil(k / rows)
    s_chunk = math.ceil(k / n_chunks)  # samples per decoder call and example (chunks of equal size)
    per_call = max(1, rows // s_chunk)  # examples per decoder call
    kernel = kernel_for(model, per_call * s_chunk) if fast else None
    prior = model.prior
    out = {key: torch.empty(n, dtype=torch.float64) for key in ("lse", "lse2", "rec", "kl")}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="ex", desc=f"importance sampling, k={k}", leave=False)
    device = x.device
    # one CPU thread per core the other processes leave free, looked at every few seconds
    governor = ThreadGovernor() if device.type == "cpu" else None
    # without a condition the prior is one distribution for every block (a VampPrior's costs an encoder
    # pass over its pseudo-inputs): built once
    # a model whose posterior is not one Gaussian (a hierarchy) gives the terms itself: (B, s) each
    own = getattr(model, "importance_terms", None)
    p_shared = prior.distribution(None) if c is None and own is None else None
    with kept_thread_count():  # the caller's count comes back
        for start in range(0, n, per_call):
            if governor is not None and time.monotonic() - governor.wall > GOVERNOR_SECONDS:
                governor.update()
            xb = x[start:start + per_call]
            cb = None if c is None else c[start:start + per_call]
            b = len(xb)
            if own is None:
                qz = model.q_z(xb, cb)
                p_dist = p_shared or prior.distribution(cb)  # p(z | c) for this block, built once
                mu, std, logvar = qz.mu.float(), qz.std.float(), qz.logvar.float()
                d = mu.shape[-1]
                log_q_const = -0.5 * (logvar.sum(-1) + d * LOG_2PI)  # (B,)
            if kernel is not None:
                kernel.prepare(xb, cb)
            lse = torch.full((b,), -math.inf, dtype=torch.float64, device=device)
            lse2 = lse.clone()
            rec = torch.zeros(b, dtype=torch.float64, device=device)
            kl = torch.zeros(b, dtype=torch.float64, device=device)
            done = 0
            while done < k:
                s = min(s_chunk, k - done)
                if own is not None:  # the model draws from its own (sequential) posterior
                    log_px, log_p, log_q = own(xb, cb, s, generator)
                else:
                    eps = torch.randn((b, s, d), generator=generator).to(device)  # (B, s, D)
                    z = torch.addcmul(mu.unsqueeze(1), std.unsqueeze(1), eps)  # (B, s, D)
                    log_q = log_q_const.unsqueeze(1) - 0.5 * (eps * eps).sum(-1)  # (B, s)
                    log_p = p_dist.log_prob(z.transpose(0, 1)).transpose(0, 1).float()  # (B, s)
                    if kernel is not None:
                        log_px = kernel(z.view(b * s, d), b, s)
                    else:
                        c_rep = None if cb is None else cb.unsqueeze(1).expand(b, s, cb.shape[-1]).reshape(b * s, -1)
                        log_px = _log_px(model, z.view(b * s, d), c_rep, xb, s)  # (B, s)
                log_w = (log_px + log_p - log_q).double()
                lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=1))
                lse2 = torch.logaddexp(lse2, torch.logsumexp(2.0 * log_w, dim=1))
                rec -= log_px.double().sum(1)
                kl += (log_q - log_p).double().sum(1)
                done += s
            out["lse"][start:start + b] = lse.cpu()
            out["lse2"][start:start + b] = lse2.cpu()
            out["rec"][start:start + b] = (rec / k).cpu()
            if prior.analytic_kl and own is None:
                kl = prior.kl(qz, qz.mu, cb).double() * k
            out["kl"][start:start + b] = (kl / k).cpu()
            if bar is not None:
                bar.update(b)
        if bar is not None:
            bar.close()
    model.train(was_training)
    return PerExample(log_likelihood=out["lse"] - math.log(k), reconstruction=out["rec"], kl=out["kl"],
                      ess=torch.exp(2.0 * out["lse"] - out["lse2"]), k=k)


@torch.no_grad()
def class_summed(model: CVAE, x: torch.Tensor, c: torch.Tensor, *, k: int = 5000, rows: int = 4096,
                 generator: torch.Generator | None = None, progress: bool = False) -> PerExample:
    """:func:`importance_sampled` for a semi-supervised model (M2) whose rows may lack a class: a labelled
    row as there, log p(x | c); a row without its class, log p(x) = log sum_y p(y) p(x | y) with p(y)
    uniform, each class's p(x | y) importance-sampled with k / (number of classes) draws (the same k in
    all), and its bound the M2 one, U(x) = sum_y q(y|x) L(x, y) + KL(q(y|x) || p(y)), whose terms are
    ``reconstruction`` (the q-weighted one) and ``kl`` (both KLs). Several missing conditions: summed
    over every combination of their classes."""
    import itertools

    gone = model.missing_blocks(c)  # (N, A)
    lacking = gone.any(1)
    n = len(x)
    out = {key: torch.empty(n, dtype=torch.float64) for key in ("ll", "rec", "kl", "ess")}
    if (~lacking).any():
        own = importance_sampled(model, x[~lacking], c[~lacking], k=k, rows=rows, generator=generator,
                                 progress=progress)
        for key, v in (("ll", own.log_likelihood), ("rec", own.reconstruction), ("kl", own.kl), ("ess", own.ess)):
            out[key][~lacking] = v
    blocks = model.blocks
    draws = k
    for pattern in torch.unique(gone[lacking], dim=0):
        rows_p = (gone == pattern).all(1) & lacking
        xp, cp = x[rows_p], c[rows_p]
        missing = [i for i, g in enumerate(pattern.tolist()) if g]
        sizes = [blocks[i][0].dim for i in missing]
        combos = list(itertools.product(*[range(m) for m in sizes]))
        kk = max(1, math.ceil(k / len(combos)))
        draws = max(draws, kk * len(combos))
        log_py = -sum(math.log(m) for m in sizes)
        logits = [lg.float().log_softmax(1).double().cpu() for lg in model.class_logits(xp)]
        lls, recs, kls, log_qs, lse2s = [], [], [], [], []
        for combo in combos:
            cf = cp.clone()
            log_q = torch.zeros(len(xp), dtype=torch.float64)
            for i, cls in zip(missing, combo):
                _, s, _ = blocks[i]
                cf[:, s + cls] = 1.0
                log_q += logits[i][:, cls]
            r = importance_sampled(model, xp, cf, k=kk, rows=rows, generator=generator, progress=progress)
            lls.append(r.log_likelihood + log_py)  # log p(y) p^(x | y)
            recs.append(r.reconstruction)
            kls.append(r.kl)
            log_qs.append(log_q)
            # sum of the squared weights of this class's draws, scaled as its share of the estimate: for the ESS
            lse = r.log_likelihood + math.log(kk)
            lse2s.append(2 * lse - r.ess.log() + 2 * (log_py - math.log(kk)))
        ll, rec, kl, log_q, lse2 = (torch.stack(v) for v in (lls, recs, kls, log_qs, lse2s))  # (M, b)
        q = log_q.exp()
        total = torch.logsumexp(ll, 0)  # log p^(x)
        out["ll"][rows_p] = total
        out["rec"][rows_p] = (q * rec).sum(0)
        out["kl"][rows_p] = (q * kl).sum(0) + (q * log_q).sum(0) - log_py  # + KL(q(y|x) || p(y))
        # (sum_m a_m S_m)^2 / sum_m a_m^2 S2_m with a_m = p(y_m) / kk: the ESS of the whole estimate, in draws
        out["ess"][rows_p] = torch.exp(2 * total - torch.logsumexp(lse2, 0))
    return PerExample(log_likelihood=out["ll"], reconstruction=out["rec"], kl=out["kl"], ess=out["ess"], k=k,
                      draws=draws if draws != k else None)


# -- the likelihood report ----------------------------------------------------------------------

@dataclass
class LikelihoodReport:
    """Negative ELBO (reconstruction + KL) and, with k > 1, the importance-sampled -log p(x | c)."""

    protocol: dict
    figures: dict[str, Figure]
    per_example: PerExample = field(repr=False)

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, **{k: f.to_dict() for k, f in self.figures.items()}}


def log_jacobian(model: CVAE) -> float:
    """sum_j log x_scale_j: log p(x in data units) = log p(x in model units) - this."""
    return float(model.x_scale.double().log().sum()) if model.config.standardize else 0.0


def likelihood(model: CVAE, x: torch.Tensor, c: torch.Tensor | None = None, *, k: int = 5000,
               rows: int = 4096, seed: int = 0, protocol: dict | None = None,
               progress: bool = False) -> LikelihoodReport:
    """Negative ELBO and the importance-sampled negative log-likelihood, per example, in nats.

    With ``k == 1`` only the negative ELBO is reported (the k = 1 importance-sampled value is the
    ELBO itself). ``x`` is in model units; for standardised features the figures are converted to
    the data's own units (the log-Jacobian of the standardisation is added).
    """
    g = torch.Generator().manual_seed(seed)
    lacking = int(model.missing_blocks(c).any(1).sum()) if c is not None and hasattr(model, "missing_blocks") else 0
    if lacking:  # a semi-supervised model's rows without their class: the class summed out, not guessed
        res = class_summed(model, x, c, k=k, rows=rows, generator=g, progress=progress)
        rest = "" if lacking == len(x) else "; the others' are conditional on their class"
        protocol = {**(protocol or {}), "n_unlabelled": lacking,
                    "unlabelled": f"{lacking} of the {len(x)} examples have no class: their figures are -log p(x) = "
                                  "-log sum_y p(y) p(x|y) (p(y) uniform, k / classes draws for each class) and the M2 "
                                  f"bound U(x){rest}"}
    else:
        res = importance_sampled(model, x, c, k=k, rows=rows, generator=g, progress=progress)
    jac = log_jacobian(model)
    xc, zc, qc, px = ("x|c", "z|c", "z|x,c", "p(x|z,c)") if c is not None else ("x", "z", "z|x", "p(x|z)")
    if lacking == len(x):  # every row without its class: the figures of (x, y) with y summed out
        xc, zc, qc, px = "x", "z,y", "z,y|x", "p(x|z,y)"
    samples = f"averaged over k = {k} samples z ~ q({qc})" if k > 1 else f"one sample z ~ q({qc})"
    figures = {
        "negative_elbo": figure(f"negative ELBO, E_q[-log p(x,{zc}) + log q({qc})]", res.negative_elbo + jac,
                                note=f"reconstruction + KL; an upper bound on -log p({xc})"),
        "reconstruction": figure(f"reconstruction, E_q[-log {px}]", res.reconstruction + jac, note=samples),
        "kl": figure(f"KL(q({qc}) || p({zc}))", res.kl,
                     note="analytic" if model.prior.analytic_kl else f"Monte Carlo, the mean of log q - log p over k = {k} samples"),
    }
    if k > 1:
        nll = -res.log_likelihood + jac
        mean, se = mean_and_stderr(nll)
        mc_se = math.sqrt(res.mc_variance.sum().item()) / len(nll)
        figures["importance_sampled_nll"] = Figure(
            f"-log p({xc}), importance-sampled, k = {k}", mean, se,
            note=f"-log (1/k) sum_i p(x,z_i{'|c' if c is not None else ''}) / q(z_i|x{',c' if c is not None else ''}); "
                 f"stderr over examples, of which the sampling alone contributes about {mc_se:.2g} (delta method); "
                 "in expectation an upper bound on the true -log p, tightening as k grows (Burda et al. 2015)")
        levels = getattr(getattr(model, "likelihood", None), "levels", None)
        if levels:  # 8-bit data scored as its levels: -log p is a code length, and bits per dimension mean it
            dims = math.prod(model.config.data_shape) * math.log(2.0)
            figures["bits_per_dim"] = Figure(
                f"-log2 p({xc}) per dimension, importance-sampled, k = {k}", mean / dims, se / dims, unit="bits/dim",
                note=f"the importance-sampled NLL / ({math.prod(model.config.data_shape)} dimensions x ln 2), "
                     f"{levels} levels per sub-pixel")
        figures["elbo_gap"] = figure("negative ELBO - importance-sampled NLL", res.negative_elbo + jac - nll,
                                     note="how much tighter the importance-sampled bound is than the ELBO")
        figures["effective_sample_size"] = figure(
            "effective sample size of the importance weights", res.ess,
            unit=f"of k = {k} samples" + (f" ({res.draws} where the class is summed out)" if res.draws else ""),
            note="(sum w)^2 / sum w^2 per example; small values mean q is a poor proposal and the NLL less reliable")
    return LikelihoodReport(protocol=dict(protocol or {}, k=k, n_examples=len(x), seed=seed), figures=figures,
                            per_example=res)


# -- posterior health ---------------------------------------------------------------------------

@dataclass
class PosteriorReport:
    """KL per latent dimension, active units and the mutual information I(x; z)."""

    kl_per_dim: list[float]
    kl_per_dim_stderr: list[float]
    mean_variance_per_dim: list[float]  # Cov_x(E_q[z_d | x, c]) per dimension
    active_units: int
    threshold: float
    figures: dict[str, Figure]

    def to_dict(self) -> dict:
        return {
            **{k: f.to_dict() for k, f in self.figures.items()},
            "kl_per_dim": {"name": "E_x KL(q(z_d|x) || p(z_d)) per latent dimension d (analytic for a Gaussian "
                                   "prior; for a mixture, one sample against its marginal in dimension d; for a "
                                   "hierarchical model, one sample of log q - log p given the groups above, so a "
                                   "dimension that carries nothing can come out slightly negative)",
                           "unit": NATS, "value": self.kl_per_dim, "stderr": self.kl_per_dim_stderr},
            "posterior_mean_variance_per_dim": {
                "name": "Cov_x(E_q[z_d|x]) per latent dimension d (Burda et al.'s activity statistic)",
                "value": self.mean_variance_per_dim},
        }


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """Burda et al. (2015): dimension d is active when Cov_x(E_q[z_d | x]) > threshold.
    ``mu`` is (N, D), the posterior means; returns the count and the variance per dimension."""
    if len(mu) < 2:
        raise CvaeError("active units need at least 2 examples")
    var = mu.double().var(dim=0, unbiased=True)
    return int((var > threshold).sum()), var


@torch.no_grad()
def mutual_information(mu: torch.Tensor, logvar: torch.Tensor, *, generator: torch.Generator | None = None,
                       block: int = 1024) -> torch.Tensor:
    """Per-example terms of I(x; z) under the aggregate posterior: log q(z_n | x_n) - log q(z_n),
    with z_n ~ q(z | x_n) and q(z) = (1/N) sum_m q(z | x_m); their mean is the estimate, which is
    at most log N. Cost: N x N x D, done in blocks of rows in float64."""
    mu, logvar = mu.double().cpu(), logvar.double().cpu()
    n, d = mu.shape
    eps = torch.randn((n, d), generator=generator).double()
    z = mu + torch.exp(0.5 * logvar) * eps
    log_q_own = -0.5 * (eps * eps + logvar + LOG_2PI).sum(-1)  # (N,)
    prec = torch.exp(-logvar)  # (N, D)
    const = -0.5 * ((mu * mu * prec).sum(-1) + logvar.sum(-1) + d * LOG_2PI)  # (N,)
    mu_prec = mu * prec
    log_q_agg = torch.empty(n, dtype=torch.float64)
    for i in range(0, n, block):
        zb = z[i:i + block]
        # log q(z_b | x_m) = -0.5 sum_d (z - mu_m)^2 / var_m + const_m, expanded into matrix products
        lq = -0.5 * (zb * zb) @ prec.T + zb @ mu_prec.T + const  # (b, N)
        log_q_agg[i:i + block] = torch.logsumexp(lq, dim=1) - math.log(n)
    return log_q_own - log_q_agg


def condition_groups(model, c: torch.Tensor | None) -> torch.Tensor | None:
    """(N,) an index per distinct combination of the categorical conditions of encoded conditions ``c``
    (a missing label is a group of its own); None without a categorical condition."""
    if c is None or not model.schema or not model.schema.categorical_blocks():
        return None
    cols = torch.cat([c[:, s:e] for _, s, e in model.schema.categorical_blocks()], dim=1).cpu()
    return torch.unique(cols, dim=0, return_inverse=True)[1]


def _group_means(mu: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each row's group mean of ``mu`` (N, D)."""
    k = int(groups.max()) + 1
    sums = torch.zeros((k, mu.shape[1]), dtype=torch.float64).index_add_(0, groups, mu.double())
    counts = torch.bincount(groups, minlength=k).double().clamp_min(1)[:, None]
    return (sums / counts)[groups].to(mu.dtype)


@torch.no_grad()
def posterior_health(model: CVAE, x: torch.Tensor, c: torch.Tensor | None = None, *, threshold: float = 0.01,
                     seed: int = 0, batch_size: int = 1000, mi_examples: int = 10000) -> PosteriorReport:
    """KL per latent dimension, active units (Burda et al.'s covariance criterion) and I(x; z)."""
    was_training = model.training
    model.eval()
    mus, logvars, kls, totals = [], [], [], []
    g = torch.Generator().manual_seed(seed)
    for i in range(0, len(x), batch_size):
        cb = None if c is None else c[i:i + batch_size]
        qz = model.q_z(x[i:i + batch_size], cb)
        mus.append(qz.mu.float().cpu())
        logvars.append(qz.logvar.float().cpu())
        if hasattr(model, "sequential_kl"):  # a hierarchy: q and p of each group on one drawn path above it
            per_dim = model.sequential_kl(x[i:i + batch_size], cb, g).double().cpu()
            kls.append(per_dim)
            totals.append(per_dim.sum(1))
            continue
        z = qz.mu + qz.std * torch.randn(qz.mu.shape, generator=g).to(qz.mu.device)
        kls.append(model.prior.kl_per_dim(qz, z, cb).double().cpu())
        totals.append(model.prior.kl(qz, z, cb).double().cpu())
    model.train(was_training)
    mu, logvar, kl = torch.cat(mus), torch.cat(logvars), torch.cat(kls)  # (N, D) each
    kl_total = torch.cat(totals)  # (N,)
    xc, zc, qc = ("x,c", "z|c", "z|x,c") if c is not None else ("x", "z", "z|x")
    d = mu.shape[1]
    m = min(len(mu), mi_examples)
    groups = condition_groups(model, c)
    figures = {"kl_total": figure(f"KL(q({qc}) || p({zc}))", kl_total,
                                  note="analytic per group, at one draw of the groups above it"
                                  if hasattr(model, "sequential_kl") else "analytic" if model.prior.analytic_kl
                                  else "Monte Carlo, one sample per example")}
    if groups is None:
        n_au, var = active_units(mu, threshold)
        mi_terms = mutual_information(mu[:m], logvar[:m], generator=torch.Generator().manual_seed(seed))
        figures["active_units"] = Figure(f"active units, Cov_x(E_q[z_d|{xc}]) > {threshold}", n_au, None,
                                         unit=f"of {d} latent dimensions", note="Burda et al. (2015), sec. 5.2")
        figures["mutual_information"] = figure(
            f"I({xc}; z) under the aggregate posterior", mi_terms, unit="nats",
            note=f"q(z) = mean of q({qc}) over {m} examples, one z per example; cannot exceed log N = "
                 f"{math.log(m):.3f}; stderr over examples" + ("" if c is None else " (continuous conditions: "
                                                               "the code's variation with them counts too)")
                 + MI_SIGN)
    else:
        # a conditional model: how much z varies with x within a condition, which is what collapses; across
        # conditions z also follows the label, which the marginal figures count (I(x,c; z) ~ H(c) collapsed)
        n_au, var = active_units(mu - _group_means(mu, groups), threshold)
        marginal, _ = active_units(mu, threshold)
        g = torch.Generator().manual_seed(seed)
        parts = [mutual_information(mu[:m][groups[:m] == k], logvar[:m][groups[:m] == k], generator=g)
                 for k in torch.unique(groups[:m]).tolist() if int((groups[:m] == k).sum()) > 1]
        mi_terms = torch.cat(parts) if parts else torch.zeros(1, dtype=torch.float64)  # one example a condition
        figures["active_units"] = Figure(
            f"active units within a condition, Cov_x(E_q[z_d|x,c] | c) > {threshold}", n_au, None,
            unit=f"of {d} latent dimensions",
            note=f"Burda et al. (2015), sec. 5.2, within each categorical condition ({marginal} counting the "
                 "variation across conditions too)")
        figures["mutual_information"] = figure(
            "I(x; z | c) under each condition's aggregate posterior", mi_terms, unit="nats",
            note=f"q(z|c) = mean of q(z|x,c) over the condition's examples (of {m}), one z per example; at most "
                 "E KL(q(z|x,c) || p(z|c)) (Hoffman & Johnson 2016); stderr over examples" + MI_SIGN)
    kl_mean = kl.mean(0)
    kl_se = kl.std(0, unbiased=True) / math.sqrt(len(kl)) if len(kl) > 1 else torch.zeros_like(kl_mean)
    return PosteriorReport(kl_per_dim=kl_mean.tolist(), kl_per_dim_stderr=kl_se.tolist(),
                           mean_variance_per_dim=var.tolist(), active_units=n_au, threshold=threshold,
                           figures=figures)


MI_SIGN = ("; a Monte Carlo estimate, so where the information is near 0 it may come out slightly below 0 (the "
           "true value never is)")


@torch.no_grad()
def sequence_reconstruction(model, x: torch.Tensor, c: torch.Tensor | None, *, n: int = 1000,
                            batch_size: int = 500) -> dict:
    """How much the code of a sequence run carries: the first ``n`` sequences encoded, their posterior
    means decoded greedily with their own condition (steered with the run's weight), and the share
    decoded back exactly, token for token (ChemVAE's "reconstruction accuracy"), and of the tokens."""
    x, c = x[:n], (None if c is None else c[:n])
    exact, right, tokens = [], 0, 0
    for i in range(0, len(x), batch_size):
        cb = None if c is None else c[i:i + batch_size]
        xb = x[i:i + batch_size].long()
        ids = model.decode_tokens(model.q_z(xb.float(), cb).mu, cb, how="greedy", steer=model.steer_weight(None))
        exact.append((ids == xb).all(1).double())
        real = xb != PAD  # the positions of the sequence and its <eos>
        right += int(((ids == xb) & real).sum())
        tokens += int(real.sum())
    same = torch.cat(exact)
    return {"reconstructed_exactly": figure("sequences decoded back exactly from the posterior mean (greedy)",
                                            same, unit="fraction", note=f"the first {len(same)} examples"),
            "tokens_reconstructed": Figure("tokens decoded back in place (greedy, posterior mean)",
                                           right / max(1, tokens), None, unit="fraction",
                                           note=f"{tokens} tokens, <eos> included")}


# -- a whole run ----------------------------------------------------------------------------------

METRICS = ("elbo", "nll", "posterior", "samples", "classification", "disentanglement", "molecules")


@dataclass
class RunEvaluation:
    """What :func:`evaluate_run` measured (``results`` is what ``eval.json`` holds)."""

    path: Path | None  # eval.json, when written
    results: dict
    model: CVAE | None = None  # the run's model and data as loaded for the evaluation, for what follows it
    data: object = None  # (DataSplits; the disentanglement pictures, without loading or rendering them again)


def parse_metrics(spec: str | list[str] | None) -> tuple[list[str], bool]:
    """``"all"``/None -> every metric (those that cannot run are skipped with a note); otherwise the
    named ones, which must run. Returns the list and whether it was explicit."""
    if spec is None or spec == "all" or spec == ["all"]:
        return list(METRICS), False
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise CvaeError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)} or all")
    return names, True


def protocol_text(run_config: dict, model: CVAE) -> dict:
    """How the evaluation images were made and what the likelihood means, in words."""
    train = run_config.get("train", {})
    data = run_config.get("data", {})
    binarize = train.get("binarize", "none")
    lik = model.config.likelihood
    out = {"data": data.get("name", train.get("data", "?")), "likelihood": lik}
    if binarize == "dynamic":
        out["binarization"] = ("dynamic: training resampled x ~ Bernoulli(grey level) every epoch; the evaluation "
                               f"images are binarized once with torch.bernoulli and seed {EVALUATION_SEED}")
    elif binarize == "static":
        out["binarization"] = f"static: every image binarized once at loading with seed {train.get('seed', 0)}"
    elif data.get("binary"):
        out["binarization"] = "the data set's own 0/1 values (e.g. Larochelle's fixed binarization)"
    elif lik == "bernoulli":
        out["binarization"] = "none"
        out["caution"] = ("grey levels in [0, 1] are scored as Bernoulli targets (a continuous cross-entropy): "
                          "not a normalised likelihood, so the NLL is not comparable with papers on binarized MNIST")
    if model.config.standardize:
        out["units"] = "densities of the features in their own units (the standardisation's log-Jacobian is included)"
    return out


def load_run_data(model: CVAE, *, data_dir=None):
    """The data splits of a trained run, rebuilt from its config.json exactly as training made them."""
    from .config import TrainConfig
    from .data import load_data

    cfg = model.run_config.get("train", {})
    where = f"{model.run_dir / 'config.json'}" if model.run_dir else "the run's config.json"
    try:  # a hand-edited value of the wrong type: one line, as train --resume says it; "400" read as 400
        train = TrainConfig.from_dict(cfg if isinstance(cfg, dict) else {"data": cfg}, where=where)
    except UnknownPart as e:
        from .runs import missing_part

        raise missing_part(model.run_dir or "the run", e) from None
    except CvaeError as e:
        raise CvaeError(f"{where} is damaged: its 'train' settings: {e}; restore it from a copy of the run") from None
    cfg = {k: getattr(train, k.replace("-", "_"), v) for k, v in cfg.items()}
    from .data.core import recorded_source

    source = recorded_source(model.run_config)  # the file it trained on, from wherever this runs
    if source:
        cfg["data"] = source
    if cfg.get("sequence"):
        from .data.sequences import load_sequences

        data = load_sequences(cfg.get("data"), sequence=cfg["sequence"], condition=cfg.get("condition"),
                              tokenizer=cfg.get("tokenizer"), max_length=cfg.get("max_length"),
                              val_fraction=cfg.get("val_fraction", 0.1), seed=cfg.get("seed", 0),
                              limit=cfg.get("limit"), quiet=True)
        if data.meta["model"]["tokenizer"] != model.config.tokenizer or data.data_shape != model.config.data_shape:
            raise CvaeError(f"the data {cfg.get('data')!r} now gives another vocabulary or length than the run's; "
                            "evaluate with the data the model was trained on")
    else:
        data = load_data(cfg.get("data", "digits"), data_dir=data_dir or cfg.get("data_dir"),
                     condition=cfg.get("condition"), val_fraction=cfg.get("val_fraction", 0.1),
                     seed=cfg.get("seed", 0), binarize=cfg.get("binarize", "none"), limit=cfg.get("limit"),
                     data_layout=cfg.get("data_layout", "auto"), image_size=parse_image_size(cfg.get("image_size")),
                     labelled=cfg.get("labelled"), factors=cfg.get("factors"))
    if data.schema.to_dict() != model.schema.to_dict():
        raise CvaeError(f"the data {cfg.get('data')!r} now gives conditions {data.schema.names} that differ from "
                        f"the run's ({model.schema.names}); evaluate with the data the model was trained on")
    return data


def evaluate_run(run, *, split: str | None = None, k: int = 5000, metrics=None, evaluator: str | Path | None = None,
                 n: int | None = None, per_class: int = 1000, rows: int = 4096, data_dir=None,
                 device: str = "cpu", seed: int = 0, progress: bool = False, write: bool = True,
                 temperature: float | None = None, molecules: int = 10000, decode: str = GENERATE_DECODE,
                 beam: int = 5, data=None, token_temperature: float = GENERATE_TOKEN_TEMPERATURE,
                 guidance: float | None = None, steer: float | None = None, subset: str = "random",
                 codes: str | None = None) -> RunEvaluation:
    """Everything ``cvae evaluate`` measures on one run folder; writes ``RUN/eval.json``.

    ``metrics``: any of elbo, nll, posterior, samples (default all; then samples are skipped with a
    note where they cannot run: not images, or no evaluator trained). ``n`` keeps N examples of the
    split: with ``subset="random"`` (the default) drawn uniformly with ``seed`` (a split stored in its
    source's order, an image folder class by class or dSprites factor by factor, has no representative
    first N), with ``subset="first"`` the first N, as papers score the first N of a published test set; ``per_class`` images are generated per class for conditional accuracy;
    ``molecules`` are generated with ``decode`` (greedy, sample or beam of width ``beam``; sampled
    tokens at ``token_temperature``) for the molecule metrics; ``guidance`` is the classifier-free
    guidance weight of every generated example, images or molecules, ``steer`` the prefix predictor's
    steering weight of generated sequences (None: the run's); ``codes`` where the generated images' codes
    come from (``prior`` or ``aggregate``; None: the run's fitted aggregate posterior where it has one). ``data``: the
    run's splits from :func:`load_run_data` when a caller that evaluates one run several times has
    them already (rebuilding MOSES or QM9 subsets takes minutes:
    every molecule is canonicalised, tokenised and its properties computed).
    """
    import time
    from datetime import datetime, timezone

    from . import __version__
    from .runs import load_model, write_json

    wanted, explicit = parse_metrics(metrics)
    if k < 1:
        raise CvaeError(f"--k must be at least 1, got {k}")
    if n is not None and n < 2:
        raise CvaeError(f"--n must be at least 2 examples, got {n}")
    run = Path(run)
    model = load_model(run, device=device)
    model.guidance_weight(guidance)  # a run that cannot be guided is refused before minutes of estimates
    if steer is not None and hasattr(model, "steer_weight"):
        model.steer_weight(steer)  # likewise a run without a prefix predictor
    data = data if data is not None else load_run_data(model, data_dir=data_dir)
    available = [s for s in ("test", "val", "train") if getattr(data, s) is not None]
    if subset not in ("random", "first"):
        raise CvaeError(f"--subset must be random or first, not {subset!r}")
    if split is None and wanted == ["disentanglement"] and data.factor_names:
        # as disentanglement_lib scores a representation: over the data set itself, so that the codes are
        # those `cvae embed` writes for the data's rows; up to its 10,000 points, drawn at random beyond that
        split, n = "all", n or DISENTANGLEMENT_EXAMPLES
    if split is None:
        split = "test" if data.test is not None else "val" if data.val is not None else "train"
    if split not in ("test", "val", "train", "all"):
        raise CvaeError(f"--split must be test, val, train or all, not {split!r}")
    examples = None  # what --n kept, for the protocol
    if split == "all":
        part, examples = every_split(data, n, subset, seed)
    else:
        part = getattr(data, split)
        if part is None:
            raise CvaeError(f"{data.name!r} has no {split} split in this run; choose one of {', '.join(available)} or all")
        if n and n < len(part):
            examples = kept_words(n, f"the split's {len(part)}", subset, seed)
            part = take_examples(part, n, subset, seed)
    x_raw = part.x
    y = part.y
    binarize = model.run_config.get("train", {}).get("binarize", "none")
    x = fixed_binarization(x_raw, EVALUATION_SEED) if binarize == "dynamic" else x_raw
    x = x.to(model.device)
    c = model.schema.encode(y).to(model.device) if model.schema else None
    protocol = {**protocol_text(model.run_config, model), "split": split, "n_examples": len(x)}
    if examples:
        protocol["examples"] = examples

    weights = run / "model.safetensors"
    results: dict = {}
    previous = run / "eval.json"
    digest = sha256(weights)
    if previous.is_file():
        try:
            old = json.loads(previous.read_text())
            if old.get("model_sha256") == digest:
                results = old
        except (json.JSONDecodeError, OSError):
            results = {}
    results.update({"run": str(run), "model_sha256": digest, "cvae_version": __version__,
                    "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "epochs": model.run_config.get("summary", {}).get("epochs")})

    if "elbo" in wanted or "nll" in wanted:
        t0 = time.perf_counter()
        kk = k if "nll" in wanted else 1
        rep = likelihood(model, x, c, k=kk, rows=rows, seed=seed, protocol=protocol, progress=progress)
        if data.kind == "sequence":
            rep.figures.update(per_token_figures(rep, x))
        results["likelihood"] = {**rep.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
    if "posterior" in wanted:
        t0 = time.perf_counter()
        post = posterior_health(model, x, c, seed=seed)
        if data.kind == "sequence":
            post.figures.update(sequence_reconstruction(model, x, c))
        results["posterior"] = {"protocol": {"split": split, "n_examples": len(x)}, **post.to_dict(),
                                "seconds": round(time.perf_counter() - t0, 1)}
    if "samples" in wanted:
        t0 = time.perf_counter()
        section = _samples_section(model, data, part, evaluator, explicit=explicit and "samples" in wanted,
                                   n=len(x_raw), per_class=per_class, seed=seed, temperature=temperature,
                                   guidance=guidance, subset=subset, codes=codes)
        if section is not None:
            section["seconds"] = round(time.perf_counter() - t0, 1)
            results["samples"] = section
    if "classification" in wanted:
        t0 = time.perf_counter()
        section = _classification_section(model, part, n=len(x_raw), explicit=explicit and "classification" in wanted,
                                           split=split)
        if section is not None:
            section["seconds"] = round(time.perf_counter() - t0, 1)
            results["classification"] = section
    if "disentanglement" in wanted:
        t0 = time.perf_counter()
        section = _disentanglement_section(model, data, part, x, c, explicit=explicit and "disentanglement" in wanted,
                                           split=split, seed=seed, run=run if write else None,
                                           examples=examples)
        if section is not None:
            section["seconds"] = round(time.perf_counter() - t0, 1)
            results["disentanglement"] = section
    if "molecules" in wanted:
        t0 = time.perf_counter()
        section = _molecules_section(model, data, explicit=explicit and "molecules" in wanted, n=molecules, seed=seed,
                                     temperature=model.sampling_temperature(temperature),
                                     decode=decode, beam=beam, token_temperature=token_temperature, guidance=guidance,
                                     steer=steer)
        if section is not None:
            section["seconds"] = round(time.perf_counter() - t0, 1)
            results["molecules"] = section
    path = None
    if write:
        path = run / "eval.json"
        write_json(path, results)
    return RunEvaluation(path=path, results=results, model=model, data=data)


def per_token_figures(rep, x: torch.Tensor) -> dict:
    """Sequences: the bound per token (tokens counted with each sequence's <eos>, as Bowman et al.) and
    the perplexity bound exp(NLL per token), corpus-level (total nats / total tokens)."""
    tokens = (x != 0).sum(1).double().cpu()
    key = "importance_sampled_nll" if "importance_sampled_nll" in rep.figures else "negative_elbo"
    per_example = -rep.per_example.log_likelihood if key == "importance_sampled_nll" else rep.per_example.negative_elbo
    per_token = float(per_example.double().cpu().sum() / tokens.sum())
    what = "importance-sampled NLL" if key == "importance_sampled_nll" else "negative ELBO"
    return {"tokens_per_sequence": Figure("tokens per sequence (with <eos>)", float(tokens.mean()), unit="tokens"),
            "nll_per_token": Figure(f"{what} per token", per_token, unit="nats per token",
                                   note="total nats / total tokens"),
            "perplexity_bound": Figure(f"perplexity bound, exp({what} per token)", math.exp(per_token), unit="")}


def _molecules_section(model, data, *, explicit: bool, n: int, seed: int, temperature: float, decode: str = GENERATE_DECODE,
                       beam: int = 5, token_temperature: float = GENERATE_TOKEN_TEMPERATURE, guidance: float | None = None,
                       steer: float | None = None) -> dict | None:
    """MOSES metrics of ``n`` molecules drawn for the training conditions, against the training set
    (novelty) and the validation split (FCD); property control over a grid of requests. A run on
    MOSES also gets MOSES's own novelty (against its whole training file) and FCD/Test."""
    from .seqmetrics import molecule_metrics, property_control

    tok = getattr(model, "tokenizer", None)
    if tok is None or not tok.molecular:
        if explicit:
            raise CvaeError("--metrics molecules needs a run trained on molecules (--sequence on SMILES with the "
                            "selfies or smiles tokeniser; the char tokeniser reads them as text)")
        return None
    if n < 2:
        raise CvaeError(f"--molecules must be at least 2, got {n}")
    if decode not in ("greedy", "sample", "beam"):
        raise CvaeError(f"--decode must be greedy, sample or beam, got {decode!r}")
    guidance = model.guidance_weight(guidance)  # refused before minutes of generation, not after
    steer = model.steer_weight(steer)
    decoding = dict(decode=decode, beam=beam, token_temperature=token_temperature, guidance=guidance, steer=steer)
    g = torch.Generator().manual_seed(seed)
    y = data.train.y[torch.randint(len(data.train.y), (n,), generator=g)] if model.schema else None
    strings, _ = model.sample_strings(n, y if y is not None else None, seed=seed, temperature=temperature, **decoding)
    pool, where = ((data.meta["strings"]["val"], "validation split") if data.meta["strings"]["val"] else
                   (data.meta["strings"]["train"], "training split"))
    reference = pool[:max(n, 2)]  # as many as are generated, at most: FCD compares two sets of like size
    where = f"{where} ({len(reference):,} molecules" + (f", the first of {len(pool):,})" if len(reference) < len(pool)
                                                       else ")")
    moses = model.run_config.get("train", {}).get("data") == "moses"  # MOSES's own novelty and FCD/Test too
    out = {"protocol": {"generated": n, "conditions": "drawn from the training rows" if model.schema else "none",
                        "temperature": temperature, "decode": decode if decode != "beam" else f"beam of {beam}",
                        "token_temperature": token_temperature, "guidance": guidance, "steer": steer,
                        "novelty_against": "training split",
                        "fcd_reference": where},
           **molecule_metrics(strings, set(data.meta["strings"]["train"]), reference, moses=moses)}
    if moses:
        out["protocol"]["moses"] = ("novelty_moses_train: against MOSES's whole training file; fcd_moses_test: "
                                    "to the ChemNet statistics of MOSES's test set (176,074 molecules), MOSES's FCD/Test")
    control = property_control(model, data.train.y, seed=seed, temperature=temperature, **decoding) \
        if model.schema else {}
    if control:
        out["property_control"] = control
    return out


def _classification_section(model: CVAE, part, *, n: int, explicit: bool, split: str) -> dict | None:
    """The classifier's figures on the split's labelled examples, for each categorical condition: from
    q(y | x) for a semi-supervised model; by Bayes' rule over the classes (a generative classifier)
    for a model with one categorical condition when asked by name; else skipped with a note."""
    blocks = model.schema.categorical_blocks() if model.schema else []
    reason = None
    if not blocks:
        reason = "classification needs a categorical condition (a label); this model has none"
    elif not model.fills_missing and not explicit:
        reason = ("this model has no classifier q(y | x); `--metrics classification` classifies by Bayes' rule over "
                  "the classes (K passes per example)")
    if reason:
        if explicit and not blocks:
            raise CvaeError(reason)
        return {"skipped": reason}
    x = model.to_data_units(part.x[:n].to(model.device))
    out = {"protocol": {"split": split, "n_examples": n,
                        "classifier": "q(y | x)" if model.fills_missing else "Bayes' rule, p(y) uniform, 16 samples"}}
    for j, a in enumerate(model.schema.attributes):
        if a.kind != "categorical":
            continue
        truth = part.y[:n, j].numpy()
        if not np.isfinite(truth).any():
            why = ("--labelled hides them" if model.run_config.get("train", {}).get("labelled")
                   else "its examples have no label in the data")
            reason = (f"the {split} split has no known {a.name!r} labels in this run ({why}); "
                      f"choose another --split, or score a labelled file with `cvae classify RUN --data FILE`")
            if explicit:
                raise CvaeError(reason)
            return {"skipped": reason}
        probs = model.classify(x, a.name).cpu().numpy()
        out[a.name] = classification_metrics(probs, truth, a.classes)
    return out


DCI_EXAMPLES = (2000, 1000)  # DCI's train / test examples here (disentanglement_lib: 10,000 / 5,000; the trees are slow)
CODES_FILE = "disentanglement_codes.npz"  # the codes and factors the metrics were computed on, beside eval.json


DISENTANGLEMENT_EXAMPLES = 10000  # disentanglement_lib's num_train for MIG (mig.py) and the other scores


def chosen_rows(total: int, n: int, subset: str = "random", seed: int = 0) -> np.ndarray:
    """Which ``n`` of ``total`` examples ``--n`` keeps: the first n, or n drawn uniformly without
    replacement with ``seed``, in their order."""
    if subset == "first":
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 0x5EED]).choice(total, n, replace=False))


def kept_words(n: int, of: str, subset: str, seed: int) -> str:
    """The protocol's words for the ``n`` examples :func:`chosen_rows` keeps ``of`` ("the split's 10000")."""
    return f"{n} drawn at random (seed {seed}) of {of}" if subset == "random" else f"the first {n} of {of}"


def every_split(data, n: int | None = None, subset: str = "random", seed: int = 0):
    """The examples of every split of ``data`` as one :class:`cvae.data.Dataset` (``--split all``), in
    the source's row order where the ids are its row numbers; with ``n``, only n of them (the first, or
    drawn at random with ``seed``), gathered split by split so that the whole set is never copied.
    Returns the examples and, when ``n`` kept fewer than all, the protocol's words for them."""
    from .data import Dataset

    parts = [(name, part) for name in ("train", "val", "test") if (part := getattr(data, name)) is not None]
    ids = [i if part.ids else f"{name}:{i}" for name, part in parts
           for i in (part.ids if part.ids else range(len(part)))]
    where = np.array([(j, i) for j, (_, part) in enumerate(parts) for i in range(len(part))]).reshape(-1, 2)
    if all(isinstance(i, (int, np.integer)) for i in ids):
        order = np.argsort(np.asarray(ids), kind="stable")
        where, ids = where[order], [ids[i] for i in order]
    total, examples = len(ids), None
    if n and n < total:
        rows = chosen_rows(total, n, subset, seed)
        where, ids = where[rows], [ids[i] for i in rows]
        examples = kept_words(n, f"all {total}", subset, seed)

    def gather(field):
        pieces = [getattr(part, field) for _, part in parts]
        if any(piece is None for piece in pieces):
            return None
        tensor = isinstance(pieces[0], torch.Tensor)
        out = (torch.empty if tensor else np.empty)((len(where), *pieces[0].shape[1:]), dtype=pieces[0].dtype)
        for j, piece in enumerate(pieces):
            at = np.flatnonzero(where[:, 0] == j)
            local = where[at, 1]
            out[torch.from_numpy(at) if tensor else at] = piece[torch.from_numpy(local)] if tensor else piece[local]
        return out

    return Dataset(gather("x"), gather("y"), ids, gather("labels"), gather("factors")), examples


def take_examples(part, n: int, subset: str = "random", seed: int = 0):
    """``n`` examples of a split (a :class:`cvae.data.Dataset`): the first n, or n drawn uniformly without
    replacement with ``seed`` and kept in the split's order (ids, labels and factors follow)."""
    from .data import Dataset

    rows = chosen_rows(len(part), n, subset, seed)
    index = torch.from_numpy(rows)
    return Dataset(part.x[index], part.y[index], [part.ids[i] for i in rows] if part.ids else None,
                   None if part.labels is None else part.labels[rows],
                   None if part.factors is None else part.factors[rows])


@torch.no_grad()
def posterior_means(model: CVAE, x: torch.Tensor, c: torch.Tensor | None, *, batch_size: int = 1000) -> np.ndarray:
    """E_q[z | x, c] of every example (N, D), float64."""
    was = model.training
    model.eval()
    out = [model.q_z(x[i:i + batch_size], None if c is None else c[i:i + batch_size]).mu.double().cpu()
           for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out).numpy()


def _disentanglement_section(model: CVAE, data, part, x, c, *, explicit: bool, split: str, seed: int,
                             run: Path | None, num_train: int = 10000, num_test: int = 5000,
                             examples: str | None = None) -> dict | None:
    """The disentanglement metrics (:mod:`cvae.disentangle`) of the posterior means against the data's
    held-out factors; the codes, factors and ids are written to RUN/disentanglement_codes.npz."""
    from .disentangle import disentanglement

    if part.factors is None or not data.factor_names:
        reason = (f"disentanglement needs data with known factors of variation; {data.name!r} has none (train on "
                  "--data dsprites or color-shapes, or name a .npz/CSV file's factor columns with --factors)")
        if explicit:
            raise CvaeError(reason)
        return {"skipped": reason}
    factors = part.factors[:len(x)]
    codes = posterior_means(model, x, c)
    report = disentanglement(codes, factors, factor_names=data.factor_names, num_train=num_train, num_test=num_test,
                             dci_train=min(num_train, DCI_EXAMPLES[0]), dci_test=min(num_test, DCI_EXAMPLES[1]),
                             seed=seed, binned=(getattr(data, "meta", None) or {}).get("binned_factors"))
    out = report.to_dict()  # continuous factors were cut into bins when the data was read: the codes file holds bins
    out["protocol"] = {**out["protocol"], "split": split, **({"examples": examples} if examples else {})}
    if run is not None:
        ids = np.array([str(i) for i in (part.ids[:len(x)] if part.ids else range(len(x)))])
        np.savez_compressed(run / CODES_FILE, ids=ids, codes=codes.astype(np.float32), factors=factors,
                            factor_names=np.array(data.factor_names))
        out["codes_file"] = CODES_FILE
    return out


def _samples_section(model: CVAE, data, part, evaluator, *, explicit: bool, n: int, per_class: int,
                     seed: int, temperature: float | None, guidance: float | None = None,
                     subset: str = "random", codes: str | None = None) -> dict | None:
    from .evaluator import find_evaluator, load_evaluator, sample_quality

    def skip(reason: str) -> dict:
        if explicit:
            raise CvaeError(reason)
        return {"skipped": reason}

    if data.kind != "image" or model.config.standardize:
        return skip(f"sample quality needs images with values in [0, 1]; {data.name!r} holds {data.kind} data")
    path = Path(evaluator) if evaluator else find_evaluator(data.name)
    if path is None:
        return skip(f"no evaluator for {data.name!r}: train one with `cvae evaluator train --data "
                    f"{model.run_config.get('train', {}).get('data', data.name)}` (or pass --evaluator PATH)")
    ev = load_evaluator(path, device="cpu")
    if tuple(ev.config.image_shape) != tuple(model.config.data_shape):
        return skip(f"the evaluator {path} takes images of shape {tuple(ev.config.image_shape)}, but this model "
                    f"makes {tuple(model.config.data_shape)}; pass --evaluator for this data")
    real_x = model.to_data_units(part.x[:n].to(model.device)).cpu()
    ref = data.train if data.train is not None and part is not data.train else None
    if ref is not None and n < len(ref):
        ref = take_examples(ref, n, subset, seed)  # as many training images as real ones, drawn like them
    report = sample_quality(model, ev, real_x, part.y[:n] if model.schema else None,
                            reference_x=None if ref is None else model.to_data_units(ref.x.to(model.device)).cpu(),
                            per_class=per_class, seed=seed, temperature=temperature, guidance=guidance,
                            codes=codes)
    return report.to_dict()


def classification_metrics(probs, truth, classes: list[str], *, bins: int = 15) -> dict:
    """How well class probabilities ``probs`` (N, K) predict the labels ``truth`` (N,) of class indices:
    error and accuracy with their standard errors, accuracy per class, the mean negative log-likelihood
    of the true class (nats), the Brier score and the expected calibration error (``bins`` equal-width
    confidence bins, Guo et al. 2017). Rows whose label is missing (NaN or negative) are left out."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    keep = np.isfinite(t) & (t >= 0)
    p, t = p[keep], t[keep].astype(np.int64)
    n = len(t)
    if n == 0:
        raise CvaeError("no example with a known label to score the classification against")
    if not np.isfinite(p).all():
        raise CvaeError("the class probabilities are not finite; the model's classifier has diverged")
    pred = p.argmax(1)
    right = (pred == t).astype(np.float64)
    acc = float(right.mean())
    se = float(np.sqrt(acc * (1 - acc) / n))
    per_class = {}
    for k, name in enumerate(classes):
        rows = t == k
        if rows.any():
            per_class[name] = {"accuracy": float(right[rows].mean()), "n": int(rows.sum())}
    nll = -np.log(np.clip(p[np.arange(n), t], 1e-12, 1.0))
    onehot = np.eye(p.shape[1])[t]
    brier = ((p - onehot) ** 2).sum(1)
    conf = p.max(1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        rows = (conf > lo) & (conf <= hi)
        if rows.any():
            ece += rows.mean() * abs(right[rows].mean() - conf[rows].mean())
    return {
        "n_examples": n,
        "error": {"value": 1 - acc, "stderr": se},
        "accuracy": {"value": acc, "stderr": se},
        "nll": {"value": float(nll.mean()), "stderr": float(nll.std(ddof=1) / np.sqrt(n)) if n > 1 else None},
        "brier": {"value": float(brier.mean()), "stderr": float(brier.std(ddof=1) / np.sqrt(n)) if n > 1 else None},
        "ece": {"value": float(ece), "bins": bins},
        "per_class_accuracy": per_class,
    }
