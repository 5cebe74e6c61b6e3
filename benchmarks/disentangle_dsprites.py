"""Disentanglement on dSprites: plain VAE, beta-VAE, beta-TCVAE, FactorVAE and DIP-VAE, several seeds.

Each run: `cvae train --data dsprites --limit N --epochs E --latent-dim 10 --objective ...`, then
`cvae evaluate RUN --metrics disentanglement --split train` (MIG, FactorVAE score, DCI, ... of the
posterior means of the training images against their factors, disentanglement_lib's definitions;
`--eval-n` examples). Prints one row per run and the mean and spread (min-max) per objective, and
writes a JSON file with every number.

    CPU budget (README):  python benchmarks/disentangle_dsprites.py --limit 12000 --epochs 8 --seeds 0 1 2
    GPU (the full set, as the papers):  python benchmarks/disentangle_dsprites.py --limit 737280 --epochs 30 \\
        --batch-size 64 --device cuda --eval-n 20000 --seeds 0 1 2 3 4
    (rendering all of dSprites as float32 takes 12 GB: --limit 663552 keeps the in-memory copy at 11 GB.)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

from cvae.config import TrainConfig
from cvae.evaluate import evaluate_run
from cvae.train import fit

OBJECTIVES = {  # name: settings (the published defaults of each paper's dSprites runs where given)
    "vae": {"objective": "elbo", "beta": 1.0},
    "beta-vae (beta 4)": {"objective": "elbo", "beta": 4.0},
    "beta-tcvae (beta 6)": {"objective": "btcvae", "beta": 6.0},
    "factorvae (gamma 35)": {"objective": "factorvae", "gamma": 35.0},
    "dip-vae-i (lambda_od 10)": {"objective": "dip-vae-i", "dip_lambda_od": 10.0},
}
SHOWN = ("mig", "factor_vae", "beta_vae", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap",
         "modularity")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=12000, help="training images (rendered on demand)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--hidden", default="1200,1200", help="MLP widths (Chen et al. 2018 use 1200-1200 on dSprites)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="*", help="objective names to run (default all)")
    p.add_argument("--eval-n", type=int, default=10000, help="training images the metrics are computed on")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", default="runs/bench-disentangle")
    p.add_argument("--out", default="benchmarks/results/disentangle_dsprites.json")
    args = p.parse_args()
    rows = []
    t_all = time.perf_counter()
    for name, settings in OBJECTIVES.items():
        if args.only and name.split()[0] not in args.only:
            continue
        for seed in args.seeds:
            run = Path(args.runs) / f"{name.split()[0]}-s{seed}"
            cfg = TrainConfig(data="dsprites", limit=args.limit, epochs=args.epochs, batch_size=args.batch_size,
                              lr=args.lr, latent_dim=args.latent_dim, hidden=[int(h) for h in args.hidden.split(",")],
                              seed=seed, device=args.device, out=str(run), progress=False, tensorboard=False,
                              precision="float32", **settings)
            t0 = time.perf_counter()
            fit(cfg, overwrite=True)
            t_train = time.perf_counter() - t0
            res = evaluate_run(run, split="train", metrics="disentanglement", n=args.eval_n, device=args.device,
                               seed=seed)
            d = res.results["disentanglement"]
            row = {"objective": name, "seed": seed, **{k: d[k] for k in SHOWN if k in d},
                   "follows": d["dimension_follows"], "train_seconds": round(t_train, 1),
                   "eval_seconds": d["seconds"]}
            rows.append(row)
            print(f"{name:<26} seed {seed}: " + "  ".join(f"{k} {row[k]:.3f}" for k in SHOWN if k in row)
                  + f"  ({t_train:.0f} s train, {d['seconds']:.0f} s metrics)", flush=True)
    summary = {}
    print(f"\n{'objective':<26} " + " ".join(f"{k:>22}" for k in SHOWN[:5]))
    for name in dict.fromkeys(r["objective"] for r in rows):
        group = [r for r in rows if r["objective"] == name]
        summary[name] = {k: {"mean": statistics.fmean(r[k] for r in group), "min": min(r[k] for r in group),
                             "max": max(r[k] for r in group)} for k in SHOWN}
        print(f"{name:<26} " + " ".join(f"{summary[name][k]['mean']:.3f} ({summary[name][k]['min']:.2f}-"
                                         f"{summary[name][k]['max']:.2f})".rjust(22) for k in SHOWN[:5]))
    meta = {"machine": cpu_name(), "device": args.device, "settings": vars(args),
            "seconds": round(time.perf_counter() - t_all, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=1))
    print(f"\n{meta['machine']}, {args.device}; {meta['seconds']:.0f} s in all; wrote {args.out}")


if __name__ == "__main__":
    main()
