"""Priors and objectives compared on one protocol: importance-sampled test NLL on dynamically
binarized MNIST with the `burda` network.

    data          MNIST, the 60,000 training images binarized afresh every epoch (``--binarize
                  dynamic``); the 10,000 test images binarized once (torch.bernoulli, seed 1234)
    network       784-200-200-50, tanh, Bernoulli decoder (the ``burda`` preset; ``--activation relu``
                  swaps the nonlinearity); a plain VAE
    training      every row the same: batch 100, Adam at 1e-3 on the cosine schedule, no validation
                  split, the same --epochs (and seed) for both sides of a comparison
    evaluation    ``cvae evaluate``: -log p(x) with k = 5000 importance samples, all 10,000 test images

Rows (``--rows``, default all):

    standard, mog, vamp        the ELBO with an N(0, I) prior, a learned mixture of K Gaussians, and
                               the VampPrior (Tomczak & Welling 2018) with K pseudo-inputs (--components)
    iwae-K, dreg-K             IWAE (Burda et al. 2015) and DReG (Tucker et al. 2019) with K samples,
                               standard prior (K from --k, default 5 and 50)

Each row is a run folder OUT/ROW (trained or resumed to --epochs, then evaluated once) with its
figures in OUT/ROW/parts.json; ``--report`` prints the table of every row found under OUT. Rows are
independent, so two processes can share the work:

    OMP_NUM_THREADS=1 python benchmarks/parts.py --data-dir ../shared/data --rows standard,mog,vamp --epochs 100
    OMP_NUM_THREADS=1 python benchmarks/parts.py --data-dir ../shared/data --rows iwae-5,dreg-5,iwae-50,dreg-50 --epochs 20
    python benchmarks/parts.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from burda import (  # the same run-folder figures (benchmarks/ is on the path)
    _epochs_done,
    _seconds_spent,
)

import cvae
from cvae.evaluate import evaluate_run


def rows(components: int, ks: list[int]) -> dict[str, dict]:
    table = {"standard": dict(prior="standard"),
             "mog": dict(prior="mog", prior_components=components),
             "vamp": dict(prior="vamp", prior_components=components)}
    for k in ks:
        table[f"iwae-{k}"] = dict(prior="standard", objective="iwae", iwae_k=k)
        table[f"dreg-{k}"] = dict(prior="standard", objective="dreg", iwae_k=k)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", help="comma-separated rows to run (default: every row)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--components", type=int, default=500, help="K of the mog and vamp priors (Tomczak & Welling: 500)")
    p.add_argument("--k", default="5,50", help="sample counts of the iwae and dreg rows")
    p.add_argument("--activation", default="tanh", help="of the burda network (the paper: tanh)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-k", type=int, default=5000, help="importance samples per test image")
    p.add_argument("--n", type=int, help="evaluate the first N test images only (default all 10,000)")
    p.add_argument("--out", default="runs/parts")
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", action="store_true", help="print the table of the rows under --out and stop")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report:
        return report(out)

    table = rows(args.components, [int(k) for k in args.k.split(",")])
    chosen = args.rows.split(",") if args.rows else list(table)
    unknown = [r for r in chosen if r not in table]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"
    print(f"machine: {machine}")
    for name in chosen:
        run = out / name
        settings = dict(data="mnist", data_dir=args.data_dir, condition="none", preset="burda", binarize="dynamic",
                        val_fraction=0.0, batch_size=args.batch_size, lr=args.lr, lr_schedule="cosine",
                        epochs=args.epochs, seed=args.seed, device=args.device, out=str(run), progress=False,
                        tensorboard=False, activation=args.activation, **table[name])
        done = _epochs_done(run)
        if done >= args.epochs and (run / "parts.json").is_file():
            print(f"{name}: done already ({run / 'parts.json'})")
            continue
        if done == 0:
            cvae.train(settings, pictures=False)
        elif done < args.epochs:  # an interrupted row goes on from its last epoch (the resume is exact)
            cvae.train(out=str(run), epochs=args.epochs, data_dir=args.data_dir, progress=False, tensorboard=False,
                       resume=True, pictures=False)
        t0 = time.perf_counter()
        ev = evaluate_run(run, subset="first", k=args.eval_k, n=args.n, metrics="elbo,nll,posterior", data_dir=args.data_dir,
                          device="cpu" if args.device == "auto" else args.device, progress=False)
        lik, post = ev.results["likelihood"], ev.results["posterior"]
        summary = dict(row=name, settings=table[name], activation=args.activation, epochs=_epochs_done(run), batch_size=args.batch_size, lr=args.lr,
                       train_minutes=round(_seconds_spent(run) / 60, 1), eval_minutes=round((time.perf_counter() - t0) / 60, 1),
                       test_nll=lik["importance_sampled_nll"], test_negative_elbo=lik["negative_elbo"],
                       active_units=post["active_units"]["value"], eval_k=args.eval_k,
                       n_test=lik["protocol"]["n_examples"], machine=machine)
        (run / "parts.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{name}: {summary['epochs']} epochs in {summary['train_minutes']} min; test -log p(x) "
              f"{summary['test_nll']['value']:.2f} ± {summary['test_nll']['stderr']:.2f}, negative ELBO "
              f"{summary['test_negative_elbo']['value']:.2f}, active units {summary['active_units']} "
              f"(evaluation {summary['eval_minutes']} min)")
        sys.stdout.flush()
    return 0


def report(out: Path) -> int:
    found = sorted(out.glob("*/parts.json"))
    if not found:
        print(f"no rows under {out}: run this script without --report first", file=sys.stderr)
        return 1
    rows = [json.loads(path.read_text()) for path in found]
    protocols = {(s.get("eval_k"), s.get("n_test")) for s in rows}  # each row's importance samples and test images

    def protocol(s):
        k, n = s.get("eval_k"), s.get("n_test")
        return f"k = {k:,}, n = {n:,}" if k and n else "k and n not saved"

    same = len(protocols) == 1
    print(f"| row | epochs | test -log p(x){', ' + protocol(rows[0]) if same else ''} | test negative ELBO | "
          "active units | training minutes |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in rows:
        print(f"| `{s['row']}` | {s['epochs']} | {s['test_nll']['value']:.2f} ± {s['test_nll']['stderr']:.2f}"
              f"{'' if same else ' (' + protocol(s) + ')'} | "
              f"{s['test_negative_elbo']['value']:.2f} ± {s['test_negative_elbo']['stderr']:.2f} | "
              f"{s['active_units']} of 50 | {s['train_minutes']} |")
    print(f"\nmachine: {rows[0]['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
