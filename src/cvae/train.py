"""The training loop: reads top to bottom, writes the run folder every epoch.

The data set lives on the device as one tensor; an epoch permutes it once and takes contiguous
slices as batches; losses are summed on the device and read once per epoch (plus a progress-bar
refresh every ``REFRESH_STEPS`` steps), so there is no host synchronisation per step.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import TrainConfig
from .data import DataSplits, load_data
from .errors import CvaeError
from .model import CVAE, PRESETS, ModelConfig
from .objectives import elbo, kl_warmup
from .runs import FORMAT, FORMAT_VERSION, load_tensors, read_config, save_tensors, write_json

REFRESH_STEPS = 50


@dataclass
class TrainResult:
    run_dir: Path
    model: CVAE
    data: DataSplits
    config: TrainConfig
    summary: dict


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CvaeError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CvaeError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device


def model_config_for(config: TrainConfig, data: DataSplits) -> ModelConfig:
    settings = dict(PRESETS[config.preset])
    settings.update(likelihood=data.default_likelihood)
    if data.binary and not data.standardize:
        settings["likelihood"] = "bernoulli"
    settings.update(config.model_overrides())
    if settings.get("arch") == "conv" and len(data.data_shape) == 1:
        raise CvaeError(
            f"the conv network needs images or signals, but {data.name!r} is a table of {data.data_shape[0]} "
            "features; use --preset mlp-400 (or --data-layout signal for rows that are 1-D signals)"
        )
    return ModelConfig(data_shape=data.data_shape, schema=data.schema.to_dict(), standardize=data.standardize, **settings)


def default_out(config: TrainConfig, data_name: str) -> Path:
    base = Path("runs") / f"{Path(data_name).stem}-{config.preset}"
    path, i = base, 2
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def _autocast(device: torch.device, precision: str):
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate_elbo(model: CVAE, x: torch.Tensor, c: torch.Tensor | None, *, batch_size: int = 1000,
                  precision: str = "float32") -> dict[str, float]:
    """Negative ELBO (one sample), reconstruction and KL in nats per example."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    with _autocast(x.device, precision):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            cb = None if c is None else c[i:i + batch_size]
            out = elbo(model, xb, cb)
            sums += torch.stack([out.neg_elbo, out.reconstruction, out.kl]).double() * len(xb)
    model.train()
    loss, rec, kl = (sums / len(x)).tolist()
    return {"loss": loss, "reconstruction": rec, "kl": kl}


def _fixed_binarization(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=g).to(x.device)


def _optimizer(model: CVAE, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    kw = dict(lr=config.lr, weight_decay=config.weight_decay)
    try:
        return torch.optim.Adam(model.parameters(), fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), foreach=True, **kw)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optimizer.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, sd["param_groups"]


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def fit(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
        explicit: set[str] | None = None) -> TrainResult:
    """Train a model as ``config`` says, writing the run folder every epoch.

    With ``resume`` the run in ``config.out`` goes on from its last epoch with its saved settings;
    ``explicit`` names the settings the user gave (default: those that differ from the defaults),
    of which only run-length and execution settings may change.
    """
    # -- the run folder ------------------------------------------------------------------------
    if resume:
        if not config.out:
            raise CvaeError("--resume needs --out RUN, the run folder to continue")
        previous = read_config(config.out)
        config = _resumed_config(TrainConfig.from_dict(previous["train"]), config, explicit)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    data = load_data(config.data, data_dir=config.data_dir, condition=config.condition,
                     val_fraction=config.val_fraction, seed=config.seed, binarize=config.binarize,
                     limit=config.limit, data_layout=config.data_layout, image_size=_image_size(config.image_size))
    model_config = model_config_for(config, data)
    run_dir = Path(config.out) if config.out else default_out(config, data.name)
    if not resume and (run_dir / "config.json").exists() and not overwrite:
        raise CvaeError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                        "or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = config.replace(out=str(run_dir))

    model = CVAE(model_config).to(device)
    if data.standardize:
        model.x_loc.copy_(torch.from_numpy(data.loc))
        model.x_scale.copy_(torch.from_numpy(data.scale))
    opt = _optimizer(model, config, device)
    start_epoch, best_val, bad_epochs, best_state = 0, math.inf, 0, None
    if resume:
        start_epoch, best_val, bad_epochs = _restore(run_dir, model, opt)
        if start_epoch >= config.epochs:
            raise CvaeError(f"{run_dir} has already trained {start_epoch} epochs; pass --epochs N with N > {start_epoch} to go on")
    step_model = torch.compile(model) if config.compile else model

    # -- the data, on the device, once ------------------------------------------------------------
    schema = data.schema
    x_train = data.train.x.to(device)
    c_train = schema.encode(data.train.y).to(device) if schema else None
    dynamic = config.binarize == "dynamic"
    evals = {}
    for name, part in (("val", data.val), ("test", data.test)):
        if part is not None:
            x = _fixed_binarization(part.x, 1234) if dynamic else part.x
            evals[name] = (x.to(device), schema.encode(part.y).to(device) if schema else None)

    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model_config.to_dict(),
        "train": config.to_dict(),
        "data": {
            "name": data.name, "kind": data.kind, "source": config.data, "data_shape": list(data.data_shape),
            "binary": data.binary, "standardize": data.standardize, "n_train": len(data.train),
            "n_val": len(data.val) if data.val else 0, "n_test": len(data.test) if data.test else 0,
            **{k: v for k, v in data.meta.items() if k in ("features",)},
        },
        "status": "running",
    }
    write_json(run_dir / "config.json", info)
    metrics_path = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, start_epoch)
    writer = _tensorboard(run_dir) if config.tensorboard else None

    # -- the loop ------------------------------------------------------------------------------
    n, bs = len(x_train), config.batch_size
    steps = math.ceil(n / bs)
    bar = _progress(config, steps)
    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, device=device)
        x_epoch = x_train[perm]
        c_epoch = c_train[perm] if c_train is not None else None
        if dynamic:
            x_epoch = torch.bernoulli(x_epoch)
        sums = torch.zeros(3, device=device)
        if bar is not None:
            bar.reset(total=steps)
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
        for step in range(steps):
            xb = x_epoch[step * bs:(step + 1) * bs]
            cb = c_epoch[step * bs:(step + 1) * bs] if c_epoch is not None else None
            kl_w = kl_warmup(epoch + step / steps, config.kl_warmup)
            with _autocast(device, config.precision):
                out = elbo(step_model, xb, cb, beta=config.beta, kl_weight=kl_w)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sums += torch.stack([out.neg_elbo, out.reconstruction, out.kl]).detach() * len(xb)
            if bar is not None:
                bar.update()
                if step % REFRESH_STEPS == 0:
                    bar.set_postfix(loss=f"{out.loss.item():.2f}")
        train_loss, train_rec, train_kl = (sums / n).tolist()
        if not math.isfinite(train_loss):
            raise CvaeError(f"training diverged in epoch {epoch + 1} (the loss is {train_loss}); the run folder keeps "
                            f"epoch {epoch}. Lower --lr, set --grad-clip 1.0, or check the data for extreme values")
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_reconstruction": train_rec, "train_kl": train_kl,
               "kl_weight": kl_warmup(epoch + 1, config.kl_warmup), "seconds": seconds}
        if "val" in evals:
            v = evaluate_elbo(model, *evals["val"], precision=config.precision)
            row.update(val_loss=v["loss"], val_reconstruction=v["reconstruction"], val_kl=v["kl"])
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.2f}", **({"val": f"{row['val_loss']:.2f}"} if "val_loss" in row else {}))
        # early stopping on the validation loss (the negative ELBO)
        if "val_loss" in row and config.patience:
            if row["val_loss"] < best_val:
                best_val, bad_epochs = row["val_loss"], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
        _save_epoch(run_dir, model, opt, epoch + 1, best_val, bad_epochs, row, metrics_path, writer)
        if config.patience and bad_epochs >= config.patience:
            stopped_early = True
            if best_state is not None:
                model.load_state_dict(best_state)
                save_tensors(run_dir / "model.safetensors", model.state_dict(), {"format": FORMAT})
            break
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()

    # -- the final figures -----------------------------------------------------------------------
    summary = {"epochs": _epochs_done(metrics_path), "stopped_early": stopped_early, "precision": config.precision}
    for name, (x, c) in evals.items():
        summary[name] = evaluate_elbo(model, x, c, precision="float32")
    summary["train"] = evaluate_elbo(model, x_train[:10000], c_train[:10000] if c_train is not None else None)
    summary["seconds_per_epoch"] = _median_seconds(metrics_path)
    write_json(run_dir / "summary.json", summary)
    info["status"] = "stopped early" if stopped_early else "finished"
    info["summary"] = summary
    write_json(run_dir / "config.json", info)
    model.eval()
    model.run_dir, model.run_config = run_dir, info
    return TrainResult(run_dir, model, data, config, summary)


def _image_size(text):
    if not text:
        return None
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
        return h, w
    except ValueError:
        raise CvaeError(f"--image-size must look like 28x28 (height x width), not {text!r}") from None


RESUMABLE = {"epochs", "patience", "progress", "tensorboard", "device", "data_dir"}


def _resumed_config(saved: TrainConfig, given: TrainConfig, explicit: set[str] | None) -> TrainConfig:
    """On --resume the saved settings hold; only run-length and execution settings may change."""
    defaults = TrainConfig()
    changes = {}
    for key in TrainConfig.keys():
        value = getattr(given, key)
        if explicit is not None and key not in explicit:
            continue
        if key == "out" or value == getattr(saved, key) or (explicit is None and value == getattr(defaults, key)):
            continue
        if key not in RESUMABLE:
            raise CvaeError(f"cannot change {key!r} when resuming (it was {getattr(saved, key)!r}); "
                            f"only {', '.join(sorted(RESUMABLE))} may change")
        changes[key] = value
    return saved.replace(out=given.out, **changes)


def _restore(run_dir: Path, model: CVAE, opt: torch.optim.Optimizer) -> tuple[int, float, int]:
    path = run_dir / "trainer_state.safetensors"
    if not path.is_file():
        raise CvaeError(f"{run_dir} has no trainer_state.safetensors to resume from; start a new run instead")
    tensors = load_tensors(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["state"])
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    _load_optimizer(opt, tensors, meta["param_groups"])
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available() and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta["epoch"], meta["best_val"], meta["bad_epochs"]


def _save_epoch(run_dir, model, opt, epoch, best_val, bad_epochs, row, metrics_path, writer) -> None:
    state = model.state_dict()
    save_tensors(run_dir / "model.safetensors", state, {"format": FORMAT})
    tensors, groups = _optimizer_tensors(opt)
    tensors.update({f"model.{k}": v for k, v in state.items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"epoch": epoch, "best_val": best_val, "bad_epochs": bad_epochs, "param_groups": groups}
    save_tensors(run_dir / "trainer_state.safetensors", tensors, {"state": json.dumps(meta)})
    with open(metrics_path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if writer is not None:
        for k, v in row.items():
            if k != "epoch":
                writer.add_scalar(k.replace("_", "/", 1), v, epoch)
        writer.flush()


def _truncate_metrics(path: Path, epochs: int) -> None:
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [r for r in rows if json.loads(r).get("epoch", 0) <= epochs]
    path.write_text("".join(r + "\n" for r in keep))


def _epochs_done(path: Path) -> int:
    rows = [json.loads(r) for r in path.read_text().splitlines() if r.strip()] if path.exists() else []
    return rows[-1]["epoch"] if rows else 0


def _median_seconds(path: Path) -> float | None:
    rows = [json.loads(r) for r in path.read_text().splitlines() if r.strip()]
    secs = sorted(r["seconds"] for r in rows[1:] or rows)
    return secs[len(secs) // 2] if secs else None


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; degrade rather than fail if it is broken
        return None
    return SummaryWriter(str(run_dir / "tb"))


def _progress(config: TrainConfig, steps: int):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, unit="batch", leave=False, dynamic_ncols=True)
