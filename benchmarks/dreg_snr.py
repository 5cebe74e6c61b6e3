"""Signal-to-noise ratio of the encoder's gradient: IWAE against DReG as k grows.

Rainforth et al. (2018) showed that the IWAE encoder gradient's SNR falls like 1/sqrt(k); Tucker et
al. (2019) that the doubly reparameterised estimator's does not. This trains the `burda` network
(784-200-200-50, tanh) briefly on dynamically binarized MNIST with the ELBO, then, for one fixed
minibatch, draws the encoder gradient R times under each objective and reports

    SNR = mean over encoder weights of |E[g]| / std[g]     (R draws of the gradient g)

It writes the table, ``--json`` (the figures) and ``--figure`` (SNR against k, both estimators, log axes).

Usage: python benchmarks/dreg_snr.py --data-dir ../shared/data [--epochs 3] [--draws 200] [--k 1,5,50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

import cvae
from cvae.data import EVALUATION_SEED, fixed_binarization
from cvae.evaluate import load_run_data
from cvae.objectives import OBJECTIVES
from cvae.probe import cpu_name
from cvae.train import native_bfloat16


def encoder_gradients(model, objective, x, draws: int) -> torch.Tensor:
    rows = []
    for r in range(draws):
        torch.manual_seed(1000 + r)
        model.zero_grad(set_to_none=True)
        objective(model, x, None).loss.backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.encoder.parameters()]))
    return torch.stack(rows)  # (draws, encoder parameters)


def snr(grads: torch.Tensor) -> float:
    mean, std = grads.mean(0), grads.std(0)
    keep = std > 0
    return float((mean[keep].abs() / std[keep]).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA"))
    p.add_argument("--out", default="runs/bench-dreg-snr")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--k", default="1,5,50")
    p.add_argument("--json", help="write the figures here (.json)")
    p.add_argument("--figure", help="write SNR against k here (.png)")
    args = p.parse_args(argv)
    machine = (f"{cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, {torch.get_num_threads()} "
               f"threads, torch {torch.__version__}")
    print(f"machine: {machine}")
    if os.path.isfile(os.path.join(args.out, "model.safetensors")):
        model = cvae.load(args.out)
    else:
        model = cvae.train(data="mnist", data_dir=args.data_dir, condition="none", preset="burda", binarize="dynamic",
                           epochs=args.epochs, out=args.out, progress=False, tensorboard=False, pictures=False).model
    model.train()
    x = fixed_binarization(load_run_data(model, data_dir=args.data_dir).test.x[:args.batch], EVALUATION_SEED)
    print(f"model: burda network trained {model.run_config.get('summary', {}).get('epochs')} epochs with the ELBO; "
          f"{args.batch} test images, {args.draws} gradient draws per setting")
    print(f"{'k':>5} {'IWAE SNR':>10} {'DReG SNR':>10} {'DReG / IWAE':>12}")
    rows = []
    for k in (int(v) for v in args.k.split(",")):
        s_iwae = snr(encoder_gradients(model, OBJECTIVES.get("iwae")(k), x, args.draws))
        s_dreg = snr(encoder_gradients(model, OBJECTIVES.get("dreg")(k), x, args.draws))
        rows.append({"k": k, "iwae_snr": s_iwae, "dreg_snr": s_dreg})
        print(f"{k:>5} {s_iwae:>10.4f} {s_dreg:>10.4f} {s_dreg / s_iwae:>11.2f}x")
        sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "epochs": model.run_config.get("summary", {}).get("epochs"),
                                               "batch": args.batch, "draws": args.draws, "rows": rows}, indent=2) + "\n")
    if args.figure:
        plot(rows, args.figure, args.draws, args.batch)
    return 0


def plot(rows: list[dict], path: str, draws: int, batch: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=120)
    ax.plot(ks, [r["iwae_snr"] for r in rows], "o-", label="IWAE")
    ax.plot(ks, [r["dreg_snr"] for r in rows], "s-", label="DReG")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k (importance samples)")
    ax.set_ylabel("encoder gradient SNR")
    ax.set_title(f"burda network, {batch} test images, {draws} draws", fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
