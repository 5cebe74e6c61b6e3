"""The hierarchical conditional VAE (``--preset hvae``) measured on a CPU budget.

    mnist    dynamically binarized MNIST, no condition: the test -log p(x) (importance-sampled, --k
             samples, the first --n test images, or --n at random with --subset random, binarized once
             with seed 1234) of the hierarchical
             model beside the one-layer VAE of Burda et al. (the ``burda`` preset) trained for the
             same number of seconds (its epochs are sized from a first timed epoch).
             Published: LVAE 81.7 (Sonderby et al. 2016), IWAE two layers 82.9 (Burda et al. 2015),
             NVAE 78.0 (Vahdat & Kautz 2020), all after hundreds to thousands of GPU epochs.
    fashion  Fashion-MNIST as 8-bit images (--likelihood logistic-mixture), conditioned on the class:
             test bits per dimension (importance-sampled) and the conditional accuracy of 1,000
             samples per class read by the Fashion-MNIST evaluator CNN (`cvae evaluator train --data
             fashion-mnist`); the one-layer CVAE's figure in the README is 0.725.
    sizes    seconds and peak memory per training step at 32x32, 64x64 and 128x128 colour images
             (random pixels: the cost does not depend on them), to plan a run on larger images.

    OMP_NUM_THREADS=1 python benchmarks/hvae.py mnist --data-dir ../shared/data --epochs 3 --n 100
    OMP_NUM_THREADS=1 python benchmarks/hvae.py fashion --data-dir ../shared/data --epochs 3 --n 100
    OMP_NUM_THREADS=1 python benchmarks/hvae.py fashion --data-dir ../shared/data --epochs 3 --n 100 \\
        --likelihood categorical-256 --condition-dropout 0.2      # guided: samples at --weights 0,1,2,3,4
    OMP_NUM_THREADS=1 python benchmarks/hvae.py sizes
    python benchmarks/hvae.py fashion --epochs 200 --width 128 --device cuda --n 10000   # a GPU run

Each prints its figures and writes benchmarks/results/hvae-<what>.json (--results to change).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

import cvae
from cvae.evaluate import evaluate_run
from cvae.models.base import SAMPLING_TEMPERATURE
from cvae.probe import cpu_name
from cvae.train import native_bfloat16

PUBLISHED_MNIST = {"LVAE (Sonderby et al. 2016)": 81.74, "IWAE, two layers, k = 50 (Burda et al. 2015)": 82.90,
                   "NVAE (Vahdat & Kautz 2020)": 78.01}
BASELINE_FASHION_ACCURACY = 0.725  # README: the one-layer CVAE, 20 epochs (cvae train --latent-dim 8 --beta 3 ...)


def machine() -> str:
    return (f"{cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, {torch.get_num_threads()} "
            f"thread(s), torch {torch.__version__}")


def train_seconds(run: Path) -> float:
    return sum(json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip())


def hvae_settings(args) -> dict:
    return dict(preset="hvae", width=args.width, depth=args.depth, groups=args.groups, z_channels=args.z_channels,
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                data_dir=args.data_dir, progress=False, tensorboard=False)


def likelihood_figures(ev) -> dict:
    lik = ev.results["likelihood"]
    keep = ("negative_elbo", "importance_sampled_nll", "bits_per_dim", "effective_sample_size")
    return {"protocol": lik["protocol"], **{k: lik[k] for k in keep if k in lik}}


def which_images(args) -> str:
    return f"first {args.n}" if args.subset == "first" else f"{args.n} drawn at random (seed {args.seed}) of the"


def run_mnist(args) -> dict:
    out = Path(args.runs)
    data = dict(data="mnist", condition="none", binarize="dynamic")
    hv, one = out / "mnist-hvae", out / "mnist-burda"
    if not args.eval_only:
        cvae.train(**data, **hvae_settings(args), out=str(hv), overwrite=True)
        seconds = train_seconds(hv)
        # the one-layer model: a first epoch gives its pace, then a run as long as the hierarchical one's
        probe = out / "mnist-burda-probe"
        base = dict(**data, preset="burda", batch_size=args.batch_size, seed=args.seed, device=args.device,
                    data_dir=args.data_dir, progress=False, tensorboard=False, pictures=False)
        cvae.train(**base, epochs=1, out=str(probe), overwrite=True)
        epochs = max(1, round(seconds / train_seconds(probe)))
        cvae.train(**base, epochs=epochs, out=str(one), overwrite=True)
    rows = {}
    for name, run in (("hvae", hv), ("one-layer (burda preset)", one)):
        t = time.perf_counter()
        ev = evaluate_run(run, subset=args.subset, seed=args.seed, k=args.k, n=args.n, metrics="elbo,nll",
                          data_dir=args.data_dir, progress=False, write=not args.eval_only,
                          device="cpu" if args.device == "auto" else args.device)
        config = json.loads((run / "config.json").read_text())
        rows[name] = {"train_seconds": round(train_seconds(run), 1), "epochs": config["train"]["epochs"],
                      "parameters": sum(p.numel() for p in cvae.load(run).parameters()),
                      "eval_seconds": round(time.perf_counter() - t, 1), **likelihood_figures(ev)}
        nll = rows[name]["importance_sampled_nll"]
        print(f"{name}: {rows[name]['epochs']} epochs, {rows[name]['train_seconds'] / 60:.1f} min of training; "
              f"test -log p(x), k = {args.k}, {which_images(args)} images: {nll['value']:.2f} ± {nll['stderr']:.2f} nats",
              flush=True)
    return {"models": rows, "published": PUBLISHED_MNIST}


def run_fashion(args) -> dict:
    out = Path(args.runs)
    guided = args.condition_dropout > 0
    run = out / ("fashion-hvae" + ("-guided" if guided else "") + (f"-{args.tag}" if args.tag else ""))
    device = "cpu" if args.device == "auto" else args.device
    res = {}
    if not args.eval_only:
        cvae.train(data="fashion-mnist", likelihood=args.likelihood, condition_dropout=args.condition_dropout,
                   **hvae_settings(args), out=str(run), overwrite=True)
        t = time.perf_counter()
        ev = evaluate_run(run, subset=args.subset, seed=args.seed, k=args.k, n=args.n, metrics="elbo,nll", data_dir=args.data_dir, progress=False,
                          device=device)
        res = {"train_seconds": round(train_seconds(run), 1), "epochs": args.epochs,
               "parameters": sum(p.numel() for p in cvae.load(run).parameters()),
               "eval_seconds": round(time.perf_counter() - t, 1), **likelihood_figures(ev),
               "baseline_conditional_accuracy": BASELINE_FASHION_ACCURACY}
        bpd = res.get("bits_per_dim", {})
        print(f"fashion hvae ({args.likelihood}, condition dropout {args.condition_dropout}): {args.epochs} epochs, "
              f"{res['train_seconds'] / 60:.1f} min; test bits/dim (k = {args.k}, {which_images(args)} images) "
              f"{bpd.get('value', float('nan')):.3f} ± {bpd.get('stderr', float('nan')):.3f}", flush=True)
    # the samples at each temperature and guidance weight (0: unguided; a run without condition dropout has only 0)
    res["samples"] = {}
    for temperature in [float(t) for t in args.temperatures.split(",")]:
        for w in ([float(w) for w in args.weights.split(",")] if guided else [0.0]):
            samples = evaluate_run(run, subset="first", metrics="samples", per_class=args.per_class, data_dir=args.data_dir,
                                   progress=False, device=device, guidance=w, temperature=temperature,
                                   write=False).results.get("samples", {})
            key = f"guidance {w:g}" + ("" if temperature == SAMPLING_TEMPERATURE else f", temperature {temperature:g}")
            res["samples"][key] = samples
            acc = samples.get("conditional_accuracy", {}).get("mean", {}).get("value", float("nan"))
            print(f"  {key}: conditional accuracy {acc:.3f} (one-layer CVAE, unguided: {BASELINE_FASHION_ACCURACY})",
                  flush=True)
    return res


def run_sizes(args) -> dict:
    from cvae.models import HVAEConfig, build_model

    rows = []
    schema = {"attributes": [{"name": "label", "kind": "categorical", "classes": ["a", "b"]}]}
    for size, depth in ((32, 3), (64, 4), (128, 5)):
        config = HVAEConfig(data_shape=(3, size, size), schema=schema, likelihood="logistic-mixture", depth=depth,
                            width=args.width, groups=args.groups, z_channels=args.z_channels)
        torch.manual_seed(0)
        model = build_model(config)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randint(0, 256, (args.batch_size, 3, size, size)).float() / 255
        c = torch.nn.functional.one_hot(torch.arange(args.batch_size) % 2, 2).float()
        times, cpu = [], []
        for _ in range(3):
            t, tc = time.perf_counter(), time.process_time()
            out = model(x, c)
            loss = -out.px.log_prob(x).mean() + out.kl().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - tc)
        step, step_cpu = min(times[1:]), min(cpu[1:])
        rows.append({"size": f"{size}x{size}x3", "depth": depth, "latent_dim": config.latent_dim,
                     "parameters": sum(p.numel() for p in model.parameters()), "batch_size": args.batch_size,
                     "wall_seconds_per_step": round(step, 3), "cpu_seconds_per_step": round(step_cpu, 3),
                     "cpu_ms_per_image": round(1000 * step_cpu / args.batch_size, 2),
                     "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)})
        print(rows[-1], flush=True)
    return {"rows": rows, "note": "float32, one training step (forward, backward, Adam); cpu_* is this process's CPU "
                                  "time (the machine is shared: wall time also counts waiting for a core); peak_rss_gb "
                                  "is the process's peak resident memory so far (it only grows)"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("mnist", "fashion", "sizes"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--z-channels", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--k", type=int, default=5000, help="importance samples per test image")
    p.add_argument("--n", type=int, default=100, help="test images: the first N, or N at random with --subset random")
    p.add_argument("--subset", choices=("first", "random"), default="first",
                   help="mnist and fashion: score the first --n test images (as papers score a prefix) or --n drawn "
                        "at random with --seed (MNIST's first 5,000 test digits are the cleaner half)")
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--likelihood", default="logistic-mixture", help="fashion: the likelihood (bernoulli: the preset's on grey levels)")
    p.add_argument("--condition-dropout", type=float, default=0.0,
                   help="fashion: train for classifier-free guidance (a likelihood with guidance: not logistic-mixture)")
    p.add_argument("--weights", default="0,1,2,3,4", help="fashion, guided: the guidance weights to sample at")
    p.add_argument("--temperatures", default=f"{SAMPLING_TEMPERATURE:g}", help="fashion: the prior temperatures to sample at")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate the existing runs in --runs (no training); their eval.json is left as it is")
    p.add_argument("--tag", default="", help="fashion: appended to the run's and the results file's names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA"))
    p.add_argument("--runs", default="runs/hvae-bench")
    p.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    t0 = time.perf_counter()
    res = {"mnist": run_mnist, "fashion": run_fashion, "sizes": run_sizes}[args.what](args)
    res = {"what": args.what, "machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "results"},
           "wall_minutes": round((time.perf_counter() - t0) / 60, 1), **res}
    guided = args.what == "fashion" and args.condition_dropout > 0
    tag = f"-{args.tag}" if args.what == "fashion" and args.tag else ""
    if args.what in ("mnist", "fashion") and args.eval_only:
        tag += "-eval" + (f"-random{args.n}" if args.subset == "random" else "")
    path = Path(args.results) / f"hvae-{args.what}{'-guided' if guided else ''}{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
