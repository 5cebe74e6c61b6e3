"""Objectives that ask a VAE for disentangled latents, each logging its own terms.

- ``capacity`` (Burgess et al. 2018, "Understanding disentangling in beta-VAE"):
  loss = E_q[-log p(x|z)] + gamma |KL - C(t)|, with C growing linearly from 0 to ``capacity_max``
  nats over ``capacity_epochs`` epochs (defaults: gamma 1000, C_max 25, half of the run).
- ``btcvae`` (Chen et al. 2018, "Isolating sources of disentanglement"): the KL's decomposition
  E_x KL(q(z|x) || p(z)) = I(x; z) + TC(z) + sum_d KL(q(z_d) || p(z_d)), with the total correlation
  weighted by ``beta``: loss = E_q[-log p(x|z)] + I + beta TC + dimension-wise KL. log q(z) and
  log prod_d q(z_d) are estimated on the minibatch with the data set size N in the weights:
  minibatch-weighted sampling (mws, their eq. S5: each of the B codes weighs 1 / (N B)) or
  minibatch-stratified sampling (mss, the default: their eq. S6; see :func:`log_importance_weights`).
- ``factorvae`` (Kim & Mnih 2018, "Disentangling by factorising"): loss = -ELBO + gamma TC, with
  TC ~ E_q(z)[log D(z) - log(1 - D(z))] from a discriminator D that tells codes z ~ q(z) from codes
  whose dimensions were permuted independently across the batch (samples of prod_d q(z_d)). As in
  disentanglement_lib's ``FactorVAE`` the discriminator (an MLP of 6 x 1000 leaky-ReLU units, Adam at
  lr 1e-4, betas (0.5, 0.9): the paper's) is trained on the same batch, inside the same step,
  with its own optimizer; its weights and optimizer state are saved with the trainer state, so
  ``--resume`` goes on exactly.
- ``dip-vae-i`` / ``dip-vae-ii`` (Kumar et al. 2018, "Variational inference of disentangled latent
  concepts"; disentanglement_lib ``vae.py``): -ELBO + lambda_od sum_{i!=j} Cov_ij^2 + lambda_d sum_i
  (Cov_ii - 1)^2 with Cov the batch covariance of the posterior means (i) or of the codes,
  Cov[mu] + E[diag sigma^2] (ii). Defaults: lambda_od 10, lambda_d 10 lambda_od (i) or lambda_od (ii).

Every objective reports the ELBO's two parts (reconstruction, analytic KL) like the others, so the
figures of runs under different objectives compare. Each is the reconstruction term plus a function
of the batch's codes alone (``latent_loss``; ``Objective.latent_form``), so the fused MLP step trains
them too: its networks' part written out, this part by autograd on the (B, D) codes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..distributions import LOG_2PI
from .base import OBJECTIVES, Objective, kl_warmup

# -- annealed capacity --------------------------------------------------------------------------

@OBJECTIVES.register("capacity")
class AnnealedCapacity(Objective):
    uses = ("gamma", "capacity_max", "capacity_epochs")

    def __init__(self, gamma=None, capacity_max=None, capacity_epochs=None):
        self.gamma = 1000.0 if gamma is None else float(gamma)
        self.capacity_max = 25.0 if capacity_max is None else float(capacity_max)
        self.epochs_given = capacity_epochs
        self.capacity_epochs = capacity_epochs

    @classmethod
    def from_config(cls, config):
        obj = super().from_config(config)
        if obj.capacity_epochs is None:  # half of the run (Burgess et al. grow C over most of theirs)
            obj.capacity_epochs = max(1.0, getattr(config, "epochs", 2) / 2)
        return obj

    def capacity(self, progress: float) -> float:
        return self.capacity_max * min(1.0, max(0.0, progress / self.capacity_epochs))

    latent_form = True

    def latent_loss(self, z, mu, logvar, log_pz, kl, *, progress=0.0):
        target = self.capacity(progress)
        return self.gamma * (kl.mean() - target).abs(), {"capacity": torch.as_tensor(target, device=kl.device)}

    def schedule(self, progress):
        return {"capacity": self.capacity(progress)}

    def attach(self, n_train, n_labelled):
        return {"gamma": self.gamma, "capacity_max": self.capacity_max, "capacity_epochs": self.capacity_epochs}


# -- beta-TCVAE ---------------------------------------------------------------------------------

def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) per element."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def log_importance_weights(batch: int, n_data: int, device=None) -> torch.Tensor:
    """log W (B, B) of minibatch-stratified sampling (Chen et al. 2018, eq. S6): for the code of
    example i, the batch's other examples stand for the rest of the data set. Row i: 1/N for j = i,
    (N - M)/(N M) for j = i + 1 (mod B), 1/M for the B - 2 others, with M = B - 1: each row sums to 1.
    (The reference code's ``log_importance_weight_matrix`` writes 1/N with a stride of B, i.e. into
    column 0 of every row rather than the diagonal; this follows the paper's equation.)"""
    m = batch - 1
    if m < 1:
        return torch.zeros((batch, batch), device=device)
    strat = (n_data - m) / (n_data * m)
    w = torch.full((batch, batch), 1.0 / m, device=device)
    i = torch.arange(batch, device=device)
    w[i, i] = 1.0 / n_data
    w[i, (i + 1) % batch] = strat
    return w.log()


class _NativeTC(torch.autograd.Function):
    """log q(z_i) (B,) and log q_d(z_id) (B, D) of :func:`tc_decomposition` by the native kernels
    (``tc_forward``/``tc_backward`` in ``cvae/csrc/fused_step.cpp``): row by row, without the B x B x D
    tensors that autograd keeps (at batch 512, about 10x faster on one CPU thread)."""

    @staticmethod
    def forward(ctx, z, mu, logvar, log_w):
        log_qz, lse = torch.ops.cvae_native.tc_forward(z, mu, logvar, log_w)
        ctx.save_for_backward(z, mu, logvar, log_w, log_qz, lse)
        return log_qz, lse

    @staticmethod
    def backward(ctx, g_qz, g_lse):
        z, mu, logvar, log_w, log_qz, lse = ctx.saved_tensors
        g_qz = torch.zeros_like(log_qz) if g_qz is None else g_qz
        g_lse = torch.zeros_like(lse) if g_lse is None else g_lse
        g_z, g_mu, g_logvar = torch.ops.cvae_native.tc_backward(z, mu, logvar, log_w, log_qz, lse, g_qz, g_lse)
        return g_z, g_mu, g_logvar, None


NATIVE_TC = "auto"  # "off": always the autograd expressions (the tests compare the two)


def _native_tc(z: torch.Tensor) -> bool:
    if z.device.type != "cpu" or z.dtype != torch.float32 or NATIVE_TC == "off":
        return False
    from .. import native  # built on first use, as for the native training step

    return native.load()


# The log-variance below which the densities of tc_decomposition stop following it (a standard deviation of
# 1e-13). On data of discrete factors an encoder trained with beta-TCVAE can make some posteriors that
# sharp (log variances of -48 to -100 within one epoch on a Shapes3D-like set of 64x64 colour images); past -88.7
# exp(-log variance) is infinite in float32, and the code's own term (z - mu)^2 exp(-log variance) became
# 0 x inf = NaN: the run stopped as diverged. Below this bound (z - mu) is float32 rounding anyway.
TC_MIN_LOGVAR = -60.0


def tc_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, n_data: int,
                     estimator: str = "mss") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example: log q(z|x), log q(z) and log prod_d q(z_d) at each code of the batch, each (B,),
    q(z) being estimated from the batch with the data set size ``n_data`` in the weights. On a CPU
    with the native extension, log q(z) and the q(z_d) come from its kernels (the same sums).
    Log-variances under ``TC_MIN_LOGVAR`` count as that bound."""
    b = z.shape[0]
    logvar = logvar.clamp(min=TC_MIN_LOGVAR)
    log_qz_x = gaussian_log_density(z, mu, logvar).sum(-1)  # (B,)
    if estimator == "mws":
        log_w = torch.full((b, b), -math.log(b * n_data), device=z.device)
    else:
        log_w = log_importance_weights(b, n_data, z.device)
    if _native_tc(z):
        log_qz, lse = _NativeTC.apply(z.contiguous(), mu.float().contiguous(), logvar.float().contiguous(),
                                      log_w.float().contiguous())
        return log_qz_x, log_qz, lse.sum(-1)
    mat = gaussian_log_density(z[:, None], mu[None], logvar[None])  # (B, B, D): log q(z_i,d | x_j)
    log_qz = torch.logsumexp(log_w + mat.sum(-1), dim=1)
    log_prod = torch.logsumexp(log_w[:, :, None] + mat, dim=1).sum(-1)
    return log_qz_x, log_qz, log_prod


@OBJECTIVES.register("btcvae")
class BetaTCVAE(Objective):
    """Chen et al. (2018): reconstruction + MI + beta TC + dimension-wise KL. ``kl_warmup`` epochs (``--kl-warmup``)
    grow the whole latent part linearly from 0, as the ELBO's KL warm-up does (Chen et al.'s ``vae_quant.py``
    anneals beta alone, ``--beta-anneal``; with it the MI and dimension-wise KL still weigh fully from the
    first step, as the plain VAE's KL does)."""

    uses = ("beta", "tc_estimator", "kl_warmup")

    def __init__(self, beta: float = 1.0, tc_estimator: str | None = None, kl_warmup: float = 0.0):
        self.beta = float(beta)
        self.estimator = tc_estimator or "mss"
        self.warmup = float(kl_warmup or 0.0)
        self.n_data = None

    def attach(self, n_train, n_labelled):
        self.n_data = int(n_train)
        return {"beta": self.beta, "tc_estimator": self.estimator, "dataset_size": self.n_data,
                **({"kl_warmup": self.warmup} if self.warmup else {})}

    latent_form = True

    def latent_loss(self, z, mu, logvar, log_pz, kl, *, progress=0.0):
        n_data = self.n_data or len(z)
        log_qz_x, log_qz, log_prod = tc_decomposition(z, mu, logvar, n_data, self.estimator)
        mi = (log_qz_x - log_qz).mean()
        tc = (log_qz - log_prod).mean()
        dim_kl = (log_prod - log_pz).mean()
        weight = kl_warmup(progress, self.warmup)
        return weight * (mi + self.beta * tc + dim_kl), {"mutual_information": mi.detach(),
                                                         "total_correlation": tc.detach(),
                                                         "dimension_kl": dim_kl.detach()}

    def schedule(self, progress):
        return {"kl_weight": kl_warmup(progress, self.warmup)} if self.warmup else {}


# -- FactorVAE ----------------------------------------------------------------------------------

def permute_dims(z: torch.Tensor) -> torch.Tensor:
    """Each dimension permuted independently across the batch: samples of prod_d q(z_d)
    (Kim & Mnih 2018, Algorithm 1)."""
    b, d = z.shape
    idx = torch.argsort(torch.rand((b, d), device=z.device), dim=0)
    return torch.gather(z, 0, idx)


class Discriminator(nn.Sequential):
    """Logits of (z from q(z), z from prod_d q(z_d)): 6 layers of 1000 leaky-ReLU units (the paper's)."""

    def __init__(self, latent_dim: int, hidden: int = 1000, layers: int = 6):
        mods, width = [], latent_dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        super().__init__(*mods, nn.Linear(width, 2))


@OBJECTIVES.register("factorvae")
class FactorVAE(Objective):
    uses = ("gamma",)
    LR, BETAS = 1e-4, (0.5, 0.9)

    def __init__(self, gamma: float | None = None):
        self.gamma = 10.0 if gamma is None else float(gamma)
        self.discriminator: Discriminator | None = None
        self.opt: torch.optim.Optimizer | None = None
        self._pending: dict | None = None
        self.seed = 0

    @classmethod
    def from_config(cls, config):
        obj = super().from_config(config)
        obj.seed = int(getattr(config, "seed", 0))
        return obj

    def attach(self, n_train, n_labelled):
        return {"gamma": self.gamma, "discriminator": "6 x 1000 leaky ReLU, Adam lr 1e-4 betas (0.5, 0.9)"}

    def _build(self, latent_dim: int, device) -> None:
        # initialised from its own seed, not the training's random stream (which --resume restores and
        # which a discriminator built at a resumed run's first step must not move on)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1)
            self.discriminator = Discriminator(latent_dim).to(device)
        self.opt = torch.optim.Adam(self.discriminator.parameters(), lr=self.LR, betas=self.BETAS)
        if self._pending is not None:
            self._load(self._pending)
            self._pending = None

    latent_form = True

    def latent_loss(self, z, mu, logvar, log_pz, kl, *, progress=0.0):
        if self.discriminator is None:
            self._build(z.shape[-1], z.device)
        d = self.discriminator
        if torch.is_grad_enabled():  # a training step: the discriminator learns first, on detached codes
            zd = z.detach().float()
            logits = d(torch.cat([zd, permute_dims(zd)]))
            target = torch.cat([torch.zeros(len(zd)), torch.ones(len(zd))]).long().to(zd.device)
            d_loss = nn.functional.cross_entropy(logits.float(), target)
            self.opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt.step()
            d.zero_grad(set_to_none=True)
            accuracy = (logits.argmax(1) == target).float().mean()
        d.requires_grad_(False)  # the VAE's loss moves the codes, not the discriminator
        logits = d(z.float()).float()
        d.requires_grad_(True)
        tc = (logits[:, 0] - logits[:, 1]).mean()  # log D(z) / (1 - D(z)): the density-ratio trick
        terms = {"total_correlation": tc.detach()}
        if torch.is_grad_enabled():
            terms.update(discriminator_loss=d_loss.detach(), discriminator_accuracy=accuracy.detach())
        return kl.mean() + self.gamma * tc, terms

    # the discriminator's weights and optimizer, saved with the trainer state (exact --resume)
    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.discriminator is None:
            return {}
        out = {f"discriminator.{k}": v.detach().cpu() for k, v in self.discriminator.state_dict().items()}
        for pid, st in self.opt.state_dict()["state"].items():
            for k, v in st.items():
                out[f"discriminator_optimizer.{pid}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).cpu()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if not any(k.startswith("discriminator.") for k in tensors):
            return
        if self.discriminator is None:  # built at the first step, when the code's size and device are known
            self._pending = tensors
        else:
            self._load(tensors)

    def _load(self, tensors):
        device = next(self.discriminator.parameters()).device
        self.discriminator.load_state_dict({k[len("discriminator."):]: v.to(device) for k, v in tensors.items()
                                            if k.startswith("discriminator.")})
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("discriminator_optimizer."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v if name == "step" else v.to(device)
        groups = self.opt.state_dict()["param_groups"]
        self.opt.load_state_dict({"state": state, "param_groups": groups})


# -- DIP-VAE ------------------------------------------------------------------------------------

@OBJECTIVES.register("dip-vae-i")
class DIPVAE(Objective):
    uses = ("dip_lambda_od", "dip_lambda_d")
    variant = "i"
    D_FACTOR = 10.0  # lambda_d = D_FACTOR * lambda_od by default (disentanglement_lib's configs)

    def __init__(self, dip_lambda_od=None, dip_lambda_d=None):
        self.lambda_od = 10.0 if dip_lambda_od is None else float(dip_lambda_od)
        self.lambda_d = self.D_FACTOR * self.lambda_od if dip_lambda_d is None else float(dip_lambda_d)

    def attach(self, n_train, n_labelled):
        return {"variant": self.variant, "lambda_od": self.lambda_od, "lambda_d": self.lambda_d}

    latent_form = True

    def latent_loss(self, z, mu, logvar, log_pz, kl, *, progress=0.0):
        centred = mu - mu.mean(0, keepdim=True)
        cov = centred.T @ centred / len(mu)  # (D, D): Cov[E_q(z|x)] (the biased batch estimate, as theirs)
        if self.variant == "ii":
            cov = cov + torch.diag(logvar.exp().mean(0))  # + E[Cov_q(z|x)]
        diag = torch.diagonal(cov)
        off = cov - torch.diag(diag)
        od, dg = (off ** 2).sum(), ((diag - 1) ** 2).sum()
        return kl.mean() + self.lambda_od * od + self.lambda_d * dg, {"dip_off_diagonal": od.detach(),
                                                                      "dip_diagonal": dg.detach()}


@OBJECTIVES.register("dip-vae-ii")
class DIPVAE2(DIPVAE):
    variant = "ii"
    D_FACTOR = 1.0
