"""Classify inputs with a trained model: class probabilities per example, written to a CSV file.

A semi-supervised run (``m2``) answers from its classifier q(y | x); a model with one categorical
condition answers by Bayes' rule over the classes (see :meth:`cvae.models.VAEModel.classify`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CvaeError
from ..evaluate import classification_metrics
from ..models import CVAE
from .io import csv_cell, read_inputs, write_csv


@dataclass
class Classification:
    ids: list
    attribute: str
    classes: list[str]
    probs: np.ndarray  # (N, K)
    truth: np.ndarray | None  # (N,) class indices, NaN where unknown; None when the input has no labels

    @property
    def predicted(self) -> list[str]:
        return [self.classes[i] for i in self.probs.argmax(1)]

    def metrics(self) -> dict | None:
        """Error, per-class accuracy and calibration against the input's own labels (None without them)."""
        if self.truth is None or not np.isfinite(self.truth).any():
            return None
        return classification_metrics(self.probs, self.truth, self.classes)


def _attribute(model, attribute: str | None):
    """The categorical condition to classify: ``attribute``, or the first one."""
    blocks = model.schema.categorical_blocks() if model.schema else []
    if not blocks:
        cont = [a.name for a in model.schema.attributes] if model.schema else []
        raise CvaeError("this model has no categorical condition to classify " + (
            f"(its conditions, {', '.join(cont)}, are continuous: classification reads classes)" if cont
            else "(it was trained without labels)"))
    names = [a.name for a, _, _ in blocks]
    if attribute is not None and attribute not in names:
        raise CvaeError(f"{attribute!r} is not a categorical condition of this model; choose one of {', '.join(names)}")
    return next(a for a, _, _ in blocks if attribute in (None, a.name))


def classify_inputs(model: CVAE, source: str, *, attribute: str | None = None, data_dir=None, n: int | None = None,
                    split: str = "test", seed: int = 0) -> Classification:
    """Class probabilities of ``attribute`` (the first categorical condition by default) for every
    example of ``source`` (a named data set's split, .npz/.npy/.csv, image folder or image)."""
    attr = _attribute(model, attribute)
    inputs = read_inputs(model, source, data_dir=data_dir, n=n, split=split, missing_ok=True,  # labels: truth only
                         scored=True)
    if len(inputs.x) == 0:
        raise CvaeError(f"{source} holds no examples to classify")
    probs = model.classify(inputs.x, attr.name, seed=seed).cpu().numpy()
    truth = None
    if inputs.y is not None:
        truth = inputs.y[:, model.schema.names.index(attr.name)].numpy().astype(np.float64)
    return Classification(inputs.ids, attr.name, list(attr.classes), probs, truth)


def classify_strings(model, texts: list[str], *, attribute: str | None = None, names: list | None = None,
                     y=None, where: str = "--data", seed: int = 0) -> Classification:
    """Class probabilities of ``attribute`` for sequences (a sequence run), each identified by the string
    itself: the strings tokenised with the run's vocabulary (an unseen token or a string too long is an
    error that names it by ``where`` and ``names``, "--data, line 7"), then :meth:`classify`; ``y``: their
    raw conditions where known (then the metrics are computed)."""
    from .sequences import token_ids

    attr = _attribute(model, attribute)
    if not texts:
        raise CvaeError("there are no sequences to classify")
    names = list(names) if names is not None else [f"row {i}" for i in range(len(texts))]
    texts, x = token_ids(model, list(texts), names, where)
    probs = model.classify(x, attr.name, seed=seed).cpu().numpy()
    truth = None if y is None else y[:, model.schema.names.index(attr.name)].numpy().astype(np.float64)
    return Classification(list(texts), attr.name, list(attr.classes), probs, truth)


def write_predictions(path: str | Path, result: Classification) -> Path:
    """``.csv``: id, the predicted class, its probability, one probability column per class
    (``p_CLASS``) and the input's own label where it has one; ``.npz``: the same as arrays."""
    path = Path(path)
    if not np.isfinite(result.probs).all():  # checked before anything is written
        raise CvaeError("the class probabilities are not finite (the model's weights are extreme or damaged); "
                        "nothing was written")
    path.parent.mkdir(parents=True, exist_ok=True)
    pred = result.predicted
    truth = None
    if result.truth is not None:
        truth = ["" if not np.isfinite(t) else result.classes[int(t)] for t in result.truth]
    if path.suffix.lower() == ".csv":
        header = ["id", result.attribute, "probability"] + [f"p_{c}" for c in result.classes]
        header += [f"true_{result.attribute}"] if truth is not None else []
        rows = ([csv_cell(i), pred[r], csv_cell(result.probs[r].max())] + [csv_cell(v) for v in result.probs[r]]
                + ([truth[r]] if truth is not None else []) for r, i in enumerate(result.ids))
        write_csv(path, header, rows)
    elif path.suffix.lower() == ".npz":
        extra = {"true": np.array(truth)} if truth is not None else {}
        np.savez_compressed(path, ids=np.array([str(i) for i in result.ids]), probs=result.probs.astype(np.float32),
                            predicted=np.array(pred), classes=np.array(result.classes), **extra)
    else:
        raise CvaeError(f"cannot write {path}: use a .csv or .npz file name")
    return path
