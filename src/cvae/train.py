"""The training loop: reads top to bottom, writes the run folder every epoch.

The data set lives on the device as one tensor; an epoch permutes it once and takes contiguous
slices as batches. A ``.npy`` file too large for memory (or with ``stream``) stays in its memory
map and is read a chunk of rows at a time, giving exactly the batches the in-memory path gives.

The step is lean: fused Adam, denormal floats flushed to zero, bfloat16 autocast where the
hardware multiplies bfloat16 natively (``precision: auto``; the loss stays float32), optional
``torch.compile``, and no host synchronisation per step: losses are summed on the device and read
once per epoch (plus a progress-bar refresh every ``REFRESH_STEPS`` steps).

Under ``torchrun`` every process trains the same model on its share of each batch (DDP: gloo on
CPU, NCCL on GPU). Only rank 0 reads and writes the run folder; the others receive from it what
they need (the resumed settings, the trainer state, the validation loss).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .config import TrainConfig
from .data import DataSplits, load_data
from .data.stream import CHUNK_BYTES, ArrayRows, load_npy_stream, npy_float32_bytes
from .errors import CvaeError
from .model import CVAE, PRESETS, ModelConfig
from .objectives import elbo, iwae, kl_warmup
from .runs import FORMAT, FORMAT_VERSION, load_tensors, read_config, save_tensors, write_json

REFRESH_STEPS = 50


@dataclass
class TrainResult:
    run_dir: Path
    model: CVAE
    data: DataSplits
    config: TrainConfig
    summary: dict
    rank: int = 0  # this process's rank under torchrun; only rank 0 writes the run folder


@dataclass
class Ranks:
    """This process's place among the processes ``torchrun`` started (0 of 1 without it)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


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


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (AMX or AVX512-BF16 CPUs; GPUs
    from Ampere on). Elsewhere bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bfloat16 where it is native (and measured faster, with the same test loss), else float32."""
    if precision != "auto":
        return precision
    return "bfloat16" if native_bfloat16(device) else "float32"


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
def evaluate_elbo(model: CVAE, x, c: torch.Tensor | None, *, batch_size: int = 1000,
                  precision: str = "float32") -> dict[str, float]:
    """Negative ELBO (one sample), reconstruction and KL in nats per example.

    ``x`` is a tensor on any device or the :class:`~cvae.data.stream.ArrayRows` of a streamed file.
    """
    device = next(model.parameters()).device
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    with _autocast(device, precision):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            cb = None if c is None else c[i:i + batch_size].to(device)
            out = elbo(model, xb, cb)
            sums += torch.stack([out.neg_elbo, out.reconstruction, out.kl]).double() * len(xb)
    model.train()
    loss, rec, kl = (sums / len(x)).tolist()
    return {"loss": loss, "reconstruction": rec, "kl": kl}


def _fixed_binarization(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=g).to(x.device)


def cosine_lr(lr: float, progress: float) -> float:
    """Cosine annealing (Loshchilov & Hutter, 2017) from ``lr`` at progress 0 to 0 at progress 1."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def burda_stage(epoch: int) -> int:
    """Burda et al. (2015): stage i = 0..7 lasts 3^i epochs (3,280 in all; the last stage holds after
    them). ``epoch`` counts from 0."""
    stage, end = 0, 1
    while epoch >= end and stage < 7:
        stage += 1
        end += 3 ** stage
    return stage


def burda_lr(lr: float, epoch: int) -> float:
    """The learning rate of Burda et al.'s schedule: ``lr * 10^(-i/7)`` in stage i."""
    return lr * 10.0 ** (-burda_stage(epoch) / 7)


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


def fit(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, explicit: set[str] | None = None,
        on_epoch: Callable[[int, CVAE, dict], None] | None = None) -> TrainResult:
    """Train a model as ``config`` says, writing the run folder every epoch.

    With ``resume`` the run in ``config.out`` goes on from its last epoch with its saved settings;
    ``explicit`` names the settings the user gave (default: those that differ from the defaults),
    of which only run-length and execution settings may change. ``on_epoch(epoch, model, row)``,
    when given, is called on rank 0 after each epoch's metrics row is written (its time is not
    counted in the row's ``seconds``) to log extra figures; when it returns True training stops
    there (a sweep pruning the run, a target loss reached).

    Under ``torchrun`` this joins the other processes (and leaves the process group at the end).
    """
    with _processes(config.device) as (ranks, device), _flushed_denormals():
        return _fit(config, ranks, device, resume=resume, overwrite=overwrite, explicit=explicit, on_epoch=on_epoch)


def _fit(config: TrainConfig, ranks: Ranks, device: torch.device, *, resume: bool, overwrite: bool,
         explicit: set[str] | None, on_epoch) -> TrainResult:
    # -- the settings and the data -------------------------------------------------------------------
    if resume:
        if not config.out:
            raise CvaeError("--resume needs --out RUN, the run folder to continue")
        given = config
        config = _on_main(ranks, lambda: _resumed_config(TrainConfig.from_dict(read_config(given.out)["train"]),
                                                          given, explicit))
    config = config.replace(precision=resolve_precision(config.precision, device),
                            stream=config.stream or _too_big_for_memory(config.data, device))
    if config.batch_size % ranks.world:
        raise CvaeError(f"--batch-size {config.batch_size} is the batch of all {ranks.world} processes together; "
                        f"make it a multiple of {ranks.world}")
    torch.manual_seed(config.seed)

    if config.stream:
        if config.binarize != "none":
            raise CvaeError("--binarize needs the data in memory; binarize the .npy file beforehand or drop --stream")
        data = load_npy_stream(config.data, condition=config.condition, val_fraction=config.val_fraction,
                               seed=config.seed, limit=config.limit)
    else:
        data = load_data(config.data, data_dir=config.data_dir, condition=config.condition,
                         val_fraction=config.val_fraction, seed=config.seed, binarize=config.binarize,
                         limit=config.limit, data_layout=config.data_layout, image_size=_image_size(config.image_size))
    model_config = model_config_for(config, data)
    run_dir = _on_main(ranks, _run_folder, config, data.name, resume, overwrite)
    config = config.replace(out=str(run_dir))

    # -- the model, the optimizer and, on --resume, their saved state ---------------------------------
    model = CVAE(model_config).to(device)
    if data.standardize:
        model.x_loc.copy_(torch.from_numpy(data.loc))
        model.x_scale.copy_(torch.from_numpy(data.scale))
    opt = _optimizer(model, config, device)
    start_epoch, best_val, bad_epochs, best_state = 0, math.inf, 0, None
    if resume:
        state = _on_main(ranks, _read_trainer_state, run_dir)
        start_epoch, best_val, bad_epochs = _restore(state, model, opt, ranks.rank)
        if start_epoch >= config.epochs:
            raise CvaeError(f"{run_dir} has already trained {start_epoch} epochs; pass --epochs N with N > {start_epoch} to go on")
    elif ranks.rank:
        torch.manual_seed(config.seed + ranks.rank)  # its own noise; the weights come from rank 0
    step_model = model
    if ranks.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel
        constant_buffers = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                            else "broadcast_buffers": False}  # x_loc, x_scale never change: sync them once
        step_model = ddp(model, device_ids=[device] if device.type == "cuda" else None, **constant_buffers)
    if config.compile:
        step_model = torch.compile(step_model)

    # -- the data: on the device once, or read from its memory map a chunk at a time -----------------
    schema = data.schema
    x_train = data.train.x.to(device)
    c_train = schema.encode(data.train.y).to(device) if schema else None
    dynamic = config.binarize == "dynamic"
    evals = {}
    for name, part in (("val", data.val), ("test", data.test)):
        if part is not None and ranks.main:
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
        "execution": {"processes": ranks.world, "device": str(device), "threads": torch.get_num_threads(),
                      "native_bfloat16": native_bfloat16(device)},
        "status": "running",
    }
    metrics_path = run_dir / "metrics.jsonl"
    writer = None
    if ranks.main:
        write_json(run_dir / "config.json", info)
        _truncate_metrics(metrics_path, start_epoch)
        writer = _tensorboard(run_dir) if config.tensorboard else None

    # -- the loop: each process takes every world-th example of the epoch's order --------------------
    n, batch = len(x_train), config.batch_size // ranks.world
    n_used = n - n % ranks.world  # the same number of examples for every process
    steps = math.ceil(n_used / config.batch_size)
    chunk = n_used if isinstance(x_train, torch.Tensor) else max(batch, CHUNK_BYTES // x_train.row_bytes // batch * batch)
    bar = _progress(config, steps) if ranks.main else None
    stopped_early = False
    cosine = config.lr_schedule == "cosine"
    for epoch in range(start_epoch, config.epochs):
        if config.lr_schedule == "burda":
            for group in opt.param_groups:
                group["lr"] = burda_lr(config.lr, epoch)
        t0 = time.perf_counter()
        model.train()
        order = _epoch_order(n, config.seed, epoch)[:n_used][ranks.rank::ranks.world]
        sums = torch.zeros(2, device=device)  # reconstruction, KL: summed over examples on the device
        if bar is not None:
            bar.reset(total=steps)
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
        for step, (xb, cb) in enumerate(_batches(x_train, c_train, order, batch, chunk, device, dynamic)):
            kl_w = kl_warmup(epoch + step / steps, config.kl_warmup)
            if cosine:
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(config.lr, (epoch * steps + step) / (config.epochs * steps))
            with _autocast(device, config.precision):
                if config.objective == "iwae":
                    out = iwae(step_model, xb, cb, k=config.iwae_k)
                else:
                    out = elbo(step_model, xb, cb, beta=config.beta, kl_weight=kl_w)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sums.add_(torch.stack([out.reconstruction, out.kl]).detach(), alpha=len(xb))
            if bar is not None:
                bar.update()
                if step % REFRESH_STEPS == 0:
                    bar.set_postfix(loss=f"{out.loss.item():.2f}")
        if ranks.world > 1:
            dist.all_reduce(sums)
        train_rec, train_kl = (sums / n_used).tolist()
        train_loss = train_rec + train_kl
        if not math.isfinite(train_loss):
            raise CvaeError(f"training diverged in epoch {epoch + 1} (the loss is {train_loss}); the run folder keeps "
                            f"epoch {epoch}. Lower --lr, set --grad-clip 1.0, or check the data for extreme values")
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_reconstruction": train_rec, "train_kl": train_kl,
               "kl_weight": kl_warmup(epoch + 1, config.kl_warmup), "seconds": seconds}
        row = _on_main(ranks, _with_validation, row, model, evals, config.precision)
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.2f}", **({"val": f"{row['val_loss']:.2f}"} if "val_loss" in row else {}))
        # early stopping on the validation loss (the negative ELBO)
        if "val_loss" in row and config.patience:
            if row["val_loss"] < best_val:
                best_val, bad_epochs = row["val_loss"], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
        rng = _gather(ranks, _rng_states())
        if ranks.main:
            _save_epoch(run_dir, model, opt, epoch + 1, best_val, bad_epochs, row, metrics_path, writer, rng)
        if on_epoch is not None and _on_main(ranks, on_epoch, epoch + 1, model, row):
            stopped_early = True  # the caller asked to stop (a sweep pruning this run, a target reached)
            break
        if config.patience and bad_epochs >= config.patience:
            stopped_early = True
            if best_state is not None:
                model.load_state_dict(best_state)
                if ranks.main:
                    save_tensors(run_dir / "model.safetensors", model.state_dict(), {"format": FORMAT})
            break
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()

    # -- the final figures ---------------------------------------------------------------------------
    def final_figures() -> dict:
        summary = {"epochs": _epochs_done(metrics_path), "stopped_early": stopped_early, "precision": config.precision}
        for name, (x, c) in evals.items():
            summary[name] = evaluate_elbo(model, x, c, precision="float32")
        summary["train"] = evaluate_elbo(model, x_train[:10000], c_train[:10000] if c_train is not None else None)
        summary["seconds_per_epoch"] = _median_seconds(metrics_path)
        write_json(run_dir / "summary.json", summary)
        info["status"] = "stopped early" if stopped_early else "finished"
        info["summary"] = summary
        write_json(run_dir / "config.json", info)
        return summary

    summary = _on_main(ranks, final_figures)
    info["summary"] = summary
    model.eval()
    model.run_dir, model.run_config = run_dir, info
    return TrainResult(run_dir, model, data, config, summary, ranks.rank)


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's permutation of the examples: the same in every process, and again on --resume."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return torch.randperm(n, generator=g)


def _batches(x, c, order: torch.Tensor, batch: int, chunk: int, device: torch.device, binarize: bool):
    """Batches of ``(x, c)`` in ``order``. ``chunk`` examples (a multiple of ``batch``) are gathered at a
    time: the whole epoch for data on the device, a few megabytes for a memory-mapped file."""
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        xs = x[idx if isinstance(x, ArrayRows) else idx.to(x.device)].to(device, non_blocking=True)
        cs = c[idx.to(c.device)] if c is not None else None
        if binarize:
            xs = torch.bernoulli(xs)
        for i in range(0, len(idx), batch):
            yield xs[i:i + batch], (cs[i:i + batch] if cs is not None else None)


def _with_validation(row: dict, model: CVAE, evals: dict, precision: str) -> dict:
    if "val" in evals:
        v = evaluate_elbo(model, *evals["val"], precision=precision)
        row = dict(row, val_loss=v["loss"], val_reconstruction=v["reconstruction"], val_kl=v["kl"])
    return row


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


def _too_big_for_memory(source: str, device: torch.device) -> bool:
    """A ``.npy`` file whose examples, as float32, would take more than half the free memory."""
    size = npy_float32_bytes(source)
    return size is not None and size > _free_memory(device) / 2


def _free_memory(device: torch.device) -> int:
    """Bytes free on the device: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _run_folder(config: TrainConfig, data_name: str, resume: bool, overwrite: bool) -> Path:
    run_dir = Path(config.out) if config.out else default_out(config, data_name)
    if not resume and (run_dir / "config.json").exists() and not overwrite:
        raise CvaeError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                        "or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


RESUMABLE = {"epochs", "patience", "progress", "tensorboard", "device", "data_dir", "precision", "compile", "stream"}


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


# -- the trainer state: what an exact --resume needs ------------------------------------------------

def _rng_states() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _read_trainer_state(run_dir: Path) -> dict:
    path = run_dir / "trainer_state.safetensors"
    if not path.is_file():
        raise CvaeError(f"{run_dir} has no trainer_state.safetensors to resume from; start a new run instead")
    tensors = load_tensors(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["state"])
    return {"tensors": tensors, "meta": meta}


def _restore(state: dict, model: CVAE, opt: torch.optim.Optimizer, rank: int) -> tuple[int, float, int]:
    tensors, meta = state["tensors"], state["meta"]
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    _load_optimizer(opt, tensors, meta["param_groups"])
    suffix = f".{rank}" if rank else ""  # rank 0's states keep the names of a single-process run
    if f"rng.cpu{suffix}" in tensors:
        torch.set_rng_state(tensors[f"rng.cpu{suffix}"])
    else:  # resumed with more processes than saved it
        torch.manual_seed(meta["epoch"] * 1000 + rank)
    if torch.cuda.is_available() and f"rng.cuda{suffix}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"])
    return meta["epoch"], meta["best_val"], meta["bad_epochs"]


def _save_epoch(run_dir, model, opt, epoch, best_val, bad_epochs, row, metrics_path, writer, rng) -> None:
    state = model.state_dict()
    save_tensors(run_dir / "model.safetensors", state, {"format": FORMAT})
    tensors, groups = _optimizer_tensors(opt)
    tensors.update({f"model.{k}": v for k, v in state.items()})
    for rank, states in enumerate(rng):
        for kind, value in states.items():
            tensors[f"rng.{kind}" + (f".{rank}" if rank else "")] = value
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


# -- execution: processes, floating-point mode ------------------------------------------------------

@contextmanager
def _processes(device_name: str):
    """Join the processes ``torchrun`` started (WORLD_SIZE > 1): gloo on CPU, NCCL on GPU, one GPU
    per process (LOCAL_RANK). Yields this process's :class:`Ranks` and device."""
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Ranks(), device
        return
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise CvaeError(f"process {local} on this machine has no GPU of its own ({torch.cuda.device_count()} "
                            "found); start at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size()), device
    finally:
        if started:
            dist.destroy_process_group()


def _on_main(ranks: Ranks, fn, *args):
    """``fn(*args)`` on rank 0; its result (or its CvaeError) handed to every process."""
    if ranks.world == 1:
        return fn(*args)
    box = [None]
    if ranks.main:
        try:
            box[0] = (True, fn(*args))
        except CvaeError as e:
            box[0] = (False, str(e))
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise CvaeError(value)
    return value


def _gather(ranks: Ranks, obj) -> list:
    """``obj`` of every process, in rank order."""
    if ranks.world == 1:
        return [obj]
    out = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def _flushed_denormals():
    """Flush denormal floats to zero while training: tiny gradients and Adam moments otherwise take
    the CPU's slow path. The setting is process-wide, so it is switched off again afterwards."""
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)
