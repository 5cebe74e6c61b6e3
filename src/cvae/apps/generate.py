"""Generate for chosen conditions; reconstruct given inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import CvaeError
from ..models import CVAE
from ..plots import input_and_output_rows, save_feature_histograms, save_image_grid, save_signals
from .io import Inputs, conditions_of, read_inputs, write_array_output


def generate(model: CVAE, *, n: int = 64, condition=None, seed: int = 0, mean: bool = True,
             temperature: float | None = None, guidance: float | None = None,
             codes: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` examples (data units, on the CPU) and their raw condition codes (N, A), or None for a
    plain VAE. A categorical condition left out cycles through its classes; the same ``seed`` gives
    the same examples; ``guidance`` is the classifier-free guidance weight (None: the run's); ``codes``
    prior or aggregate (None: the run's fitted aggregate posterior where it has one)."""
    if n < 1:
        raise CvaeError(f"--n must be at least 1, got {n}")
    y = model.schema.parse(condition, n) if model.schema else None
    if y is None and condition not in (None, "", "none", {}):
        raise CvaeError("this model is a plain VAE (no condition); leave --condition out")
    g = torch.Generator().manual_seed(seed)
    return model.sample(n, y, mean=mean, generator=g, temperature=temperature, guidance=guidance,
                        codes=codes).cpu(), y


def sample_to_file(model: CVAE, out: str | Path, *, n: int = 64, condition=None, seed: int = 0,
                   mean: bool = True, temperature: float | None = None, guidance: float | None = None,
                   codes: str | None = None) -> Path:
    """Generate ``n`` examples (cycling through the classes when a categorical condition is left out)
    and write a ``.png`` grid, an ``.npz`` (``x`` plus conditions) or a ``.csv`` table."""
    out = Path(out)
    schema = model.schema
    x, y = generate(model, n=n, condition=condition, seed=seed, mean=mean, temperature=temperature, guidance=guidance,
                    codes=codes)
    if out.suffix.lower() == ".png":
        kind = len(model.config.data_shape)
        labels = [schema.describe(r) for r in y] if y is not None else None
        if kind == 3:
            if labels and len(set(labels)) > 1:  # one condition a row, labelled: never a row of two classes
                cells, rows, ncol = _rows_by_condition(labels)
                return save_image_grid(out, torch.cat([x, torch.ones_like(x[:1])])[cells], ncol, row_labels=rows)
            return save_image_grid(out, x, _row_length(labels, n), title=labels[0] if labels else None)
        if kind == 2:
            if labels and len(set(labels)) > 1:  # one panel per condition, in the order they were generated
                order = list(dict.fromkeys(labels))
                panels = [x[[i for i, lab in enumerate(labels) if lab == want]].numpy() for want in order]
                return save_signals(out, panels, row_labels=order)
            return save_signals(out, [x.numpy()], title=labels[0] if labels else None)
        asked = (labels[0] if len(set(labels)) == 1 else f"{len(set(labels))} conditions") if labels else None
        return save_feature_histograms(out, x.numpy(), None, model.run_config.get("data", {}).get("features", []),
                                       title=f"{len(x)} generated row{'s' * (len(x) != 1)}" + (f": {asked}" if asked else ""))
    return write_array_output(out, model, x, y)


def _rows_by_condition(labels: list[str], most: int = 16) -> tuple[torch.Tensor, list[str], int]:
    """A grid of the samples one condition a row (up to ``most`` a row, a condition's further samples on
    rows below it): the sample index of each cell (-1: a blank cell), the row labels ('' under the first
    row of a condition) and the row length."""
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    ncol = min(most, max(len(v) for v in groups.values()))
    cells, rows = [], []
    for lab, idx in groups.items():
        for r in range(0, len(idx), ncol):
            chunk = idx[r:r + ncol]
            cells += chunk + [-1] * (ncol - len(chunk))
            rows.append(lab if r == 0 else "")
    return torch.tensor(cells), rows, ncol


def _row_length(labels, n: int) -> int:
    """Samples of one condition on one row when the conditions come in equal runs; else 8 a row."""
    if labels and len(set(labels)) > 1:
        run = 1
        while run < len(labels) and labels[run] == labels[0]:
            run += 1
        if n % run == 0 and all(labels[i] == labels[i - i % run] for i in range(n)) and run <= 16:
            return run
    return min(8, n) if n < 64 else int(n**0.5 + 0.999)


def reconstruct_inputs(model: CVAE, inputs: Inputs, *, condition=None, source: str = "the input",
                       own_first: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reconstructions of ``inputs`` (data units, on the CPU), each encoded and decoded with its own
    condition or with ``condition`` when given (``own_first``: only where an input has none, as the web
    API's field is for); returns them with the raw condition codes used."""
    y = conditions_of(model, inputs, condition, source=source, own_first=own_first)
    return model.reconstruct(inputs.x, y).cpu(), y


def reconstruct_file(model: CVAE, source: str, out: str | Path, *, condition=None, n: int | None = None,
                     data_dir=None) -> Path:
    """Reconstruct the examples of ``source`` and write a picture (inputs above reconstructions) or
    an ``.npz`` / ``.csv`` of the reconstructions."""
    out = Path(out)
    inputs = read_inputs(model, source, data_dir=data_dir,
                         n=n if n is not None else (16 if out.suffix.lower() == ".png" else None))
    rec, y = reconstruct_inputs(model, inputs, condition=condition, source=source)
    if out.suffix.lower() == ".png":
        kind = len(model.config.data_shape)
        if kind == 3:
            pairs, k = input_and_output_rows(inputs.x, rec)  # every input (the last row filled with blanks)
            return save_image_grid(out, pairs, k, row_labels=["input", "recon."] * (len(pairs) // (2 * k)))
        if kind == 2:
            return save_signals(out, [rec[i:i + 1].numpy() for i in range(min(4, len(rec)))],
                                reference=[inputs.x[i:i + 1].numpy() for i in range(min(4, len(rec)))],
                                title="input (black) and reconstruction")
        raise CvaeError("a table's reconstructions are written as .csv or .npz, not .png")
    ids = np.array([str(i) for i in inputs.ids])  # the inputs' own ids (an id column), else row numbers: to join back
    extra = {"input": inputs.x.numpy(), "ids": ids} if out.suffix.lower() == ".npz" else {"id": ids}
    return write_array_output(out, model, rec, y, extra=extra)
