"""Precision, training step and thread count chosen by measurement, not by CPU flags.

A CPU that multiplies bfloat16 natively (AMX) is not always faster in bfloat16: the casts, the
element-wise work and the optimizer do not shrink with the matrix products, and two threads lose to
one when the work per step is small or another process holds a core. So ``--precision auto`` on a
CPU times the candidates on the model's own shapes: every precision the machine offers (float32, and
bfloat16 where it is native) x every step that covers the model (the fused step of
:mod:`cvae.fused`, the generic autograd path) x the thread counts 1 and the ceiling. Each candidate
trains a throw-away copy of the model on the run's first batch; the candidates take turns over a few
rounds (within a budget of ``BUDGET`` seconds), and each keeps its best round (the least disturbed
by other processes); more than one thread is a candidate only when the other processes leave a
core free. The fastest wins, a
lower precision only when it is at least ``MARGIN`` faster than float32 (a tie goes to the exact one).

The choice and the measured rates go into the run's ``config.json`` (``execution.probe``) and are
cached per machine and model shape in ``~/.cache/cvae/probe.json``, so later runs of the same shape
start at once; ``CVAE_PROBE=fresh`` measures again. A measurement taken while other processes kept
more than ``BUSY`` cores busy is used for the run but not cached (a loaded machine makes one thread
look best and bfloat16's casts look cheap), so the next run measures again. The global random state
is left as it was.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import time

import torch

from . import native
from .data.files import cache_dir
from .fused import AdamStep, fused_step_for
from .runs import write_json
from .threads import ThreadGovernor

PROBE_VERSION = 2  # 2: the fused step timed with the native Adam, as the trainer runs it
MARGIN = 1.05  # bfloat16 must be this much faster than float32 to be chosen
ROUNDS, STEPS, WARMUP = 3, 6, 2
BUDGET = 2.0  # seconds: no further round starts after this (at least one round is measured)
BUSY = 0.5  # cores kept busy by other processes above which a measurement is not cached


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def probe_key(model, objective, batch_size: int, device: torch.device, candidates: list[dict]) -> str:
    """The machine, torch and everything about the model and the step that decides the speed,
    including the instruction sets the libraries are allowed (``ATEN_CPU_CAPABILITY``,
    ``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``: a run held to AVX2 measures its own)."""
    shape = {
        "machine": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "device": str(device),
        "isa": [torch.backends.cpu.get_cpu_capability()] + [os.environ.get(v, "") for v in ISA_VARIABLES],
        "version": PROBE_VERSION, "batch": batch_size, "objective": getattr(objective, "name", "?"),
        "parameters": [list(p.shape) for p in model.parameters()],
        "parts": [type(m).__name__ for m in model.modules()],
        "candidates": [_label(c) for c in candidates],
        "native": native.fingerprint(),
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:20]


def _label(c: dict) -> str:
    return f"{c['step']} {c['precision']} {c['threads']}t"


def candidates_for(model, objective, *, batch_size: int, device: torch.device, steps: tuple[str, ...],
                   precisions: tuple[str, ...], threads: int) -> list[dict]:
    out = []
    for precision in precisions:
        for step in steps:
            if step == "fused":
                built, _ = fused_step_for(model, objective, batch_size=batch_size, device=device, precision=precision)
                if built is None:
                    continue
            for t in sorted({1, threads}):
                out.append({"step": step, "precision": precision, "threads": t})
    return out


def _trainer(model, objective, candidate: dict, x: torch.Tensor, c: torch.Tensor | None, batch_size: int, lr: float):
    """A function that runs one training step of a copy of ``model`` as ``candidate`` says."""
    model, objective = copy.deepcopy(model), copy.deepcopy(objective)  # an objective may train a network of its own
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        opt = torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(params, lr=lr, foreach=True)
    device = x.device
    if candidate["step"] == "fused":
        step, _ = fused_step_for(model, objective, batch_size=batch_size, device=device,
                                 precision=candidate["precision"])
        adam = AdamStep(opt)  # as the trainer steps it: the native Adam with the native step
        defer = bool(step.native)
        if defer:
            adam.native = step

        def one():
            step(x, c, defer_grads=defer)
            adam()
    else:
        autocast = candidate["precision"] == "bfloat16"

        def one():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = objective(model, x, c)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
    return one


def measure(model, objective, candidates: list[dict], x: torch.Tensor, c: torch.Tensor | None, *,
            lr: float = 1e-3) -> dict[str, float]:
    """Training samples per second of each candidate (its best round), on the batch (x, c)."""
    batch_size = len(x)
    threads = torch.get_num_threads()
    best = {}
    try:
        with torch.random.fork_rng(devices=[]):
            runners = [_trainer(model, objective, cand, x, c, batch_size, lr) for cand in candidates]
            for cand, run in zip(candidates, runners):
                torch.set_num_threads(cand["threads"])
                for _ in range(WARMUP):
                    run()
            start = time.perf_counter()
            for _ in range(ROUNDS):
                if best and time.perf_counter() - start > BUDGET:
                    break
                for cand, run in zip(candidates, runners):
                    torch.set_num_threads(cand["threads"])
                    t = time.perf_counter()
                    for _ in range(STEPS):
                        run()
                    if x.device.type == "cuda":
                        torch.cuda.synchronize(x.device)
                    rate = STEPS * batch_size / (time.perf_counter() - t)
                    best[_label(cand)] = max(best.get(_label(cand), 0.0), rate)
    finally:
        torch.set_num_threads(threads)
    return best


def decide(candidates: list[dict], rates: dict[str, float]) -> dict:
    """The fastest candidate; a lower precision only when it beats float32's best by ``MARGIN``."""
    fastest = max(candidates, key=lambda cand: rates[_label(cand)])
    exact = [cand for cand in candidates if cand["precision"] == "float32"]
    if fastest["precision"] != "float32" and exact:
        best_exact = max(exact, key=lambda cand: rates[_label(cand)])
        if rates[_label(fastest)] < MARGIN * rates[_label(best_exact)]:
            return best_exact
    return fastest


def choose(model, objective, x: torch.Tensor, c: torch.Tensor | None, *, batch_size: int, device: torch.device,
           steps: tuple[str, ...], precisions: tuple[str, ...], threads: int, lr: float = 1e-3) -> dict:
    """The probe's answer: ``{"step", "precision", "threads", "rates" (samples/s per candidate),
    "cached", "seconds"}``, from the cache when this machine has measured this shape before."""
    candidates = candidates_for(model, objective, batch_size=batch_size, device=device, steps=steps,
                                precisions=precisions, threads=threads)
    key = probe_key(model, objective, batch_size, device, candidates)
    path = cache_dir() / "probe.json"
    cache = _read(path)
    known = cache.get(key)
    # a cached answer is used only as one of today's candidates: a hand-edited or damaged entry is measured again
    if isinstance(known, dict) and os.environ.get("CVAE_PROBE") != "fresh" and isinstance(known.get("rates"), dict) \
            and any(all(type(known.get(k)) is type(cand[k]) and known.get(k) == cand[k]  # 1.0 and True are not 1
                        for k in ("step", "precision", "threads")) for cand in candidates):
        return dict(known, cached=True)
    t = time.perf_counter()
    xb = x[:batch_size].to(device)
    cb = c[:batch_size].to(device) if c is not None else None
    watch = ThreadGovernor()
    if len(candidates) == 1:
        rates = {_label(candidates[0]): None}
        choice = candidates[0]
    else:
        rates = measure(model, objective, candidates, xb, cb, lr=lr)
        choice = decide(candidates, rates)
    busy = (watch.others() or 0.0) if device.type == "cpu" else None  # None: too short to tell, taken as idle
    answer = {**choice, "rates": {k: (round(v) if v else v) for k, v in rates.items()},
              "seconds": round(time.perf_counter() - t, 2), "machine": cpu_name(), "measured": time.strftime("%Y-%m-%d"),
              "other_processes_cores": None if busy is None else round(busy, 2)}
    if busy is not None and busy > BUSY:
        return dict(answer, cached=False)  # measured on a busy machine: used, not kept
    try:
        cache = _read(path)  # another run may have written meanwhile
        cache[key] = answer
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cache)
    except OSError:
        pass  # a read-only cache: measure again next time
    return dict(answer, cached=False)


def _read(path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
