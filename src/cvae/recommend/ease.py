"""EASE (Steck 2019, "Embarrassingly shallow autoencoders for sparse data") as a run folder:
``cvae recommend train --model ease`` solves the closed form for each lambda of a grid (or the one
given by ``--ease-lambda``), keeps the lambda that scores best on the validation users (NDCG@100),
and writes

    RUN/config.json        these settings, the data, the lambda kept ("ease": {"lambda": ...})
    RUN/model.safetensors  the item-item weights B (items x items, float32; diag(B) = 0) as "weights"
    RUN/items.csv          the model's items: column index, item id, training users who have it
    RUN/metrics.jsonl      one row per lambda tried: its validation metrics and seconds
    RUN/summary.json       validation and test metrics of the kept lambda

A user's scores are x B, x the user's 0/1 item vector; :class:`EaseRecommender` is what
``cvae recommend RUN`` and :func:`cvae.recommend.apps.recommend` use.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..conditions import ConditionSchema
from ..errors import CvaeError
from ..runs import (
    FORMAT,
    FORMAT_VERSION,
    load_tensors,
    read_config,
    resolve_device,
    save_tensors,
    write_json,
)
from .config import EASE_LAMBDAS, RecommenderConfig
from .data import Splits
from .metrics import ease_weights, evaluate_scorer, model_scorer


class EaseRecommender:
    """A trained EASE: ``item_scores(x)`` = x B (not probabilities: recs.csv's score is x B)."""

    schema = ConditionSchema()
    scores_are_log_probabilities = False

    def __init__(self, weights: torch.Tensor, run_dir: Path | None = None, run_config: dict | None = None,
                 device: str | torch.device = "cpu"):
        if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
            raise CvaeError(f"EASE weights must be a square items x items matrix, got shape {tuple(weights.shape)}")
        self.device = resolve_device(device)
        self.weights = weights.float().to(self.device)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.run_config = run_config or {}

    @classmethod
    def load(cls, run: str | Path, *, device: str = "cpu") -> EaseRecommender:
        run = Path(run)
        cfg = read_config(run)
        path = run / "model.safetensors"
        if not path.is_file():
            raise CvaeError(f"{run} has no model.safetensors; the EASE run did not finish (train it again)")
        tensors = load_tensors(path)
        if "weights" not in tensors:
            raise CvaeError(f"{path} holds no 'weights' tensor; it is not the file of an EASE run")
        w = tensors["weights"]
        items = cfg.get("data", {}).get("model_items")
        if items is not None and tuple(w.shape) != (items, items):
            raise CvaeError(f"{path} holds weights of shape {tuple(w.shape)} where config.json says {items} items")
        if not torch.isfinite(w).all():
            raise CvaeError(f"{path} holds NaN or infinite weights; the file is damaged: train the run again")
        return cls(w, run, cfg, device)

    def item_scores(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return x.to(self.device).float() @ self.weights


def fit_ease(cfg: RecommenderConfig, splits: Splits, run_dir: Path, data) -> object:
    from .train import RecommenderResult, _write_items

    lambdas = [cfg.ease_lambda] if cfg.ease_lambda is not None else list(EASE_LAMBDAS)
    info = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "recommend": {**cfg.to_dict(), "condition": "none",
                          "min_rating": cfg.min_rating if cfg.min_rating is not None else data.defaults.get("min_rating")},
            "data": {"name": splits.name, "kind": "interactions", "source": cfg.data, **splits.meta,
                     "items_file": "items.csv"},
            "execution": {"device": "cpu", "threads": torch.get_num_threads()}, "status": "running"}
    _write_items(run_dir / "items.csv", splits)
    write_json(run_dir / "config.json", info)
    best = (-math.inf, None, None)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for lam in lambdas:
            t0 = time.perf_counter()
            w = ease_weights(splits.train, lam)
            if not np.isfinite(w).all():
                raise CvaeError(f"EASE with lambda {lam:g} gave non-finite weights; choose a larger --ease-lambda")
            model = EaseRecommender(torch.from_numpy(w))
            val = evaluate_scorer(model_scorer(model), splits.val)
            row = {"lambda": lam, **{f"val_{k}": v.mean for k, v in val.items()},
                   "seconds": time.perf_counter() - t0}
            f.write(json.dumps(row) + "\n")
            if row["val_ndcg@100"] > best[0]:
                best = (row["val_ndcg@100"], lam, model)
    _, lam, model = best
    save_tensors(run_dir / "model.safetensors", {"weights": model.weights}, {"format": FORMAT, "lambda": lam})
    scorer = model_scorer(model)
    summary = {"ease_lambda": lam, "lambdas_tried": lambdas,
               "val": {k: v.to_dict() for k, v in evaluate_scorer(scorer, splits.val).items()},
               "test": {k: v.to_dict() for k, v in evaluate_scorer(scorer, splits.test).items()}}
    write_json(run_dir / "summary.json", summary)
    info.update(status="finished", ease={"lambda": lam}, summary=summary)
    write_json(run_dir / "config.json", info)
    model.run_dir, model.run_config = run_dir, info
    return RecommenderResult(run_dir, model, splits, summary)
