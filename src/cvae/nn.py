"""Networks: they map tensors to distribution parameters and know nothing of probability.

Two families, looked up by name in :data:`ENCODERS` / :data:`DECODERS`:

- ``mlp``: fully connected, for any data shape (flattened); the condition vector is concatenated at
  layer ``cond_at`` (0 = with the input, 1 = after the first hidden layer as in the textbook CVAE,
  -1 = at the input of every layer).
- ``conv``: strided convolutions for images ``(C, H, W)`` or 1-D signals ``(C, L)`` of any size,
  followed by fully connected layers; the condition joins the flattened features (encoder) or the
  latent code (decoder). The decoder mirrors the encoder and reproduces the exact input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .errors import CvaeError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise CvaeError(
            f"unknown activation {name!r}; choose one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None


class MLP(nn.Module):
    """Linear layers ``in_dim -> widths... -> out_dim`` with an activation between them.

    When ``cond_dim > 0`` the condition vector is concatenated to the input of layer ``cond_at``,
    or of every layer when ``cond_at`` is -1.
    """

    def __init__(
        self,
        in_dim: int,
        widths: Sequence[int],
        out_dim: int,
        *,
        cond_dim: int = 0,
        cond_at: int = 0,
        act: str = "relu",
    ):
        super().__init__()
        dims = [in_dim, *widths, out_dim]
        if not -1 <= cond_at < len(dims) - 1:
            raise CvaeError(
                f"condition_at={cond_at} is out of range: this network has {len(dims) - 1} layers "
                f"(use 0 to {len(dims) - 2}, or -1 for every layer)"
            )
        self.cond_dim, self.cond_at = cond_dim, cond_at
        self.joins = [bool(cond_dim) and cond_at in (i, -1) for i in range(len(dims) - 1)]
        self.layers = nn.ModuleList(
            nn.Linear(dims[i] + (cond_dim if self.joins[i] else 0), dims[i + 1])
            for i in range(len(dims) - 1)
        )
        self.act = activation(act)

    def forward(self, h: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if self.joins[i]:
                h = torch.cat([h, c.to(h.dtype)], dim=-1)
            h = layer(h)
            if i < last:
                h = self.act(h)
        return h


def _conv_shapes(spatial: Sequence[int], n_layers: int) -> list[tuple[int, ...]]:
    """Spatial sizes after each stride-2, kernel-3, padding-1 convolution (the input first)."""
    shapes = [tuple(spatial)]
    for _ in range(n_layers):
        shapes.append(tuple((s - 1) // 2 + 1 for s in shapes[-1]))
    return shapes


class MLPEncoder(nn.Module):
    """Flatten ``x`` and map ``(x, c)`` to ``(mu, logvar)`` of q(z | x, c)."""

    def __init__(self, data_shape, latent_dim, *, hidden, cond_dim, cond_at, act, **_):
        super().__init__()
        self.net = MLP(math.prod(data_shape), hidden, 2 * latent_dim, cond_dim=cond_dim, cond_at=cond_at, act=act)

    def forward(self, x, c=None):
        return self.net(x.flatten(1), c).chunk(2, dim=-1)


class MLPDecoder(nn.Module):
    """Map ``(z, c)`` to the decoder's parameters, shaped like the data, (P, *data_shape) when the
    likelihood needs P > 1 parameters per element."""

    def __init__(self, data_shape, latent_dim, *, hidden, cond_dim, cond_at, act, params_per_element=1, **_):
        super().__init__()
        self.out_shape = _out_shape(data_shape, params_per_element)
        widths = list(reversed(hidden))
        cond_at_dec = cond_at if cond_at < 0 else min(cond_at, len(widths))
        self.net = MLP(latent_dim, widths, math.prod(self.out_shape), cond_dim=cond_dim, cond_at=cond_at_dec, act=act)

    def forward(self, z, c=None):
        return self.net(z, c).unflatten(-1, self.out_shape)


def _out_shape(data_shape, params_per_element: int) -> tuple[int, ...]:
    return tuple(data_shape) if params_per_element == 1 else (params_per_element, *data_shape)


def _conv_classes(data_shape):
    if len(data_shape) == 3:
        return nn.Conv2d, nn.ConvTranspose2d
    if len(data_shape) == 2:
        return nn.Conv1d, nn.ConvTranspose1d
    raise CvaeError(
        f"the conv network needs images (C, H, W) or signals (C, L); this data has shape {tuple(data_shape)}. "
        "Use --preset mlp-400 (or --arch mlp) for flat feature vectors."
    )


class ConvEncoder(nn.Module):
    """Strided convolutions (channels...) then dense layers (hidden...) to ``(mu, logvar)``."""

    def __init__(self, data_shape, latent_dim, *, channels, hidden, cond_dim, act, **_):
        super().__init__()
        Conv, _ = _conv_classes(data_shape)
        chans = [data_shape[0], *channels]
        self.convs = nn.ModuleList(Conv(chans[i], chans[i + 1], 3, stride=2, padding=1) for i in range(len(channels)))
        last = _conv_shapes(data_shape[1:], len(channels))[-1]
        self.act = activation(act)
        self.head = MLP(chans[-1] * math.prod(last), hidden, 2 * latent_dim, cond_dim=cond_dim, cond_at=0, act=act)

    def forward(self, x, c=None):
        h = x
        for conv in self.convs:
            h = self.act(conv(h))
        return self.head(h.flatten(1), c).chunk(2, dim=-1)


class ConvDecoder(nn.Module):
    """Dense layers from ``(z, c)``, then transposed convolutions back to exactly ``data_shape``."""

    def __init__(self, data_shape, latent_dim, *, channels, hidden, cond_dim, act, params_per_element=1, **_):
        super().__init__()
        _, ConvT = _conv_classes(data_shape)
        self.out_shape = _out_shape(data_shape, params_per_element)
        shapes = _conv_shapes(data_shape[1:], len(channels))
        chans = [data_shape[0], *channels]
        self.start = (chans[-1], *shapes[-1])
        self.head = MLP(latent_dim, list(reversed(hidden)), math.prod(self.start), cond_dim=cond_dim, cond_at=0, act=act)
        self.deconvs = nn.ModuleList()
        for i in reversed(range(len(channels))):
            # output size = 2 * in - 1 + output_padding; choose the padding that restores shapes[i].
            pad = tuple(o - (2 * s - 1) for o, s in zip(shapes[i], shapes[i + 1]))
            out = chans[i] * (params_per_element if i == 0 else 1)
            self.deconvs.append(ConvT(chans[i + 1], out, 3, stride=2, padding=1, output_padding=pad))
        self.act = activation(act)

    def forward(self, z, c=None):
        h = self.act(self.head(z, c)).unflatten(-1, self.start)
        last = len(self.deconvs) - 1
        for i, deconv in enumerate(self.deconvs):
            h = deconv(h)
            if i < last:
                h = self.act(h)
        return h.reshape(len(h), *self.out_shape)


ENCODERS: dict[str, type[nn.Module]] = {"mlp": MLPEncoder, "conv": ConvEncoder}
DECODERS: dict[str, type[nn.Module]] = {"mlp": MLPDecoder, "conv": ConvDecoder}


class MLPClassifier(nn.Module):
    """Flatten ``x`` and map it to ``n_out`` logits (the q(y | x) of a semi-supervised model)."""

    def __init__(self, data_shape, n_out, *, hidden, act, dropout=0.0, **_):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.net = MLP(math.prod(data_shape), hidden, n_out, act=act)

    def forward(self, x):
        return self.net(self.drop(x.flatten(1)))


class ConvClassifier(nn.Module):
    """Convolutions for images ``(C, H, W)`` or signals ``(C, L)`` of any size, then dense layers to
    ``n_out`` logits. The first convolution keeps the resolution; each further one halves it."""

    def __init__(self, data_shape, n_out, *, channels, hidden, act, dropout=0.0, **_):
        super().__init__()
        Conv, _ = _conv_classes(data_shape)
        chans = [data_shape[0], *channels]
        self.convs = nn.ModuleList(Conv(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1)
                                   for i in range(len(channels)))
        last = _conv_shapes(data_shape[1:], max(0, len(channels) - 1))[-1]
        self.act = activation(act)
        self.drop = nn.Dropout(dropout)
        self.head = MLP(chans[-1] * math.prod(last), hidden, n_out, act=act)

    def forward(self, x):
        h = x
        for conv in self.convs:
            h = self.act(conv(h))
        return self.head(self.drop(h.flatten(1)))


CLASSIFIERS: dict[str, type[nn.Module]] = {"mlp": MLPClassifier, "conv": ConvClassifier}
