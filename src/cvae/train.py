"""The training loop: reads top to bottom, writes the run folder every epoch.

The data set lives on the device as one tensor; an epoch draws one permutation and gathers its rows
a batch at a time on a CPU (the whole epoch at once on a GPU). A ``.npy`` file too large for memory
(or with ``stream``) stays in its memory map and is read a chunk of rows at a time, giving exactly
the batches the in-memory path gives.

The step is lean: fused Adam, denormal floats flushed to zero in every thread, bfloat16 autocast
where the hardware multiplies bfloat16 natively (``precision: auto``; the loss stays float32), optional
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
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import aggregate
from .config import TrainConfig, model_settings, part_options
from .data import EVALUATION_SEED, DataSplits, fixed_binarization, load_data, parse_image_size
from .data.core import file_stamp, local_path
from .data.stream import CHUNK_BYTES, ArrayRows, load_npy_stream, npy_float32_bytes
from .errors import CvaeError, CvaeWarning
from .fused import AdamStep, fused_step_for
from .likelihoods.base import guided_likelihoods
from .lock import LOCK_NAME, hold, let_go, remove_orphans
from .memory import free_memory
from .models import CVAE, MODELS, PRESETS, ModelConfig, RunInfo, build_model
from .objectives import build_objective, elbo
from .probe import choose
from .runs import (
    FORMAT,
    FORMAT_VERSION,
    atomic_write,
    first_nonfinite,
    load_tensors,
    read_config,
    read_metrics,
    resolve_device,
    save_aggregate,
    save_tensors,
    weights_metadata,
    write_json,
)
from .threads import ThreadGovernor, kept_thread_count, restart_openmp_workers

REFRESH_STEPS = 50
# a loss per example past this many nats is a diverged run, finite or not (a learning rate of 0.5 gave 6e26,
# and the fit of the codes after the last epoch then failed); no data set's honest loss comes near it
DIVERGED = 1e15


class FusedNotCovered(CvaeError):
    """--step fused asked for a run the fused step does not cover; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(f"--step fused does not cover this run: {reason}; use --step auto (the generic path "
                         "where the fused step does not cover the run)")
        self.reason = reason


@dataclass
class TrainResult:
    run_dir: Path
    model: CVAE
    data: DataSplits
    config: TrainConfig
    summary: dict
    rank: int = 0  # this process's rank under torchrun; only rank 0 writes the run folder

    def __repr__(self) -> str:  # not the tensors of the model and the data
        figures = {k: self.summary.get(k) for k in ("epochs", "test", "val") if k in self.summary}
        return f"TrainResult(run_dir={str(self.run_dir)!r}, model={type(self.model).__name__}, summary={figures})"


@dataclass
class Ranks:
    """This process's place among the processes ``torchrun`` started (0 of 1 without it)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


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


# The default network of a conditional model: the condition at every layer and 8 latents, so that
# samples are of the class asked for (benchmarks/defaults.py: 94.7% of MNIST samples read as the
# requested digit after 10 epochs at temperature 1, 96.7% at the default 0.9, against 86.5% and
# 90.7% with the plain VAE's 20 latents and the condition at the input). Flags override it.
CONDITIONED_DEFAULTS = {"mlp-400": {"latent_dim": 8, "condition_at": -1}}
# The default network on data with factors of variation (dSprites, color-shapes, a file with --factors): the
# disentanglement literature's 10 latents and two hidden layers (Chen et al. 2018; Locatello et al. 2019).
# Measured with `cvae train --data dsprites` and nothing else but the objective (10 epochs, README
# "Disentanglement"): beta-TCVAE's MIG 0.154 (0.124-0.182, 3 seeds) against the plain VAE's 0.055
# (0.039-0.086), where mlp-400's one layer and 20 latents gave 0.052 against 0.009 (seed 0). Flags override it.
FACTOR_DEFAULTS = {"mlp-400": {"latent_dim": 10, "hidden": [400, 400]}}
# Classifier-free guidance by default for images with a categorical condition (model classes and
# likelihoods that have it), weight 2: benchmarks/guidance.py measured W 0-4 on Fashion-MNIST (the
# README recipe, 20 epochs) and MNIST (these defaults, 10 epochs). W 2 is the weight whose largest
# shortfall from the best weight on either data set is smallest: samples read as their class 0.890
# (best 0.938) and 0.947 (best 0.962, unguided without dropout), precision the best on Fashion-MNIST
# and 4.6 points below the best on MNIST (W 3: 12.3 points below), Frechet distance the best on MNIST.
# --condition-dropout 0 turns it off; --guidance W (at training: the run's default; at sampling:
# this sample's) changes the weight.
GUIDED_DEFAULTS = {"condition_dropout": 0.2, "guidance": 2.0}
# A conditioned run of a class that can be steered (the sequence model's prefix predictor) is steered by
# default with this weight unless --steer says otherwise: measured on QM9 and MOSES (benchmarks/molecules.py:
# logP error down by a third, at no cost in validity, uniqueness or novelty) and text (benchmarks/text.py:
# conditional accuracy 0.58 -> 0.83); weight 4 did worse than 2 on MOSES.
STEER_DEFAULT = 2.0


def guided_by_default(data: DataSplits, model_class: str, likelihood: str) -> bool:
    """Whether a run on this data gets GUIDED_DEFAULTS when its flags leave condition dropout out."""
    return (data.kind == "image" and bool(data.schema) and bool(data.schema.categorical_blocks())
            and MODELS.get(model_class).guidable and MODELS.get(model_class).guided_by_default
            and likelihood in guided_likelihoods())


def check_guided_likelihood(model_class: str, settings: dict) -> None:
    """Refuse, before training, a run trained for guidance whose likelihood cannot be guided: every
    sample would fail after the training. (A loaded run is not refused: it still reconstructs.)"""
    cls, likelihood = MODELS.get(model_class), settings.get("likelihood", "bernoulli")
    if (settings.get("condition_dropout") and cls.guidable and cls.guided_by_likelihood
            and likelihood not in guided_likelihoods()):
        raise CvaeError(f"--condition-dropout trains for classifier-free guidance, which the {likelihood} likelihood "
                        f"does not have (it is for {', '.join(guided_likelihoods())}); choose one of those with "
                        "--likelihood, or --condition-dropout 0 to train without guidance")


def model_class_for(config: TrainConfig, data: DataSplits) -> str:
    """The model class a run trains: --model, else m2 (semi-supervised) when some training examples
    lack a label, else the CVAE. A class that cannot infer a missing label refuses such data."""
    name = (config.model or PRESETS[config.preset].get("model_class")
            or data.meta.get("model", {}).get("model_class") or ("m2" if data.semi_supervised else "cvae"))
    trained_by = MODELS.get(name).trained_by
    if trained_by != "cvae train":
        raise CvaeError(f"the {name} model is trained with `{trained_by}`, not `cvae train`; see `{trained_by} --help`")
    if data.semi_supervised and not getattr(MODELS.get(name), "fills_missing", False):
        missing = int(data.schema.missing(data.train.y).sum())
        raise CvaeError(f"{missing:,} of the {len(data.train):,} training examples lack a label, which the {name} model "
                        "needs for every example; train the semi-supervised model (leave --model out, or --model m2), "
                        "or drop those examples")
    return name


def objective_for(config: TrainConfig, model_class: str) -> str:
    """--objective, else the model class's own (``default_objective``), else the ELBO."""
    return config.objective or getattr(MODELS.get(model_class), "default_objective", "elbo")


def model_config_for(config: TrainConfig, data: DataSplits) -> ModelConfig:
    model_class = model_class_for(config, data)
    config_class = MODELS.get(model_class).config_class
    settings = dict(PRESETS[config.preset])
    if data.schema:
        settings.update(CONDITIONED_DEFAULTS.get(config.preset, {}))
    if data.factor_names:
        settings.update(FACTOR_DEFAULTS.get(config.preset, {}))
    settings.update(likelihood=data.default_likelihood)
    if data.binary and not data.standardize:
        settings["likelihood"] = "bernoulli"
    settings.update({k: v for k, v in data.meta.get("model", {}).items() if k != "model_class"})  # e.g. a vocabulary
    settings = model_settings(settings, config.model_overrides(), model_class)
    settings.pop("model_class")
    if config.condition_dropout is None and guided_by_default(data, model_class, settings.get("likelihood", "bernoulli")):
        settings.update(GUIDED_DEFAULTS)
    for name in ("word_dropout", "condition_dropout", "guidance"):
        if getattr(config, name) is not None:
            settings[name] = getattr(config, name)
    steer = config.steer
    if steer is None and data.schema and MODELS.get(model_class).steerable:
        steer = STEER_DEFAULT
    if steer is not None:  # steering needs the network that steers: a prefix predictor trained beside the VAE
        settings.update(steer=steer, prefix_predictor=bool(steer))
    check_guided_likelihood(model_class, settings)
    if settings.get("arch") == "conv" and len(data.data_shape) == 1:
        raise CvaeError(
            f"the conv network needs images or signals, but {data.name!r} is a table of {data.data_shape[0]} "
            "features; use --preset mlp-400 (or --data-layout signal for rows that are 1-D signals)"
        )
    return config_class(data_shape=data.data_shape, schema=data.schema.to_dict(), standardize=data.standardize,
                        model_class=model_class, **settings)


def with_class_defaults(config: TrainConfig, model_class: str, data: DataSplits,
                        explicit: set[str] = frozenset()) -> TrainConfig:
    """``config`` with the training settings that the model class sets by default for ``data``
    (``training_defaults``, e.g. the hierarchical model's KL warm-up and gradient clipping, the
    semi-supervised model's number of epochs on a small data set) wherever the user left them at their
    neutral value (an objective's) or default (any other setting), did not give them (``explicit``:
    ``--free-bits 0`` turns the class's free bits off) and, for an objective's setting, the objective
    reads it."""
    defaults = MODELS.get(model_class).training_defaults(data)
    if not defaults:
        return config
    from .objectives import OBJECTIVES
    from .objectives.base import OBJECTIVE_SETTINGS

    neutral = {key: value for key, value, _ in OBJECTIVE_SETTINGS}
    uses = OBJECTIVES.get(objective_for(config, model_class)).uses
    plain = TrainConfig()
    changes = {}
    for key, value in defaults.items():
        if key in explicit or key in neutral and key not in uses:
            continue
        if getattr(config, key) in (None, neutral[key] if key in neutral else getattr(plain, key)):
            changes[key] = value
    return config.replace(**changes) if changes else config


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
                  precision: str = "float32", objective=None) -> dict[str, float]:
    """Negative ELBO (one sample), reconstruction and KL in nats per example: the bound that
    ``objective`` reports for held-out data (:meth:`~cvae.objectives.Objective.bound`; the ELBO).

    ``x`` is a tensor on any device or the :class:`~cvae.data.stream.ArrayRows` of a streamed file.
    """
    bound = objective.bound if objective is not None else elbo
    device = next(model.parameters()).device
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    with _autocast(device, precision):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            cb = None if c is None else c[i:i + batch_size].to(device)
            out = bound(model, xb, cb)
            sums += torch.stack([out.neg_elbo, out.reconstruction, out.kl]).double() * len(xb)
    model.train()
    loss, rec, kl = (sums / len(x)).tolist()
    return {"loss": loss, "reconstruction": rec, "kl": kl}


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
    """Adam over the model's parameter groups; a group's ``lr_scale`` scales --lr (and its schedule) for it."""
    groups = [dict(g, lr=config.lr * g.get("lr_scale", 1.0)) for g in model.parameter_groups()]
    kw = dict(lr=config.lr, weight_decay=config.weight_decay)
    try:
        return torch.optim.Adam(groups, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(groups, foreach=True, **kw)


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
    The global random-number state is seeded for the run and restored afterwards.
    """
    with _processes(config.device) as (ranks, device), _flushed_denormals(), _own_rng(device), kept_thread_count():
        trainer = Trainer.prepare(config, ranks, device, resume=resume, overwrite=overwrite, explicit=explicit)
        try:
            stopped_early = trainer.train(on_epoch)
            return trainer.finish(stopped_early)
        finally:
            if ranks.main:
                let_go(trainer.run_dir)


class Trainer:
    """One training run in three steps: :meth:`prepare` (settings, data, run folder, model and, on
    --resume, its saved state), :meth:`train` (the epochs) and :meth:`finish` (the final figures)."""

    def __init__(self, config: TrainConfig, ranks: Ranks, device: torch.device, data: DataSplits, run_dir: Path,
                 resume: bool, replacing: bool = False, governor: ThreadGovernor | None = None, *,
                 explicit: set[str] = frozenset()):
        self.config, self.ranks, self.device, self.data, self.run_dir = config, ranks, device, data, run_dir
        self.governor = governor  # one CPU thread per core the other processes leave free, set before each epoch
        # --overwrite of a trained run: the old run stays whole until the new one has a finite first epoch
        self.replacing = replacing
        # the class's training defaults first: some of them (word dropout) are the model's settings too. A
        # resumed run keeps the settings it saved (a run saved before a default changed trains on as it began)
        if not resume:
            self.config = config = with_class_defaults(config, model_class_for(config, data), data, explicit)
        self.model_config = model_config_for(config, data)
        if resume and not (explicit and "guidance" in explicit):  # the default weight is the user's to edit
            saved = (read_config(run_dir).get("model") or {}).get("guidance") if (run_dir / "config.json").is_file() else None
            if isinstance(saved, (int, float)) and not isinstance(saved, bool) and saved != self.model_config.guidance:
                self.model_config = replace(self.model_config, guidance=float(saved))
        self.info = self._run_info()
        self.model = build_model(self.model_config, run=RunInfo(run_dir, self.info)).to(device)
        if data.standardize:
            self.model.set_units(torch.from_numpy(data.loc), torch.from_numpy(data.scale))
        self.opt = _optimizer(self.model, config, device)
        self.adam_step = AdamStep(self.opt)  # opt.step() without its Python wrapper where that is exact
        self.objective = build_objective(objective_for(config, self.model_config.model_class), config)
        if self.model.fills_missing and ranks.world > 1:
            raise CvaeError("the semi-supervised model trains in one process only for now; run it without torchrun")
        if (data.semi_supervised or self.model.fills_missing) and not self.objective.labelled_batches:
            raise CvaeError(f"--objective {self.objective.name} cannot train the semi-supervised model (labels missing, "
                            "a classifier q(y | x) to train); leave --objective out (it is m2 for this model)")
        labelled = len(data.train) - int(data.schema.missing(data.train.y).sum()) if data.schema else len(data.train)
        self.info["objective"] = {"name": self.objective.name, **self.objective.attach(len(data.train), labelled)}
        self.start_epoch, self.best_val, self.bad_epochs, self.best_state = 0, math.inf, 0, None
        if resume and _on_main(ranks, _has_epochs, run_dir):
            self._restore()
        elif ranks.rank:
            torch.manual_seed(config.seed + ranks.rank)  # its own noise; the weights come from rank 0
        self.step_model = self._wrapped_model()
        self._place_data()
        self.probed_step = self._probe() if config.precision == "auto" else None
        self.fused = self._fused_step()
        # the native step's Adam also writes the products' bfloat16 weights, and, where nothing else reads
        # the gradients (no --grad-clip, no skipping of non-finite steps), reads the weights' bfloat16
        # gradients where the step left them instead of a float32 copy in .grad
        self.defer_grads = False
        if self.fused is not None and self.fused.native:
            self.adam_step.native = self.fused
            self.defer_grads = not config.grad_clip and not getattr(self.model, "skips_nonfinite_steps", False)
        self.metrics_path = run_dir / "metrics.jsonl"
        self.writer = self._open_logs()

    @classmethod
    def prepare(cls, config: TrainConfig, ranks: Ranks, device: torch.device, *, resume: bool, overwrite: bool,
                explicit: set[str] | None) -> Trainer:
        # it looks at the machine from here on (loading the data is the first window)
        governor = ThreadGovernor() if ranks.world == 1 and device.type == "cpu" else None
        config = _settings(config, ranks, device, resume, explicit)
        if config.out and ranks.main:  # a run this would lose is refused before the data are read (minutes)
            _check_run_folder(Path(config.out), resume, overwrite)
        torch.manual_seed(config.seed)
        data = _load(config)
        if resume:  # the same data: another file of the same name gave a run trained on two data sets
            saved = _on_main(ranks, lambda: read_config(config.out).get("data", {}))
            saved = saved if isinstance(saved, dict) else {}
            was = saved.get("n_train")
            if isinstance(was, int) and was != len(data.train):
                raise CvaeError(f"{config.data} now gives {len(data.train):,} training examples, but the run in "
                                f"{config.out} trained on {was:,}: resume with the data it was trained on")
            stamp, now = saved.get("stamp"), file_stamp(config.data)
            if ranks.main and isinstance(stamp, dict) and now is not None and stamp != now:
                warnings.warn(f"{config.data} was changed since the run last trained (its size or modification time "
                              "differ from those recorded); the run goes on with the file as it is now", CvaeWarning,
                              stacklevel=2)
        run_dir, replacing, created = _on_main(ranks, _run_folder, config, data.name, resume, overwrite)
        try:
            return cls(config.replace(out=str(run_dir)), ranks, device, data, run_dir, resume, replacing, governor,
                       explicit=explicit or set())
        except BaseException:
            if ranks.main:
                let_go(run_dir)
                if created and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
                    shutil.rmtree(run_dir)  # refused before anything was written: leave no empty folder
            raise

    # -- preparing -----------------------------------------------------------------------------------
    def _run_info(self) -> dict:
        data, config = self.data, self.config
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model_config.to_dict(),
            "train": config.to_dict(),
            "data": {
                "name": data.name, "kind": data.kind, "source": config.data, "data_shape": list(data.data_shape),
                **({"path": path} if (path := local_path(config.data)) else {}),
                **({"stamp": stamp} if (stamp := file_stamp(config.data)) else {}),
                "binary": data.binary, "standardize": data.standardize, "n_train": len(data.train),
                "n_val": len(data.val) if data.val else 0, "n_test": len(data.test) if data.test else 0,
                **({"labelled": data.labels_seen()} if data.schema.categorical_blocks() else {}),
                **{k: v for k, v in data.meta.items() if k in ("features", "whole_features", "sequences")},
            },
            "execution": {"processes": self.ranks.world, "device": str(self.device),
                          "threads": torch.get_num_threads(), "native_bfloat16": native_bfloat16(self.device)},
            "status": "running",
        }

    def _restore(self) -> None:
        state = _on_main(self.ranks, _read_trainer_state, self.run_dir)
        self.start_epoch, self.best_val, self.bad_epochs = _restore(state, self.model, self.opt, self.ranks.rank)
        self.objective.load_state_tensors({k[len("objective."):]: v for k, v in state["tensors"].items()
                                           if k.startswith("objective.")})
        if self.start_epoch >= self.config.epochs:
            raise CvaeError(f"{self.run_dir} has already trained {self.start_epoch} epochs; pass --epochs N with "
                            f"N > {self.start_epoch} to go on")

    def _wrapped_model(self):
        step_model = self.model
        if self.ranks.world > 1:
            ddp = torch.nn.parallel.DistributedDataParallel
            constant_buffers = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                                else "broadcast_buffers": False}  # x_loc, x_scale never change: sync them once
            step_model = ddp(self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                             **constant_buffers)
        return torch.compile(step_model) if self.config.compile else step_model

    def _place_data(self) -> None:
        """The data on the device once, or read from its memory map a chunk at a time."""
        data, schema, device, ranks = self.data, self.data.schema, self.device, self.ranks
        self.x_train = data.train.x.to(device)
        self.c_train = schema.encode(data.train.y).to(device) if schema else None
        self.dynamic = self.config.binarize == "dynamic"
        self.evals = {}
        for name, part in (("val", data.val), ("test", data.test)):
            if part is not None and ranks.main:
                x = fixed_binarization(part.x, EVALUATION_SEED) if self.dynamic else part.x
                self.evals[name] = (x.to(device), schema.encode(part.y).to(device) if schema else None)
        # each process takes every world-th example of the epoch's order
        self.n, self.batch = len(self.x_train), self.config.batch_size // ranks.world
        self.n_used = self.n - self.n % ranks.world  # the same number of examples for every process
        self.steps = math.ceil(self.n_used / self.config.batch_size)
        rows = self.x_train.row_bytes if isinstance(self.x_train, ArrayRows) else 0
        # rows gathered at a time: a batch on a CPU (it stays in the cache for the step that reads it;
        # gathering the whole epoch first cost about 4% of a fused step's epoch), the whole epoch on an
        # accelerator (one gather), a few megabytes from a memory-mapped file
        self.chunk = (max(self.batch, CHUNK_BYTES // rows // self.batch * self.batch) if rows else
                      self.batch if device.type == "cpu" else self.n_used)
        # semi-supervised data: every batch also gets labelled rows (a few labels among many examples
        # would otherwise be met once an epoch), up to a batch of them, drawn in rounds of all of them
        self.labelled_rows = None
        if self.objective.labelled_batches and data.semi_supervised:
            self.labelled_rows = torch.nonzero(~schema.missing(data.train.y)).flatten()
            self.labelled_batch = min(len(self.labelled_rows), self.batch)

    def _probe(self) -> str:
        """--precision auto on one CPU process: precision, step and threads timed on the model's own
        shapes (cvae.probe), recorded in config.json; returns the step chosen."""
        config = self.config
        steps = ("fused", "autograd") if config.step == "auto" else (config.step,)
        if config.compile:
            steps = ("autograd",)
        precisions = ("float32", "bfloat16") if native_bfloat16(self.device) else ("float32",)
        # the cores other processes leave free now (the governor has watched since the data began to load)
        ceiling = self.governor.update() if self.governor is not None else torch.get_num_threads()
        c = self.c_train[:self.batch] if self.c_train is not None else None
        try:
            answer = choose(self.model, self.objective, self.x_train[:self.batch], c, batch_size=self.batch,
                            device=self.device, steps=steps, precisions=precisions, threads=ceiling, lr=config.lr)
        except (RuntimeError, ValueError, CvaeError) as e:  # a model that cannot train on one plain batch
            answer = {"step": config.step, "precision": resolve_precision("auto", self.device),
                      "threads": torch.get_num_threads(), "error": f"{type(e).__name__}: {str(e)[:200]}"}
        self.config = config.replace(precision=answer["precision"])
        self.info["train"]["precision"] = answer["precision"]
        torch.set_num_threads(answer["threads"])
        if self.governor is not None and answer["threads"] < ceiling:  # fewer threads measured faster: the ceiling
            self.governor.ceiling = answer["threads"]
        self.info["execution"].update(threads=answer["threads"], probe=answer)
        return answer["step"]

    def _fused_step(self):
        """The hand-written step (cvae.fused) where it covers this run and --step allows it, else None
        (the generic autograd path); config.json's execution says which, and why not."""
        config, execution = self.config, self.info["execution"]
        step, reason = None, "--step autograd"
        rates = (execution.get("probe") or {}).get("rates") or {}
        if config.step == "auto" and self.probed_step == "autograd" and any(k.startswith("fused") for k in rates):
            reason = "the probe measured the autograd path faster for this model (execution.probe)"
        elif config.step != "autograd":
            if self.ranks.world > 1:
                reason = "several processes (DDP) train the model"
            elif config.compile:
                reason = "--compile was asked for"
            else:
                step, reasons = fused_step_for(self.model, self.objective, batch_size=self.batch, device=self.device,
                                               precision=config.precision)
                reason = "; ".join(reasons.values())
        if step is None and config.step == "fused":
            raise FusedNotCovered(reason)
        execution["step"] = "fused-mlp" if step is not None else "autograd"
        if step is None:
            execution["step_reason"] = reason
        else:  # the native (C++) form of the step, or why the Python one runs
            execution["native"] = True if step.native else step.native_why
        return step

    def _open_logs(self):
        if not self.ranks.main or self.replacing:
            return None
        write_json(self.run_dir / "config.json", self.info)
        _truncate_metrics(self.metrics_path, self.start_epoch)
        return _tensorboard(self.run_dir) if self.config.tensorboard else None

    def _replace_old_run(self) -> None:
        """--overwrite: the new run's first epoch is finite, so the old run's files go now."""
        for name in RUN_FILES:
            path = self.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.replacing = False
        self.writer = self._open_logs()

    # -- training ------------------------------------------------------------------------------------
    def train(self, on_epoch=None) -> bool:
        """Every epoch: train, validate, write the run folder; True when stopped early."""
        self.bar = _progress(self.config, self.steps) if self.ranks.main else None
        try:
            for epoch in range(self.start_epoch, self.config.epochs):
                if self.governor is not None:
                    self.governor.update()
                stop = self.end_epoch(epoch, self.train_epoch(epoch), on_epoch)
                if stop is not None:
                    return stop
            return False
        except KeyboardInterrupt:  # the folder keeps its last finished epoch, and says so
            self._mark_interrupted()
            raise
        finally:
            self.close()

    def _mark_interrupted(self) -> None:
        done = _epochs_done(self.metrics_path) if self.metrics_path.is_file() else 0
        if not self.ranks.main or self.replacing or done == 0 or not (self.run_dir / "config.json").is_file():
            return  # nothing of this run was saved (an overwrite keeps the old run as it was)
        self.info["status"] = (f"interrupted after epoch {done} of {self.config.epochs}; the weights are that epoch's "
                               "(continue with --resume)")
        write_json(self.run_dir / "config.json", self.info)

    def close(self) -> None:
        if getattr(self, "bar", None) is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def end_epoch(self, epoch: int, row: dict, on_epoch=None) -> bool | None:
        """Validate, check, write the run folder for the epoch just trained; True when training stops
        here (the caller asked to, or patience ran out), else None."""
        row = _on_main(self.ranks, _with_validation, row, self.model, self.evals, self.config.precision,
                       self.objective)
        if getattr(self, "bar", None) is not None:
            self.bar.set_postfix(loss=f"{row['train_loss']:.2f}",
                                 **({"val": f"{row['val_loss']:.2f}"} if "val_loss" in row else {}))
        _on_main(self.ranks, self._check_finite, row)
        if self.replacing and self.ranks.main:
            self._replace_old_run()
        patience_out = self._early_stopping(row)
        rng = _gather(self.ranks, _rng_states())
        if self.ranks.main:
            _save_epoch(self.run_dir, self.model, self.opt, epoch + 1, self.best_val, self.bad_epochs, row,
                        self.metrics_path, self.writer, rng, self.objective.state_tensors())
        if on_epoch is not None and _on_main(self.ranks, on_epoch, epoch + 1, self.model, row):
            return True  # the caller asked to stop (a sweep pruning this run, a target reached)
        if patience_out:
            self._keep_best()
            return True
        return None

    def epoch_batches(self, epoch: int):
        """The epoch's batches (x, c) in its order (and the learning rate of a per-epoch schedule set)."""
        config = self.config
        if config.lr_schedule == "burda":
            _set_lr(self.opt, burda_lr(config.lr, epoch))
        self.model.train()
        order = _epoch_order(self.n, config.seed, epoch)[:self.n_used][self.ranks.rank::self.ranks.world]
        batches = _batches(self.x_train, self.c_train, order, self.batch, self.chunk, self.device, self.dynamic)
        if self.labelled_rows is not None:
            batches = _with_labelled(batches, self.x_train, self.c_train, self.labelled_rows, self.labelled_batch,
                                     (config.seed, epoch, 1 + self.ranks.rank), self.device, self.dynamic)
        return batches

    def before_step(self, epoch: int, step: int) -> None:
        """The learning rate of a per-step schedule."""
        config = self.config
        if config.lr_schedule == "cosine":
            _set_lr(self.opt, cosine_lr(config.lr, (epoch * self.steps + step) / (config.epochs * self.steps)))

    def optimizer_step(self) -> bool:
        """Clip (--grad-clip) and apply the gradients. A model that skips non-finite steps
        (``skips_nonfinite_steps``, e.g. the hierarchical VAE) gets False for a step whose gradient is
        not finite: nothing is applied, and the caller counts it."""
        skips = getattr(self.model, "skips_nonfinite_steps", False)
        if self.config.grad_clip or skips:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip or math.inf)
            if skips and not bool(torch.isfinite(norm)):
                self.opt.zero_grad(set_to_none=True)
                return False
        self.adam_step()
        return True

    def epoch_row(self, epoch: int, sums: torch.Tensor, names: list[str], rows_seen: int, seconds: float,
                  skipped: int | None = None) -> dict:
        """The metrics row of an epoch from the summed figures (reconstruction, KL, the objective's terms),
        with the count of skipped non-finite steps for a model that skips them."""
        rec, kl, *terms = (sums / (rows_seen * self.ranks.world)).tolist()
        return {"epoch": epoch + 1, "train_loss": rec + kl, "train_reconstruction": rec, "train_kl": kl,
                **{f"train_{k}": v for k, v in zip(names, terms)}, **self.objective.schedule(epoch + 1),
                **({"skipped_steps": skipped} if skipped is not None else {}), "seconds": seconds}

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training data; the metrics row (losses are means per example)."""
        config, opt, bar = self.config, self.opt, self.bar
        t0 = time.perf_counter()
        sums, names = None, []  # reconstruction, KL and the objective's terms, summed on the device
        if bar is not None:
            bar.reset(total=self.steps)
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
        rows_seen, skipped = 0, 0
        skips = getattr(self.model, "skips_nonfinite_steps", False)
        for step, (xb, cb) in enumerate(self.epoch_batches(epoch)):
            self.before_step(epoch, step)
            if self.fused is not None:  # loss and gradients written out, straight into the parameters' .grad
                out = self.fused(xb, cb, progress=epoch + step / self.steps, defer_grads=self.defer_grads)
            else:
                with _autocast(self.device, config.precision):
                    out = self.objective(self.step_model, xb, cb, progress=epoch + step / self.steps)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
            if not self.optimizer_step():  # a non-finite gradient: skipped, counted in the metrics row
                skipped += 1
                if bar is not None:
                    bar.update()
                continue
            figures = torch.stack([t.detach().float() for t in (out.reconstruction, out.kl, *out.terms.values())])
            if sums is None:
                sums, names = torch.zeros_like(figures), list(out.terms)
            sums.add_(figures, alpha=len(xb))
            rows_seen += len(xb)
            if bar is not None:
                bar.update()
                if step % REFRESH_STEPS == 0:
                    bar.set_postfix(loss=f"{out.loss.item():.2f}", **{k: f"{v.item():.3g}" for k, v in out.terms.items()})
        if skips and skipped * 2 > self.steps:
            raise CvaeError(f"{skipped} of the {self.steps} steps of epoch {epoch + 1} had a non-finite gradient and were "
                            "skipped; training is not progressing. Lower --lr or --grad-clip, or check the data")
        if self.ranks.world > 1:
            dist.all_reduce(sums)
        return self.epoch_row(epoch, sums, names, rows_seen, time.perf_counter() - t0, skipped if skips else None)

    def _check_finite(self, row: dict) -> None:
        """A diverged epoch (a loss or a weight not finite, or a loss past DIVERGED nats per example) is never
        saved: the run keeps its last good one."""
        epoch = row["epoch"]
        bad = [k for k in ("train_loss", "val_loss") if k in row and not abs(row[k]) <= DIVERGED]
        if not bad and not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            bad = ["the weights"]
        if not bad:
            return
        what = ", ".join(f"{k} = {row[k]}" if k in row else k for k in bad)
        if self.replacing:
            kept = f"the previous run in {self.run_dir} is left as it was"
        elif epoch > 1:
            kept = f"{self.run_dir} keeps epoch {epoch - 1}, the last good one"
            self.info["status"] = f"diverged in epoch {epoch}; the weights are those of epoch {epoch - 1}"
            write_json(self.run_dir / "config.json", self.info)
        else:
            kept = "no epoch was saved, so the command can simply be run again"
            if self.ranks.main and (self.run_dir / "config.json").is_file():  # it said "running" (a README audit)
                self.info["status"] = "diverged in epoch 1; no epoch was saved (run the command again, changed)"
                write_json(self.run_dir / "config.json", self.info)
        raise CvaeError(f"training diverged in epoch {epoch} ({what} is not finite, or past {DIVERGED:.0e} nats); "
                        f"{kept}. Lower --lr, set "
                        "--grad-clip 1.0, or check the data for extreme values")

    def _early_stopping(self, row: dict) -> bool:
        """Track the best validation loss (the negative ELBO); True when patience has run out."""
        if "val_loss" not in row or not self.config.patience:
            return False
        if row["val_loss"] < self.best_val:
            self.best_val, self.bad_epochs = row["val_loss"], 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.config.patience

    def _keep_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            if self.ranks.main:
                save_tensors(self.run_dir / "model.safetensors", self.model.state_dict(), weights_metadata(self.model))

    # -- finishing -----------------------------------------------------------------------------------
    def finish(self, stopped_early: bool) -> TrainResult:
        summary = _on_main(self.ranks, self._final_figures, stopped_early)
        self.info["summary"] = summary
        self.model.eval()
        return TrainResult(self.run_dir, self.model, self.data, self.config, summary, self.ranks.rank)

    def _final_figures(self, stopped_early: bool) -> dict:
        summary = {"epochs": _epochs_done(self.metrics_path), "stopped_early": stopped_early,
                   "precision": self.config.precision}
        for name, (x, c) in self.evals.items():
            summary[name] = evaluate_elbo(self.model, x, c, precision="float32", objective=self.objective)
        rows, x_rows = summary_examples(self.x_train, self.dynamic)
        c_train = self.c_train[rows] if self.c_train is not None else None
        summary["train"] = evaluate_elbo(self.model, x_rows, c_train, objective=self.objective)
        summary["seconds_per_epoch"] = _median_seconds(self.metrics_path)
        # where the codes of those training examples lie, for sampling (cvae.aggregate)
        why = aggregate.why_not(self.model)
        if why is None:
            self.model.eval()
            try:
                fit = aggregate.fit(self.model, x_rows.to(self.device), c_train.to(self.device) if c_train is not None
                                    else None, seed=self.config.seed)
                why = aggregate.too_few(self.model) if fit is None else None
            except (ValueError, RuntimeError, ArithmeticError) as e:  # codes so far out that no mixture fits them
                why = (f"the fit failed ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                       "samples are drawn from the prior (a run that trained well fits: see its losses)")
        if why is None:
            save_aggregate(self.run_dir, fit)
            self.model.aggregate = fit
            summary["aggregate"] = {"file": aggregate.FILE, "components": fit.components, "examples": fit.counts}
        else:
            (self.run_dir / aggregate.FILE).unlink(missing_ok=True)  # a replaced run's would not fit this model
            summary["aggregate"] = {"file": None, "why_not": why}
        write_json(self.run_dir / "summary.json", summary)
        self.info["status"] = "stopped early" if stopped_early else "finished"
        self.info["summary"] = summary
        write_json(self.run_dir / "config.json", self.info)
        return summary


SUMMARY_TRAIN_EXAMPLES = 10000  # the training examples summary.json's train figures are taken over


def summary_examples(x_train, dynamic: bool):
    """The rows of the training examples that summary.json's train figures and the aggregate posterior's
    fit are taken over, and those examples as the model saw them: up to ``SUMMARY_TRAIN_EXAMPLES`` drawn
    at random (a fixed draw; the first ones of a data set in its source's order are not typical:
    dSprites' first 10,000 are small squares, 58 nats of reconstruction where the validation split's
    average was 87; a streamed file is read from its start), binarized once with a fixed seed for a
    dynamically binarized run, as its held-out splits are scored (not the grey levels it never saw)."""
    rows = slice(0, SUMMARY_TRAIN_EXAMPLES)
    if isinstance(x_train, torch.Tensor) and len(x_train) > SUMMARY_TRAIN_EXAMPLES:
        drawn = np.random.default_rng(EVALUATION_SEED).choice(len(x_train), SUMMARY_TRAIN_EXAMPLES, replace=False)
        rows = torch.from_numpy(np.sort(drawn)).to(x_train.device)
    x = x_train[rows]
    return rows, fixed_binarization(x, EVALUATION_SEED) if dynamic else x


def _settings(config: TrainConfig, ranks: Ranks, device: torch.device, resume: bool,
              explicit: set[str] | None) -> TrainConfig:
    """The settings the run trains with: the saved ones on --resume, precision and streaming resolved."""
    if resume:
        if not config.out:
            raise CvaeError("--resume needs --out RUN, the run folder to continue")
        given = config
        config = _on_main(ranks, lambda: _resumed_config(TrainConfig.from_dict(read_config(given.out)["train"]),
                                                          given, explicit))
        if explicit is None or "data" not in explicit:  # the file it trained on, wherever this runs from
            from .data.core import recorded_source

            source = _on_main(ranks, lambda: recorded_source(read_config(given.out)))
            if source and source != config.data:
                config = config.replace(data=source)
    # on one CPU process, --precision auto is left for the probe to decide once the model is built
    probed = config.precision == "auto" and device.type == "cpu" and ranks.world == 1
    config = config.replace(precision=config.precision if probed else resolve_precision(config.precision, device),
                            # --no-stream given is kept: the data in memory, as asked, however large
                            stream=config.stream or (not (explicit and "stream" in explicit)
                                                     and _too_big_for_memory(config.data, device)))
    if config.batch_size % ranks.world:
        raise CvaeError(f"--batch-size {config.batch_size} is the batch of all {ranks.world} processes together; "
                        f"make it a multiple of {ranks.world}")
    return config


def _load(config: TrainConfig) -> DataSplits:
    if config.stream:
        if config.binarize != "none":  # (streamed by itself when the file is over half the free memory)
            raise CvaeError("--binarize needs the data in memory; binarize the .npy file beforehand, or give "
                            "--no-stream to load it whole (it streams by itself when it would take over half the "
                            "free memory)")
        if config.labelled is not None:
            raise CvaeError("--labelled needs labels, which a streamed .npy file does not have; drop --stream")
        if config.image_size:
            raise CvaeError("--image-size resizes images in memory; resize the .npy file beforehand or drop --stream")
        return load_npy_stream(config.data, condition=config.condition, val_fraction=config.val_fraction,
                               seed=config.seed, limit=config.limit)
    from .data.sequences import named_source

    source, _ = named_source(config.data) if isinstance(config.data, str) and not config.sequence else (None, None)
    if source is not None:
        column = "smiles" if source in ("qm9", "moses") else "text"
        raise CvaeError(f"--data {config.data} is sequence data: add --sequence {column}")
    if config.sequence:
        from .data.sequences import load_sequences

        return load_sequences(config.data, sequence=config.sequence, condition=config.condition,
                              tokenizer=config.tokenizer, max_length=config.max_length,
                              val_fraction=config.val_fraction, seed=config.seed, limit=config.limit)
    return load_data(config.data, data_dir=config.data_dir, condition=config.condition,
                     val_fraction=config.val_fraction, seed=config.seed, binarize=config.binarize,
                     limit=config.limit, data_layout=config.data_layout, labelled=config.labelled,
                     image_size=parse_image_size(config.image_size), factors=config.factors)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's permutation of the examples: the same in every process, and again on --resume."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return torch.randperm(n, generator=g)


def _rows(x, idx: torch.Tensor):
    """The rows ``idx`` of a tensor (``index_select``: about 5x faster than ``x[idx]`` for a batch of
    MNIST rows on a CPU) or of a memory-mapped ``ArrayRows``."""
    if isinstance(x, ArrayRows):
        return x[idx]
    return torch.index_select(x, 0, idx.to(x.device))


def _batches(x, c, order: torch.Tensor, batch: int, chunk: int, device: torch.device, binarize: bool):
    """Batches of ``(x, c)`` in ``order``. ``chunk`` examples (a multiple of ``batch``) are gathered at a
    time: the whole epoch for data on the device, a few megabytes for a memory-mapped file."""
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        xs = _rows(x, idx).to(device, non_blocking=True)
        cs = _rows(c, idx) if c is not None else None
        if binarize:
            xs = torch.bernoulli(xs)
        for i in range(0, len(idx), batch):
            yield xs[i:i + batch], (cs[i:i + batch] if cs is not None else None)


def _with_labelled(batches, x, c, rows: torch.Tensor, size: int, seed: tuple, device: torch.device, binarize: bool):
    """``batches`` with ``size`` labelled rows appended to each, taken from ``rows`` in rounds of
    random permutations (the same on --resume: seeded by the run's seed, the epoch and the rank)."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
    pool = rows[:0]
    for xb, cb in batches:
        while len(pool) < size:
            pool = torch.cat([pool, rows[torch.randperm(len(rows), generator=g)]])
        idx, pool = pool[:size], pool[size:]
        xl = _rows(x, idx).to(device, non_blocking=True)
        if binarize:
            xl = torch.bernoulli(xl)
        yield torch.cat([xb, xl]), torch.cat([cb, _rows(c, idx)])


def _with_validation(row: dict, model: CVAE, evals: dict, precision: str, objective=None) -> dict:
    if "val" in evals:
        v = evaluate_elbo(model, *evals["val"], precision=precision, objective=objective)
        row = dict(row, val_loss=v["loss"], val_reconstruction=v["reconstruction"], val_kl=v["kl"])
        if getattr(model, "log_active_units", False):  # posterior collapse made visible (sequence models)
            row["val_active_units"] = active_units(model, *evals["val"])
    return row


@torch.no_grad()
def active_units(model, x, c, *, threshold: float = 0.01, batch_size: int = 1000) -> int:
    """Latent dimensions d with Cov_x(E_q[z_d]) > ``threshold`` (Burda et al. 2015): how many z uses."""
    model.eval()
    mus = [model.q_z(x[i:i + batch_size], None if c is None else c[i:i + batch_size]).mu.float()
           for i in range(0, len(x), batch_size)]
    model.train()
    mu = torch.cat(mus)
    return int((mu.var(0, unbiased=False) > threshold).sum()) if len(mu) > 1 else 0


def _too_big_for_memory(source: str, device: torch.device) -> bool:
    """A ``.npy`` file whose examples, as float32, would take more than half the free memory."""
    size = npy_float32_bytes(source)
    return size is not None and size > _free_memory(device) / 2


def _free_memory(device: torch.device) -> float:
    """Bytes free on the device: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = free_memory()
    return free if free is not None else math.inf  # unknown: do not stream on its account


# What a training run writes into its folder (and --overwrite replaces), besides pictures of its own.
RUN_FILES = ("config.json", "metrics.jsonl", "model.safetensors", "trainer_state.safetensors", "summary.json",
             "eval.json", "tb", "samples.png", "reconstructions.png", "latent.png", "loss.png")


def _run_folder(config: TrainConfig, data_name: str, resume: bool, overwrite: bool) -> tuple[Path, bool, bool]:
    """The run folder, locked for this process; whether an old trained run in it is to be replaced;
    whether this call created it."""
    run_dir = Path(config.out) if config.out else default_out(config, data_name)
    if run_dir.exists() and not run_dir.is_dir():  # before the lock, which writes into the folder
        raise CvaeError(f"--out {run_dir} is a file, not a folder; choose a folder name for the run")
    created = not run_dir.exists()
    hold(run_dir)
    try:
        remove_orphans(run_dir, RUN_FILES)
        trained = _check_run_folder(run_dir, resume, overwrite)
        # a folder whose run never finished an epoch holds nothing to lose: train and --resume both start it
        return run_dir, bool(overwrite and trained and not resume), created
    except BaseException:
        let_go(run_dir)
        raise


def _check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse a folder whose run this call would lose or cannot continue; return whether it holds epochs.
    Also called before the data are read (minutes for a large corpus), where --out is given."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CvaeError(f"--out {run_dir} is a file, not a folder; choose a folder name for the run")
    trained = _has_epochs(run_dir)
    if resume and not trained and (run_dir / "model.safetensors").is_file():
        raise CvaeError(f"{run_dir} holds trained weights but no trainer_state.safetensors, which an exact --resume "
                        "needs (the optimizer, counters and random state); restore it from a copy of the run, "
                        "or pass --overwrite instead of --resume to train it again from the start")
    if not resume and not trained and (run_dir / "model.safetensors").is_file() and not overwrite:
        raise CvaeError(f"{run_dir} already holds a trained model; pass --overwrite to replace it, or choose "
                        "another --out")
    if not resume and trained and not overwrite:
        raise CvaeError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace "
                        "it, or choose another --out")
    return trained


def _has_epochs(run_dir: Path) -> bool:
    """Whether the folder holds a trained epoch (what --resume goes on from)."""
    return (run_dir / "trainer_state.safetensors").is_file()


RESUMABLE = {"epochs", "patience", "progress", "tensorboard", "device", "data_dir", "precision", "compile", "stream",
             "step"}


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
        if key in ("prior_options", "likelihood_options") and \
                part_options(value, key) == part_options(getattr(saved, key), key):
            continue  # the same options as text or as a mapping
        if key not in RESUMABLE:
            was = getattr(saved, key)
            was = (f"it was {was!r}" if was is not None else
                   "the run was trained with the default for its data and model; config.json's 'model' has the value")
            raise CvaeError(f"cannot change {key!r} when resuming ({was}); "
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
    """trainer_state.safetensors, checked: its metadata (epoch, best validation loss, patience count,
    the optimizer's settings), every tensor finite, each of the optimizer's parameters with its moments.
    A damaged file is one line saying so, before anything in the folder is touched."""
    path = run_dir / "trainer_state.safetensors"
    if not path.is_file():
        raise CvaeError(f"{run_dir} has no trainer_state.safetensors to resume from; start a new run instead")

    def damaged(why: str) -> CvaeError:
        return CvaeError(f"{path} is damaged ({why}); restore it from a copy of the run, or pass --overwrite instead "
                         "of --resume to train again from the start")

    tensors = load_tensors(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["state"])
    except (KeyError, TypeError, ValueError):
        raise damaged("its 'state' metadata is missing or not JSON") from None
    number = (int, float)
    if (not isinstance(meta, dict) or not _count(meta.get("epoch")) or not _count(meta.get("bad_epochs"))
            or not isinstance(meta.get("best_val"), number) or isinstance(meta.get("best_val"), bool)
            or not isinstance(meta.get("param_groups"), list)):
        raise damaged("its 'state' metadata needs epoch and bad_epochs counts, best_val and param_groups")
    bad = first_nonfinite(tensors)
    if bad is not None:
        raise damaged(f"{bad} holds NaN or infinite values")
    moments: dict[str, set[str]] = {}
    for key in tensors:
        if key.startswith("optimizer."):
            parts = key.split(".", 2)
            if len(parts) != 3 or not parts[1].isdigit():
                raise damaged(f"unknown entry {key!r}")
            moments.setdefault(parts[1], set()).add(parts[2])
    adam = {"exp_avg", "exp_avg_sq", "step"}
    adam_like = any(names & {"exp_avg", "exp_avg_sq"} for names in moments.values())
    lacking = next(((p, names) for p, names in moments.items() if adam_like and not adam <= names), None)
    if lacking is not None:
        raise damaged(f"the optimizer's parameter {lacking[0]} lacks "
                      f"{', '.join(sorted(adam - lacking[1]))}")
    negative = next((k for k, v in tensors.items() if k.endswith(".exp_avg_sq") and bool((v < 0).any())), None)
    if negative is not None:
        raise damaged(f"{negative}, a mean of squares, holds negative values")
    return {"tensors": tensors, "meta": meta}


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _restore(state: dict, model: CVAE, opt: torch.optim.Optimizer, rank: int) -> tuple[int, float, int]:
    tensors, meta = state["tensors"], state["meta"]
    try:
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        _load_optimizer(opt, tensors, meta["param_groups"])
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[-1][:200]
        raise CvaeError("trainer_state.safetensors does not fit the model that config.json and the data describe "
                        f"({first}); was config.json edited, or the data changed? Restore them, or start a new run "
                        "with --overwrite") from None
    suffix = f".{rank}" if rank else ""  # rank 0's states keep the names of a single-process run
    if f"rng.cpu{suffix}" in tensors:
        torch.set_rng_state(tensors[f"rng.cpu{suffix}"])
    else:  # resumed with more processes than saved it
        torch.manual_seed(meta["epoch"] * 1000 + rank)
    if torch.cuda.is_available() and f"rng.cuda{suffix}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"])
    return meta["epoch"], meta["best_val"], meta["bad_epochs"]


def _save_epoch(run_dir, model, opt, epoch, best_val, bad_epochs, row, metrics_path, writer, rng,
                objective_tensors=None) -> None:
    state = model.state_dict()
    save_tensors(run_dir / "model.safetensors", state, weights_metadata(model))
    tensors, groups = _optimizer_tensors(opt)
    tensors.update({f"objective.{k}": v for k, v in (objective_tensors or {}).items()})
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
    """Keep the rows of the first ``epochs`` epochs (a cut-off last line is dropped: runs.read_metrics)."""
    if path.exists():
        rows = [row for row in read_metrics(path) if int(row["epoch"]) <= epochs]
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def _epochs_done(path: Path) -> int:
    rows = read_metrics(path)
    return rows[-1]["epoch"] if rows else 0


def _median_seconds(path: Path) -> float | None:
    rows = read_metrics(path)
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
    except BaseException:
        if started:
            dist.destroy_process_group()
        raise
    if started:  # every process reaches the teardown before any leaves: gloo aborts a process whose peer left first
        dist.barrier()
        dist.destroy_process_group()
        global PROCESS_GROUP_USED
        PROCESS_GROUP_USED = True


# Set once a torchrun process has trained and torn its process group down: the command line then leaves
# without the interpreter's finalisation (cli.main), where gloo's worker threads can still abort the
# process ("terminate called without an active exception", SIGABRT) after everything was written.
PROCESS_GROUP_USED = False


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
def _own_rng(device: torch.device):
    """Seed and use the global random-number generators inside, restore them afterwards: training
    leaves no process-wide trace on the caller's random state."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


@contextmanager
def _flushed_denormals():
    """Flush denormal floats to zero while training: tiny gradients and Adam moments otherwise take
    the CPU's slow path. The flag belongs to each thread and OpenMP's workers copy it when they
    start, so the workers are restarted after setting it (and again after clearing it, so that the
    caller's later work runs as it would have)."""
    supported = torch.set_flush_denormal(True)
    if supported:
        restart_openmp_workers()
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)
            restart_openmp_workers()


def write_text_atomic(path: Path, text: str) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, w)
