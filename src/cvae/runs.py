"""The run folder: everything a run writes, written atomically, with no pickle anywhere.

    config.json               the model, training and data settings; the run's status
    model.safetensors         the weights (the latest epoch; the best one after early stopping)
    trainer_state.safetensors optimizer moments, RNG states and loop counters for an exact --resume
    metrics.jsonl             one row per epoch
    summary.json              the final figures (train / validation / test)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CvaeError
from .models import RunInfo, VAEModel, build_model

FORMAT = "cvae-run"
FORMAT_VERSION = 2
# Weight names that moved when the prior and the likelihood became parts of their own (version 1 -> 2).
RENAMED_V1 = {"prior_net.weight": "prior.net.weight", "prior_net.bias": "prior.net.bias",
              "log_sigma": "likelihood.log_sigma"}


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: Path, obj) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_jsonable)
            f.write("\n")

    atomic_write(path, w)


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()}))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CvaeError(f"cannot read {path}: {e}. The file is damaged or not a safetensors file") from None


def read_config(run: str | Path) -> dict:
    run = Path(run)
    cfg_path = run / "config.json"
    if not run.is_dir():
        raise CvaeError(f"{run} is not a folder; give the run folder that `cvae train` wrote (e.g. runs/digits-mlp-400)")
    if not cfg_path.is_file():
        raise CvaeError(f"{run} is not a cvae run: it has no config.json (train one with `cvae train --out {run}`)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CvaeError(f"{cfg_path} is not valid JSON ({e}); the run folder is damaged") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CvaeError(f"{cfg_path} is not a cvae run config (no 'format': '{FORMAT}')")
    return cfg


def load_model(run: str | Path, *, device: str | torch.device = "cpu", weights: str = "model.safetensors") -> VAEModel:
    """Rebuild the model of a run folder (whatever registered class its config.json names) and load
    its weights."""
    run = Path(run)
    cfg = read_config(run)
    if not isinstance(cfg.get("model"), dict):
        raise CvaeError(f"{run / 'config.json'} has no 'model' settings; the run folder is damaged")
    model = build_model(cfg["model"], run=RunInfo(run, cfg))
    path = run / weights
    if not path.is_file():
        raise CvaeError(f"{run} has no {weights} yet (training has not finished an epoch)")
    state = load_tensors(path)
    if cfg.get("format_version", 1) < 2:
        state = {RENAMED_V1.get(k, k): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CvaeError(f"{path} does not match the model in config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval()
