"""Training speed of the disentanglement objectives: cvae's step for them against the autograd path it
replaced, and against pythae 0.1.2's beta-TCVAE and FactorVAE, in one process on this machine.

The model is the disentanglement benchmark's (benchmarks/disentangle_dsprites.py): dSprites (64 x 64
binary images, rendered offline), an MLP encoder and decoder of 400-400, 10 latents, Bernoulli pixels,
Adam at 1e-3, batch 512 (Chen et al.'s setting is 2048; the README's CPU runs use 512). Each side
trains the same images for ``--epochs`` epochs; the figure is the median wall time of an epoch after
the first (which holds the probe and the native build), training only.

  cvae autograd   ``--step autograd`` with the total correlation's estimates by autograd's B x B x D
                  tensors (cvae before its fused step covered these objectives; ``NATIVE_TC = "off"``)
  cvae            ``cvae train`` as it is (``--step auto --precision auto``: the probe chooses the
                  fused step, precision and threads by measurement; the TC estimates by native kernels)
  pythae          pythae 0.1.2's ``BetaTCVAE`` (``use_mss=True``, alpha = gamma = 1, beta 6) or
                  ``FactorVAE`` (gamma 35) with the same encoder and decoder, its ``TrainingPipeline``
                  (BaseTrainer or its adversarial trainer), batch 512, Adam 1e-3

Where the two cvae sides trained by the same path (FactorVAE when the probe keeps the autograd step: the
same step, precision and threads), the autograd row says "same step as cvae" instead of a ratio (null in
the JSON): their difference is noise.

    OMP_NUM_THREADS=2 python benchmarks/disentangle_speed.py [--limit 51200] [--epochs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import cvae.objectives.disentangle as dis
from cvae.config import TrainConfig
from cvae.data import load_data
from cvae.probe import cpu_name
from cvae.train import fit

HIDDEN, LATENT, BATCH, LR = [400, 400], 10, 512, 1e-3
SETTINGS = {"btcvae": dict(beta=6.0), "factorvae": dict(gamma=35.0)}


def bf16_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    return f"amx_bf16: {'amx_bf16' in flags}, avx512_bf16: {'avx512_bf16' in flags}"


def cvae_side(objective: str, limit: int, epochs: int, out: Path, *, old: bool) -> dict:
    dis.NATIVE_TC = "off" if old else "auto"
    seconds = []
    cfg = TrainConfig(data="dsprites", limit=limit, objective=objective, hidden=HIDDEN, latent_dim=LATENT,
                      batch_size=BATCH, lr=LR, epochs=epochs, step="autograd" if old else "auto",
                      out=str(out), progress=False, tensorboard=False, **SETTINGS[objective])
    result = fit(cfg, overwrite=True, on_epoch=lambda epoch, model, row: seconds.append(row["seconds"]))
    dis.NATIVE_TC = "auto"
    execution = json.loads((result.run_dir / "config.json").read_text())["execution"]
    return {"seconds_per_epoch": statistics.median(seconds[1:] or seconds), "epochs": seconds,
            "val_loss": result.summary["val"]["loss"], "step": execution.get("step"),
            "precision": result.config.precision, "threads": execution.get("threads")}


def same_path(a: dict, b: dict, objective: str) -> bool:
    """Whether two cvae sides trained by the same path (step, precision, threads), so that their ratio is
    noise: never for beta-TCVAE, whose TC estimate the autograd side keeps off its native kernels."""
    return objective != "btcvae" and all(a.get(k) == b.get(k) for k in ("step", "precision", "threads"))


class _Enough(Exception):
    pass


def pythae_side(objective: str, x: torch.Tensor, epochs: int, work: Path) -> dict:
    try:
        from pythae.models import BetaTCVAE, BetaTCVAEConfig, FactorVAE, FactorVAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
        from pythae.pipelines import TrainingPipeline
        from pythae.trainers import AdversarialTrainerConfig, BaseTrainerConfig
        from pythae.trainers.training_callbacks import TrainingCallback
    except ImportError as e:
        return {"note": f"not run: {e} (pip install -e '.[bench]')"}
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.WARNING)
    dims = x[0].numel()

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(dims, HIDDEN[0]), nn.ReLU(), nn.Linear(HIDDEN[0], HIDDEN[1]), nn.ReLU())
            self.mu, self.logvar = nn.Linear(HIDDEN[1], LATENT), nn.Linear(HIDDEN[1], LATENT)

        def forward(self, x):
            h = self.net(x.reshape(len(x), -1))
            return ModelOutput(embedding=self.mu(h), log_covariance=self.logvar(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(LATENT, HIDDEN[1]), nn.ReLU(), nn.Linear(HIDDEN[1], HIDDEN[0]), nn.ReLU(),
                                     nn.Linear(HIDDEN[0], dims))

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).reshape(len(z), *x.shape[1:]))

    seconds, stderr = [], sys.stderr
    clock = {}

    class Turn(TrainingCallback):
        def on_epoch_begin(self, training_config, **kwargs):
            sys.stderr = io.StringIO()  # its per-step progress bar
            clock["t"] = time.perf_counter()

        def on_epoch_end(self, training_config, **kwargs):
            seconds.append(time.perf_counter() - clock["t"])
            sys.stderr = stderr
            if len(seconds) >= epochs:
                raise _Enough

    torch.manual_seed(0)
    common = dict(output_dir=str(work / f"pythae-{objective}"), num_epochs=epochs, per_device_train_batch_size=BATCH,
                  per_device_eval_batch_size=BATCH, no_cuda=True, seed=0)
    if objective == "btcvae":
        model = BetaTCVAE(BetaTCVAEConfig(input_dim=tuple(x.shape[1:]), latent_dim=LATENT, reconstruction_loss="bce",
                                          beta=6.0, alpha=1.0, gamma=1.0, use_mss=True),
                          encoder=Encoder(), decoder=Decoder())
        config = BaseTrainerConfig(learning_rate=LR, optimizer_cls="Adam", **common)
    else:
        model = FactorVAE(FactorVAEConfig(input_dim=tuple(x.shape[1:]), latent_dim=LATENT, reconstruction_loss="bce",
                                          gamma=35.0), encoder=Encoder(), decoder=Decoder())
        config = AdversarialTrainerConfig(autoencoder_learning_rate=LR, discriminator_learning_rate=1e-4,
                                          autoencoder_optimizer_cls="Adam", discriminator_optimizer_cls="Adam", **common)
    try:
        TrainingPipeline(training_config=config, model=model)(train_data=x, callbacks=[Turn()])
    except _Enough:
        pass
    finally:
        sys.stderr = stderr
    return {"seconds_per_epoch": statistics.median(seconds[1:] or seconds), "epochs": seconds,
            "settings": f"batch {BATCH}, lr {LR}, TrainingPipeline ({type(config).__name__})"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=51200, help="dSprites images (the first of a seeded shuffle)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--objectives", default="btcvae,factorvae")
    p.add_argument("--skip", default="", help="comma-separated: autograd, pythae")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="cvae-dis-speed-"))
    print(f"machine: {cpu_name()} ({bf16_flags()}), {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, load average {tuple(round(v, 2) for v in os.getloadavg())}")
    print(f"dSprites, {args.limit} images, MLP {HIDDEN} and 10 latents, batch {BATCH}, {args.epochs} epochs per side; "
          "median seconds per epoch after the first")
    report = {"machine": cpu_name(), "cpu_bf16": bf16_flags(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "limit": args.limit, "epochs": args.epochs, "objectives": {}}
    data = None
    for objective in filter(None, args.objectives.split(",")):
        sides = {"cvae": cvae_side(objective, args.limit, args.epochs, work / f"{objective}-cvae", old=False)}
        if "autograd" not in skip:
            sides["cvae autograd"] = cvae_side(objective, args.limit, args.epochs, work / f"{objective}-old", old=True)
        if "pythae" not in skip:
            if data is None:
                data = load_data("dsprites", limit=args.limit).train.x
            sides["pythae 0.1.2"] = pythae_side(objective, data, args.epochs, work)
        base = sides["cvae"]["seconds_per_epoch"]
        for name, side in sides.items():
            if "seconds_per_epoch" not in side:
                print(f"  {objective:10s} {name:16s} {side.get('note', '')}")
                continue
            same = name != "cvae" and "step" in side and same_path(side, sides["cvae"], objective)
            side["cvae_speed_up"] = None if same else side["seconds_per_epoch"] / base  # None: the same step
            how = (f"{side['step']}, {side['precision']}, {side['threads']} threads; validation loss {side['val_loss']:.2f}"
                   if "step" in side else side["settings"])
            print(f"  {objective:10s} {name:16s} {side['seconds_per_epoch']:8.2f} s/epoch   "
                  + (f"{'same step as cvae':>21s}" if same else f"cvae is {side['cvae_speed_up']:5.2f}x faster")
                  + f"   ({how})", flush=True)
        report["objectives"][objective] = sides
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
