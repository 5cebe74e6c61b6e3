"""Burda, Grosse & Salakhutdinov (2015), "Importance Weighted Autoencoders", Table 1: the VAE with one
stochastic layer on dynamically binarized MNIST, test NLL estimated with k = 5000.

    model         a plain VAE (no condition: the likelihood is log p(x), not log p(x | label))
    architecture  784-200-200-50 (tanh), Bernoulli decoder: the ``burda`` preset
    data          MNIST, 60,000 training images binarized afresh every epoch (``--binarize dynamic``);
                  the 10,000 test images binarized once (torch.bernoulli, seed 1234)
    paper         86.76 nats (VAE, k = 1 training) after 3280 epochs (3^i epochs at learning rate
                  1e-3 * 10^(-i/7), i = 0..7, batch 20, Adam with epsilon 1e-4)

Here: the paper's schedule (``--lr-schedule burda``: stage i of 3^i epochs at 1e-3 * 10^(-i/7)) and
batch 20; Adam keeps torch's epsilon (1e-8). Training stops at ``--epochs`` or when
``--budget-minutes`` of training epochs are spent, whichever comes first (the stage reached is
printed), then ``cvae evaluate`` measures the test NLL with ``--k`` samples. Run again on the same
``--out`` with a larger budget to go on from where it stopped (the resume is exact).

    OMP_NUM_THREADS=1 python benchmarks/burda.py --data-dir ../shared/data --budget-minutes 30   # this CPU
    python benchmarks/burda.py --epochs 3280 --budget-minutes 0 --device cuda                      # the full run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import cvae
from cvae.evaluate import evaluate_run
from cvae.probe import cpu_name
from cvae.train import burda_lr, burda_stage, native_bfloat16

PAPER_NLL = 86.76


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3280, help="at most this many epochs (the paper: 3280)")
    p.add_argument("--budget-minutes", type=float, default=25.0,
                   help="stop when the next epoch would pass this many minutes of training epochs, counted over "
                        "every invocation on the same --out (0: no budget)")
    p.add_argument("--batch-size", type=int, default=20, help="the paper: 20")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--k", type=int, default=5000, help="importance samples per test image")
    p.add_argument("--n", type=int, help="evaluate the first N test images only (default all 10,000)")
    p.add_argument("--out", default="runs/burda")
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"machine: {cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}", flush=True)

    out = Path(args.out)
    settings = dict(data="mnist", data_dir=args.data_dir, condition="none", preset="burda", binarize="dynamic",
                    val_fraction=0.0, batch_size=args.batch_size, lr=args.lr, lr_schedule="burda", epochs=args.epochs,
                    seed=args.seed, device=args.device, out=str(out), progress=False, tensorboard=False)
    budget = args.budget_minutes * 60 if args.budget_minutes > 0 else math.inf
    t0 = time.perf_counter()
    if not (out / "trainer_state.safetensors").is_file():  # a first epoch measures the pace
        cvae.train(settings, epochs=1, pictures=False)
    # Then rounds of as many epochs as the rest of the budget holds at the median pace so far; the
    # budget counts the training epochs' own seconds (metrics.jsonl), summed over every invocation.
    while _epochs_done(out) < args.epochs:
        done, spent = _epochs_done(out), _seconds_spent(out)
        more = min(args.epochs - done, int((budget - spent) / _seconds_per_epoch(out))) if math.isfinite(budget) \
            else args.epochs - done
        if more < 1:
            break
        cvae.train(out=str(out), epochs=done + more, data_dir=args.data_dir, progress=False, tensorboard=False,
                   resume=True, pictures=False)
    epochs = _epochs_done(out)
    last_lr, stage = burda_lr(args.lr, epochs - 1), burda_stage(epochs - 1)
    print(f"trained {epochs} epochs: {_seconds_spent(out) / 60:.1f} min of epochs (median "
          f"{_seconds_per_epoch(out):.1f} s per epoch); {(time.perf_counter() - t0) / 60:.1f} min wall in this call; "
          f"schedule stage {stage} of 7 (learning rate {last_lr:.2e})")
    sys.stdout.flush()

    t1 = time.perf_counter()
    ev = evaluate_run(out, subset="first", k=args.k, n=args.n, metrics="elbo,nll,posterior", data_dir=args.data_dir,
                      device="cpu" if args.device == "auto" else args.device, progress=False)
    eval_seconds = time.perf_counter() - t1
    lik, post = ev.results["likelihood"], ev.results["posterior"]
    nll = lik["importance_sampled_nll"]
    print(f"protocol: {lik['protocol']['binarization']}; split {lik['protocol']['split']}, "
          f"{lik['protocol']['n_examples']} images, k = {lik['protocol']['k']}")
    print(f"test -log p(x), k = {args.k}: {nll['value']:.2f} ± {nll['stderr']:.2f} nats "
          f"(paper: {PAPER_NLL} after 3280 epochs; {nll['value'] - PAPER_NLL:+.2f} nats here after {epochs} epoch{'s' if epochs != 1 else ''})")
    print(f"test negative ELBO: {lik['negative_elbo']['value']:.2f} ± {lik['negative_elbo']['stderr']:.2f} nats; "
          f"active units {post['active_units']['value']} of 50 (paper: 19 for this VAE)")
    print(f"evaluation took {eval_seconds / 60:.1f} min")
    summary = {"epochs": epochs, "train_minutes": round(_seconds_spent(out) / 60, 1), "eval_minutes": round(eval_seconds / 60, 1),
               "test_nll": nll, "test_negative_elbo": lik["negative_elbo"], "active_units": post["active_units"]["value"],
               "paper_nll": PAPER_NLL, "batch_size": args.batch_size, "lr": args.lr, "lr_schedule": "burda",
               "schedule_stage": stage, "last_lr": last_lr, "seconds_per_epoch": _seconds_per_epoch(out)}
    (out / "burda.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'burda.json'} and {out / 'eval.json'}")
    return 0


def _epochs_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def _seconds_spent(out: Path) -> float:
    return sum(json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip())


def _seconds_per_epoch(out: Path) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    secs = sorted(r["seconds"] for r in rows)
    return secs[len(secs) // 2] if secs else math.nan


if __name__ == "__main__":
    sys.exit(main())
