"""Data augmentation: a balanced synthetic data set from a conditional model.

:func:`augment` generates examples for every class of one categorical condition: ``per_class`` of
each, or (with ``balance`` and the real data) as many as each class lacks to reach the largest one.
The codes z come from the prior p(z | c) (new examples), or with ``codes="posterior"`` from the
posterior q(z | x, c) of a real example of the class (variations of the real examples: the choice when
a class has only a handful of examples, too few for the decoder to have learnt what the class alone
means). The other conditions of a synthetic example are copied from a real example of the same class when
the real data are there (so their joint distribution is kept), else drawn from the training
distribution (categorical: uniformly; continuous: Normal with the training mean and spread).
:func:`write_augmented` writes ``.npz``, ``.csv`` (an ``id`` column says real-/synthetic-) or, for
images, an image folder (``OUT/CLASS/*.png``), optionally with the real data merged in.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CvaeError, CvaeWarning
from ..models import CVAE
from .io import Inputs, write_array_output


@dataclass
class Augmented:
    """Examples in data units; ``synthetic`` marks the generated ones (the rest are real)."""

    x: torch.Tensor  # (N, *data_shape)
    y: torch.Tensor  # (N, A) raw condition codes
    synthetic: np.ndarray  # (N,) bool
    ids: list
    attribute: str  # the condition balanced over
    generated: dict[str, int]  # synthetic examples per class
    real: dict[str, int]  # real examples per class (empty without real data)


def _attribute(model: CVAE, name: str | None):
    schema = model.schema
    if not schema:
        raise CvaeError("augmentation needs a conditional model (it generates per class); "
                        "train one with a categorical --condition such as label")
    if name is None:
        cat = [a for a in schema.attributes if a.kind == "categorical"]
        if not cat:
            raise CvaeError("augmentation balances a categorical condition; this model's conditions are all continuous")
        return cat[0]
    a = schema.attribute(name)
    if a.kind != "categorical":
        raise CvaeError(f"condition {name!r} is continuous; augmentation balances a categorical one")
    return a


@torch.no_grad()
def augment(model: CVAE, *, per_class: int | None = None, balance: bool = False, attribute: str | None = None,
            real: Inputs | None = None, merge: bool = False, mean: bool | None = None, codes: str = "prior",
            seed: int = 0, batch_size: int = 2000, guidance: float | None = None) -> Augmented:
    """Generate a balanced synthetic data set (and merge it with ``real`` when ``merge``).

    Parameters
    ----------
    per_class
        Synthetic examples per class of ``attribute`` (default: the model's first categorical condition).
    balance
        Instead of ``per_class``: generate, for each class, the difference between the largest class's
        count in ``real`` and its own, so that real + synthetic is balanced.
    mean
        Decode to the mean of p(x | z, c) (default for images: grey levels, as in the data) or draw
        from it (default for tables and signals, whose spread the mean would understate).
    codes
        ``"prior"``: z ~ p(z | c); ``"aggregate"``: z from the run's aggregate posterior fitted after
        training (cvae.aggregate; examples more surely of their class, less varied); ``"posterior"``:
        z ~ q(z | x, c) for a random real example x of the class (needs ``real``).
    guidance
        Classifier-free guidance weight of the decoder (None: the run's default, as ``cvae sample``;
        0: exact draws of p(x | z, c), the most varied; larger: examples that read more surely as
        their class). Runs trained with ``condition_dropout`` only.
    """
    a = _attribute(model, attribute)
    schema = model.schema
    w = model.guidance_weight(guidance)
    j = schema.names.index(a.name)
    if balance == (per_class is not None):
        raise CvaeError("give exactly one of --per-class N (synthetic examples per class) and --balance")
    if per_class is not None and per_class < 1:
        raise CvaeError(f"--per-class must be at least 1, got {per_class}")
    if codes not in ("prior", "aggregate", "posterior"):
        raise CvaeError(f"--codes must be prior, aggregate or posterior, not {codes!r}")
    if codes == "aggregate":
        model.sampling_codes(codes)  # refused (one line) for a run without the fit
    if (balance or merge or codes == "posterior") and real is None:
        raise CvaeError("--balance, --merge and --codes posterior need the real data (--data SOURCE, default the run's own)")
    if real is not None and real.y is None:
        raise CvaeError(f"the real data have no condition column {a.name!r}")
    real_codes = real.y[:, j].nan_to_num(-1).long().numpy() if real is not None else None
    # a row lends its other conditions only where every one is known (the class of ``a`` is set below): a row
    # lacking one (an unlabelled/ image, an empty cell) is kept in a merge, never a starting point
    others = [k for k in range(len(schema.attributes)) if k != j]
    usable = ~schema.missing(real.y[:, others]).numpy() if real is not None and others else True
    real_counts = {c: int((real_codes == i).sum()) for i, c in enumerate(a.classes)} if real is not None else {}
    if balance:
        top = max(real_counts.values())
        wanted = {c: top - n for c, n in real_counts.items()}
    else:
        wanted = {c: per_class for c in a.classes}
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows, sources = [], []
    for i, c in enumerate(a.classes):
        m = wanted[c]
        if m <= 0:
            continue
        pool = np.flatnonzero(usable & (real_codes == i)) if real is not None else np.zeros(0, int)
        if codes == "posterior" and not len(pool):
            raise CvaeError(f"--codes posterior starts from real examples, but {a.name}={c} has none")
        if len(pool):
            picked = rng.choice(pool, size=m, replace=True)
            sources.append(torch.from_numpy(picked))
            y = real.y[picked].clone()
        else:
            y = torch.empty((m, len(schema.attributes)))
            for k, b in enumerate(schema.attributes):
                if b.kind == "categorical":
                    y[:, k] = torch.randint(len(b.classes), (m,), generator=g).float()
                else:
                    y[:, k] = b.mean + b.std * torch.randn(m, generator=g)
        y[:, j] = float(i)
        rows.append(y)
    if not rows:
        unlabelled = int(torch.isnan(real.y[:, j]).sum()) if real is not None else 0
        raise CvaeError("nothing to generate: every class already has as many examples as the largest"
                        + (f" ({unlabelled} examples without a label are not counted; --per-class N generates N per "
                           "class)" if unlabelled else ""))
    y_syn = torch.cat(rows)
    if mean is None:
        mean = len(model.config.data_shape) == 3
    if codes == "posterior":
        start = torch.cat(sources)
        parts = []
        for sb, yb in zip(start.split(batch_size), y_syn.split(batch_size)):
            qz = model.encode(real.x[sb], yb)
            z = qz.mu + qz.std * torch.randn(qz.mu.shape, generator=g).to(qz.mu.device)
            parts.append(model.decode(z, yb, mean=mean, guidance=w).cpu())
        x_syn = torch.cat(parts)
    else:
        # exact draws (temperature 1): an augmented set wants the model's whole variety
        x_syn = torch.cat([model.sample(len(yb), yb, mean=mean, generator=g, temperature=1.0,
                                        guidance=w, codes=codes).cpu()
                           for yb in y_syn.split(batch_size)])
    generated = {c: max(0, n) for c, n in wanted.items()}
    syn_ids = [f"synthetic-{i}" for i in range(len(x_syn))]
    if merge:
        x = torch.cat([real.x.cpu(), x_syn])
        y = torch.cat([real.y.cpu(), y_syn])
        synthetic = np.r_[np.zeros(len(real.x), bool), np.ones(len(x_syn), bool)]
        ids = [f"real-{i}" for i in real.ids] + syn_ids
    else:
        x, y, synthetic, ids = x_syn, y_syn, np.ones(len(x_syn), bool), syn_ids
    return Augmented(x, y, synthetic, ids, a.name, generated, real_counts)


def _folder_name(name: str) -> str:
    """A class's folder: its own name where a file system allows it (commas, accents, spaces and other
    scripts kept: the folder's name is the class a run trained on it learns); a path separator or a
    character Windows refuses becomes '-', and a leading '.' (a hidden folder, skipped) '_'."""
    safe = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "-", name).strip()
    return ("_" + safe[1:] if safe.startswith(".") else safe) or "class"


def write_augmented(path: str | Path, model: CVAE, aug: Augmented) -> Path:
    """``.npz`` (x, the conditions by name, ``synthetic``), ``.csv`` (id, features, conditions) or, for
    images, an image folder ``OUT/CLASS/{real,synthetic}-N.png`` that ``cvae train --data OUT`` reads (merged
    real images without a label in ``OUT/unlabelled/``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return write_array_output(path, model, aug.x, aug.y, extra={"synthetic": aug.synthetic})
    if suffix == ".csv":
        if len(model.config.data_shape) == 3:
            warnings.warn(f"{path}: an image run's .csv holds one column per pixel, and cvae train reads it as a "
                          "table; write .npz or a folder (no suffix) to train an image model on it", CvaeWarning,
                          stacklevel=2)
        return write_array_output(path, model, aug.x, aug.y, extra={"id": np.array(aug.ids)})
    if suffix:
        raise CvaeError(f"cannot write {path}: use .npz, .csv, or a folder name (no suffix) for images")
    if len(model.config.data_shape) != 3:
        raise CvaeError(f"{path}: an image folder is for images; write this data as .npz or .csv")
    if path.exists() and any(path.iterdir()):
        raise CvaeError(f"{path} already exists and is not empty; choose a new folder")
    import shutil
    import tempfile

    from PIL import Image

    from ..data.sources import UNLABELLED_FOLDER

    a = model.schema.attribute(aug.attribute)
    j = model.schema.names.index(a.name)
    images = (aug.x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    codes = aug.y[:, j].numpy()
    # written into a folder of its own beside OUT, renamed to OUT when complete: a failure leaves no half
    path.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    folders = [_folder_name(c) for c in a.classes]
    if len(set(folders)) < len(folders):
        raise CvaeError(f"the classes of {a.name!r} ({', '.join(a.classes)}) would share folder names "
                        f"({', '.join(folders)}); write .npz or .csv instead")
    renamed = [f"{c!r} -> {f!r}" for c, f in zip(a.classes, folders) if c != f]
    if renamed:
        warnings.warn(f"{len(renamed)} class name(s) cannot be folder names as they are: {', '.join(renamed[:5])}; a run "
                      "trained on the folder learns these names (write .npz or .csv to keep them)", CvaeWarning,
                      stacklevel=2)
    try:
        for cls in a.classes:
            (part / _folder_name(cls)).mkdir()
        for i, (img, code) in enumerate(zip(images, codes)):
            arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            name = f"{'synthetic' if aug.synthetic[i] else 'real'}-{i:06d}.png"
            # a merged real image without a label goes where the folder reader looks for those
            folder = _folder_name(a.classes[int(code)]) if np.isfinite(code) else UNLABELLED_FOLDER
            (part / folder).mkdir(exist_ok=True)
            Image.fromarray(arr).save(part / folder / name)
        if path.exists():
            path.rmdir()  # empty (checked above)
        part.rename(path)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return path
