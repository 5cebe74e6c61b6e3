"""Anomaly detection: train on normal data only, flag what the model finds unlikely.

:func:`fit_anomaly` keeps the normal rows of a data set (chosen by a label column, or all rows),
trains a model on them with :func:`cvae.train`, scores the run's validation split (normal data the
model did not train on) and sets the threshold that flags the target share of it (the false-positive
rate). The run folder gets ``anomaly.json`` (the detector) and ``anomaly_val_scores.png``.

:func:`score_anomalies` scores new examples: one score per example, higher = more anomalous:

- ``elbo``: the negative ELBO, -E_q[log p(x | z, c)] + KL(q(z | x, c) || p(z | c)), with the
  reconstruction term averaged over ``samples`` draws of z (An & Cho 2015 use the same quantity);
- ``iwae``: the importance-sampled negative log-likelihood -log p(x | c) with ``k`` samples
  (Burda et al. 2015), a tighter estimate of the same thing;
- ``recon``: the squared reconstruction error of the posterior mean, in model units (standardised
  features for tables and signals).

With labels, :func:`anomaly_metrics` gives AUROC, average precision and the confusion matrix.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..conditions import missing_mask, whole_number_text
from ..data.core import read_source
from ..data.sources import TABLE_SUFFIXES, read_csv_table
from ..errors import CvaeError, CvaeWarning
from ..models import CVAE, VAEModel
from ..objectives import iwae_bound
from ..objectives.importance import log_mean_exp
from ..plots import save_score_histogram
from ..runs import load_model, write_json
from .io import conditions_of, read_inputs, write_csv

SCORES = ("elbo", "iwae", "recon")
DETECTOR_FILE = "anomaly.json"
LABEL_NAMES = ("label", "labels", "class", "target", "y", "anomaly", "is_anomaly")


# -- scores -------------------------------------------------------------------------------------

@torch.no_grad()
def _scores_model_units(model: CVAE, x: torch.Tensor, c: torch.Tensor | None, method: str, *, k: int,
                        samples: int, seed: int) -> torch.Tensor:
    """Every example's codes are made from one set of standard normal draws (``seed``'s): an example's
    score does not depend on the other rows of its batch. A hierarchical model's IWAE takes the
    model's own draws."""
    qz = model.q_z(x, c)
    eps = None
    if method == "elbo" or (method == "iwae" and len(model.latent_groups()) == 1):
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn((k if method == "iwae" else samples, 1, qz.mu.shape[-1]), generator=g).to(qz.mu)
    if method == "recon":
        err = (model.p_x(qz.mu, c).mean - x) ** 2
        return err.flatten(1).sum(1)
    if method == "iwae" and eps is None:
        return -iwae_bound(model, x, c, k=k, chunk=min(k, 100))
    if method == "iwae":  # log mean_k p(x, z_k | c) / q(z_k | x, c), 100 draws at a time
        return -log_mean_exp((model.log_weights_at(x, c, qz, qz.mu + qz.std * eps[i:i + 100], torch.float64)
                              for i in range(0, len(eps), 100)), len(eps))
    z = qz.mu + qz.std * eps  # (S, B, D)
    rec = -model.p_x(z, c).log_prob(x).mean(0)  # (B,)
    return rec + model.prior.kl(qz, z, c).mean(0)


def anomaly_scores(model: CVAE, x, y=None, *, method: str = "elbo", k: int = 100, samples: int = 10,
                   batch_size: int | None = None, model_units: bool = False, seed: int = 0) -> np.ndarray:
    """One score per example (higher = more anomalous), shape (N,).

    ``x`` is in data units (as read from a file) unless ``model_units``; ``y`` holds the raw condition
    codes (N, A) for a conditional model. ``k`` is the number of importance samples of ``iwae``,
    ``samples`` the number of draws of z for the reconstruction term of ``elbo``.
    """
    if method not in SCORES:
        raise CvaeError(f"unknown score {method!r}; choose one of {', '.join(SCORES)}")
    if k < 1 or samples < 1:
        raise CvaeError(f"--k and --samples must be at least 1, got {k} and {samples}")
    if model.schema and y is None:
        raise CvaeError("this conditional model needs the examples' conditions to score them")
    x = torch.as_tensor(x, dtype=torch.float32)
    if batch_size is None:
        batch_size = max(1, min(1000, 20000 // (k if method == "iwae" else samples)))
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(model.device)
        xb = xb if model_units else model.to_model_units(xb)
        cb = None
        if model.schema:
            cb = model.schema.encode(torch.as_tensor(y[i:i + batch_size], dtype=torch.float32)).to(model.device)
        # the same draws for every batch (common random numbers): a row's score is the same alone, in its
        # file or beside other rows (per-batch draws moved it by up to a nat, and could flip its flag)
        out.append(_scores_model_units(model, xb, cb, method, k=k, samples=samples, seed=seed).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def anomaly_metrics(is_anomaly, scores, flags) -> dict:
    """AUROC and average precision of the scores, and the confusion matrix of the flags (scikit-learn).

    The confusion matrix is ``[[true normal, false alarm], [missed anomaly, caught anomaly]]``.
    """
    from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

    truth = np.asarray(is_anomaly, bool)
    scores = np.asarray(scores, np.float64)
    flags = np.asarray(flags, bool)
    out = {"n": int(len(truth)), "n_normal": int((~truth).sum()), "n_anomaly": int(truth.sum())}
    if truth.all() or not truth.any():
        out["note"] = "AUROC and average precision need both normal and anomalous examples"
    else:
        out["auroc"] = float(roc_auc_score(truth, scores))
        out["average_precision"] = float(average_precision_score(truth, scores))
    cm = confusion_matrix(truth, flags, labels=[False, True])
    out["confusion_matrix"] = cm.tolist()
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    out["true_positive_rate"] = tp / (tp + fn) if tp + fn else None
    out["false_positive_rate"] = fp / (fp + tn) if fp + tn else None
    out["precision"] = tp / (tp + fp) if tp + fp else None
    return out


# -- the detector -------------------------------------------------------------------------------

@dataclass
class Detector:
    """What ``anomaly.json`` holds: how to score and where the line is."""

    score: str  # elbo | iwae | recon: the score the flags use
    fpr: float  # the target false-positive rate on normal validation data
    thresholds: dict[str, float]  # per score: flag an example when its score is above
    k: int  # importance samples (iwae)
    samples: int  # draws of z for the reconstruction term (elbo)
    source: str  # the data the normal rows came from
    label_column: str | None  # the column that says what is normal (None: every row was normal)
    normal: list[str] | None  # its values that mean normal
    n_train: int
    n_val: int
    val_scores: dict[str, dict] = field(default_factory=dict)  # summary of the validation scores per score

    @property
    def threshold(self) -> float:
        return self.thresholds[self.score]

    def to_dict(self) -> dict:
        return {"format": "cvae-anomaly", **asdict(self), "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict) -> Detector:
        """The detector a dict describes, each value of the type it must have (a hand-edited file's
        ``"k": "100"`` or ``"normal": "10"`` is a TypeError here, not a wrong answer later)."""
        if not isinstance(d, dict):
            raise TypeError(f"it holds a {type(d).__name__}, not an object")
        known = {f for f in cls.__dataclass_fields__}
        out = cls(**{k: v for k, v in d.items() if k in known})

        def number(v, whole=False):
            return (isinstance(v, int) or (not whole and isinstance(v, float))) and not isinstance(v, bool) \
                and math.isfinite(v)

        if out.score not in SCORES or not isinstance(out.thresholds, dict) or out.score not in out.thresholds:
            raise TypeError(f"score {out.score!r} has no threshold")
        bad = [k for k, v in out.thresholds.items() if k not in SCORES or not number(v)]
        if bad:
            raise TypeError(f"the threshold of {bad[0]!r} is {out.thresholds[bad[0]]!r}, not a number")
        for name in ("k", "samples", "n_train", "n_val"):
            if not number(getattr(out, name), whole=True) or getattr(out, name) < (1 if name in ("k", "samples") else 0):
                raise TypeError(f"{name} is {getattr(out, name)!r}, not a whole number")
        if not number(out.fpr) or not 0 < out.fpr < 1:
            raise TypeError(f"fpr is {out.fpr!r}, not a rate between 0 and 1")
        if out.normal is not None and not (isinstance(out.normal, list) and all(isinstance(v, str) for v in out.normal)):
            raise TypeError(f"normal is {out.normal!r}, not a list of label values")
        if out.label_column is not None and not isinstance(out.label_column, str):
            raise TypeError(f"label_column is {out.label_column!r}, not a column name")
        return out


def load_detector(run: str | Path) -> Detector:
    path = Path(run) / DETECTOR_FILE
    if not path.is_file():
        raise CvaeError(f"{run} has no {DETECTOR_FILE}: it is not an anomaly detector. "
                        f"Make one with `cvae anomaly fit --data FILE --out {run}`")
    try:
        return Detector.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise CvaeError(f"{path} is damaged ({e}); fit the detector again") from None


@dataclass
class AnomalyFit:
    run_dir: Path
    model: CVAE
    detector: Detector
    val_scores: dict[str, np.ndarray]  # per score, the validation examples' scores
    summary: dict  # the training run's summary
    pictures: dict[str, Path] = field(default_factory=dict)


def _canon(v) -> str:
    """A label value as text: 1, 1.0 and '1.000e+00' all read '1'."""
    text = str(v.item() if hasattr(v, "item") else v).strip()
    if whole_number_text(text):  # whole numbers exactly (17-digit codes are not floats)
        return str(int(text))
    try:
        f = float(text)
    except ValueError:
        return text
    return str(int(f)) if math.isfinite(f) and f.is_integer() else repr(f)


def _normal_values(normal) -> list[str] | None:
    if normal is None:
        return None
    items = normal.split(",") if isinstance(normal, str) else list(normal)
    values = [_canon(v) for v in items if str(v).strip() != ""]
    if not values:
        raise CvaeError("--normal needs at least one value, e.g. --normal 0")
    return values


def _resolve_label_column(label_column: str | None, columns: list[str], where: str) -> str | None:
    if label_column in (None, "auto"):
        return next((c for c in LABEL_NAMES if c in columns), None)
    if label_column == "none":
        return None
    if label_column == "last":
        if not columns:
            raise CvaeError(f"{where} has no columns to take the last of")
        return columns[-1]
    if label_column not in columns:
        raise CvaeError(f"{where} has no column {label_column!r}; its columns are: {_short(columns)}")
    return label_column


def _short(names: list[str], k: int = 12) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def _normal_mask(values: list[str], normal: list[str] | None, column: str, where: str) -> tuple[np.ndarray, list[str]]:
    counts = Counter(values)
    shown = ", ".join(f"{v} ({n} rows)" for v, n in sorted(counts.items(), key=lambda kv: -kv[1])[:10])
    if normal is None:
        if len(counts) > 1:
            raise CvaeError(f"{where}: column {column!r} has several values: {shown}. Say which are normal with "
                            f"--normal VALUE[,VALUE] (or --label-column none to train on every row)")
        normal = list(counts)
    unknown = [v for v in normal if v not in counts]
    if unknown:
        raise CvaeError(f"{where}: column {column!r} has no value(s) {', '.join(unknown)}; its values: {shown}")
    if len(counts) > 1 and set(counts) <= set(normal):
        warnings.warn(f"--normal names every value of {column!r} ({', '.join(sorted(counts))}): the detector learns all "
                      "of the data as normal; name only the normal value(s), or --label-column none if that is meant",
                      CvaeWarning, stacklevel=2)
    mask = np.array([v in normal for v in values])
    return mask, normal


def _in_users_terms(message: str, target: Path, origin: tuple[str, list[int]] | None) -> str:
    """An error about the normal rows' copy ``target``, told in terms of the user's own file and lines
    (``origin``: that file and the line of each copied row; None for a copy that is not a CSV)."""
    if origin is None:
        return message
    path, lines = origin

    def line(m):
        k = int(m.group(1)) - 2
        return f"{path}, line {lines[k]}" if 0 <= k < len(lines) else m.group(0)

    return re.sub(re.escape(str(target)) + r", line (\d+)", line, message).replace(str(target), path)


def _write_normal_subset(data: str, out: Path, *, label_column: str | None, normal, condition, data_dir,
                         data_layout: str) -> tuple[Path, str | None, list[str] | None, int, tuple | None]:
    """Write the normal rows of ``data`` (without the label column) into the run folder; return the file,
    the label column, the normal values, the number of rows kept and, for a CSV, the user's file and the
    line of each row kept (the copy's line L + 2, after its header, is the user's line lines[L])."""
    normal = _normal_values(normal)
    path = Path(data).expanduser()
    cond_names = [c.split(":")[0].strip() for c in str(condition or "").split(",")
                  if c.strip() and c.strip() != "none"]
    if path.suffix.lower() in TABLE_SUFFIXES and path.is_file():
        header, rows = read_csv_table(path)
        column = _resolve_label_column(label_column, header, str(path))
        if column in cond_names:
            raise CvaeError(f"{column!r} is the label column that says what is normal; it cannot be a condition too")
        if column is None and label_column in (None, "auto") and header == [f"x{i}" for i in range(len(header))]:
            last = {_canon(r[-1]) for r in rows}
            if len(last) <= 20 and all(v.lstrip("-").isdigit() for v in last):
                raise CvaeError(f"{path} has no header line and its last column holds whole numbers "
                                f"({', '.join(sorted(last)[:10])}), like labels. Pass --label-column last (with "
                                "--normal VALUE) if it is the label, or --label-column none to use it as data")
        lines = list(rows.lines)
        if column is None:
            if normal is not None:
                raise CvaeError(f"--normal needs a label column, but {path} has none named {', '.join(LABEL_NAMES)}; "
                                "pass --label-column NAME")
            keep, kept = rows, None
        else:
            j = header.index(column)
            mask, kept = _normal_mask([_canon(r[j]) for r in rows], normal, column, str(path))
            keep = [r for r, m in zip(rows, mask) if m]
            lines = [n for n, m in zip(lines, mask) if m]
            header, keep = [h for i, h in enumerate(header) if i != j], [[v for i, v in enumerate(r) if i != j] for r in keep]
        target = out / "normal_data.csv"
        write_csv(target, header, keep)
        return target, column, kept, len(keep), (str(path), lines)
    raw = read_source(data, data_dir=data_dir, data_layout=data_layout)
    x, columns = raw.splits["train"]
    column = _resolve_label_column(label_column, list(columns), data)
    if column is None:
        if normal is not None:
            raise CvaeError(f"--normal needs a label column, but {data} has none; pass --label-column NAME")
        mask, kept = np.ones(len(x), bool), None
    else:
        vals = columns[column]
        if column in raw.class_names:
            vals = [raw.class_names[column][int(v)] for v in vals]
        mask, kept = _normal_mask([_canon(v) for v in vals], normal, column, data)
    arrays = {}
    for name in cond_names:
        if name not in columns:
            raise CvaeError(f"{data} has no condition column {name!r}; available: {', '.join(columns) or 'none'}")
        v = np.asarray(columns[name])[mask]
        arrays[name] = np.array([raw.class_names[name][int(i)] for i in v]) if name in raw.class_names else v
    xs = np.asarray(x[mask], np.float32)
    as_bytes = np.round(xs * 255.0)
    if raw.unit_range and xs.size and np.array_equal(as_bytes / 255.0, xs.astype(np.float64)):
        xs = as_bytes.astype(np.uint8)  # exact 8-bit images stay exact, at a quarter of the size
    target = out / "normal_data.npz"
    np.savez_compressed(target, x=xs, **arrays)
    return target, column, kept, int(mask.sum()), None


def _summary(v: np.ndarray) -> dict:
    q = np.quantile(v, [0.05, 0.5, 0.95, 0.99]) if len(v) else [float("nan")] * 4
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "q05": float(q[0]), "median": float(q[1]),
            "q95": float(q[2]), "q99": float(q[3])}


def fit_anomaly(data: str, *, out: str | Path, label_column: str | None = "auto", normal=None, fpr: float = 0.05,
                score: str = "elbo", k: int = 100, samples: int = 10, condition: str | None = "none",
                data_dir=None, data_layout: str = "auto", overwrite: bool = False, pictures: bool = True,
                seed: int = 0, **train_settings) -> AnomalyFit:
    """Train an anomaly detector on the normal rows of ``data``.

    Parameters
    ----------
    data
        A named data set (its training split), a ``.csv`` (``data_layout="signal"`` for rows that are
        1-D signals, e.g. heartbeats), a ``.npz`` / ``.npy`` or an image folder.
    label_column, normal
        The column that says what each row is (``"auto"``: the first of label, class, target, ...;
        ``"last"``; ``"none"``) and its value(s) that mean normal (e.g. ``"0"`` or ``["N", "L"]``).
        Without a label column every row is taken as normal.
    fpr
        The target false-positive rate: the threshold is the (1 - fpr) quantile of the scores of
        the run's validation split (normal examples held out from training).
    score, k, samples
        The score the flags use (``elbo``, ``iwae``, ``recon``; thresholds for all three are stored)
        and its sample counts.
    condition
        Condition columns for a conditional detector (default none: a plain VAE).
    train_settings
        Any setting of ``cvae train`` (preset, epochs, latent_dim, batch_size, val_fraction, ...).
    """
    from ..api import train

    if not 0.0 < fpr < 1.0:
        raise CvaeError(f"--fpr must be between 0 and 1 (e.g. 0.05 for 5% false alarms), got {fpr}")
    if score not in SCORES:
        raise CvaeError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    if k < 1 or samples < 1:
        raise CvaeError(f"--k and --samples must be at least 1, got {k} and {samples}")
    if float(train_settings.get("val_fraction", 0.1)) <= 0:
        raise CvaeError("the threshold is set on held-out normal data: --val-fraction must be above 0 (e.g. 0.1)")
    out = Path(out)
    if (out / "config.json").exists() and not overwrite:
        raise CvaeError(f"{out} already holds a run; pass --overwrite to replace it, or choose another --out")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    normal_file = origin = None
    try:
        normal_file, column, kept, n_rows, origin = _write_normal_subset(
            data, out, label_column=label_column, normal=normal, condition=condition, data_dir=data_dir,
            data_layout=data_layout)
        if n_rows < 10:
            raise CvaeError(f"only {n_rows} normal rows in {data}; an anomaly detector needs many more")
        result = train(data=str(normal_file), condition=condition or "none", data_layout=data_layout, out=str(out),
                       overwrite=overwrite, pictures=pictures, seed=seed, **train_settings)
    except CvaeError as e:
        if normal_file is not None and not (out / "config.json").exists():
            normal_file.unlink(missing_ok=True)  # no run was made: the copy of the normal rows goes too
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a folder this call made and nothing was saved in
        raise CvaeError(_in_users_terms(str(e), normal_file, origin)) from None
    model, val = result.model, result.data.val
    if val is None or len(val) == 0:
        raise CvaeError("no validation split to set the threshold on; raise --val-fraction")
    y_val = val.y if model.schema else None
    scores = {m: anomaly_scores(model, val.x, y_val, method=m, k=k, samples=samples, model_units=True, seed=seed)
              for m in SCORES}
    thresholds = {m: float(np.quantile(v, 1.0 - fpr, method="higher")) for m, v in scores.items()}
    detector = Detector(score=score, fpr=fpr, thresholds=thresholds, k=k, samples=samples, source=str(data),
                        label_column=column, normal=kept, n_train=len(result.data.train), n_val=len(val),
                        val_scores={m: _summary(v) for m, v in scores.items()})
    write_json(out / DETECTOR_FILE, detector.to_dict())
    pics = {}
    if pictures:
        pics["val_scores"] = save_score_histogram(
            out / "anomaly_val_scores.png", {"normal (validation)": scores[score]}, thresholds[score],
            title=f"{score} scores of held-out normal data; {(scores[score] > thresholds[score]).mean():.1%} lie "
                  "above the threshold", xlabel=score)
    return AnomalyFit(out, model, detector, scores, result.summary, pics)


# -- scoring ------------------------------------------------------------------------------------

@dataclass
class AnomalyScores:
    ids: list
    scores: np.ndarray  # (N,) higher = more anomalous
    flags: np.ndarray  # (N,) bool: score above the threshold
    score: str
    threshold: float
    labels: list[str] | None = None  # the label column's values, when the data had it
    is_anomaly: np.ndarray | None = None  # (N,) bool, from the labels and the normal values
    metrics: dict | None = None
    labelled: np.ndarray | None = None  # (N,) bool: the row has a label (an empty cell is neither kind)


def _columns_of(source: str, data_dir, layout: str) -> list[str]:
    path = Path(source).expanduser()
    if path.suffix.lower() in TABLE_SUFFIXES and path.is_file():
        return read_csv_table(path)[0]
    if path.is_file() and path.suffix.lower() not in (".npz", ".npy"):
        return []  # a single image
    if path.is_dir():
        return ["label"]  # an image folder: its class folders (read at the run's size by read_inputs)
    return list(read_source(source, data_dir=data_dir, data_layout=layout).columns)


def score_anomalies(run: str | Path | CVAE, source: str, *, data_dir=None, split: str = "test", n: int | None = None,
                    label_column: str | None = None, normal=None, score: str | None = None,
                    condition=None, seed: int = 0) -> AnomalyScores:
    """Score every example of ``source`` (in order) with the detector of ``run``; flag those above its
    threshold. When the data has the detector's label column (or ``label_column``), also say which
    examples are anomalies (label not among the normal values) and measure AUROC, AP and the
    confusion matrix."""
    model = run if isinstance(run, VAEModel) else load_model(run)
    detector = load_detector(model.run_dir if isinstance(run, VAEModel) else run)
    method = score or detector.score
    if method not in detector.thresholds:
        raise CvaeError(f"unknown score {method!r}; choose one of {', '.join(detector.thresholds)}")
    if hasattr(model, "sample_strings"):
        return _score_strings(model, detector, method, source, n=n, condition=condition, seed=seed,
                              label_column=label_column, normal=normal)
    layout = "signal" if model.run_config.get("data", {}).get("kind") == "signal" else "auto"
    available = _columns_of(source, data_dir, layout)
    column = _label_column_of(model, detector, label_column, available, source,
                              set(model.run_config.get("data", {}).get("features") or []))
    inputs = read_inputs(model, source, data_dir=data_dir, n=n, split=split, columns=[column] if column else [],
                         scored=True)
    y = conditions_of(model, inputs, condition, source=source, own_first=True)  # each row scored as itself
    scores = anomaly_scores(model, inputs.x, y, method=method, k=detector.k, samples=detector.samples, seed=seed)
    bad = (~torch.isfinite(torch.as_tensor(scores))).nonzero().flatten().tolist()
    if bad:
        raise CvaeError(f"the {method} score of {len(bad)} input(s) is not finite (first: {inputs.ids[bad[0]]}): "
                        "their values are far outside what the model was trained on; nothing was written")
    threshold = detector.thresholds[method]
    result = AnomalyScores(list(inputs.ids), scores, scores > threshold, method, threshold)
    if column:
        _measure(result, [_canon(v) for v in inputs.columns[column]], column, normal, detector)
    return result


def _label_column_of(model, detector, label_column, available: list[str], source, exclude: set[str]):
    """The column that says which rows are normal: ``label_column`` (checked), the detector's, or one
    named like a label (not one of ``exclude``, the model's inputs); None when there is none."""
    if label_column not in (None, "auto"):
        return _resolve_label_column(label_column, available, source)
    if detector.label_column in available:
        return detector.label_column
    return next((c for c in LABEL_NAMES if c in available and c not in exclude), None)


def _measure(result: AnomalyScores, labels: list[str], column: str, normal, detector) -> None:
    """AUROC, AP and the confusion matrix of ``result`` against the rows' ``labels`` and the normal values."""
    normal_values = _normal_values(normal) or detector.normal
    result.labels = labels
    if normal_values is None:
        result.metrics = {"note": f"the data has labels ({column}) but the normal values are unknown; "
                                  "pass --normal to measure AUROC"}
    else:
        known = result.labelled = ~missing_mask(labels)
        result.is_anomaly = np.array([v not in normal_values for v in labels]) & known
        if not known.any():
            result.metrics = {"note": f"every value of the label column {column} is empty; nothing to measure"}
            return
        result.metrics = anomaly_metrics(result.is_anomaly[known], result.scores[known], result.flags[known])
        result.metrics.update(label_column=column, normal=normal_values)
        if not known.all():  # counted as anomalies before (not among the normal values)
            result.metrics["unlabelled"] = int((~known).sum())


def _score_strings(model, detector, method: str, source: str, *, n: int | None, condition, seed: int,
                   label_column=None, normal=None) -> AnomalyScores:
    """A sequence run's detector on strings (a .txt/.smi file, one per line, a CSV with the run's
    sequence column, or one string), each identified by the string itself; their own condition is
    ``condition`` (else a CSV's columns; molecules: RDKit's when left out). A CSV's label column (as
    for tables) measures AUROC."""
    from .sequences import (
        given_conditions,
        input_table,
        read_strings,
        sequence_column,
        table_cells,
        token_ids,
    )

    names, texts = read_strings(source, "--data", sequence_column(model))
    names, texts = names[:n], texts[:n]
    texts, x = token_ids(model, texts, names, "--data")
    y = given_conditions(model, condition, texts, names=names, source=source)
    scores = anomaly_scores(model, x, y, method=method, k=detector.k, samples=detector.samples, seed=seed)
    if not np.isfinite(scores).all():
        raise CvaeError(f"the {method} score of some sequences is not finite; nothing was written")
    threshold = detector.thresholds[method]
    result = AnomalyScores(list(texts), scores, scores > threshold, method, threshold)
    table = input_table(source)
    if table is not None:
        exclude = {sequence_column(model), *(model.schema.names if model.schema else [])}
        column = _label_column_of(model, detector, label_column, table[0], source, exclude)
        if column:
            _measure(result, [_canon(v) for v in table_cells(table, names, [column])[column]], column, normal, detector)
    return result


def write_scores(path: str | Path, result: AnomalyScores) -> Path:
    """A CSV with columns id, score, flag (1 = above the threshold): one row per input row, in order."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise CvaeError(f"anomaly scores are written as a .csv file, not {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, ["id", "score", "flag"],
              ([i, f"{float(s):.6g}", int(flag)] for i, s, flag in zip(result.ids, result.scores, result.flags)))
    return path


def save_scores_picture(path: str | Path, result: AnomalyScores) -> Path:
    """Histograms of the scores (normal and anomalous apart when labels are known) with the threshold."""
    if result.is_anomaly is not None:
        known = result.labelled if result.labelled is not None else np.ones(len(result.scores), bool)
        groups = {"normal": result.scores[known & ~result.is_anomaly], "anomaly": result.scores[result.is_anomaly]}
        if not known.all():
            groups["no label"] = result.scores[~known]
    else:
        groups = {"all examples": result.scores}
    title = f"{result.score} scores; {result.flags.mean():.1%} flagged"
    if result.metrics and "auroc" in result.metrics:
        title += f"; AUROC {result.metrics['auroc']:.3f}"
    return save_score_histogram(path, groups, result.threshold, title=title, xlabel=result.score)
