"""Training Mult-VAE / Mult-DAE on interaction data, top to bottom, writing a run folder.

The user-item matrix stays sparse; each step densifies one batch of users. The objective is the
registered ``elbo`` with the paper's step-wise KL annealing, beta_t = min(beta, step / anneal_steps)
(Liang et al. 2018; their code anneals to a cap of 0.2 over 200,000 steps), written as the ELBO's
linear warm-up over ``beta * anneal_steps`` steps to ``beta``. Every ``eval_every`` epochs the model
is scored on the validation users (NDCG@100 of their held-out items) and the best epoch is kept: the
paper's way of choosing beta is to anneal to 1 and keep the epoch (so the beta) that validates best.

    RUN/config.json        model settings (cvae.load rebuilds the model), these settings, the data
    RUN/model.safetensors  the weights of the best validation epoch
    RUN/trainer_state.safetensors  the last epoch's weights, optimizer state, random states, epoch counter
                           (what --resume goes on from)
    RUN/items.csv          the model's items: column index, item id, training users who have it
    RUN/metrics.jsonl      one row per epoch: loss, its parts, KL weight, validation metrics, seconds
    RUN/summary.json       validation and test metrics of the kept epoch (and of the baselines)
    RUN/training.png       the loss and the validation NDCG@100 per epoch
    RUN/groups.safetensors the training users' popularity per attribute group (--popularity-mix k > 0 only),
                           blended into the scores with weight k / (k + items in the user's history)
"""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import CvaeError, CvaeWarning
from ..lock import hold, let_go
from ..models import MULTVAE_DEFAULTS, RunInfo, build_model
from ..models.config import ModelConfig
from ..objectives import build_objective
from ..runs import (
    FORMAT,
    FORMAT_VERSION,
    atomic_write,
    load_tensors,
    read_config,
    resolve_device,
    save_tensors,
    weights_metadata,
    write_json,
)
from .config import (
    DAE_WEIGHT_DECAY,
    GROUP_ALPHA,
    MODEL_KINDS,
    PLAIN_DEFAULTS,
    SCORING_SETTINGS,
    RecommenderConfig,
)
from .data import Splits, dense_rows, load_interactions, split
from .metrics import GROUPS_FILE, GroupPopularity, evaluate_scorer, model_scorer, popularity_mix


@dataclass
class RecommenderResult:
    run_dir: Path
    model: torch.nn.Module
    splits: Splits
    summary: dict


def model_config(cfg: RecommenderConfig, splits: Splits) -> ModelConfig:
    from ..models import MultVAEConfig

    network = {k: v for k, v in cfg.conditioning(bool(splits.schema)).items() if k not in SCORING_SETTINGS}
    settings = {**MULTVAE_DEFAULTS, "hidden": list(cfg.hidden), "latent_dim": cfg.latent_dim,
                "condition_at": cfg.condition_at, "prior": network.pop("prior")}
    return MultVAEConfig(data_shape=(len(splits.items),), schema=splits.schema.to_dict(), dropout=cfg.dropout,
                         variational=MODEL_KINDS[cfg.model], **settings, **network)


class _Settings:  # what the registered ELBO objective reads
    def __init__(self, beta: float, warmup_epochs: float):
        self.beta, self.kl_warmup, self.free_bits, self.iwae_k = beta, warmup_epochs, 0.0, 5


RESUMABLE = {"epochs", "progress", "device", "data_dir", "out", "overwrite", "eval_every"}


def train_recommender(cfg: RecommenderConfig | dict | None = None, *, resume: bool = False,
                      **settings) -> RecommenderResult:
    """Train Mult-VAE or Mult-DAE (or solve EASE) as ``cfg`` says and write the run folder (see the
    module). With ``resume`` the run in ``out`` goes on from its last epoch, exactly: its saved
    settings, weights, optimizer state, random states and epoch counter (``--epochs`` may grow)."""
    base = cfg.to_dict() if isinstance(cfg, RecommenderConfig) else dict(cfg or {})
    cfg = RecommenderConfig.from_dict({**base, **settings})
    if resume:
        cfg = _resumed(cfg, set(settings) | set(base))
    device = resolve_device(cfg.device)
    data = load_interactions(cfg.data, data_dir=cfg.data_dir, min_rating=cfg.min_rating,
                             user_attributes=cfg.user_attributes)
    if cfg.model == "ease" and cfg.popularity_mix:
        raise CvaeError("--popularity-mix blends a network's item probabilities; EASE's scores are not "
                        "probabilities: leave it out with --model ease")
    if cfg.model == "ease" and cfg.condition not in (None, "none"):
        raise CvaeError("EASE (--model ease) does not use user attributes; leave --condition out or pass "
                        "--condition none")
    # without --condition: the source's own choice (ml-100k's), else every column of --user-attributes
    condition = None if cfg.model == "ease" else cfg.condition if cfg.condition is not None else (
        data.defaults.get("condition", ",".join(data.attributes)) if data.attributes else None)
    splits = split(data, condition=condition, heldout_users=cfg.heldout_users,
                   heldout_fraction=cfg.heldout_fraction, min_user_interactions=cfg.min_user_interactions,
                   seed=cfg.seed, folds=cfg.folds, fold=cfg.fold)
    run_dir = Path(cfg.out) if cfg.out else Path("runs") / f"{Path(data.name).stem}-{cfg.model}"
    _claim(run_dir, cfg.overwrite, resume)
    try:
        if cfg.model == "ease":
            from .ease import fit_ease

            return fit_ease(cfg, splits, run_dir, data)
        return _fit(cfg, splits, run_dir, device, condition, data, resume)
    finally:
        let_go(run_dir)


def _resumed(given: RecommenderConfig, named: set[str]) -> RecommenderConfig:
    """The saved settings of the run in ``given.out``; only run-length and execution settings may change."""
    if not given.out:
        raise CvaeError("--resume needs --out RUN, the run folder to continue")
    run_dir = Path(given.out)
    if not (run_dir / "trainer_state.safetensors").is_file():
        raise CvaeError(f"{run_dir} has no trainer_state.safetensors to resume from (no epoch finished, or an "
                        "EASE run, which has nothing to resume); start a new run instead")
    saved = dict(read_config(run_dir).get("recommend", {}))
    saved = {k: v for k, v in saved.items() if k in {f.name for f in fields(RecommenderConfig)}}
    for key, off in PLAIN_DEFAULTS.items():  # a run saved before a setting existed trained without it
        saved.setdefault(key, off)
    if saved.get("condition") == "none" and given.condition is None:
        saved["condition"] = "none"
    for key in sorted(named):
        value = getattr(given, key)
        if key in RESUMABLE or key not in saved or value == saved[key]:
            continue
        raise CvaeError(f"cannot change --{key.replace('_', '-')} when resuming (it was {saved[key]!r}); only "
                        f"{', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE - {'out', 'overwrite'}))} "
                        "may change")
    return RecommenderConfig.from_dict({**saved, **{k: getattr(given, k) for k in RESUMABLE & named}})


def _claim(run_dir: Path, overwrite: bool, resume: bool = False) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise CvaeError(f"--out {run_dir} is a file, not a folder; choose a folder name for the run")
    if (run_dir / "model.safetensors").exists() and not overwrite and not resume:
        raise CvaeError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                        "or choose another --out")
    hold(run_dir)
    if resume:
        return
    for name in ("metrics.jsonl", "summary.json", "trainer_state.safetensors"):
        if (run_dir / name).exists():
            (run_dir / name).unlink()


def _fit(cfg: RecommenderConfig, splits: Splits, run_dir: Path, device: torch.device, condition, data,
         resume: bool = False) -> RecommenderResult:
    torch.manual_seed(cfg.seed)
    mcfg = model_config(cfg, splits)
    n = splits.train.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    # the annealing length is fixed when the run starts, so that --resume --epochs N keeps its schedule
    anneal = cfg.anneal_steps or steps_per_epoch * cfg.epochs
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": mcfg.to_dict(),
            "recommend": {**cfg.to_dict(), "condition": condition or "none", "anneal_steps": anneal,
                          **cfg.conditioning(bool(splits.schema)),
                          "min_rating": cfg.min_rating if cfg.min_rating is not None else data.defaults.get("min_rating")},
            "data": {"name": splits.name, "kind": "interactions", "source": cfg.data, **splits.meta,
                     "items_file": "items.csv"},
            "execution": {"device": str(device), "threads": torch.get_num_threads()}, "status": "running"}
    model = build_model(mcfg, run=RunInfo(run_dir, info)).to(device)
    wd = cfg.weight_decay if cfg.weight_decay is not None else (0.0 if mcfg.variational else DAE_WEIGHT_DECAY)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=wd)
    beta = cfg.beta if mcfg.variational else 0.0
    # min(beta, step / anneal) is beta times a linear warm-up over beta * anneal steps
    objective = build_objective("elbo", _Settings(beta, max(beta, 1e-12) * anneal / steps_per_epoch))
    c_train = None if splits.y_train is None else splits.schema.encode(torch.from_numpy(splits.y_train)).to(device)
    metrics_path = run_dir / "metrics.jsonl"
    g = torch.Generator().manual_seed(cfg.seed)
    best, best_state, best_row, start = -math.inf, None, None, 0
    if resume:
        start, best, best_row, best_state = _restore(run_dir, model, opt, g, splits, cfg.epochs)
    else:
        _write_items(run_dir / "items.csv", splits)
    write_json(run_dir / "config.json", info)
    bar = _progress(cfg, start)
    step = start * steps_per_epoch
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=g).numpy()
        sums = np.zeros(3)
        for begin in range(0, n, cfg.batch_size):
            rows = order[begin:begin + cfg.batch_size]
            x = dense_rows(splits.train, rows, device)
            c = None if c_train is None else c_train[torch.from_numpy(rows).to(device)]
            out = objective(model, x, c, progress=step / steps_per_epoch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            step += 1
            sums += np.array([out.loss.item(), out.reconstruction.item(), out.kl.item()]) * len(rows)
        loss, rec, kl = (sums / n).tolist()
        if not math.isfinite(loss):
            raise CvaeError(f"training diverged in epoch {epoch + 1} (loss {loss}); lower --lr")
        row = {"epoch": epoch + 1, "train_loss": loss, "train_reconstruction": rec, "train_kl": kl,
               "kl_weight": min(beta, step / anneal) if beta else 0.0, "step": step}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            val = evaluate_scorer(model_scorer(model), splits.val)
            row.update({f"val_{k}": v.mean for k, v in val.items()})
            if row["val_ndcg@100"] > best:
                best, best_row = row["val_ndcg@100"], dict(row)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                save_tensors(run_dir / "model.safetensors", best_state, weights_metadata(model))
        row["seconds"] = time.perf_counter() - t0
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        _save_state(run_dir, model, opt, g, epoch + 1, best, best_row)
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{loss:.1f}", **({"val_ndcg": f"{row['val_ndcg@100']:.4f}"}
                                                   if "val_ndcg@100" in row else {}))
    if bar is not None:
        bar.close()
    model.load_state_dict(best_state)
    model.eval()
    scorer = model_scorer(model)  # the epoch was kept on the network's own scores; the mix applies after
    mix = cfg.conditioning(bool(splits.schema))["popularity_mix"]
    if mix:
        groups = GroupPopularity.fit(splits.train, splits.y_train, splits.schema, alpha=GROUP_ALPHA)
        groups.save(run_dir / GROUPS_FILE)
        scorer = popularity_mix(scorer, groups, mix)
    summary = {"best_epoch": best_row["epoch"], "kl_weight_at_best_epoch": best_row["kl_weight"],
               "val": {k: v.to_dict() for k, v in evaluate_scorer(scorer, splits.val).items()},
               "test": {k: v.to_dict() for k, v in evaluate_scorer(scorer, splits.test).items()},
               "seconds_per_epoch": _median_seconds(metrics_path), "steps_per_epoch": steps_per_epoch}
    write_json(run_dir / "summary.json", summary)
    info["status"] = "finished"
    info["summary"] = summary
    write_json(run_dir / "config.json", info)
    _picture(run_dir / "training.png", metrics_path)
    return RecommenderResult(run_dir, model, splits, summary)


# -- the trainer state: what an exact --resume needs -------------------------------------------------

def _save_state(run_dir: Path, model, opt, g: torch.Generator, epoch: int, best: float, best_row: dict | None) -> None:
    from ..train import _optimizer_tensors

    tensors, groups = _optimizer_tensors(opt)
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors["rng.batches"] = g.get_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"epoch": epoch, "best_val": best, "best_row": best_row, "param_groups": groups}
    save_tensors(run_dir / "trainer_state.safetensors", tensors, {"state": json.dumps(meta)})


def _restore(run_dir: Path, model, opt, g: torch.Generator, splits: Splits, epochs: int):
    from safetensors import safe_open

    from ..train import _load_optimizer

    path = run_dir / "trainer_state.safetensors"
    tensors = load_tensors(path)
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["state"])
    items, _ = read_items(run_dir)
    if list(items) != [str(i) for i in splits.items]:
        raise CvaeError(f"the data no longer gives the items of {run_dir}/items.csv (was --data changed?); resume "
                        "with the data the run was trained on, or start a new run with --overwrite")
    try:
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        _load_optimizer(opt, tensors, meta["param_groups"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CvaeError(f"{path} does not fit the model that config.json and the data describe "
                        f"({str(e).strip().splitlines()[-1][:200]}); start a new run with --overwrite") from None
    torch.set_rng_state(tensors["rng.cpu"])
    g.set_state(tensors["rng.batches"])
    if torch.cuda.is_available() and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    epoch = meta["epoch"]
    if epoch >= epochs:
        raise CvaeError(f"{run_dir} has already trained {epoch} epochs; pass --epochs N with N > {epoch} to go on")
    _truncate_metrics(run_dir / "metrics.jsonl", epoch)
    best, best_row = meta["best_val"], meta["best_row"]
    if best_row and not (run_dir / "model.safetensors").is_file():  # deleted (a damaged one, as its message says)
        warnings.warn(f"{run_dir} has no model.safetensors: the epoch it kept (epoch {best_row['epoch']}) is lost; the "
                      "best of the epochs still to train is kept instead", CvaeWarning, stacklevel=3)
        best, best_row = -math.inf, None
    best_state = load_tensors(run_dir / "model.safetensors") if best_row else None
    return epoch, best, best_row, best_state


def _truncate_metrics(path: Path, epochs: int) -> None:
    """Keep the rows of the epochs the trainer state holds (an epoch cut short leaves none)."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        keep = []
        for line in rows:
            try:
                if json.loads(line)["epoch"] <= epochs:
                    keep.append(line + "\n")
            except (ValueError, KeyError):
                break
        text = "".join(keep)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _write_items(path: Path, splits: Splits) -> None:
    counts = np.asarray(splits.train.sum(0)).ravel().astype(int)

    def w(tmp):
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["index", "item", "train_users"])
            out.writerows(zip(range(len(splits.items)), splits.items, counts))

    atomic_write(path, w)


def read_items(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The item ids of a run's model columns and their training counts (from ``RUN/items.csv``)."""
    path = Path(run_dir) / "items.csv"
    if not path.is_file():
        raise CvaeError(f"{run_dir} has no items.csv: it is not a recommender run (train one with "
                        "`cvae recommend train`)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))[1:]
        for n, r in enumerate(rows):
            if len(r) != 3 or r[0] != str(n) or not r[2].isdecimal():
                raise ValueError(f"line {n + 2} is {','.join(r)[:60]!r}, not 'index,item,train_users' with index {n}")
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:
        raise CvaeError(f"{path} is damaged ({e}); restore it from a copy of the run, or train the run again") from None
    return np.array([r[1] for r in rows]), np.array([int(r[2]) for r in rows])


def _median_seconds(path: Path) -> float:
    secs = sorted(json.loads(line)["seconds"] for line in open(path) if line.strip())
    return secs[len(secs) // 2]


def _progress(cfg: RecommenderConfig, start: int = 0):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.epochs, initial=start, unit="epoch", leave=False, dynamic_ncols=True)


def _picture(path: Path, metrics_path: Path) -> None:
    from ..plots import _plt, _save

    rows = [json.loads(line) for line in open(metrics_path) if line.strip()]
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], label="training loss")
    a.set_xlabel("epoch")
    a.set_ylabel("loss, nats per user")
    a.legend()
    val = [r for r in rows if "val_ndcg@100" in r]
    b.plot([r["epoch"] for r in val], [r["val_ndcg@100"] for r in val], color="C1", label="validation NDCG@100")
    if any(r["kl_weight"] for r in rows):
        b2 = b.twinx()
        b2.plot([r["epoch"] for r in rows], [r["kl_weight"] for r in rows], color="C2", ls="--", label="KL weight")
        b2.set_ylabel("KL weight")
    b.set_xlabel("epoch")
    b.set_ylabel("NDCG@100")
    b.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path)

