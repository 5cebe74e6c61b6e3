"""Which defaults make a conditional VAE generate the class it is asked for?

`cvae train --data mnist --epochs 10` with each candidate setting below (everything else at the
defaults of cvae before this benchmark chose new ones: 20 latents, the condition at the input),
then 1,000 samples per digit (decoder means, z from the prior at temperature 1 and 0.9) classified by cvae's
independent evaluator (a small CNN trained on the real MNIST training images: `cvae evaluator
train`); and the plain VAE (`--condition none`), whose test loss the conditional settings must not
change. Prints one row per candidate: the mean and worst per-class accuracy, the test negative ELBO.

    OMP_NUM_THREADS=1 python benchmarks/defaults.py --data-dir ../shared/data [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import cvae
from cvae.evaluator import conditional_accuracy, default_path, load_evaluator, train_evaluator
from cvae.probe import cpu_name
from cvae.train import native_bfloat16

TEMPERATURES = (1.0, 0.9)  # exact draws from the model, and cvae sample's default
CANDIDATES = {
    "defaults": {"latent_dim": 20, "condition_at": 0},  # cvae's defaults before this benchmark
    "condition at every layer": {"condition_at": -1},
    "latent 8": {"latent_dim": 8},
    "condition at every layer, latent 8": {"condition_at": -1, "latent_dim": 8},
    "condition at every layer, latent 8, beta 3": {"condition_at": -1, "latent_dim": 8, "beta": 3.0},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--out", default="runs/defaults")
    p.add_argument("--only", help="comma-separated candidate names")
    args = p.parse_args(argv)
    out = Path(args.out)
    print(f"machine: {cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, "
          f"{torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}; {args.data}, {args.epochs} epochs, {args.per_class} samples per class")
    path = out / "evaluator.safetensors"
    if not path.is_file():
        default = default_path(args.data)
        if default.is_file():
            path = default
        else:
            trained = train_evaluator(args.data, data_dir=args.data_dir, epochs=5, out=path, progress=False)  # as the README
            print(f"evaluator: held-out accuracy {trained.accuracy}")
    evaluator = load_evaluator(path)
    rows = []
    chosen = args.only.split(",") if args.only else list(CANDIDATES)
    unknown = [c for c in chosen if c not in CANDIDATES]
    if unknown:
        raise SystemExit(f"--only: unknown candidate(s) {', '.join(unknown)}; known: {', '.join(CANDIDATES)}")
    for name in chosen:
        run = out / name.replace(", ", "-").replace(" ", "_")
        t0 = time.perf_counter()
        if not (run / "summary.json").is_file():
            cvae.train(data=args.data, data_dir=args.data_dir, epochs=args.epochs, out=str(run), progress=False,
                       tensorboard=False, pictures=False, **CANDIDATES[name])
        model = cvae.load(run)
        summary = json.loads((run / "summary.json").read_text())
        for temperature in TEMPERATURES:
            acc = conditional_accuracy(model, evaluator, 0, per_class=args.per_class, temperature=temperature)
            worst = min(range(len(acc.per_class)), key=acc.per_class.__getitem__)
            row = {"candidate": name, "settings": CANDIDATES[name], "temperature": temperature,
                   "mean_accuracy": acc.mean.value, "stderr": acc.mean.stderr, "worst_class": acc.classes[worst],
                   "worst_accuracy": acc.per_class[worst], "per_class": dict(zip(acc.classes, acc.per_class)),
                   "test_negative_elbo": summary["test"]["loss"], "minutes": round((time.perf_counter() - t0) / 60, 1)}
            rows.append(row)
            print(f"{name:45s} temperature {temperature}: accuracy {row['mean_accuracy']:.3f} ± {row['stderr']:.3f} "
                  f"(worst: {row['worst_class']} {row['worst_accuracy']:.3f})  test negative ELBO "
                  f"{row['test_negative_elbo']:.2f}", flush=True)
    plain = out / "plain"
    if not (plain / "summary.json").is_file():
        cvae.train(data=args.data, data_dir=args.data_dir, epochs=args.epochs, condition="none", out=str(plain),
                   progress=False, tensorboard=False, pictures=False)
    plain_loss = json.loads((plain / "summary.json").read_text())["test"]["loss"]
    print(f"plain VAE (--condition none), defaults: test negative ELBO {plain_loss:.2f}")
    (out / "defaults.json").write_text(json.dumps({"rows": rows, "plain_test_negative_elbo": plain_loss}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
