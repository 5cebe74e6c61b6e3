"""A training step written out by hand for the models people train most, chosen through a registry.

For an MLP encoder and decoder (any widths and depth, any registered activation, the condition at
the input or at every layer), Bernoulli or Gaussian (fixed or learned sigma) pixels, a standard or
conditional Gaussian prior and the ELBO (any beta, KL warm-up), :class:`FusedMLPStep` computes the
loss and every gradient without an autograd graph:

- every activation, pre-activation and gradient lives in a buffer allocated once for the batch size;
- a layer is one ``addmm`` with its bias, its weight gradient one ``mm`` written straight into the
  parameter's ``.grad``, the activation's forward and backward the very kernels autograd calls
  (``threshold_backward``, ``silu_backward``, ...), writing in place;
- the condition is copied once per step into the columns of the layer inputs it joins, so that a
  conditioned layer is still one matrix product forward and one backward;
- the reparameterisation, the analytic KL and their gradients are a handful of element-wise kernels
  on (B, latent) tensors; the Bernoulli log-likelihood is one fused pass and its gradient another.

The optimizer (fused Adam) then steps the model's own parameters, so run folders, ``--resume`` and
the optimizer state are exactly those of the generic path. The noise is drawn from the global
generator at the same point and in the same shape as the generic path draws it, so that a seeded run
trains the same model either way (to float32 rounding); the tests hold the loss and every gradient
to autograd's on every configuration it covers.

:func:`fused_step_for` asks every registered step whether it covers a model, objective and settings
(``why_not`` returns None or the reason) and returns the first that does, or None with the reasons:
the trainer then takes the generic autograd path, which works for every model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import LOG_2PI
from .likelihoods.bernoulli import BernoulliLikelihood
from .likelihoods.gaussian import GaussianLikelihood, LearnedGaussianLikelihood
from .models.cvae import CVAE
from .nn import MLP, MLPDecoder, MLPEncoder
from .objectives.base import ObjectiveOutput
from .objectives.evidence import ELBO
from .priors.conditional import ConditionalGaussian
from .priors.standard import StandardNormal
from .registry import Registry

STEPS = Registry("training step")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
aten = torch.ops.aten


def _activation(module: nn.Module):
    """(forward(a, out), backward(grad, a, y, out)) of an activation module: autograd's own kernels,
    or None when the activation is not covered."""
    kind = type(module)
    if kind is nn.ReLU:
        return (lambda a, out: torch.clamp_min(a, 0, out=out),
                lambda g, a, y, out: aten.threshold_backward.grad_input(g, a, 0, grad_input=out))
    if kind is nn.Tanh:
        return (lambda a, out: torch.tanh(a, out=out),
                lambda g, a, y, out: aten.tanh_backward.grad_input(g, y, grad_input=out))
    if kind is nn.ELU:
        alpha = module.alpha
        return (lambda a, out: aten.elu.out(a, alpha, 1, 1, out=out),
                lambda g, a, y, out: aten.elu_backward.grad_input(g, alpha, 1, 1, False, a, grad_input=out))
    if kind is nn.SiLU:
        return (lambda a, out: aten.silu.out(a, out=out),
                lambda g, a, y, out: aten.silu_backward.grad_input(g, a, grad_input=out))
    if kind is nn.LeakyReLU:
        slope = module.negative_slope
        return (lambda a, out: aten.leaky_relu.out(a, slope, out=out),
                lambda g, a, y, out: aten.leaky_relu_backward.grad_input(g, a, slope, False, grad_input=out))
    if kind is nn.GELU:
        approximate = module.approximate
        # gelu's out= variant writes a column slice of a wider buffer wrongly (torch 2.13): copy into it
        return (lambda a, out: out.copy_(F.gelu(a, approximate=approximate)),
                lambda g, a, y, out: aten.gelu_backward.grad_input(g, a, approximate=approximate, grad_input=out))
    if kind is nn.Softplus:
        beta, threshold = module.beta, module.threshold
        return (lambda a, out: aten.softplus.out(a, beta, threshold, out=out),
                lambda g, a, y, out: aten.softplus_backward.grad_input(g, a, beta, threshold, grad_input=out))
    return None


def fused_step_for(model, objective, *, batch_size: int, device: torch.device, precision: str = "float32"):
    """The first registered step that covers the model, objective and settings, built, or None; and
    the reasons each step gave for not covering them (empty when one did)."""
    reasons = {}
    for name, cls in STEPS.items():
        why = cls.why_not(model, objective, precision=precision)
        if why is None:
            return cls(model, objective, batch_size=batch_size, device=device, precision=precision), {}
        reasons[name] = why
    return None, reasons


class _Net:
    """The buffers of one MLP: per layer the input (B, in [+ C]) with the condition's columns,
    the pre-activation (B, out) and the gradient of the input (B, in). In bfloat16 the matrix
    products read bfloat16 copies of the weights, refreshed every step (as autocast casts them),
    and their weight gradients are rounded to bfloat16 before they reach the float32 ``.grad``."""

    def __init__(self, net: MLP, batch: int, device, first_input: bool, dtype: torch.dtype):
        self.layers, self.joins = list(net.layers), list(net.joins)
        self.cond_dim, self.dtype = net.cond_dim, dtype
        self.fwd, self.bwd = _activation(net.act)
        self.ins = [layer.in_features - (self.cond_dim if join else 0) for layer, join in zip(self.layers, self.joins)]
        new = dict(device=device, dtype=dtype)
        # the first layer's input is the caller's x when nothing joins it and no cast is needed (no copy)
        own_first = first_input or self.joins[0] or dtype != torch.float32
        self.inputs = [torch.empty(batch, layer.in_features, **new) if (i or own_first) else None
                       for i, layer in enumerate(self.layers)]
        self.pre = [torch.empty(batch, layer.out_features, **new) for layer in self.layers]
        self.grad_in = [torch.empty(batch, n, **new) for n in self.ins]
        self.cast = dtype != torch.float32
        if self.cast:
            self.weights = [torch.empty_like(layer.weight, dtype=dtype) for layer in self.layers]
            self.biases = [torch.empty_like(layer.bias, dtype=dtype) for layer in self.layers]
            self.weight_grads = [torch.empty_like(layer.weight, dtype=dtype) for layer in self.layers]
        else:
            self.weights = [layer.weight for layer in self.layers]
            self.biases = [layer.bias for layer in self.layers]

    def refresh(self) -> None:
        """The low-precision copies of the weights, from the float32 ones the optimizer stepped."""
        if self.cast:
            for layer, w, bias in zip(self.layers, self.weights, self.biases):
                w.copy_(layer.weight)
                bias.copy_(layer.bias)

    def set_condition(self, c: torch.Tensor | None, b: int) -> None:
        if not self.cond_dim:
            return
        for i, join in enumerate(self.joins):
            if join:
                self.inputs[i][:b, self.ins[i]:].copy_(c)

    def input_view(self, i: int, b: int) -> torch.Tensor:
        """Where the input of layer i goes (its first ``ins[i]`` columns)."""
        return self.inputs[i][:b, :self.ins[i]]

    def forward(self, x: torch.Tensor | None, b: int) -> torch.Tensor:
        """The pre-activation of the last layer; ``x`` is the input when it is not already in place."""
        if x is not None:
            if self.inputs[0] is None:
                self.first = x
            else:
                self.input_view(0, b).copy_(x)
        last = len(self.layers) - 1
        for i in range(len(self.layers)):
            inp = self.first if self.inputs[i] is None else self.inputs[i][:b]
            out = self.pre[i][:b]
            torch.addmm(self.biases[i], inp, self.weights[i].T, out=out)
            if i < last:
                self.fwd(out, self.input_view(i + 1, b))
        return self.pre[last][:b]

    def backward(self, grad: torch.Tensor, b: int, need_input: bool) -> torch.Tensor | None:
        """Weight and bias gradients from the gradient of the last pre-activation; the input's when asked."""
        g = grad
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            inp = self.first if self.inputs[i] is None else self.inputs[i][:b]
            if self.cast:
                layer.weight.grad.copy_(torch.mm(g.T, inp, out=self.weight_grads[i]))
                torch.sum(g, 0, dtype=torch.float32, out=layer.bias.grad)
            else:
                torch.mm(g.T, inp, out=layer.weight.grad)
                torch.sum(g, 0, out=layer.bias.grad)
            if i == 0 and not need_input:
                return None
            gi = self.grad_in[i][:b]
            torch.mm(g, self.weights[i][:, :self.ins[i]], out=gi)
            if i == 0:
                return gi
            self.bwd(gi, self.pre[i - 1][:b], self.input_view(i, b), gi)
            g = gi
        return None


@STEPS.register("fused-mlp")
class FusedMLPStep:
    """The ELBO's loss and gradients of an MLP (C)VAE, written out; see the module's docstring."""

    @staticmethod
    def why_not(model, objective, *, precision: str = "float32") -> str | None:
        """None when this step computes exactly what the generic path computes, else the reason."""
        if type(model) is not CVAE:
            return f"the model class is {type(model).__name__}, not the CVAE"
        enc, dec = getattr(model, "encoder", None), getattr(model, "decoder", None)
        if type(enc) is not MLPEncoder or type(dec) is not MLPDecoder or type(enc.net) is not MLP \
                or type(dec.net) is not MLP:
            return "the networks are not MLPs"
        if _activation(enc.net.act) is None or _activation(dec.net.act) is None:
            return f"the activation {type(enc.net.act).__name__} has no written-out backward"
        if type(model.likelihood) not in (BernoulliLikelihood, GaussianLikelihood, LearnedGaussianLikelihood):
            return f"the likelihood {type(model.likelihood).__name__} is not Bernoulli or Gaussian"
        if dec.out_shape != tuple(model.config.data_shape):
            return "the decoder gives more than one parameter per element"
        if type(model.prior) not in (StandardNormal, ConditionalGaussian):
            return f"the prior {type(model.prior).__name__} is not the standard or conditional Gaussian"
        if type(objective) is not ELBO:
            return f"the objective is {getattr(objective, 'name', type(objective).__name__)}, not the ELBO"
        if objective.free_bits > 0:
            return "free bits are not written out"
        if precision not in DTYPES:
            return f"it computes in float32 or bfloat16, not {precision}"
        if any(p.dtype != torch.float32 for p in model.parameters()):
            return "the weights are not float32"
        return None

    def __init__(self, model: CVAE, objective: ELBO, *, batch_size: int, device: torch.device,
                 precision: str = "float32"):
        self.model, self.objective, self.precision = model, objective, precision
        self.dtype = dtype = DTYPES[precision]
        self.latent = model.config.latent_dim
        self.batch = batch_size
        self.cond_dim = model.schema.dim
        self.encoder = _Net(model.encoder.net, batch_size, device, first_input=False, dtype=dtype)
        self.decoder = _Net(model.decoder.net, batch_size, device, first_input=True, dtype=dtype)
        self.likelihood = model.likelihood
        self.learned_sigma = type(model.likelihood) is LearnedGaussianLikelihood
        self.gaussian = type(model.likelihood) is not BernoulliLikelihood
        self.prior_net = model.prior.net if type(model.prior) is ConditionalGaussian else None
        p = math.prod(model.config.data_shape)
        d = self.latent
        new = dict(device=device, dtype=torch.float32)
        self.out_grad = torch.empty(batch_size, p, **new)  # d loss / d decoder output
        self.sq = torch.empty(batch_size, p, **new) if self.gaussian else None
        self.std = torch.empty(batch_size, d, **new)
        self.tmp = torch.empty(batch_size, d, **new)
        self.enc_grad = torch.empty(batch_size, 2 * d, **new)  # d loss / d (mu, logvar)
        if dtype != torch.float32:  # the two gradients that enter the networks' backward passes, cast
            self.out_grad_low = torch.empty(batch_size, p, device=device, dtype=dtype)
            self.enc_grad_low = torch.empty(batch_size, 2 * d, device=device, dtype=dtype)
        if self.prior_net is not None:
            self.prior_grad = torch.empty(batch_size, 2 * d, **new)
            self.diff = torch.empty(batch_size, d, **new)
            self.inv_var = torch.empty(batch_size, d, **new)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.grads = [torch.zeros_like(p) for p in self.params]
        covered = {id(layer.weight) for net in (self.encoder, self.decoder) for layer in net.layers}
        covered |= {id(layer.bias) for net in (self.encoder, self.decoder) for layer in net.layers}
        if self.prior_net is not None:
            covered |= {id(self.prior_net.weight), id(self.prior_net.bias)}
        if self.learned_sigma:
            covered.add(id(model.likelihood.log_sigma))
        missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if missing:  # a parameter this step does not know: never leave its gradient silently zero
            raise RuntimeError(f"the fused step does not cover the parameters {missing}")

    def _attach_grads(self) -> None:
        for p, g in zip(self.params, self.grads):
            if p.grad is not g:
                p.grad = g

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, c: torch.Tensor | None, *, progress: float = 0.0) -> ObjectiveOutput:
        """Loss and figures of the batch (as the ELBO objective gives them); every gradient written
        into the parameters' ``.grad``, ready for the optimizer's step."""
        self._attach_grads()
        b, d = len(x), self.latent
        low = self.dtype != torch.float32
        weight = self.objective.kl_weight(progress)
        xf = x.reshape(b, -1)
        if xf.dtype != torch.float32:
            xf = xf.float()
        if c is not None:
            c = c.float()
        enc, dec = self.encoder, self.decoder
        enc.refresh()
        dec.refresh()
        enc.set_condition(c, b)
        dec.set_condition(c, b)

        # q(z | x, c), then z = mu + sigma * eps straight into the decoder's input
        h = enc.forward(xf, b)
        if low:
            h = h.float()
        mu, logvar = h[:, :d], h[:, d:]
        std = torch.mul(logvar, 0.5, out=self.std[:b]).exp_()
        # the noise as DiagonalGaussian.rsample draws it (in the encoder's output dtype under autocast)
        eps = torch.randn((b, d), dtype=self.dtype, device=x.device).float()
        z = dec.input_view(0, b)
        if low:
            z.copy_(torch.addcmul(mu, std, eps))
        else:
            torch.addcmul(mu, std, eps, out=z)

        # p(x | z, c): the reconstruction term's sum and its gradient with respect to the decoder output
        out = dec.forward(None, b)
        if low:
            out = out.float()
        g_out = self.out_grad[:b]
        if self.gaussian:
            rec_sum = self._gaussian(out, xf, g_out, b)
        else:
            rec_sum = F.binary_cross_entropy_with_logits(out, xf, reduction="sum")
            torch.sigmoid(out, out=g_out)
            g_out.sub_(xf).mul_(1.0 / b)
        dz = dec.backward(self.out_grad_low[:b].copy_(g_out) if low else g_out, b, need_input=True)
        if low:
            dz = dz.float()

        # KL(q || p) (analytic) and the gradient at (mu, logvar) through the reparameterisation
        g_enc = self.enc_grad[:b]
        g_mu, g_logvar = g_enc[:, :d], g_enc[:, d:]
        var = torch.mul(std, std, out=self.tmp[:b])  # exp(logvar)
        scale = weight / b
        torch.mul(dz, eps, out=g_logvar).mul_(std).mul_(0.5)  # 0.5 sigma eps dz
        if self.prior_net is None:
            kl_sum = 0.5 * (mu.square().sum() + var.sum() - logvar.sum() - b * d)
            torch.add(dz, mu, alpha=scale, out=g_mu)
            g_logvar.add_(var, alpha=0.5 * scale).sub_(0.5 * scale)
        else:
            kl_sum = self._conditional_kl(c, mu, logvar, var, dz, g_mu, g_logvar, scale, b)
        enc.backward(self.enc_grad_low[:b].copy_(g_enc) if low else g_enc, b, need_input=False)

        rec, kl = rec_sum / b, kl_sum / b
        return ObjectiveOutput(loss=rec + weight * kl, reconstruction=rec, kl=kl)

    def _gaussian(self, out, xf, g_out, b):
        """N(x; out, sigma^2): the negative log-likelihood's sum; its gradients (and log sigma's)."""
        log_sigma = self.likelihood.log_sigma
        p = xf.shape[1]
        ls = log_sigma.reshape(-1) if self.learned_sigma else log_sigma
        inv_sigma = torch.exp(-ls)
        r = torch.sub(out, xf, out=g_out).mul_(inv_sigma)  # (mean - x) / sigma
        sq = torch.mul(r, r, out=self.sq[:b])
        const = 0.5 * p * LOG_2PI + (ls.sum() if self.learned_sigma else p * ls)
        rec_sum = 0.5 * sq.sum() + b * const
        if self.learned_sigma:  # d/d log sigma_j of the mean over the batch: 1 - mean_b r_bj^2
            grad = log_sigma.grad.view(-1)
            torch.sum(sq, 0, out=grad)
            grad.mul_(-1.0 / b).add_(1.0)
        r.mul_(inv_sigma).mul_(1.0 / b)  # (mean - x) / sigma^2 / B
        return rec_sum

    def _conditional_kl(self, c, mu, logvar, var, dz, g_mu, g_logvar, scale, b):
        """KL(N(mu, var) || N(m(c), v(c))) of the conditional prior, and all its gradients."""
        d = self.latent
        net = self.prior_net
        prior = torch.addmm(net.bias, c, net.weight.T)  # (B, 2D): m, log v
        m, log_v = prior[:, :d], prior[:, d:]
        inv_v = torch.exp(torch.neg(log_v, out=self.inv_var[:b]), out=self.inv_var[:b])
        diff = torch.sub(mu, m, out=self.diff[:b])  # mu - m
        diff_iv = diff * inv_v
        spread = (var + diff * diff).mul_(inv_v)  # (var + (mu - m)^2) / v
        kl_sum = 0.5 * (log_v.sum() - logvar.sum() + spread.sum() - b * d)
        torch.add(dz, diff_iv, alpha=scale, out=g_mu)
        g_logvar.add_(var * inv_v, alpha=0.5 * scale).sub_(0.5 * scale)
        g_prior = self.prior_grad[:b]
        torch.mul(diff_iv, -scale, out=g_prior[:, :d])
        g_prior[:, d:].copy_(spread).mul_(-0.5 * scale).add_(0.5 * scale)  # (1 - spread) / 2
        torch.mm(g_prior.T, c, out=net.weight.grad)
        torch.sum(g_prior, 0, out=net.bias.grad)
        return kl_sum
