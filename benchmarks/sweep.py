"""Models per hour: K small models trained by `cvae sweep` against the same K runs one by one.

    python benchmarks/sweep.py --data-dir /work/shared/data                # K = 16, MNIST, about 3 minutes
    python benchmarks/sweep.py --data-dir /work/shared/data --k 4 --epochs 1 --limit 2000   # a smoke test

The K runs (seeds 0..K/4-1 x beta 1, 2, 4, 8 by default: the disentanglement protocol's shape) are
the same in every way: MNIST (the first --limit training images), an MLP of --hidden units and
--latent-dim latents, Bernoulli pixels, batch 128, --epochs epochs, precision and threads as --precision
says. They are trained three ways, in this order:

  (a) separate commands: `python -m cvae train ...` once per run (what a shell loop does: each run
      pays the start-up, the data loading and its own steps),
  (b) separate runs in one process: `cvae.train(...)` once per run (no start-up),
  (c) `cvae sweep --vary seed=... --vary beta=...`: one process, the runs trained together.

It prints the wall time of each, models per hour and the ratio of (c) to (a) and (b), and checks that
the sweep's runs reach the same validation loss as the separate runs (mean over the K runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cvae.api import train
from cvae.config import TrainConfig
from cvae.probe import cpu_name
from cvae.sweep import expand, fit_sweep
from cvae.train import native_bfloat16


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA"))
    p.add_argument("--k", type=int, default=16, help="models (a multiple of 4: seeds x beta 1, 2, 4, 8)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=10000)
    p.add_argument("--hidden", default="64")
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--precision", default="auto")
    p.add_argument("--skip", default="", help="comma-separated: commands, in-process")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    betas = [1.0, 2.0, 4.0, 8.0]
    vary = {"seed": list(range(max(1, args.k // len(betas)))), "beta": betas}
    settings = dict(data="mnist", data_dir=args.data_dir, condition="none", limit=args.limit, epochs=args.epochs,
                    hidden=[int(h) for h in args.hidden.split(",")], latent_dim=args.latent_dim,
                    precision=args.precision, progress=False, tensorboard=False)
    work = Path(tempfile.mkdtemp(prefix="cvae-sweep-"))
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch's one-time imports, outside every timing
    configs = expand(TrainConfig(**settings), vary, work / "sweep")
    k = len(configs)
    cpu = cpu_name()
    print(f"machine: {cpu}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, {os.cpu_count()} cores, "
          f"load average {tuple(round(v, 2) for v in os.getloadavg())}")
    print(f"{k} runs: MNIST {args.limit} images, MLP 784-{args.hidden}-{args.latent_dim}, {args.epochs} epochs, "
          f"batch 128, precision {args.precision}; seeds {vary['seed']} x beta {betas}\n")
    report = {"k": k, "settings": {k2: str(v) for k2, v in settings.items()}, "machine": cpu, "ways": {}}

    def record(name, seconds, losses):
        report["ways"][name] = {"seconds": seconds, "models_per_hour": k * 3600 / seconds,
                                "mean_val_loss": statistics.mean(losses)}
        print(f"  {name:34s} {seconds:8.1f} s  {k * 3600 / seconds:8.0f} models/hour  "
              f"mean validation loss {statistics.mean(losses):.3f}")

    def val_losses(dirs):
        return [json.loads((d / "summary.json").read_text())["val"]["loss"] for d in dirs]

    # (c) first, so that its probe (precision auto) is the one the others find in the cache
    t = time.perf_counter()
    fit_sweep(configs)
    sweep_s = time.perf_counter() - t
    record("(c) cvae sweep", sweep_s, val_losses([Path(c.out) for c in configs]))
    if "in-process" not in skip:
        t = time.perf_counter()
        dirs = []
        for c in configs:
            out = work / "inproc" / Path(c.out).name
            train(c.replace(out=str(out)), pictures=False)
            dirs.append(out)
        record("(b) separate runs, one process", time.perf_counter() - t, val_losses(dirs))
    if "commands" not in skip:
        t = time.perf_counter()
        dirs = []
        for c in configs:
            out = work / "commands" / Path(c.out).name
            flags = ["--data", "mnist", "--condition", "none", "--limit", str(args.limit), "--epochs", str(args.epochs),
                     "--hidden", args.hidden, "--latent-dim", str(args.latent_dim), "--precision", args.precision,
                     "--seed", str(c.seed), "--beta", str(c.beta), "--out", str(out), "--no-progress",
                     "--no-tensorboard", "--no-pictures"] + (["--data-dir", args.data_dir] if args.data_dir else [])
            subprocess.run([sys.executable, "-m", "cvae", "train", *flags], check=True, capture_output=True)
            dirs.append(out)
        record("(a) separate commands", time.perf_counter() - t, val_losses(dirs))
    ways = report["ways"]
    for name in ("(a) separate commands", "(b) separate runs, one process"):
        if name in ways:
            print(f"the sweep trains {ways[name]['seconds'] / sweep_s:.2f}x as many models per hour as {name[4:]}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
