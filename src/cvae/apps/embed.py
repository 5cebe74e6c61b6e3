"""Latent export: the posterior q(z | x, c) of every example, for downstream tools.

:func:`embed` encodes examples (each with its own condition) and returns their posterior means and
variances with ids and conditions; :func:`write_embedding` writes them as ``.csv`` (columns ``id``,
the conditions, ``mu_0..``, ``var_0..``) or ``.npz``; :func:`save_embedding_map` draws the 2-D map
(the latent itself when 2-D, else its first two principal components) coloured by any column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CvaeError
from ..models import CVAE
from ..plots import save_latent_map
from .io import Inputs, conditions_of, csv_cell, read_inputs, write_csv


@dataclass
class Embedding:
    """Posterior means and variances per example, with what identifies and describes each one."""

    ids: list
    mu: np.ndarray  # (N, D)
    var: np.ndarray  # (N, D)
    conditions: dict[str, np.ndarray] = field(default_factory=dict)  # the model's conditions (class names / values)
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # further columns of the data (e.g. a label)

    def __len__(self) -> int:
        return len(self.mu)


@torch.no_grad()
def embed_inputs(model: CVAE, inputs: Inputs, *, condition=None, batch_size: int = 1000,
                 source: str = "the input", latent: str = "all") -> Embedding:
    """Encode ``inputs`` (their own conditions, or ``condition`` for all of them). ``latent``: all
    of the code (a hierarchical model's groups concatenated, coarsest first) or its top group."""
    if latent not in ("all", "top"):
        raise CvaeError(f"latent must be all or top, got {latent!r}")
    start, end = model.latent_groups()[0] if latent == "top" else (0, model.config.latent_dim)
    y = conditions_of(model, inputs, condition, source=source, own_first=True)  # --condition: for rows without one
    mus, variances = [], []
    for i in range(0, len(inputs.x), batch_size):
        qz = model.encode(inputs.x[i:i + batch_size], None if y is None else y[i:i + batch_size])
        mus.append(qz.mu[:, start:end].cpu())
        variances.append(qz.variance[:, start:end].cpu())
    conds = {}
    if y is not None:
        for j, a in enumerate(model.schema.attributes):
            col = y[:, j].numpy()
            conds[a.name] = np.array(["" if np.isnan(v) else a.classes[int(v)] for v in col]) if a.kind == "categorical" else col.astype(np.float64)
    return Embedding(list(inputs.ids), torch.cat(mus).numpy(), torch.cat(variances).numpy(), conds, dict(inputs.columns))


def embed(model: CVAE, source: str, *, data_dir=None, n: int | None = None, split: str = "test", condition=None,
          columns=(), latent: str = "all") -> Embedding:
    """Encode the examples of ``source`` (a named data set's ``split``, a file or an image folder).

    ``columns`` names further columns of the data to carry along (e.g. ``["label"]`` for a plain VAE,
    to colour its map by the digit).
    """
    inputs = read_inputs(model, source, data_dir=data_dir, n=n, split=split, columns=columns)
    return embed_inputs(model, inputs, condition=condition, source=source, latent=latent)


def write_embedding(path: str | Path, emb: Embedding) -> Path:
    """``.csv``: id, the conditions and columns, mu_0..mu_{D-1}, var_0..var_{D-1}; ``.npz``: arrays
    ``ids``, ``mu``, ``var`` and one per condition / column."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    named = {**emb.columns, **emb.conditions}
    d = emb.mu.shape[1]
    if path.suffix.lower() == ".npz":
        np.savez_compressed(path, ids=np.array([str(i) for i in emb.ids]), mu=emb.mu.astype(np.float32),
                            var=emb.var.astype(np.float32), **{k: np.asarray(v) for k, v in named.items()})
    elif path.suffix.lower() == ".csv":
        write_csv(path, ["id", *named, *(f"mu_{j}" for j in range(d)), *(f"var_{j}" for j in range(d))],
                  ([emb.ids[i], *(csv_cell(v[i]) for v in named.values()),
                    *(f"{v:.6g}" for v in emb.mu[i]), *(f"{v:.6g}" for v in emb.var[i])] for i in range(len(emb))))
    else:
        raise CvaeError(f"cannot write {path}: latents are written as .csv or .npz (and a map as --map FILE.png)")
    return path


def save_embedding_map(path: str | Path, emb: Embedding, color_by: str | None = None, *,
                       title: str = "posterior means") -> Path:
    """The 2-D latent map coloured by ``color_by`` (a condition or carried column; default: the first
    categorical one there is). Categories get a legend, numbers a colour bar."""
    named = {**emb.columns, **emb.conditions}
    if color_by is None:
        color_by = next((k for k, v in named.items() if np.asarray(v).dtype.kind in "USO"), None)
    if color_by is None and named:
        color_by = next(iter(named))
    if color_by is not None and color_by not in named:
        have = ", ".join(named) or "none (pass --color-by with a column of the data, e.g. label)"
        raise CvaeError(f"cannot colour by {color_by!r}: the examples carry {have}")
    labels = classes = None
    if color_by is not None:
        v = np.asarray(named[color_by])
        if v.dtype.kind in "iufb" and len(np.unique(v)) <= 20 and np.all(v == np.round(v)):
            v = np.array([str(int(x)) for x in v])  # few whole numbers: categories
        if v.dtype.kind in "USO":
            classes = sorted(set(v.tolist()), key=_natural)
            lookup = {c: i for i, c in enumerate(classes)}
            labels = np.array([lookup[s] for s in v.tolist()])
        else:
            labels = v.astype(np.float64)
        title += f", coloured by {color_by}"
    return save_latent_map(path, emb.mu, labels, classes, title=title)


def _natural(s: str):
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)
