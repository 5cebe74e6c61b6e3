"""Semi-supervised classification with few labels: cvae's M2 (+ consistency) against the same
classifier network trained on the labels alone, on MNIST or Fashion-MNIST.

For each number of labels and each label draw (``--seeds``), ``cvae train --data DATA --labelled N
--seed S`` keeps N training labels (N/10 per class, drawn with the seed; the validation split's
labels are hidden too) and trains the semi-supervised model; its classifier q(y | x) is scored on
the 10,000 test images. Beside it, the supervised-only baseline: the same classifier network
(cvae's default for the data, ``M2Config``), trained on the same N labelled images with the same weak
perturbation, Adam 1e-3 on a cosine schedule for ``--baseline-steps`` steps. For the first draw of
the smallest N, the conditional accuracy of the model's samples: 1,000 per class, read by cvae's
independent evaluator CNN (trained on the real training images: `cvae evaluator train`).

    python benchmarks/semi.py --data mnist --labels 100,600,1000 --seeds 0,1,2 --epochs 10 \
        --data-dir ../shared/data [--variants unguided,guided,m2]

Variants: ``default`` (M2 with FixMatch consistency, cvae's default) and ``m2`` (--consistency 0:
M2 exactly). Runs are kept under --out and reused when they exist (a summary.json), so the
script can be stopped and started again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import cvae
from cvae import perturb
from cvae.data import load_data
from cvae.evaluate import classification_metrics
from cvae.models import M2Config
from cvae.nn import CLASSIFIERS
from cvae.probe import cpu_name
from cvae.train import native_bfloat16

# default: the library's defaults as they are now (for images: consistency regularisation and
# classifier-free guidance). unguided: no condition dropout (the defaults before guidance; the README's
# MNIST rows). guided: the decoder also learns p(x | z) (condition dropout 0.2) and samples are guided
# with weight 3 (the library's default when this row was measured; 2 now, benchmarks/guidance.py), stated so that
# the row keeps its meaning if the defaults change. m2: the paper's M2, no consistency, no guidance.
VARIANTS = {"default": {}, "unguided": {"condition_dropout": 0.0},
            "guided": {"condition_dropout": 0.2, "guidance": 3.0},
            "guided-w2": {"condition_dropout": 0.2, "guidance": 2.0},
            "m2": {"consistency": 0.0, "condition_dropout": 0.0},
            # the defaults with RandAugment-style strong views of images (benchmarks/semi_classifier.py's
            # randaug) in place of cvae.perturb.strong's: a candidate default, measured here in full runs
            "randaug": {}}




def scored_split(data_name: str, data_dir, seed: int):
    """The images the classifiers are scored on, with their labels: the test split, or for a data set
    without one (scikit-learn's digits) the validation split the run held out with the same seed."""
    data = load_data(data_name, data_dir=data_dir, seed=seed)
    return data.test if data.test is not None else data.val


def supervised_baseline(data_name: str, data_dir, labels: int, seed: int, steps: int) -> dict:
    """The default classifier network of a semi-supervised run, trained on its labelled images only."""
    data = load_data(data_name, data_dir=data_dir, labelled=labels, seed=seed)
    known = ~torch.isnan(data.train.y[:, 0])
    xl, yl = data.train.x[known], data.train.y[known, 0].long()
    cfg = M2Config(data_shape=data.data_shape, schema=data.schema.to_dict())
    torch.manual_seed(seed)
    net = CLASSIFIERS[cfg.classifier_arch](cfg.data_shape, len(data.schema.attributes[0].classes),
                                           channels=cfg.classifier_channels, hidden=cfg.classifier_hidden,
                                           act=cfg.activation)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = min(len(xl), 100)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if native_bfloat16(torch.device("cpu")) else _null()
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 0.5e-3 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(xl), (batch,))
        with amp:
            loss = F.cross_entropy(net(perturb.weak(xl[idx])).float(), yl[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    scored = scored_split(data_name, data_dir, seed)
    with torch.no_grad():
        probs = torch.cat([net(scored.x[i:i + 1000]).float().softmax(1) for i in range(0, len(scored.x), 1000)])
    m = classification_metrics(probs.numpy(), scored.y[:, 0].numpy(), data.schema.attributes[0].classes)
    return {"error": m["error"]["value"], "ece": m["ece"]["value"], "seconds": time.perf_counter() - t0}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@contextmanager
def _randaug_views():
    """cvae.perturb.strong with images given semi_classifier.randaug's views instead (variant randaug)."""
    from semi_classifier import randaug

    original = perturb.strong

    def strong(x, *, unit_range=True, generator=None):
        return randaug(x, generator) if x.ndim == 4 else original(x, unit_range=unit_range, generator=generator)

    perturb.strong = strong
    try:
        yield
    finally:
        perturb.strong = original


def semi_supervised(data_name, data_dir, labels, seed, epochs, variant, out: Path) -> dict:
    run = out / (f"{data_name}-{labels}-seed{seed}-{variant}" + ("" if epochs == 10 else f"-{epochs or 'default'}ep"))
    if not (run / "summary.json").is_file():
        length = {"epochs": epochs} if epochs else {}  # 0: the library's default for the data set's size
        with _randaug_views() if variant == "randaug" else _null():
            cvae.train(data=data_name, data_dir=data_dir, labelled=labels, seed=seed, **length, batch_size=100,
                       out=str(run), overwrite=True, progress=False, tensorboard=False, pictures=False,
                       **VARIANTS[variant])
    model = cvae.load(run)
    scored = scored_split(data_name, data_dir, seed)
    probs = model.classify(scored.x)
    m = classification_metrics(probs.numpy(), scored.y[:, 0].numpy(), model.schema.attributes[0].classes)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"error": m["error"]["value"], "ece": m["ece"]["value"], "minutes": sum(r["seconds"] for r in rows) / 60,
            "epochs": len(rows), "run": str(run), "per_class": {k: v["accuracy"] for k, v in m["per_class_accuracy"].items()}}


def sample_accuracy(run: str, data_name: str, data_dir, out: Path, per_class: int) -> dict:
    from cvae.evaluator import conditional_accuracy, default_path, load_evaluator, train_evaluator

    path = out / f"evaluator-{data_name}.safetensors"
    if not path.is_file():
        if default_path(data_name).is_file():
            path = default_path(data_name)
        else:
            trained = train_evaluator(data_name, data_dir=data_dir, out=path, progress=False)  # the default length
            print(f"  evaluator for {data_name}: held-out accuracy {trained.accuracy}", flush=True)
    acc = conditional_accuracy(cvae.load(run), load_evaluator(path), 0, per_class=per_class)
    worst = min(range(len(acc.per_class)), key=acc.per_class.__getitem__)
    return {"mean": acc.mean.value, "stderr": acc.mean.stderr, "worst_class": acc.classes[worst],
            "worst": acc.per_class[worst], "per_class": dict(zip(acc.classes, acc.per_class))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA"))
    p.add_argument("--labels", default="100", help="comma-separated numbers of labels")
    p.add_argument("--seeds", default="0,1,2", help="label draws (the run's --seed)")
    p.add_argument("--epochs", type=int, default=10,
                   help="0: the library's default (10, or more on a data set smaller than MNIST's: cvae.models.m2)")
    p.add_argument("--variants", default="default", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--baseline-steps", type=int, default=2000)
    p.add_argument("--per-class", type=int, default=1000, help="samples per class for the conditional accuracy")
    p.add_argument("--out", default="runs/semi")
    p.add_argument("--results", help="append the rows to this JSON file (default OUT/semi-DATA.json)")
    p.add_argument("--report", nargs="+", metavar="JSON", help="only print the table of these results files")
    args = p.parse_args(argv)
    if args.report:
        rows = [r for f in args.report for r in json.loads(Path(f).read_text())["rows"]]
        report(rows)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Path(args.results or out / f"semi-{args.data}.json")
    old = json.loads(results.read_text()) if results.is_file() else {"rows": []}
    print(f"machine: {cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}; {args.data}, {args.epochs} epochs, "
          f"batch 100 (+ up to 100 labelled rows)", flush=True)
    rows = old["rows"]
    labels = [int(v) for v in args.labels.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    for n in labels:
        for seed in seeds:
            base = supervised_baseline(args.data, args.data_dir, n, seed, args.baseline_steps)
            for variant in args.variants.split(","):
                semi = semi_supervised(args.data, args.data_dir, n, seed, args.epochs, variant, out)
                row = {"data": args.data, "labels": n, "seed": seed, "variant": variant, "epochs": args.epochs,
                       "semi": semi, "supervised": base}
                if n == min(labels) and seed == seeds[0] and variant != "m2":
                    row["samples"] = sample_accuracy(semi["run"], args.data, args.data_dir, out, args.per_class)
                rows = [r for r in rows if (r["data"], r["labels"], r["seed"], r["variant"], r["epochs"])
                        != (args.data, n, seed, variant, args.epochs)] + [row]
                results.write_text(json.dumps({"machine": cpu_name(), "rows": rows}, indent=2) + "\n")
                extra = ""
                if "samples" in row:
                    extra = f"; samples read as their class {row['samples']['mean']:.3f}"
                print(f"{args.data} {n} labels, draw {seed}, {variant}: test error {100 * semi['error']:.2f}% "
                      f"({semi['minutes']:.1f} min) vs supervised only {100 * base['error']:.2f}%{extra}", flush=True)
    report(rows)
    return 0


def report(rows: list[dict]) -> None:
    """Mean ± standard deviation over the label draws, per data set, labels, variant and epochs."""
    print("test error of q(y | x), mean ± standard deviation over the label draws:")
    keys = sorted({(r["data"], r["labels"], r["variant"], r["epochs"]) for r in rows})
    for data, n, variant, epochs in keys:
        sel = [r for r in rows if (r["data"], r["labels"], r["variant"], r["epochs"]) == (data, n, variant, epochs)]
        e = np.array([r["semi"]["error"] for r in sel]) * 100
        b = np.array([r["supervised"]["error"] for r in sel]) * 100
        mins = np.mean([r["semi"]["minutes"] for r in sel])
        length = f"{epochs} epochs" if epochs else f"the default {sel[0]['semi']['epochs']} epochs"
        print(f"  {data} {n:5d} labels, {variant:8s} {length}: {e.mean():.2f} ± "
              f"{e.std(ddof=1) if len(e) > 1 else 0:.2f}% (supervised only {b.mean():.2f} ± "
              f"{b.std(ddof=1) if len(b) > 1 else 0:.2f}%), {len(sel)} draw(s) {sorted(r['seed'] for r in sel)}, "
              f"{mins:.0f} min per run")
        for r in sel:
            if "samples" in r:
                s = r["samples"]
                print(f"    samples of the draw {r['seed']} model read as their class: {s['mean']:.3f} ± {s['stderr']:.3f}"
                      f" (worst: {s['worst_class']} {s['worst']:.3f})")


if __name__ == "__main__":
    sys.exit(main())
