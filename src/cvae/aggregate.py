"""The aggregate posterior, fitted after training: where a trained model's codes actually lie.

A VAE's prior p(z | c) and the codes its encoder gives the data, the aggregate posterior
q(z | c) = E_x q(z | x, c), never match exactly: the prior has regions that no training example
encodes to, and the decoder turns codes from there into blends of classes and smudges. Fitting a
density to the aggregate posterior after training and drawing codes from it instead ("ex-post
density estimation", Ghosh et al. 2020, "From variational to deterministic autoencoders", section 4;
the second stage of Dai & Wipf 2019's two-stage VAE is a learned version of the same idea) gives
samples that are more often the class asked for and closer to the real images. Here the density is
a Gaussian mixture per class (full covariances, at most ``COMPONENTS`` components, fewer for a class
with few examples), fitted by scikit-learn's EM to one draw z ~ q(z | x, c) per training example (up
to 10,000, the same fixed draw as the run's summary: ``cvae.train.summary_examples``), and written next to the weights as
``aggregate.safetensors``. ``cvae sample`` and ``cvae evaluate`` draw from it by default where it
exists (``--codes prior`` draws from the prior); ``temperature`` scales each component's deviations
as it scales the prior's.

Fitted for image runs of the flat-latent model classes (``cvae``, ``m2``) that have no condition or
one categorical condition (a semi-supervised run's unlabelled examples take q(y | x)'s most probable
class, and count where q gives it at least ``CONFIDENCE``); other runs keep the prior (``why_not`` says
why).
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import torch

from .errors import CvaeError

FILE = "aggregate.safetensors"
COMPONENTS = 5
EXAMPLES_PER_COMPONENT = 50  # a class gets one component per this many examples (and per 5 x latent_dim)
# a semi-supervised run's example without its label counts where q(y | x) gives its class at least this:
# measured on 100-label runs (benchmarks/codes.py --confidence), every example at q's most probable class,
# at 0.95 and at 0.99: Fashion-MNIST 78.3%, 82.3%, 84.5% of samples read as their class (the prior's:
# 80.9%), MNIST 97.6%, 98.6%, 98.5%, the Fréchet distance falling with it (56.1, 52.7, 50.5; 35.9, 34.8, 33.6)
CONFIDENCE = 0.99


def why_not(model) -> str | None:
    """None when a fit applies to this model, else why not, in a few words."""
    if not getattr(model, "aggregate_codes", False):
        return f"the {model.name} model draws from its prior"
    if len(tuple(model.config.data_shape)) != 3:
        return "fitted for images only"
    attrs = model.schema.attributes if model.schema else []
    if len(attrs) > 1 or (attrs and attrs[0].kind != "categorical"):
        return "fitted for runs with no condition or one categorical condition"
    return None


def too_few(model) -> str:
    """Why a run got no fit although one applies: no class had enough codes."""
    return (f"no class had the {model.config.latent_dim + 2} codes a covariance needs (a semi-supervised run counts "
            f"its labelled examples and those q(y | x) gives a class at least {CONFIDENCE})")


class AggregatePosterior:
    """A Gaussian mixture per class over the codes: ``weights`` (C, K) (zero rows for a class without
    examples, which then draws from the prior), ``means`` (C, K, D), ``scale_tril`` (C, K, D, D)."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, scale_tril: torch.Tensor,
                 attribute: str | None, classes: list[str], counts: list[int], fingerprint: str | None = None):
        self.weights, self.means, self.scale_tril = weights.float(), means.float(), scale_tril.float()
        self.attribute, self.classes, self.counts = attribute, list(classes), list(counts)
        self.fingerprint = fingerprint  # weights_fingerprint of the model whose codes were fitted

    @property
    def components(self) -> list[int]:
        return [int((w > 0).sum()) for w in self.weights]

    def class_of(self, c: torch.Tensor | None, n: int) -> torch.Tensor:
        """The class number of each row of the encoded conditions ``c`` (as the fit was indexed)."""
        return class_index(c, n, len(self.classes) if self.attribute is not None else 0)

    def fitted(self, index: torch.Tensor) -> torch.Tensor:
        """Whether each row's class has a fit (else the prior draws its code)."""
        return self.weights.sum(1)[index.cpu()] > 0

    def sample(self, index: torch.Tensor, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """One code per row of ``index`` (class numbers, (N,)): a component drawn by its weight, then
        its mean plus ``temperature`` times its Cholesky factor times standard normal noise. Rows of
        classes without a fit get zeros (the caller draws those from the prior)."""
        index = index.long().cpu()
        n, d = len(index), self.means.shape[-1]
        w = self.weights[index]
        have = w.sum(1) > 0
        w = torch.where(have[:, None], w, torch.ones_like(w))
        comp = torch.multinomial(w, 1, generator=generator)[:, 0]
        eps = torch.randn((n, d), generator=generator)
        z = self.means[index, comp] + temperature * (self.scale_tril[index, comp] @ eps[:, :, None])[:, :, 0]
        return torch.where(have[:, None], z, torch.zeros_like(z))

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        return ({"weights": self.weights, "means": self.means, "scale_tril": self.scale_tril},
                {"attribute": json.dumps(self.attribute), "classes": json.dumps(self.classes),
                 "counts": json.dumps(self.counts), **({"model": self.fingerprint} if self.fingerprint else {})})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict, model, where: str) -> AggregatePosterior:
        """Rebuilt from the file's tensors and metadata, each checked against the model: one clear
        error naming the file (`cvae aggregate RUN` refits it) when anything does not fit."""
        hint = "`cvae aggregate RUN` fits it again (or --codes prior samples without it)"
        try:
            attribute = json.loads(metadata["attribute"])
            classes = json.loads(metadata["classes"])
            counts = json.loads(metadata["counts"])
            weights, means, tril = tensors["weights"], tensors["means"], tensors["scale_tril"]
        except (KeyError, TypeError, ValueError) as e:
            raise CvaeError(f"{where} is damaged ({type(e).__name__}: {e}); {hint}") from None
        attrs = model.schema.attributes if model.schema else []
        want_attr = attrs[0].name if attrs else None
        want_classes = list(attrs[0].classes) if attrs else ["all"]
        if attribute != want_attr or classes != want_classes:
            raise CvaeError(f"{where} was fitted for {attribute or 'no condition'} {classes}, but the run's model has "
                            f"{want_attr or 'no condition'} {want_classes}; {hint}")
        c, d = len(want_classes), model.config.latent_dim
        if (weights.dim() != 2 or weights.shape[0] != c or means.shape != (c, weights.shape[1], d)
                or tril.shape != (c, weights.shape[1], d, d) or len(counts) != c):
            raise CvaeError(f"{where} holds arrays of shapes {tuple(weights.shape)}, {tuple(means.shape)}, "
                            f"{tuple(tril.shape)}; expected ({c}, K), ({c}, K, {d}), ({c}, K, {d}, {d}); {hint}")
        finite = all(bool(torch.isfinite(t).all()) for t in (weights, means, tril))
        if not finite or bool((weights < 0).any()):
            raise CvaeError(f"{where} holds NaN, infinite or negative weights; {hint}")
        fingerprint = metadata.get("model")  # files written before it was recorded are taken on trust
        if fingerprint is not None and fingerprint != weights_fingerprint(model):
            raise CvaeError(f"{where} was fitted to other weights than the run's model.safetensors (another run's "
                            f"file, or training went on after the fit); {hint}")
        return cls(weights, means, tril, attribute, classes, counts, fingerprint)


def weights_fingerprint(model) -> str:
    """A digest of the model's weights and buffers (SHA-256 of their bytes, in name order), recorded in
    the fit's file so that a fit is only ever used with the weights whose codes it describes."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def class_index(c: torch.Tensor | None, n: int, classes: int) -> torch.Tensor:
    """Each of the ``n`` rows' class number from the encoded conditions ``c``: the one categorical
    attribute's one-hot block of ``classes`` columns leads the vector (no condition: class 0, "all")."""
    if c is None or not classes:
        return torch.zeros(n, dtype=torch.long)
    return c[:, :classes].argmax(1).cpu()


@torch.no_grad()
def fit(model, x: torch.Tensor, c: torch.Tensor | None, *, seed: int = 0,
        components: int = COMPONENTS, confidence: float = CONFIDENCE) -> AggregatePosterior | None:
    """The fit of the codes of ``x`` (model units) with conditions ``c`` (the encoded condition
    vectors; a semi-supervised model fills a missing label with q(y | x)'s most probable class, and
    leaves the example out where q's probability of it is under ``confidence``). None when no class has
    the latent_dim + 2 codes a covariance needs (the run then samples its prior; ``too_few`` says so)."""
    from sklearn.mixture import GaussianMixture

    if getattr(model, "fills_missing", False) and c is not None:
        # an example without its label takes q(y | x)'s most probable class, and counts only where q is
        # sure of it (CONFIDENCE): a class's codes are not to include those of another one it is taken for
        missing = c.sum(1) == 0
        sure = torch.cat([model.class_logits(x[i:i + 1000])[0].softmax(1).max(1).values
                          for i in range(0, len(x), 1000)]) >= confidence
        c = torch.cat([model.complete(x[i:i + 1000], c[i:i + 1000]) for i in range(0, len(x), 1000)])
        keep = ~missing | sure
        x, c = x[keep], c[keep]
    g = torch.Generator(device=x.device).manual_seed(seed)
    codes = []
    for i in range(0, len(x), 1000):
        q = model.q_z(x[i:i + 1000], c[i:i + 1000] if c is not None else None)
        codes.append((q.mu + q.std * torch.randn(q.mu.shape, generator=g, device=q.mu.device)).float().cpu())
    z = torch.cat(codes).numpy().astype(np.float64)
    attrs = model.schema.attributes if model.schema else []
    index = class_index(c, len(x), len(attrs[0].classes) if attrs else 0).numpy()
    classes = list(attrs[0].classes) if attrs else ["all"]
    d = z.shape[1]
    per = max(EXAMPLES_PER_COMPONENT, 5 * d)
    weights = torch.zeros(len(classes), components)
    means = torch.zeros(len(classes), components, d)
    tril = torch.eye(d).repeat(len(classes), components, 1, 1)
    counts = []
    for k in range(len(classes)):
        zk = z[index == k]
        counts.append(int(len(zk)))
        if len(zk) < d + 2:  # too few for a covariance: this class draws from the prior
            continue
        m = max(1, min(components, len(zk) // per))
        gm = GaussianMixture(m, covariance_type="full", reg_covar=1e-4, random_state=seed, max_iter=200).fit(zk)
        weights[k, :m] = torch.from_numpy(gm.weights_).float()
        means[k, :m] = torch.from_numpy(gm.means_).float()
        tril[k, :m] = torch.linalg.cholesky(torch.from_numpy(gm.covariances_)).float()
    if not bool((weights.sum(1) > 0).any()):
        return None
    if not all(math.isfinite(float(v)) for v in (weights.sum(), means.sum(), tril.sum())):
        raise CvaeError("the codes of the training examples are not finite; the model diverged (its prior still samples)")
    return AggregatePosterior(weights, means, tril, attrs[0].name if attrs else None, classes, counts,
                              weights_fingerprint(model))
