"""Does classifier-free guidance make a conditional VAE generate the class it is asked for?

Trains the README's recipe (`cvae train --data DATA --latent-dim 8 --beta 3 --condition-at -1
--epochs 20`) twice, without and with `--condition-dropout P` (the decoder also learns p(x | z)),
then measures, for guidance weights W, what cvae's independent evaluator CNN reads in 1,000 samples
per class (decoder means, z ~ p(z | c) at temperature 0.9) and the Fréchet distance, precision and
recall of the samples against the test images in the evaluator's feature space (`cvae evaluate
--metrics samples --guidance W` measures the same). Also prints the test negative ELBO of both runs:
condition dropout must not cost the model its fit.

    python benchmarks/guidance.py --data fashion-mnist --data-dir ../shared/data \\
        --json benchmarks/results/guidance-fashion.json

An evaluator is trained first when none is stored (`cvae evaluator train --data DATA`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from cvae.api import train
from cvae.evaluate import evaluate_run
from cvae.evaluator import find_evaluator, train_evaluator

# the README's recipe for conditional accuracy, or cvae's defaults (8 latents, the condition at every layer)
RECIPES = {"readme": {"latent_dim": 8, "beta": 3.0, "condition_at": -1}, "defaults": {}}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--recipe", choices=list(RECIPES), default="readme",
                   help="readme: --latent-dim 8 --beta 3 --condition-at -1; defaults: cvae train's own")
    p.add_argument("--dropout", type=float, default=0.2, help="--condition-dropout of the guided run")
    p.add_argument("--weights", default="0,0.5,1,2,3", help="guidance weights to measure")
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--n", type=int, default=10000, help="test images for the Fréchet distance, precision, recall")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/guidance")
    p.add_argument("--json", help="write the results here (and a .txt beside it)")
    args = p.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")]
    out = Path(args.out)
    recipe = RECIPES[args.recipe]
    flags = " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in recipe.items()) or "cvae's defaults"
    lines = [f"{args.data}: {args.epochs} epochs, {flags}, seed {args.seed}; "
             f"{cpu_name()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
             f"{args.per_class} samples per class at temperature 0.9"]
    print(lines[0])
    if find_evaluator(args.data) is None:
        trained = train_evaluator(args.data, data_dir=args.data_dir, progress=False)
        print(f"evaluator trained: {trained.accuracy}")
    runs = {"no condition dropout": (0.0, [0.0]), f"--condition-dropout {args.dropout:g}": (args.dropout, weights)}
    results = {"data": args.data, "epochs": args.epochs, "recipe": recipe, "seed": args.seed, "cpu": cpu_name(),
               "threads": torch.get_num_threads(), "runs": {}}
    for name, (dropout, ws) in runs.items():
        run_dir = out / f"{args.data}-{args.recipe}-{args.epochs}ep-cd{dropout:g}-s{args.seed}"
        t0 = time.perf_counter()
        if not (run_dir / "model.safetensors").is_file() or not (run_dir / "metrics.jsonl").is_file():
            train(data=args.data, data_dir=args.data_dir, epochs=args.epochs, seed=args.seed, out=str(run_dir),
                  condition_dropout=dropout, guidance=3.0 if dropout else 0.0, progress=False, pictures=False,
                  overwrite=True, **recipe)
        minutes = (time.perf_counter() - t0) / 60
        test = json.loads((run_dir / "config.json").read_text()).get("summary", {}).get("test", {})
        entry = {"run": str(run_dir), "train_minutes": round(minutes, 1),
                 "test_negative_elbo": test.get("loss"), "weights": {}}
        for w in ws:
            ev = evaluate_run(run_dir, subset="first", metrics="samples", per_class=args.per_class, n=args.n, seed=args.seed,
                              data_dir=args.data_dir, guidance=w, write=False).results["samples"]
            acc = ev["conditional_accuracy"]
            entry["weights"][f"{w:g}"] = {
                "conditional_accuracy": acc["mean"]["value"], "stderr": acc["mean"]["stderr"],
                "per_class": {k: v["value"] for k, v in acc["per_class"].items()},
                "frechet_distance": ev["frechet_distance"]["value"], "precision": ev["precision"]["value"],
                "recall": ev["recall"]["value"]}
            worst = min((v["value"], k) for k, v in acc["per_class"].items())
            line = (f"{name:28s} W {w:<4g} conditional accuracy {acc['mean']['value']:.3f} ± {acc['mean']['stderr']:.3f}"
                    f" (worst: {worst[1]}, {worst[0]:.3f}); FD {ev['frechet_distance']['value']:.2f}, precision "
                    f"{ev['precision']['value']:.3f}, recall {ev['recall']['value']:.3f}")
            print(line, flush=True)
            lines.append(line)
        line = f"{name:28s} test negative ELBO {entry['test_negative_elbo']:.2f} nats"
        print(line)
        lines.append(line)
        results["runs"][name] = entry
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        Path(args.json).with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
