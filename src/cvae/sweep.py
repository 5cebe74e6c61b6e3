"""Many small models at once: a sweep of runs that differ in seed, beta, learning rate or KL warm-up,
trained together in one process, each written to its own run folder exactly as a single run is.

The disentanglement literature's protocol (and any careful comparison) trains the same model many
times: over seeds, over beta, over learning rates. Run one by one, each run pays the start-up, the
data loading and, for small models, a step made of many small kernels. :func:`fit_sweep` prepares
every run as ``cvae train`` would (its own seed, data split, initial weights, optimizer and run
folder), then trains the runs that share a shape in lockstep: one step of :class:`cvae.fused.FusedMLPStep`
over their stacked weights (batched matrix products, one kernel per layer for all K), each model's
noise from its own generator holding the very state its single run's global generator would hold,
and each model's optimizer stepping its own parameters (views into the stack). Every epoch each run
validates, checks and writes its folder through the trainer's own code, so the folders are those of
single runs (the tests hold the two together), plus ``models_together`` in each metrics row (the
row's ``seconds`` are the epoch of all the models trained together).

Runs that differ in latent size (or anything else that changes a shape) form groups, trained one
group after another. A run the fused step does not cover is refused with the reason.
"""

from __future__ import annotations

import itertools
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .config import TrainConfig
from .data import core as data_core
from .errors import CvaeError
from .fused import FusedMLPStep
from .lock import let_go
from .runs import write_json
from .threads import kept_thread_count
from .train import (
    FusedNotCovered,
    Ranks,
    Trainer,
    TrainResult,
    _flushed_denormals,
    _own_rng,
    resolve_device,
)

# the settings a sweep may vary (within a group: seed, beta, lr, kl_warmup; latent_dim makes groups)
VARIABLE = {"seed": int, "beta": float, "lr": float, "kl_warmup": float, "latent_dim": int}
IN_GROUP = ("seed", "beta", "lr", "kl_warmup", "out")


def parse_vary(specs: list[str]) -> dict[str, list]:
    """``["seed=0,1,2", "beta=1,4"]`` -> {"seed": [0, 1, 2], "beta": [1.0, 4.0]}."""
    vary = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        key = name.strip().replace("-", "_")
        if not sep or key not in VARIABLE or not values.strip():
            raise CvaeError(f"--vary {spec!r}: give SETTING=V1,V2,... with SETTING one of "
                            f"{', '.join(VARIABLE)} (e.g. --vary seed=0,1,2,3 --vary beta=1,4)")
        if key in vary:
            raise CvaeError(f"--vary {key} is given twice; list all its values in one flag: --vary {key}=V1,V2,...")
        try:
            vary[key] = [VARIABLE[key](v) for v in values.split(",")]
        except ValueError:
            raise CvaeError(f"--vary {spec!r}: {key} takes {VARIABLE[key].__name__} values") from None
        twice = sorted({v for v in vary[key] if vary[key].count(v) > 1})
        if twice:
            raise CvaeError(f"--vary {spec!r} lists {', '.join(map(str, twice))} more than once; each value is one run")
    if not vary:
        raise CvaeError("a sweep needs at least one --vary SETTING=V1,V2,... (e.g. --vary seed=0,1,2,3)")
    return vary


def expand(base: TrainConfig, vary: dict[str, list], out: str | Path) -> list[TrainConfig]:
    """One config per combination of the varied values, each with its own run folder under ``out``
    (named by the values, e.g. ``out/seed=1,beta=4``)."""
    keys = list(vary)
    configs = []
    # a value's folder name: the short form (1e-3 -> 0.001), or the exact one where two values would share it
    exact = {k for k in keys if len({f"{v:g}" if isinstance(v, float) else str(v) for v in vary[k]}) < len(vary[k])}
    for values in itertools.product(*(vary[k] for k in keys)):
        name = ",".join(f"{k}={v!r}" if k in exact else f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in zip(keys, values))
        configs.append(base.replace(**dict(zip(keys, values)), out=str(Path(out) / name)))
    return configs


def _group_key(config: TrainConfig) -> tuple:
    return tuple((k, str(v)) for k, v in sorted(config.to_dict().items()) if k not in IN_GROUP)


def fit_sweep(configs: list[TrainConfig], *, overwrite: bool = False, on_epoch=None,
              explicit: set[str] | None = None) -> list[TrainResult]:
    """Train every config (a list of :class:`TrainConfig`, each with its own ``out``); runs of one shape
    together. Returns their results in the order given. ``on_epoch(config, epoch, row)`` is called after
    each run's epoch is written.

    ``explicit`` names the settings the user gave, as for :func:`cvae.train.fit` (default: those that
    differ from the defaults); a setting whose value differs between the configs counts as given in
    every run, so a model class's default for the data (data with factors train at 1e-3) never
    replaces a varied value that happens to equal the plain default."""
    if not configs:
        raise CvaeError("a sweep needs at least one run")
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: each process would train the whole sweep
        raise CvaeError("cvae sweep trains its runs together in one process; run it without torchrun")
    if any(c.step == "autograd" for c in configs):
        raise CvaeError("a sweep trains its runs with the fused step (--step autograd trains one run: cvae train); "
                        "leave --step out")
    outs = [c.out for c in configs]
    if any(o is None for o in outs) or len(set(outs)) != len(outs):
        raise CvaeError("every run of a sweep needs its own --out folder")
    if any(c.binarize == "dynamic" for c in configs):
        raise CvaeError("--binarize dynamic is not supported in a sweep yet; use --binarize static or none")
    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(_group_key(config), []).append(i)
    dicts = [c.to_dict() for c in configs]
    varied = {k for k in dicts[0] if k != "out" and len({repr(d[k]) for d in dicts}) > 1}
    given = [(set(explicit) if explicit is not None else c.differing()) | varied for c in configs]
    results: list[TrainResult | None] = [None] * len(configs)
    for members in groups.values():
        for i, result in zip(members, _fit_group([configs[i] for i in members], overwrite, on_epoch,
                                                 [given[i] for i in members])):
            results[i] = result
    return results


@contextmanager
def _source_read_once():
    """Inside, a data source is read (parsed, decoded) once for all the runs of a sweep; each run still
    makes its own splits from it (a seed draws its own validation examples)."""
    original, seen = data_core.read_source, {}

    def read_once(source, **kw):
        key = (source, tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if key not in seen:
            seen[key] = original(source, **kw)
        return seen[key]

    data_core.read_source = read_once
    try:
        yield
    finally:
        data_core.read_source = original


def _fit_group(configs: list[TrainConfig], overwrite: bool, on_epoch, given: list[set[str]]) -> list[TrainResult]:
    device = resolve_device(configs[0].device)
    trainers: list[Trainer] = []
    with _flushed_denormals(), _own_rng(device), kept_thread_count(), _source_read_once():
        try:
            precision = configs[0].precision
            for config, explicit in zip(configs, given):
                # the first run's probe decides the precision of all (they share every shape)
                config = config.replace(step="fused", precision=precision, progress=False)
                try:
                    trainer = Trainer.prepare(config, Ranks(), device, resume=False, overwrite=overwrite,
                                              explicit=explicit)
                except FusedNotCovered as e:
                    raise CvaeError(f"a sweep trains only models the fused step covers, and this one is not: "
                                    f"{e.reason}; train it with cvae train (one run at a time)") from None
                trainers.append(trainer)
                precision = trainer.config.precision
                # the noise this run's global generator would give it from here on
                trainer.generator = torch.Generator().set_state(torch.get_rng_state())
            try:
                return _train_together(trainers, on_epoch)
            except KeyboardInterrupt:  # each folder keeps its last finished epoch, and says so
                for trainer in trainers:
                    trainer._mark_interrupted()
                raise
        finally:
            for trainer in trainers:
                let_go(trainer.run_dir)


def _train_together(trainers: list[Trainer], on_epoch) -> list[TrainResult]:
    first = trainers[0]
    steps, epochs = first.steps, first.config.epochs
    if any(t.steps != steps or t.config.epochs != epochs or t.batch != first.batch for t in trainers):
        raise CvaeError("the runs of a sweep group need the same data size, batch size and epochs")
    active = list(trainers)
    stopped = {id(t): False for t in trainers}
    step_fn = _stacked_step(active)
    for epoch in range(epochs):
        if first.governor is not None:
            first.governor.update()
        t0 = time.perf_counter()
        sums, names = None, []  # (K, 2 + terms): reconstruction, KL and the objective's terms, summed
        rows_seen = 0
        for step, batches in enumerate(zip(*(t.epoch_batches(epoch) for t in active))):
            for t in active:
                t.before_step(epoch, step)
            x = torch.stack([xb for xb, _ in batches])
            c = torch.stack([cb for _, cb in batches]) if batches[0][1] is not None else None
            out = step_fn(x, c, progress=epoch + step / steps, generators=[t.generator for t in active])
            for t in active:
                t.optimizer_step()
            figures = torch.stack([out.reconstruction, out.kl, *(v.float() for v in out.terms.values())], 1)
            if sums is None:
                sums, names = torch.zeros_like(figures), list(out.terms)
            sums.add_(figures, alpha=x.shape[1])
            rows_seen += x.shape[1]
        seconds = time.perf_counter() - t0
        still = []
        for t, figures in zip(active, sums):
            row = dict(t.epoch_row(epoch, figures, names, rows_seen, seconds), models_together=len(active))
            torch.set_rng_state(t.generator.get_state())  # validation draws from the run's own generator
            try:
                stop = t.end_epoch(epoch, row, None if on_epoch is None else
                                   (lambda e, m, r, t=t: on_epoch(t.config, e, r)))
            except CvaeError:  # diverged: its folder keeps its last good epoch and says so; the others go on
                t.close()
                stopped[id(t)] = None
                continue
            t.generator.set_state(torch.get_rng_state())
            if stop:
                stopped[id(t)] = True
                t.close()
            else:
                still.append(t)
        if len(still) != len(active):
            active = still
            if not active:
                break
            step_fn = _stacked_step(active)
    results = []
    for t in trainers:
        if stopped[id(t)] is None:
            results.append(None)
            continue
        if stopped[id(t)] is False:
            t.close()
        torch.set_rng_state(t.generator.get_state())  # the final figures' noise, as the single run draws it
        try:
            results.append(t.finish(bool(stopped[id(t)])))
        except (CvaeError, RuntimeError, ValueError, ArithmeticError) as e:  # this run's end; the others finish
            t.info["status"] = (f"trained {t.config.epochs} epochs, but its summary failed ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''})")
            write_json(t.run_dir / "config.json", t.info)
            results.append(None)
    return results


def _stacked_step(trainers: list[Trainer]) -> FusedMLPStep:
    first = trainers[0]
    for t in trainers:
        why = FusedMLPStep.why_not(t.model, t.objective, precision=t.config.precision)
        if why is not None:
            raise CvaeError(f"a sweep trains models the fused step covers, and {t.run_dir}'s is not one: {why}")
    return FusedMLPStep([t.model for t in trainers], [t.objective for t in trainers], batch_size=first.batch,
                        device=first.device, precision=first.config.precision)
