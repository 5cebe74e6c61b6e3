"""The Python API: what the command-line tool calls."""

from __future__ import annotations

import warnings
from pathlib import Path

from .config import TrainConfig, read_yaml
from .errors import CvaeError, CvaeWarning
from .models import VAEModel
from .plots import run_pictures
from .runs import check_resumable, load_model
from .train import TrainResult, fit


def train(config: TrainConfig | dict | str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
          pictures: bool = True, **settings) -> TrainResult:
    """Train a model and write its run folder (weights, metrics, pictures).

    ``config`` is a :class:`TrainConfig`, a mapping of settings, or a YAML file; keyword settings
    override it, e.g. ``cvae.train(data="mnist", epochs=10, out="runs/mnist")``.
    """
    if isinstance(config, (str, Path)):
        config = read_yaml(config)
    if isinstance(config, TrainConfig):
        base = config.to_dict()
        explicit = config.differing() | set(settings)
    else:
        base = dict(config or {})
        explicit = set(base) | set(settings)
    base.update(settings)
    cfg = TrainConfig.from_dict(base)
    _check_out(cfg, resume)
    result = fit(cfg, resume=resume, overwrite=overwrite, explicit=explicit)
    if pictures and result.rank == 0:  # under torchrun only rank 0 writes the run folder
        try:
            drawn = run_pictures(result.model, result.data, result.run_dir, seed=result.config.seed)
        except Exception as e:  # the run is saved and finished: a picture that cannot be drawn must not hide that
            warnings.warn(f"the run is saved in {result.run_dir}, but its pictures could not be drawn ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); `cvae sample` and the other commands "
                          "work on it", CvaeWarning, stacklevel=2)
            drawn = {}
        result.summary["pictures"] = {k: str(v) for k, v in drawn.items()}
    return result


def _check_out(cfg: TrainConfig, resume: bool) -> None:
    """The run folder, checked before any data is read: not a file; on --resume, everything resuming
    reads from it (config.json, the weights against it, metrics.jsonl)."""
    if not cfg.out:
        return
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise CvaeError(f"--out {out} is a file, not a folder; choose a folder name for the run")
    if resume:
        check_resumable(out)


def load(run: str | Path, *, device: str = "cpu") -> VAEModel:
    """The trained model of a run folder, with ``encode``, ``decode``, ``sample`` and ``reconstruct``."""
    return load_model(run, device=device)


def fit_aggregate(run: str | Path, *, data_dir=None, device: str = "cpu", confidence: float | None = None):
    """Fit (again) the aggregate posterior of a trained run and write ``RUN/aggregate.safetensors``
    (cvae.aggregate; training writes it, this is for runs trained before it did): the codes of up to
    10,000 of the run's training examples, the same fixed draw as training's summary. ``confidence``: a
    semi-supervised run's threshold for unlabelled examples (default ``aggregate.CONFIDENCE``). Returns the fit."""
    from . import aggregate
    from .evaluate import load_run_data
    from .runs import save_aggregate
    from .train import summary_examples

    model = load_model(run, device=device)
    why = aggregate.why_not(model)
    if why is not None:
        raise CvaeError(f"{run}: no aggregate posterior is fitted for this run ({why}); it samples from its prior")
    data = load_run_data(model, data_dir=data_dir)
    rows, x = summary_examples(data.train.x, model.run_config.get("train", {}).get("binarize") == "dynamic")
    x = x.to(model.device)
    c = model.schema.encode(data.train.y[rows]).to(model.device) if model.schema else None
    fit_ = aggregate.fit(model, x, c, seed=model.run_config.get("train", {}).get("seed", 0),
                         confidence=aggregate.CONFIDENCE if confidence is None else confidence)
    if fit_ is None:
        raise CvaeError(f"{run}: no aggregate posterior fitted: {aggregate.too_few(model)}; it samples from its prior")
    save_aggregate(run, fit_)
    return fit_
