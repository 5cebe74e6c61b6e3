"""Exploring the latent space of a trained model: interpolation, traversal and condition transfer.

- :func:`interpolate_inputs`: encode two inputs (each with its own condition), walk between their
  posterior means, linearly or along the great circle (spherical, White 2016), and decode every step.
- :func:`interpolate_conditions`: keep the code z and move the condition from one value to another.
- :func:`traverse`: change one latent dimension at a time over a range (in prior standard deviations),
  the others fixed; dimensions ordered by their KL averaged over data (the beta-VAE view).
- :func:`transfer`: encode with the input's own condition, decode with target conditions
  (the "analogy" view: the same style, another class).

Each returns a named result in data units; ``write_*`` turns it into a picture (images, signals) or a
``.csv`` / ``.npz`` file (any data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..conditions import parse_assignments
from ..errors import CvaeError
from ..models import CVAE
from ..plots import save_image_grid, save_signals
from .io import write_array_output

METHODS = ("linear", "spherical", "both")


# -- paths in latent space ------------------------------------------------------------------------

def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation: z0, z1 (R, D), t (S,) -> (R, S, D)."""
    t = t.to(z0)[None, :, None]
    return (1 - t) * z0[:, None] + t * z1[:, None]


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation along the great circle from z0 to z1 (White, 2016): (R, D) -> (R, S, D).

    Where the two codes point the same way (angle ~ 0) it falls back to linear interpolation.
    """
    t = t.to(z0)[None, :, None]
    cos = torch.nn.functional.cosine_similarity(z0, z1, dim=-1).clamp(-1 + eps, 1 - eps)
    omega = torch.arccos(cos)[:, None, None]  # (R, 1, 1)
    so = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) / so) * z0[:, None] + (torch.sin(t * omega) / so) * z1[:, None]
    straight = (omega.abs() < 1e-4).expand_as(out)
    return torch.where(straight, lerp(z0, z1, t[0, :, 0]), out)


def _steps(steps: int) -> torch.Tensor:
    if steps < 2:
        raise CvaeError(f"--steps must be at least 2, got {steps}")
    return torch.linspace(0.0, 1.0, steps)


def _c(model: CVAE, y) -> torch.Tensor | None:
    """Raw codes (N, A) -> encoded condition vectors on the model's device (None for a plain VAE)."""
    if not model.schema or y is None:
        return None
    return model.condition_codes(y)


@torch.no_grad()
def _decode(model: CVAE, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """The mean of p(x | z, c) in data units; z (..., D) with c broadcastable to (..., cond_dim)."""
    lead = z.shape[:-1]
    zf = z.reshape(-1, z.shape[-1]).to(model.device)
    cf = None if c is None else c.expand(*lead, c.shape[-1]).reshape(-1, c.shape[-1]).to(model.device)
    x = model.to_data_units(model.p_x(zf, cf).mean)
    return x.reshape(*lead, *x.shape[1:]).cpu()


def _named(i) -> str:
    """An input's label in pictures and tables: ``#7`` for a row number or a file's id, and a description
    such as ``line 3`` or ``the string`` as it is (it read ``#the string``)."""
    return str(i) if isinstance(i, str) and " " in i else f"#{i}"


def _describe(model: CVAE, y_row) -> str:
    return model.schema.describe(y_row) if model.schema and y_row is not None else ""


# -- interpolation ------------------------------------------------------------------------------

@dataclass
class Interpolation:
    """Decoded steps of latent paths: row r walks from its start (t=0) to its end (t=1)."""

    x: torch.Tensor  # (R, S, *data_shape) in data units
    z: torch.Tensor  # (R, S, D)
    t: torch.Tensor  # (S,)
    row_labels: list[str]
    title: str
    starts: list[str]  # what each row starts from (an input id or a condition)
    ends: list[str]


@torch.no_grad()
def interpolate_inputs(model: CVAE, x_from, x_to, *, y_from=None, y_to=None, condition=None, steps: int = 10,
                       method: str = "linear", ids_from: Sequence | None = None,
                       ids_to: Sequence | None = None) -> Interpolation:
    """Walk from each input of ``x_from`` to the matching input of ``x_to`` in latent space.

    Parameters
    ----------
    x_from, x_to
        (R, *data_shape) inputs in data units; row r of ``x_from`` is paired with row r of ``x_to``.
    y_from, y_to
        Their raw condition codes (R, A), needed by a conditional model. Each input is encoded with
        its own condition; the decoder's condition moves linearly from one to the other unless
        ``condition`` fixes it (e.g. ``"label=5"``).
    method
        ``"linear"``, ``"spherical"`` or ``"both"`` (two rows per pair, linear first).
    """
    if method not in METHODS:
        raise CvaeError(f"unknown interpolation method {method!r}; choose one of {', '.join(METHODS)}")
    x_from, x_to = torch.as_tensor(x_from), torch.as_tensor(x_to)
    if len(x_from) != len(x_to) or len(x_from) == 0:
        raise CvaeError(f"interpolation needs as many start as end inputs (got {len(x_from)} and {len(x_to)})")
    r = len(x_from)
    if model.schema and (y_from is None or y_to is None):
        raise CvaeError("this conditional model needs the inputs' conditions to encode them; pass --condition")
    t = _steps(steps)
    z0 = model.encode(x_from, y_from).mu.cpu()
    z1 = model.encode(x_to, y_to).mu.cpu()
    if not model.schema:
        c = None
    elif condition not in (None, ""):
        c = _c(model, model.schema.parse(condition, r))[:, None].cpu()  # (R, 1, cd)
    else:
        c0, c1 = _c(model, y_from).cpu(), _c(model, y_to).cpu()
        c = lerp(c0, c1, t)  # (R, S, cd): the condition moves with the code
    ids_from = list(ids_from) if ids_from is not None else list(range(r))
    ids_to = list(ids_to) if ids_to is not None else list(range(r, 2 * r))
    starts = [_named(ids_from[i]) + (f" ({_describe(model, y_from[i])})" if model.schema else "") for i in range(r)]
    ends = [_named(ids_to[i]) + (f" ({_describe(model, y_to[i])})" if model.schema else "") for i in range(r)]
    methods = ["linear", "spherical"] if method == "both" else [method]
    zs, xs, labels, s_out, e_out = [], [], [], [], []
    paths = {"linear": lerp(z0, z1, t), "spherical": slerp(z0, z1, t)}
    decoded = {m: _decode(model, paths[m], c) for m in methods}
    for i in range(r):
        for m in methods:
            zs.append(paths[m][i])
            xs.append(decoded[m][i])
            labels.append(f"{_named(ids_from[i])}→{_named(ids_to[i])}" + (f" {m[:3]}." if len(methods) > 1 else ""))
            s_out.append(starts[i])
            e_out.append(ends[i])
    name = "linear and spherical" if method == "both" else method
    title = f"{name} interpolation" + (f", decoded with {condition}" if condition else "")
    return Interpolation(torch.stack(xs), torch.stack(zs), t, labels, title, s_out, e_out)


def _endpoint_codes(model: CVAE, spec_from, spec_to) -> tuple[torch.Tensor, torch.Tensor]:
    """Two condition specs -> raw codes (1, A) each; an attribute named at one end only holds at both."""
    def as_dict(spec):
        if isinstance(spec, str):
            return parse_assignments(spec)
        if isinstance(spec, Mapping):
            return dict(spec)
        raise CvaeError(f"cannot read the condition {spec!r}; write e.g. label=3")

    a, b = as_dict(spec_from), as_dict(spec_to)
    if not a or not b:
        raise CvaeError("interpolating between conditions needs both ends, e.g. --from label=3 --to label=8")
    return model.schema.parse({**b, **a}, 1), model.schema.parse({**a, **b}, 1)


@torch.no_grad()
def interpolate_conditions(model: CVAE, condition_from, condition_to, *, steps: int = 10, n: int = 4,
                           x=None, y=None, ids: Sequence | None = None, seed: int = 0) -> Interpolation:
    """Keep the code z and move the condition from ``condition_from`` to ``condition_to``.

    The codes are the posterior means of the inputs ``x`` (encoded with their conditions ``y``) when
    given, else ``n`` draws in the prior's own units: the same standard-normal draw eps at every
    step, z = centre(c) + spread(c) * eps, with the centre and spread that the prior defines
    (``Prior.spread``: its mean and standard deviation), as the condition moves. The condition
    vector moves linearly (one-hot blocks blend).
    """
    if not model.schema:
        raise CvaeError("this model is a plain VAE (no condition); interpolate between two inputs instead")
    ya, yb = _endpoint_codes(model, condition_from, condition_to)
    t = _steps(steps)
    c = lerp(_c(model, ya).cpu(), _c(model, yb).cpu(), t)[0]  # (S, cd)
    if x is not None:
        if y is None:
            raise CvaeError("the inputs' conditions are needed to encode them; pass --condition")
        z0 = model.encode(x, y).mu.cpu()  # (R, D)
        z = z0[:, None].expand(-1, len(t), -1)
        ids = list(ids) if ids is not None else list(range(len(z0)))
        labels = [_named(i) for i in ids]
    else:
        if n < 1:
            raise CvaeError(f"--n must be at least 1, got {n}")
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn((n, model.config.latent_dim), generator=g)
        centre, spread = model.prior.spread(c.to(model.device), len(t))  # (S, D) each
        z = centre.cpu()[None] + spread.cpu()[None] * eps[:, None]
        labels = [f"z{i}" for i in range(n)]
    xs = _decode(model, z, c[None])
    a, b = model.schema.describe(ya[0]), model.schema.describe(yb[0])
    return Interpolation(xs, z, t, labels, f"{a} → {b}, z held", [a] * len(xs), [b] * len(xs))


def write_interpolation(path: str | Path, model: CVAE, result: Interpolation) -> Path:
    """A ``.png`` strip (images: one row per path; signals: the steps overlaid, dark to light) or a
    ``.csv`` / ``.npz`` with columns row, step, t, start, end and the decoded features."""
    path = Path(path)
    r, s = result.x.shape[:2]
    shape = result.x.shape[2:]
    if path.suffix.lower() == ".png":
        cols = [f"{v:.2g}" for v in result.t.tolist()]
        if len(shape) == 3:
            return save_image_grid(path, result.x.reshape(r * s, *shape), s, row_labels=result.row_labels,
                                   col_labels=cols, title=result.title)
        if len(shape) == 2:
            return save_signals(path, [row.numpy() for row in result.x], result.row_labels,
                                title=result.title + " (dark: start, light: end)", cmap="viridis")
        raise CvaeError("a table's interpolation is written as .csv or .npz, not .png")
    extra = {
        "row": np.repeat(np.arange(r), s), "step": np.tile(np.arange(s), r), "t": np.tile(result.t.numpy(), r),
        "start": np.repeat(np.array(result.starts), s), "end": np.repeat(np.array(result.ends), s),
    }
    if path.suffix.lower() == ".npz":
        extra["z"] = result.z.reshape(r * s, -1).numpy()
    return write_array_output(path, model, result.x.reshape(r * s, *shape), None, extra=extra)


# -- traversal ------------------------------------------------------------------------------------

@torch.no_grad()
def kl_per_dimension(model: CVAE, x, y=None, *, batch_size: int = 500) -> torch.Tensor:
    """KL(q(z_d | x, c) || p(z_d | c)) per latent dimension, averaged over the examples: shape (D,)."""
    x = torch.as_tensor(x)
    if len(x) == 0:
        raise CvaeError("no examples to measure the KL per dimension on")
    if model.schema and y is None:
        raise CvaeError("the examples' conditions are needed to measure the KL of a conditional model")
    total = torch.zeros(model.config.latent_dim, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)  # the draws of a prior without a per-dimension closed form
    for i in range(0, len(x), batch_size):
        yb = None if y is None else y[i:i + batch_size]
        if hasattr(model, "sequential_kl"):  # a hierarchy: each group's KL on one drawn path above it
            xb = model.to_model_units(x[i:i + batch_size])
            total += model.sequential_kl(xb, _c(model, yb) if model.schema else None, g).double().sum(0).cpu()
            continue
        qz = model.encode(x[i:i + batch_size], yb)
        z = qz.mu + qz.std * torch.randn(qz.mu.shape, generator=g).to(qz.mu.device)
        total += model.prior.kl_per_dim(qz, z, _c(model, yb) if model.schema else None).double().sum(0).cpu()
    return (total / len(x)).float()


@dataclass
class Traversal:
    """Decoded traversals: ``x[i, b, s]`` sets dimension ``dims[i]`` of base code ``b`` to ``values[s]``."""

    x: torch.Tensor  # (len(dims), B, S, *data_shape) in data units
    dims: list[int]  # the traversed dimensions, highest KL first
    kl: torch.Tensor  # (D,) KL per dimension averaged over the data (all dimensions)
    values: torch.Tensor  # (S,) in prior standard deviations
    base_labels: list[str]


@torch.no_grad()
def traverse(model: CVAE, *, kl: torch.Tensor, dims: Sequence[int] | None = None, top: int = 10,
             low: float = -3.0, high: float = 3.0, steps: int = 9, x=None, y=None, condition=None,
             n: int = 1, ids: Sequence | None = None, seed: int = 0) -> Traversal:
    """Move one latent dimension at a time from ``low`` to ``high`` prior standard deviations.

    ``kl`` is :func:`kl_per_dimension` on the data: the dimensions (``dims``, else the ``top`` ones)
    are shown highest KL first; dimensions with KL near 0 are unused by the model. The base codes are
    the posterior means of the inputs ``x`` (with conditions ``y``), else the prior mean (``n=1``) or
    ``n`` prior draws. Decoding uses ``condition`` when given, else the inputs' own conditions.
    """
    d_all = model.config.latent_dim
    kl = torch.as_tensor(kl, dtype=torch.float32).cpu()
    if dims is None:
        if top < 1:
            raise CvaeError(f"--top must be at least 1, got {top}")
        dims = torch.argsort(kl, descending=True)[:top].tolist()
    else:
        dims = [int(d) for d in dims]
        bad = [d for d in dims if not 0 <= d < d_all]
        if bad:
            raise CvaeError(f"latent dimension(s) {bad} out of range: this model has {d_all} (0 to {d_all - 1})")
        dims = sorted(dict.fromkeys(dims), key=lambda d: -float(kl[d]))
    if steps < 2:
        raise CvaeError(f"--steps must be at least 2, got {steps}")
    if not low < high:
        raise CvaeError(f"--range needs LOW < HIGH, got {low} {high}")
    values = torch.linspace(low, high, steps)
    # base codes and the decoder's condition
    if x is not None:
        if model.schema and y is None and condition in (None, ""):
            raise CvaeError("the inputs' conditions are needed to encode them; pass --condition")
        y_enc = y if y is not None else model.schema.parse(condition, len(x)) if model.schema else None
        base = model.encode(x, y_enc).mu.cpu()
        y_dec = model.schema.parse(condition, len(x)) if model.schema and condition not in (None, "") else y_enc
        ids = list(ids) if ids is not None else list(range(len(base)))
        labels = [_named(i) for i in ids]
    else:
        if n < 1:
            raise CvaeError(f"--n must be at least 1, got {n}")
        y_dec = model.schema.parse(condition, n) if model.schema else None
        base = torch.zeros((n, d_all)) if n == 1 else torch.randn((n, d_all), generator=torch.Generator().manual_seed(seed))
        labels = ["prior mean"] if n == 1 else [f"z{i}" for i in range(n)]
    c = _c(model, y_dec)
    mu_p, sd_p = (t.cpu() for t in model.prior.spread(c, len(base)))  # the prior's centre and spread
    if x is None:
        base = mu_p + sd_p * base  # prior mean / draws in the prior's own units
    b = len(base)
    z = base[None, :, None].repeat(len(dims), 1, steps, 1)  # (K, B, S, D)
    for i, d in enumerate(dims):
        z[i, :, :, d] = mu_p[:, d, None] + sd_p[:, d, None] * values[None]
    if model.schema:
        labels = [f"{lab} ({_describe(model, y_dec[j])})" for j, lab in enumerate(labels)]
    xs = _decode(model, z, None if c is None else c.cpu()[None, :, None])
    return Traversal(xs, dims, kl, values, labels[:b])


@torch.no_grad()
def decode_at(model: CVAE, values: Mapping[int, float], *, condition=None) -> torch.Tensor:
    """Decode one code: the prior's centre for ``condition`` with each dimension ``d`` of ``values``
    moved to ``values[d]`` prior standard deviations, as a traversal does (all of them at once: the
    point that a page's latent sliders show). Returns (1, *data_shape) in data units."""
    d_all = model.config.latent_dim
    bad = [d for d in values if not 0 <= int(d) < d_all]
    if bad:
        raise CvaeError(f"latent dimension(s) {bad} out of range: this model has {d_all} (0 to {d_all - 1})")
    if not all(np.isfinite(float(v)) for v in values.values()):
        raise CvaeError("latent values must be finite numbers (prior standard deviations, e.g. -3 to 3)")
    y = model.schema.parse(condition, 1) if model.schema else None
    if y is None and condition not in (None, "", "none", {}):
        raise CvaeError("this model is a plain VAE (no condition); leave the condition out")
    c = _c(model, y)
    mu_p, sd_p = (t.cpu() for t in model.prior.spread(c, 1))  # (1, D) each
    z = mu_p.clone()
    for d, v in values.items():
        z[0, int(d)] = mu_p[0, int(d)] + sd_p[0, int(d)] * float(v)
    return _decode(model, z, None if c is None else c.cpu())


def write_traversal(path: str | Path, model: CVAE, result: Traversal) -> Path:
    """A ``.png`` grid (one row per dimension and base code, KL in the label) or a ``.csv`` / ``.npz``
    with columns dim, kl, base, value and the decoded features."""
    path = Path(path)
    k, b, s = result.x.shape[:3]
    shape = result.x.shape[3:]
    labels = [f"z{d} (KL {float(result.kl[d]):.2f})" + (f" {result.base_labels[j]}" if b > 1 else "")
              for d in result.dims for j in range(b)]
    title = "one latent at a time" + (f"; {result.base_labels[0]}" if b == 1 else "")
    if path.suffix.lower() == ".png":
        if len(shape) == 3:
            return save_image_grid(path, result.x.reshape(k * b * s, *shape), s, row_labels=labels,
                                   col_labels=[f"{v:+.1f}" for v in result.values.tolist()], title=title)
        if len(shape) == 2:
            return save_signals(path, [row.numpy() for row in result.x.reshape(k * b, s, *shape)], labels,
                                title=f"{title} ({result.values[0]:+.1f} dark to {result.values[-1]:+.1f} light)",
                                cmap="viridis")
        raise CvaeError("a table's traversal is written as .csv or .npz, not .png")
    n = k * b * s
    extra = {
        "dim": np.repeat(np.array(result.dims), b * s),
        "kl": np.repeat(result.kl[result.dims].numpy(), b * s),
        "base": np.tile(np.repeat(np.array(result.base_labels), s), k),
        "value": np.tile(result.values.numpy(), k * b),
    }
    return write_array_output(path, model, result.x.reshape(n, *shape), None, extra=extra)


# -- condition transfer ---------------------------------------------------------------------------

def transfer_targets(model: CVAE, specs: Sequence | None) -> list[dict[str, str]]:
    """Target specs -> a list of {attribute: value}. ``"label=3"``; ``"color=red,size=10"``;
    ``"label=all"`` (every class of that attribute); ``"all"`` or nothing (every class of the first
    categorical attribute)."""
    schema = model.schema
    if not schema:
        raise CvaeError("this model is a plain VAE (no condition): there is no condition to transfer to")
    specs = [s for spec in (specs or ["all"]) for s in (spec.split(";") if isinstance(spec, str) else [spec])]
    out: list[dict[str, str]] = []
    for spec in specs:
        if isinstance(spec, Mapping):
            out.append({k: str(v) for k, v in spec.items()})
            continue
        spec = spec.strip()
        if spec == "all":
            cat = [a for a in schema.attributes if a.kind == "categorical"]
            if not cat:
                raise CvaeError("'all' needs a categorical condition; this model's are all continuous: give values")
            spec = f"{cat[0].name}=all"
        d = parse_assignments(spec)
        every = [k for k, v in d.items() if v == "all"]
        if len(every) > 1:
            raise CvaeError(f"only one attribute may be 'all' in a target, got {', '.join(every)}")
        for k in d:
            schema.attribute(k)  # raises for an unknown name
        if every:
            a = schema.attribute(every[0])
            if a.kind != "categorical":
                raise CvaeError(f"{a.name!r} is continuous; give it values, not 'all'")
            out += [{**d, a.name: cls} for cls in a.classes]
        else:
            out.append(d)
    for d in out:
        for k, v in d.items():
            schema.attribute(k).code(v)  # raises for an unknown value
    return out


@dataclass
class Transfer:
    """``x[i, j]``: input i decoded with target j (its other attributes kept)."""

    x: torch.Tensor  # (N, T, *data_shape) in data units
    inputs: torch.Tensor  # (N, *data_shape)
    y_source: torch.Tensor  # (N, A) the inputs' own conditions
    y_target: torch.Tensor  # (N, T, A) the conditions decoded with
    target_labels: list[str]
    ids: list


@torch.no_grad()
def transfer(model: CVAE, x, y_source, targets: Sequence | None = None, *, ids: Sequence | None = None) -> Transfer:
    """Encode each input with its own condition, decode the posterior mean with each target condition.

    A target names only the attributes to change (``"label=3"``); the others keep the input's value.
    """
    if not model.schema:
        raise CvaeError("this model is a plain VAE (no condition): there is no condition to transfer to")
    if y_source is None:
        raise CvaeError("the inputs' own conditions are needed to encode them; pass --condition")
    x = torch.as_tensor(x)
    y_source = torch.as_tensor(y_source, dtype=torch.float32)
    goals = transfer_targets(model, targets)
    schema = model.schema
    y_t = y_source[:, None].repeat(1, len(goals), 1).double()  # (N, T, A); float64: a far target is refused, not overflowed
    for j, goal in enumerate(goals):
        for name, value in goal.items():
            y_t[:, j, schema.names.index(name)] = schema.attribute(name).code(value)
    z = model.encode(x, y_source).mu.cpu()  # (N, D)
    c_t = _c(model, y_t.reshape(-1, y_t.shape[-1])).cpu().reshape(*y_t.shape[:2], -1)
    y_t = y_t.float()
    xs = _decode(model, z[:, None].expand(-1, len(goals), -1), c_t)
    labels = [",".join(f"{k}={v}" for k, v in g.items()) for g in goals]
    return Transfer(xs, x.cpu(), y_source, y_t, labels, list(ids) if ids is not None else list(range(len(x))))


def write_transfer(path: str | Path, model: CVAE, result: Transfer) -> Path:
    """A ``.png`` grid (a row per input: the input, then one column per target) or a ``.csv`` / ``.npz``
    with columns input, target, the decoded features and the target conditions."""
    path = Path(path)
    n, t = result.x.shape[:2]
    shape = result.x.shape[2:]
    rows = [f"{_named(i)} ({model.schema.describe(y)})" for i, y in zip(result.ids, result.y_source)]
    if path.suffix.lower() == ".png":
        if len(shape) == 3:
            grid = torch.cat([result.inputs[:, None], result.x], dim=1).reshape(n * (t + 1), *shape)
            return save_image_grid(path, grid, t + 1, row_labels=rows, col_labels=["input"] + result.target_labels,
                                   title="encoded with its own condition, decoded with each target")
        if len(shape) == 2:
            return save_signals(path, [row.numpy() for row in result.x], rows,
                                title="input (black); targets " + ", ".join(result.target_labels) + " (dark to light)",
                                reference=[result.inputs[i:i + 1].numpy() for i in range(n)], cmap="viridis")
        raise CvaeError("a table's transfer is written as .csv or .npz, not .png")
    extra = {"input": np.repeat(np.array([str(i) for i in result.ids]), t),
             "target": np.tile(np.array(result.target_labels), n)}
    if path.suffix.lower() == ".npz":
        extra["source_x"] = result.inputs.numpy()
    return write_array_output(path, model, result.x.reshape(n * t, *shape), result.y_target.reshape(n * t, -1),
                              extra=extra)
