"""A training step written out by hand for the models people train most, chosen through a registry.

For an MLP encoder and decoder (any widths and depth, any registered activation, the condition at
the input or at every layer), Bernoulli or Gaussian (fixed or learned sigma) pixels, a standard or
conditional Gaussian prior and the ELBO (any beta, KL warm-up), :class:`FusedMLPStep` computes the
loss and every gradient without an autograd graph. An objective that is the reconstruction term plus a
function of the codes alone (``Objective.latent_form``: beta-TCVAE, FactorVAE, DIP-VAE, annealed
capacity), with the standard prior, runs on it too: that function's gradients at z, mu and log var come
from autograd on the (B, D) codes (``_latent_terms``), the rest is written out as below.

- every activation, pre-activation and gradient lives in a buffer allocated once for the batch size;
- a layer is one ``addmm`` with its bias, its weight gradient one ``mm`` written straight into the
  parameter's ``.grad``, the activation's forward and backward the very kernels autograd calls
  (``threshold_backward``, ``silu_backward``, ...), writing in place;
- the condition is copied once per step into the columns of the layer inputs it joins, so that a
  conditioned layer is still one matrix product forward and one backward;
- the reparameterisation, the analytic KL and their gradients are a handful of element-wise kernels
  on (B, latent) tensors; the Bernoulli log-likelihood is sum softplus(l) - x . l, the softplus sum
  taken by :func:`cvae.kernels.sum_softplus_` (one logarithm per 49 pixels) in the logits' own
  buffer, and its gradient sigmoid(l) - x one more pass.

The optimizer (fused Adam) then steps the model's own parameters, so run folders, ``--resume`` and
the optimizer state are exactly those of the generic path. The noise is drawn from the global
generator at the same point and in the same shape as the generic path draws it, so that a seeded run
trains the same model either way (to float32 rounding); the tests hold the loss and every gradient
to autograd's on every configuration it covers.

For one model on a CPU the same step runs as one C++ call per step where it can be built
(:mod:`cvae.native`, ``csrc/fused_step.cpp``: the likelihood, activation, bias and latent passes
written as loops, the two backward products of a layer side by side, and its own Adam that also
writes the bfloat16 weight copies); ``FusedMLPStep.native`` says whether it does and
``native_why`` why not. The Python code below is the reference it is tested against, and what runs
for sweeps, on GPUs and wherever the native build is off.

:func:`fused_step_for` asks every registered step whether it covers a model, objective and settings
(``why_not`` returns None or the reason) and returns the first that does, or None with the reasons:
the trainer then takes the generic autograd path, which works for every model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import optimizer as _optimizer_module

from . import native
from .distributions import LOG_2PI, DiagonalGaussian, standard_normal_like
from .kernels import sum_softplus_
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


def _native_activation(module: nn.Module) -> tuple[int, float] | None:
    """The native step's code and argument of an activation module (csrc/fused_step.cpp), or None."""
    kind = type(module)
    if kind is nn.ReLU:
        return 0, 0.0
    if kind is nn.Tanh:
        return 1, 0.0
    if kind is nn.ELU:
        return 2, float(module.alpha)
    if kind is nn.SiLU:
        return 3, 0.0
    if kind is nn.LeakyReLU:
        return 4, float(module.negative_slope)
    return None


def fused_step_for(model, objective, *, batch_size: int, device: torch.device, precision: str = "float32"):
    """The first registered step that covers the model, objective and settings, built, or None; and
    the reasons each step gave for not covering them (empty when one did)."""
    reasons = {}
    for name, cls in STEPS.items():
        why = cls.why_not(model, objective, precision=precision)
        if why is None:
            return cls([model], [objective], batch_size=batch_size, device=device, precision=precision), {}
        reasons[name] = why
    return None, reasons


def stack_parameters(models: list[nn.Module]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The parameters of K models of one shape as stacked tensors (K, ...), one per parameter, and
    their stacked gradients. One model's are views of its own tensors; several models' parameters
    become views into the stacked ones (each model still owns its ``nn.Parameter`` objects, which its
    optimizer steps in place), so that one batched matrix product serves all K."""
    names = [n for n, _ in models[0].named_parameters()]
    stacked, grads = [], []
    for name in names:
        params = [dict(m.named_parameters())[name] for m in models]
        if len(models) == 1:
            s = params[0].detach().unsqueeze(0)
        else:
            s = torch.stack([p.detach() for p in params])
            for k, p in enumerate(params):
                p.data = s[k]
        g = torch.zeros_like(s)
        stacked.append(s)
        grads.append(g)
    return stacked, grads


class _Net:
    """The buffers of K MLPs of one shape: per layer the input (K, B, in [+ C]) with the condition's
    columns, the pre-activation (K, B, out) and the gradient of the input (K, B, in); each layer one
    batched matrix product forward and two backward (for one model, K = 1, plain ``addmm``/``mm`` on
    2-D views, which skip the batched products' dispatch). The views of every buffer for a batch
    size are made once and kept. In bfloat16 the products read bfloat16 copies of the weights,
    refreshed every step (as autocast casts them), and their weight gradients are rounded to
    bfloat16 before they reach the float32 ``.grad``."""

    def __init__(self, net: MLP, k: int, batch: int, device, dtype: torch.dtype, weights, biases, wgrads, bgrads):
        self.layers, self.joins = list(net.layers), list(net.joins)
        self.cond_dim, self.dtype, self.k = net.cond_dim, dtype, k
        self.fwd, self.bwd = _activation(net.act)
        self.ins = [layer.in_features - (self.cond_dim if join else 0) for layer, join in zip(self.layers, self.joins)]
        new = dict(device=device, dtype=dtype)
        self.inputs = [torch.empty(k, batch, layer.in_features, **new) for layer in self.layers]
        self.pre = [torch.empty(k, batch, layer.out_features, **new) for layer in self.layers]
        self.grad_in = [torch.empty(k, batch, n, **new) for n in self.ins]
        self.master, self.master_biases = weights, biases  # float32, (K, out, in [+ C]) and (K, out)
        self.wgrads, self.bgrads = wgrads, bgrads
        self.cast = dtype != torch.float32
        if self.cast:
            self.weights = [torch.empty_like(w, dtype=dtype) for w in weights]
            self.biases = [torch.empty_like(b, dtype=dtype) for b in biases]
            self.weight_grads = [torch.empty_like(w, dtype=dtype) for w in weights]
        else:
            self.weights, self.biases = weights, biases
        self._views: dict[int, tuple] = {}

    def views(self, b: int) -> tuple:
        """Per layer (input, input's own columns, pre-activation, input gradient, weight, weight
        transposed, weight's input columns, bias, weight gradient (low precision where cast), bias
        gradient), for a batch of b rows: 2-D for one model, 3-D (K, b, n) for several."""
        if b not in self._views:
            one = self.k == 1
            layers = []
            for i in range(len(self.layers)):
                w = self.weights[i][0] if one else self.weights[i]
                wt = w.t() if one else w.transpose(1, 2)
                wg = self.weight_grads[i] if self.cast else self.wgrads[i]
                pick = (lambda t: t[0, :b]) if one else (lambda t: t[:, :b])
                layers.append((pick(self.inputs[i]), pick(self.inputs[i][..., :self.ins[i]]), pick(self.pre[i]),
                               pick(self.grad_in[i]), w, wt, w[..., :self.ins[i]],
                               self.biases[i][0] if one else self.biases[i].unsqueeze(1),
                               wg[0] if one else wg, self.bgrads[i][0] if one else self.bgrads[i]))
            self._views[b] = tuple(layers)
        return self._views[b]

    def refresh(self) -> None:
        """The low-precision copies of the weights, from the float32 ones the optimizer stepped."""
        if self.cast:
            for w, b, mw, mb in zip(self.weights, self.biases, self.master, self.master_biases):
                w.copy_(mw)
                b.copy_(mb)

    def set_condition(self, c: torch.Tensor | None, b: int) -> None:
        if not self.cond_dim:
            return
        for i, join in enumerate(self.joins):
            if join:
                self.inputs[i][:, :b, self.ins[i]:].copy_(c)

    def input_view(self, i: int, b: int) -> torch.Tensor:
        """Where the input of layer i goes (its first ``ins[i]`` columns), (K, b, ins[i])."""
        return self.inputs[i][:, :b, :self.ins[i]]

    def forward(self, x: torch.Tensor | None, b: int) -> torch.Tensor:
        """The pre-activation of the last layer (K, b, out); ``x`` (K, b, in) is the input when not
        already in place."""
        if x is not None:
            self.input_view(0, b).copy_(x)
        views = self.views(b)
        one, last = self.k == 1, len(views) - 1
        for i, (inp, _, pre, _, _, wt, _, bias, _, _) in enumerate(views):
            if one:
                torch.addmm(bias, inp, wt, out=pre)
            else:
                torch.baddbmm(bias, inp, wt, out=pre)
            if i < last:
                self.fwd(pre, views[i + 1][1])
        return self.pre[last][:, :b]

    def backward(self, grad: torch.Tensor, b: int, need_input: bool) -> torch.Tensor | None:
        """Weight and bias gradients from the gradient of the last pre-activation (K, b, out); the
        input's (K, b, in) when asked."""
        views = self.views(b)
        one = self.k == 1
        g = grad[0] if one else grad
        mm, sum_dim = (torch.mm, 0) if one else (torch.bmm, 1)
        for i in range(len(views) - 1, -1, -1):
            inp, _, _, gi, _, _, w_in, _, wg, bg = views[i]
            gt = g.t() if one else g.transpose(1, 2)
            if self.cast:
                self.wgrads[i].copy_(mm(gt, inp, out=wg).view_as(self.wgrads[i]))
                torch.sum(g, sum_dim, dtype=torch.float32, out=bg)
            else:
                mm(gt, inp, out=wg)
                torch.sum(g, sum_dim, out=bg)
            if i == 0 and not need_input:
                return None
            mm(g, w_in, out=gi)
            if i == 0:
                return self.grad_in[0][:, :b]
            self.bwd(gi, views[i - 1][2], views[i][1], gi)
            g = gi
        return None


@STEPS.register("fused-mlp")
class FusedMLPStep:
    """The ELBO's loss and gradients of K MLP (C)VAEs of one shape (K = 1 for a training run, more for
    a sweep), written out; see the module's docstring."""

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
        name = getattr(objective, "name", type(objective).__name__)
        if type(objective) is not ELBO and not getattr(objective, "latent_form", False):
            return f"the objective is {name}, not the ELBO or one of the codes' terms (Objective.latent_form)"
        if type(objective) is ELBO and objective.free_bits > 0:
            return "free bits are not written out"
        if type(objective) is not ELBO and type(model.prior) is not StandardNormal:
            return f"the objective {name} is written out with the standard prior only"
        if precision not in DTYPES:
            return f"it computes in float32 or bfloat16, not {precision}"
        if any(p.dtype != torch.float32 for p in model.parameters()):
            return "the weights are not float32"
        return None

    def __init__(self, models: list[CVAE], objectives: list[ELBO], *, batch_size: int, device: torch.device,
                 precision: str = "float32"):
        model = models[0]
        self.models, self.objectives, self.precision = models, objectives, precision
        self.dtype = dtype = DTYPES[precision]
        self.k = k = len(models)
        self.latent = d = model.config.latent_dim
        self.batch = batch_size
        self.cond_dim = model.schema.dim
        names = [n for n, _ in model.named_parameters()]
        stacked, grads = stack_parameters(models)
        self.params = [[dict(m.named_parameters())[n] for n in names] for m in models]
        self.grads = grads
        self.stacked = dict(zip(names, stacked))
        grad_of = dict(zip(names, grads))

        def parts(prefix, net):
            n = len(net.layers)
            return ([self.stacked[f"{prefix}.net.layers.{i}.weight"] for i in range(n)],
                    [self.stacked[f"{prefix}.net.layers.{i}.bias"] for i in range(n)],
                    [grad_of[f"{prefix}.net.layers.{i}.weight"] for i in range(n)],
                    [grad_of[f"{prefix}.net.layers.{i}.bias"] for i in range(n)])

        self.encoder = _Net(model.encoder.net, k, batch_size, device, dtype, *parts("encoder", model.encoder.net))
        self.decoder = _Net(model.decoder.net, k, batch_size, device, dtype, *parts("decoder", model.decoder.net))
        # condition dropout (classifier-free guidance): the decoder reads [c, present], a share of rows blanked
        self.flagged, self.condition_dropout = model.flagged, model.config.condition_dropout
        self.learned_sigma = type(model.likelihood) is LearnedGaussianLikelihood
        self.gaussian = type(model.likelihood) is not BernoulliLikelihood
        self.conditional_prior = type(model.prior) is ConditionalGaussian
        covered = {f"{net}.net.layers.{i}.{w}" for net, m in (("encoder", model.encoder), ("decoder", model.decoder))
                   for i in range(len(m.net.layers)) for w in ("weight", "bias")}
        if self.conditional_prior:
            covered |= {"prior.net.weight", "prior.net.bias"}
        if self.learned_sigma:
            covered.add("likelihood.log_sigma")
        missing = [n for n in names if n not in covered]
        if missing:  # a parameter this step does not know: never leave its gradient silently zero
            raise RuntimeError(f"the fused step does not cover the parameters {missing}")
        if self.gaussian:
            self.log_sigma = (self.stacked["likelihood.log_sigma"].reshape(k, 1, -1) if self.learned_sigma else
                              torch.stack([m.likelihood.log_sigma for m in models]).reshape(k, 1, 1))
            self.log_sigma_grad = grad_of["likelihood.log_sigma"].reshape(k, -1) if self.learned_sigma else None
        if self.conditional_prior:
            self.prior = (self.stacked["prior.net.weight"], self.stacked["prior.net.bias"],
                          grad_of["prior.net.weight"], grad_of["prior.net.bias"])
        p = math.prod(model.config.data_shape)
        new = dict(device=device, dtype=torch.float32)
        self.out_grad = torch.empty(k, batch_size, p, **new)  # d loss / d decoder output
        self.sq = torch.empty(k, batch_size, p, **new) if self.gaussian else None
        self.std = torch.empty(k, batch_size, d, **new)
        self.tmp = torch.empty(k, batch_size, d, **new)
        self.enc_grad = torch.empty(k, batch_size, 2 * d, **new)  # d loss / d (mu, logvar)
        if dtype != torch.float32:  # the two gradients that enter the networks' backward passes, cast
            self.out_grad_low = torch.empty(k, batch_size, p, device=device, dtype=dtype)
            self.enc_grad_low = torch.empty(k, batch_size, 2 * d, device=device, dtype=dtype)
            # and the networks' outputs in float32, where the latent maths and the likelihood read them
            self.enc_out = torch.empty(k, batch_size, 2 * d, **new)
            self.dec_out = torch.empty(k, batch_size, p, **new)
            self.dz = torch.empty(k, batch_size, d, **new)
        # an objective whose loss is the reconstruction plus a function of the codes (beta-TCVAE, ...):
        # that function and its gradients by autograd on the (B, D) codes, the KL out of the loss
        self.latent_form = bool(getattr(objectives[0], "latent_form", False))
        self.native_why = self._native_why(model, device)
        self.native = self.native_why is None
        self._native_steps: dict[int, object] = {}
        self._native_fresh = None  # the masters' versions when the native Adam last wrote the low copies
        self._no_tensor = torch.empty(0)  # an absent optional argument of the native step
        self.native_adam_calls = 0
        if self.native and self.dtype != torch.float32:
            nets = (self.encoder, self.decoder)
            self._lows = {m.data_ptr(): w for n in nets for m, w in zip(n.master + n.master_biases, n.weights + n.biases)}
            self._low_grads = {m.data_ptr(): g for n in nets for m, g in zip(n.master, n.weight_grads)}
        else:
            self._lows, self._low_grads = {}, {}
        self._deferred = False  # the weights' gradients are in their bfloat16 buffers only

    def materialize_grads(self) -> None:
        """Copy the weights' deferred bfloat16 gradients (``defer_grads``) to their ``.grad``."""
        if self._deferred:
            for net in (self.encoder, self.decoder):
                for grad, low in zip(net.wgrads, net.weight_grads):
                    grad.copy_(low)
            self._deferred = False

    def _master_versions(self) -> tuple:
        return tuple(m._version for n in (self.encoder, self.decoder) for m in n.master + n.master_biases)

    def adam(self, group: dict, params: list, states: list) -> bool:
        """One group's Adam step by the native kernel, which also writes the products' bfloat16 weights
        (so the next step need not copy them); False (nothing done) where it does not cover the group."""
        if not self.native or not self._native_steps or group.get("weight_decay") is None:
            self.materialize_grads()
            return False
        # a parameter outside the networks (the conditional prior's) has no low-precision copy: an empty one
        lows = [self._lows.get(p.data_ptr(), self._no_tensor) for p in params] if self._lows else []
        if any(s["step"].dtype != torch.float32 or s["step"].dim() != 0 for s in states) \
                or any(p.dtype != torch.float32 or not p.is_contiguous() for p in params):
            self.materialize_grads()
            return False
        grads = [self._low_grads.get(p.data_ptr(), p.grad) if self._deferred else p.grad for p in params]
        beta1, beta2 = group["betas"]
        next(iter(self._native_steps.values())).adam(
            params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states], lows,  # the kernel reads each low copy flat (same size, contiguous)
            float(group["lr"]), float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]))
        if lows:
            self._native_fresh = self._master_versions()
        self.native_adam_calls += 1
        return True

    def _native_why(self, model, device) -> str | None:
        """None when the native step (cvae.native: one C++ call per step, the same maths) runs this
        model, else why not."""
        if device.type != "cpu":
            return f"it runs on CPUs, not {device.type}"
        if self.k != 1:
            return "it trains one model at a time, not a sweep"
        acts = {type(model.encoder.net.act), type(model.decoder.net.act)}
        if len(acts) > 1 or _native_activation(model.encoder.net.act) is None:
            return f"the activation {type(model.encoder.net.act).__name__} is not written natively"
        if not native.load():
            return native.unavailable()
        return None

    def _native_step(self, b: int):
        """The native step for batches of b rows (built once per batch size, on views of this
        step's buffers and of the parameters' own tensors)."""
        step = self._native_steps.get(b)
        if step is None:
            enc, dec = self.encoder, self.decoder
            low = self.dtype != torch.float32

            def layers(net):
                out = []
                for i, (inp, own, pre, gi, _, wt, w_in, bias, wg, bg) in enumerate(net.views(b)):
                    out += [inp, own, pre, gi, wt, w_in, bias, wg, net.wgrads[i][0], bg]
                return out

            code, arg = _native_activation(self.models[0].encoder.net.act)
            lows = enc.weights + enc.biases + dec.weights + dec.biases if low else []
            masters = enc.master + enc.master_biases + dec.master + dec.master_biases if low else []
            buffers = [self.out_grad_low[0, :b] if low else self.out_grad[0, :b],
                       self.enc_grad_low[0, :b] if low else self.enc_grad[0, :b], self.std[0, :b]]
            prior = [t[0] for t in self.prior] if self.conditional_prior else []
            gaussian = ([self.log_sigma[0].reshape(-1),
                         self.log_sigma_grad[0] if self.learned_sigma else self._no_tensor] if self.gaussian else [])
            step = native.step_class()(layers(enc), len(enc.layers), layers(dec), len(dec.layers), code, arg,
                                       low, lows, masters, buffers, self.latent, prior, gaussian)
            self._native_steps[b] = step
        return step

    def _attach_grads(self) -> None:
        for k, params in enumerate(self.params):
            for p, g in zip(params, self.grads):
                view = g[k]
                if p.grad is None or p.grad.data_ptr() != view.data_ptr():
                    p.grad = view

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, c: torch.Tensor | None, *, progress: float = 0.0,
                 generators: list[torch.Generator] | None = None, defer_grads: bool = False) -> ObjectiveOutput:
        """Loss and figures of the batch (as the ELBO objective gives them); every gradient written
        into the parameters' ``.grad``, ready for the optimizer's step. One model: x (b, *shape),
        c (b, C); K models: x (K, b, *shape), c (K, b, C), the figures (K,), and each model's noise
        from its own generator."""
        single = x.dim() == len(self.models[0].config.data_shape) + 1 and self.k == 1
        if single:
            x = x.unsqueeze(0)
            c = c.unsqueeze(0) if c is not None else None
        self._attach_grads()
        k, b, d = self.k, x.shape[1], self.latent
        low = self.dtype != torch.float32
        if self.native:
            cf = c[0].float().contiguous() if c is not None else None
            self.encoder.set_condition(cf, b)
            eps = self._no_tensor
            xf = x.reshape(b, -1)
            if xf.dtype != torch.float32 or not xf.is_contiguous():
                xf = xf.float().contiguous()
            # the low-precision weights are refreshed unless the native Adam wrote them and nothing since
            fresh = self._native_fresh is not None and self._native_fresh == self._master_versions()
            self._native_fresh = None
            step = self._native_step(b)
            if self.flagged or self.latent_form:  # the noise first, then the condition-dropout mask, as the
                # generic path draws them
                eps = (torch.randn((k, b, d), dtype=self.dtype, device=x.device) if generators is None else
                       torch.randn((b, d), dtype=self.dtype, generator=generators[0]).to(x.device)).view(b, d)
            extra, terms = self._no_tensor, {}
            if self.latent_form:  # the encoder first, then the objective's part from the codes, then the rest
                h = step.encode(xf, not fresh).float()
                mu, logvar = h[:, :d], h[:, d:]
                z = (mu + torch.exp(0.5 * logvar) * eps.float()).to(self.dtype)
                penalty, terms, extra = self._latent_terms(z[None], mu[None], logvar[None], progress, generators)
                extra = extra[0]
            if self.flagged:
                self.decoder.set_condition(self._decoder_condition(c.float(), generators), b)
            else:
                self.decoder.set_condition(cf, b)
            # the weights' bfloat16 gradients stay in their buffers for the native Adam when the caller
            # defers them (defer_grads); otherwise they are copied to .grad, as the Python step writes them
            defer = defer_grads and low
            kl_weight = 0.0 if self.latent_form else float(self.objectives[0].kl_weight(progress))
            loss, rec, kl = step.run(xf, kl_weight, not fresh, not defer, eps,
                                     cf if self.conditional_prior else self._no_tensor, extra).unbind()
            if self.latent_form:
                loss = rec + penalty[0]
                terms = {n: v[0] for n, v in terms.items()}
            self._deferred = defer
            if single:
                return ObjectiveOutput(loss=loss, reconstruction=rec, kl=kl, terms=terms)
            return ObjectiveOutput(loss=loss.reshape(1), reconstruction=rec.reshape(1), kl=kl.reshape(1),
                                   terms={n: v.reshape(1) for n, v in terms.items()})
        weights = [0.0 if self.latent_form else obj.kl_weight(progress) for obj in self.objectives]
        xf = x.reshape(k, b, -1)
        if xf.dtype != torch.float32:
            xf = xf.float()
        if c is not None:
            c = c.float()
        enc, dec = self.encoder, self.decoder
        enc.refresh()
        dec.refresh()
        enc.set_condition(c, b)
        if not self.flagged:
            dec.set_condition(c, b)

        # q(z | x, c), then z = mu + sigma * eps straight into the decoder's input
        h = enc.forward(xf, b)
        if low:
            h = self.enc_out[:, :b].copy_(h)
        mu, logvar = h[..., :d], h[..., d:]
        std = torch.mul(logvar, 0.5, out=self.std[:, :b]).exp_()
        # the noise as DiagonalGaussian.rsample draws it (in the encoder's output dtype under autocast)
        if generators is None:
            eps = torch.randn((k, b, d), dtype=self.dtype, device=x.device).float()
        else:
            eps = torch.stack([torch.randn((b, d), dtype=self.dtype, generator=g).to(x.device)
                               for g in generators]).float()
        if self.flagged:  # drawn after the noise, as the generic path draws it in p_x
            dec.set_condition(self._decoder_condition(c, generators), b)
        z = dec.input_view(0, b)
        if low:
            z.copy_(torch.addcmul(mu, std, eps))
        else:
            torch.addcmul(mu, std, eps, out=z)

        # p(x | z, c): the reconstruction term's sum and its gradient with respect to the decoder output
        out = dec.forward(None, b)
        if low:
            out = self.dec_out[:, :b].copy_(out)
        g_out = self.out_grad[:, :b]
        if self.gaussian:
            rec_sum = self._gaussian(out, xf, g_out, b)
        else:
            # -log p(x | l) = sum softplus(l) - x . l; the softplus sum overwrites the logits, no longer needed
            x_dot_l = (torch.dot(xf.reshape(-1), out.reshape(-1)).reshape(1) if k == 1 else
                       torch.bmm(xf.reshape(k, 1, -1), out.reshape(k, -1, 1)).reshape(k))
            torch.sigmoid(out, out=g_out)
            rec_sum = sum_softplus_(out.reshape(k * b, -1)).reshape(k, b).sum(1) - x_dot_l
            g_out.sub_(xf).mul_(1.0 / b)
        dz = dec.backward(self.out_grad_low[:, :b].copy_(g_out) if low else g_out, b, need_input=True)
        if low:
            dz = self.dz[:, :b].copy_(dz)

        if self.latent_form:  # the objective's part from the codes; the KL stays out of the loss
            penalty, terms, extra = self._latent_terms(z, mu, logvar, progress, generators)
            dz = dz + extra[..., :d]
        # KL(q || p) (analytic) and the gradient at (mu, logvar) through the reparameterisation
        g_enc = self.enc_grad[:, :b]
        g_mu, g_logvar = g_enc[..., :d], g_enc[..., d:]
        var = torch.mul(std, std, out=self.tmp[:, :b])  # exp(logvar)
        scale = weights[0] / b if k == 1 else torch.tensor(weights, device=x.device).reshape(k, 1, 1) / b
        torch.mul(dz, eps, out=g_logvar).mul_(std).mul_(0.5)  # 0.5 sigma eps dz
        if not self.conditional_prior:
            kl_sum = 0.5 * (mu.square().sum((1, 2)) + var.sum((1, 2)) - logvar.sum((1, 2)) - b * d)
            if k == 1:
                torch.add(dz, mu, alpha=scale, out=g_mu)
                g_logvar.add_(var, alpha=0.5 * scale).sub_(0.5 * scale)
            else:
                torch.addcmul(dz, mu, scale, out=g_mu)
                g_logvar.addcmul_(var - 1.0, scale, value=0.5)
        else:
            kl_sum = self._conditional_kl(c, mu, logvar, var, dz, g_mu, g_logvar, scale, b)
        if self.latent_form:
            g_mu.add_(extra[..., d:2 * d])
            g_logvar.add_(extra[..., 2 * d:])
        enc.backward(self.enc_grad_low[:, :b].copy_(g_enc) if low else g_enc, b, need_input=False)

        rec, kl = rec_sum / b, kl_sum / b
        if self.latent_form:
            loss = rec + penalty
        else:
            terms = {}
            loss = rec + kl * (weights[0] if k == 1 else torch.tensor(weights, device=x.device))
        if single:
            return ObjectiveOutput(loss=loss[0], reconstruction=rec[0], kl=kl[0], terms={n: v[0] for n, v in terms.items()})
        return ObjectiveOutput(loss=loss, reconstruction=rec, kl=kl, terms=terms)

    def _latent_terms(self, z, mu, logvar, progress: float, generators=None):
        """A latent-form objective's part of the loss for each model (K,), its terms, and its gradients
        with respect to the codes, means and log variances, (K, B, 3D) float32 in that order: by
        autograd on (B, D) leaves, the objective's own expressions, under the autocast the generic path
        runs them in (bfloat16 matters to FactorVAE's discriminator). With ``generators`` (a sweep's
        runs), what an objective draws (FactorVAE's permutations) comes from its own run's generator, as
        a single run's would from the global one."""
        k, b, d = z.shape
        losses, grads, terms = [], torch.empty((k, b, 3 * d), device=z.device), {}
        low = self.dtype != torch.float32
        with torch.enable_grad(), torch.autocast(z.device.type, dtype=self.dtype, enabled=low):
            for i, obj in enumerate(self.objectives):
                leaves = [t[i].detach().float().clone().requires_grad_() for t in (z, mu, logvar)]
                zl, ml, ll = leaves
                log_pz = standard_normal_like(zl).log_prob(zl)  # the standard prior (why_not)
                kl = DiagonalGaussian(ml, ll).kl()
                own = generators is not None and len(generators) == k
                if own:
                    kept = torch.get_rng_state()
                    torch.set_rng_state(generators[i].get_state())
                try:
                    penalty, named = obj.latent_loss(zl, ml, ll, log_pz, kl, progress=progress)
                finally:
                    if own:
                        generators[i].set_state(torch.get_rng_state())
                        torch.set_rng_state(kept)
                got = torch.autograd.grad(penalty, leaves, allow_unused=True)
                for j, g in enumerate(got):
                    grads[i, :, j * d:(j + 1) * d] = 0.0 if g is None else g
                losses.append(penalty.detach().float())
                for key, v in named.items():
                    terms.setdefault(key, []).append(torch.as_tensor(v).detach().float())
        stack = {key: torch.stack(v) for key, v in terms.items()}
        return torch.stack(losses), stack, grads

    def _decoder_condition(self, c: torch.Tensor, generators) -> torch.Tensor:
        """[c, 1] with a share ``condition_dropout`` of the rows blanked, as CVAE._decoder_condition draws it."""
        k, b = c.shape[0], c.shape[1]
        if generators is None:
            u = torch.rand((b, 1), device=c.device).unsqueeze(0) if k == 1 else torch.rand((k, b, 1), device=c.device)
        else:
            u = torch.stack([torch.rand((b, 1), generator=g).to(c.device) for g in generators])
        keep = (u >= self.condition_dropout).to(c.dtype)
        return torch.cat([c, torch.ones_like(c[..., :1])], dim=-1) * keep

    def _gaussian(self, out, xf, g_out, b):
        """N(x; out, sigma^2): the negative log-likelihood's sums (K,); its gradients (and log sigma's)."""
        p = xf.shape[-1]
        ls = self.log_sigma  # (K, 1, P) or (K, 1, 1)
        inv_sigma = torch.exp(-ls)
        r = torch.sub(out, xf, out=g_out).mul_(inv_sigma)  # (mean - x) / sigma
        sq = torch.mul(r, r, out=self.sq[:, :b])
        const = 0.5 * p * LOG_2PI + (ls.sum((1, 2)) if self.learned_sigma else p * ls.reshape(-1))
        rec_sum = 0.5 * sq.sum((1, 2)) + b * const
        if self.learned_sigma:  # d/d log sigma_j of the mean over the batch: 1 - mean_b r_bj^2
            grad = self.log_sigma_grad
            torch.sum(sq, 1, out=grad)
            grad.mul_(-1.0 / b).add_(1.0)
        r.mul_(inv_sigma).mul_(1.0 / b)  # (mean - x) / sigma^2 / B
        return rec_sum

    def _conditional_kl(self, c, mu, logvar, var, dz, g_mu, g_logvar, scale, b):
        """KL(N(mu, var) || N(m(c), v(c))) of the conditional prior (sums (K,)), and all its gradients."""
        d = self.latent
        weight, bias, weight_grad, bias_grad = self.prior
        prior = torch.baddbmm(bias.unsqueeze(1), c, weight.transpose(1, 2))  # (K, B, 2D): m, log v
        m, log_v = prior[..., :d], prior[..., d:]
        inv_v = torch.exp(-log_v)
        diff = mu - m
        diff_iv = diff * inv_v
        spread = (var + diff * diff).mul_(inv_v)  # (var + (mu - m)^2) / v
        kl_sum = 0.5 * (log_v.sum((1, 2)) - logvar.sum((1, 2)) + spread.sum((1, 2)) - b * d)
        g_prior = torch.empty_like(prior)
        if isinstance(scale, float):
            torch.add(dz, diff_iv, alpha=scale, out=g_mu)
            g_logvar.add_(var * inv_v, alpha=0.5 * scale).sub_(0.5 * scale)
            torch.mul(diff_iv, -scale, out=g_prior[..., :d])
            g_prior[..., d:].copy_(spread).mul_(-0.5 * scale).add_(0.5 * scale)  # (1 - spread) / 2
        else:
            torch.addcmul(dz, diff_iv, scale, out=g_mu)
            g_logvar.addcmul_(var * inv_v - 1.0, scale, value=0.5)
            torch.mul(diff_iv, -scale, out=g_prior[..., :d])
            torch.mul(1.0 - spread, 0.5 * scale, out=g_prior[..., d:])
        torch.bmm(g_prior.transpose(1, 2), c, out=weight_grad)
        torch.sum(g_prior, 1, out=bias_grad)
        return kl_sum


def _fused_adam_callable(opt: torch.optim.Optimizer) -> bool:
    """Whether ``torch._fused_adam_`` takes the arguments :class:`AdamStep` passes, on the device and
    dtype of the optimizer's first parameter (a private kernel: another PyTorch release may change
    it; then ``opt.step()`` is used)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    if not params:
        return False
    new = dict(device=params[0].device, dtype=params[0].dtype)
    p, g, m, v = (torch.zeros(2, **new) for _ in range(4))
    try:
        with torch.no_grad():
            _fused_adam([p], [g], [m], [v], [torch.ones((), **new)], opt.defaults)
    except (RuntimeError, TypeError, AttributeError):
        return False
    return True


def _fused_adam(params, grads, exp_avgs, exp_avg_sqs, steps, group: dict) -> None:
    """One call of the private kernel ``torch._fused_adam_`` with a parameter group's settings: the
    one place its signature is written."""
    beta1, beta2 = group["betas"]
    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                       beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                       grad_scale=None, found_inf=None)


class AdamStep:
    """``opt.step()`` of a fused ``torch.optim.Adam``, without ``Optimizer.step``'s per-call Python
    work (hooks, profiler records, lazy state set-up, grouping by device): the very kernels it
    calls (``_foreach_add_`` on the step counts, then ``_fused_adam_``) with the optimizer's own
    state tensors and each group's current hyper-parameters, so the state, ``state_dict`` and
    ``--resume`` are those of the optimizer. The state and gradients are gathered again at every
    call (a resume or a new ``.grad`` tensor is followed). Where it does not apply (another
    optimizer or setting, hooks, state not yet made, a parameter without a gradient) it calls
    ``opt.step()``. A fused Adam step costs about 0.3 ms for the 784-400-20 VAE; its Python wrapper
    took another 0.1-0.3 ms."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt, self.direct_calls = opt, 0
        self.native = None  # a native fused step whose ``adam`` takes a group (FusedMLPStep.adam), if any
        d = opt.defaults
        self.covered = (type(opt) is torch.optim.Adam and d.get("fused") and not d.get("amsgrad")
                        and not d.get("maximize") and not d.get("capturable") and not d.get("differentiable")
                        and not d.get("decoupled_weight_decay") and _fused_adam_callable(opt))

    def _direct(self) -> bool:
        opt = self.opt
        if opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks \
                or _optimizer_module._global_optimizer_pre_hooks or _optimizer_module._global_optimizer_post_hooks:
            return False
        work = []
        for group in opt.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if len(params) != len(group["params"]) or isinstance(group["lr"], torch.Tensor):
                return False
            states = [opt.state.get(p) for p in params]
            if any(not s or "exp_avg" not in s or not isinstance(s.get("step"), torch.Tensor) for s in states) \
                    or any(p.grad.is_sparse for p in params):
                return False
            if len({(p.device, p.dtype) for p in params}) > 1:
                return False
            work.append((group, params, states))
        for group, params, states in work:
            if self.native is not None and self.native.adam(group, params, states):
                continue
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            _fused_adam(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                        [s["exp_avg_sq"] for s in states], steps, group)
        self.direct_calls += 1
        return True

    @torch.no_grad()
    def __call__(self) -> None:
        if not (self.covered and self._direct()):
            if self.native is not None:
                self.native.materialize_grads()
            self.opt.step()
