"""Codes for sampling: the prior p(z | c) against the aggregate posterior fitted after training.

For each trained run given, generates 1,000 images per class both ways, as `cvae evaluate --metrics
samples --codes prior` (the prior at its default temperature 0.9) and `--codes aggregate` (the
fitted Gaussian mixture per class, cvae.aggregate, at its default temperature 1) do, and prints what
cvae's independent evaluator CNN reads in them (the mean and the worst class) and their Fréchet
distance, precision and recall against the test images in the evaluator's feature space. A run
without the fit (trained before it was written) is fitted first (`cvae aggregate RUN`). The choices
behind the defaults: ``--temperature T`` draws the fit at T, ``--confidence C`` fits a semi-supervised
run again counting its unlabelled examples where q(y | x) gives their class at least C (it rewrites the
run's aggregate.safetensors: `cvae aggregate RUN` restores the default).

    python benchmarks/codes.py runs/semi-defaults-s0 runs/semi-defaults-s1 runs/codes-mnist \\
        --evaluator mnist=runs/bench-semi/evaluator-mnist.safetensors --data-dir ../shared/data \\
        --json benchmarks/results/codes-mnist.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cvae.api import fit_aggregate, load
from cvae.errors import CvaeError
from cvae.evaluate import evaluate_run
from cvae.probe import cpu_name
from cvae.train import native_bfloat16


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="trained image runs with one categorical condition (or none)")
    p.add_argument("--evaluator", action="append", default=[], metavar="DATA=PATH",
                   help="the evaluator of a data set (default: cvae's stored one for it)")
    p.add_argument("--data-dir")
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--n", type=int, default=10000, help="test images for the Fréchet distance, precision, recall")
    p.add_argument("--json", help="write the results here (and a .txt beside it)")
    p.add_argument("--temperature", type=float, help="of the fit's draws (default: its default, 1)")
    p.add_argument("--confidence", type=float, help="fit semi-supervised runs again at this threshold")
    p.add_argument("--only", choices=["prior", "aggregate"], help="measure one of the two")
    p.add_argument("--guidance", type=float, nargs="+", default=[None], metavar="W",
                   help="classifier-free guidance weights to measure, each in turn (default: the run's own)")
    args = p.parse_args(argv)
    evaluators = dict(e.split("=", 1) for e in args.evaluator)
    lines = [f"machine: {cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
             f"{'run':34s} {'codes':9s} {'T':>4s} {'W':>4s} {'accuracy':>8s} {'worst class':>16s} {'FD':>6s} {'prec':>6s} {'recall':>6s}"]
    print("\n".join(lines), flush=True)
    results = []
    for run in args.runs:
        model = load(run)
        if model.aggregate is None or args.confidence is not None:
            fit_aggregate(run, data_dir=args.data_dir, confidence=args.confidence)
        data = model.run_config.get("train", {}).get("data")
        for codes, guidance in [(c, w) for c in ([args.only] if args.only else ["prior", "aggregate"])
                                for w in args.guidance]:
            t0 = time.perf_counter()
            try:
                r = evaluate_run(run, metrics=["samples"], evaluator=evaluators.get(Path(str(data)).stem), n=args.n,
                                 per_class=args.per_class, data_dir=args.data_dir, codes=codes, write=False,
                                 temperature=args.temperature if codes == "aggregate" else None, guidance=guidance)
            except CvaeError as e:  # e.g. no evaluator for the run's data: one line, as the CLI says it
                raise SystemExit(f"error: {e}" + (f"; this script takes it as --evaluator {Path(str(data)).stem}=PATH"
                                                  if "evaluator" in str(e) else "")) from None
            s = r.results["samples"]
            acc = s["conditional_accuracy"]
            per = {c: v["value"] for c, v in acc["per_class"].items()}
            worst = min(per, key=per.get)
            w = model.guidance_weight(guidance)
            row = {"run": str(run), "data": data, "codes": s["codes"], "confidence": args.confidence, "guidance": w,
                   "temperature": acc["name"].split("temperature ")[1].split(")")[0],
                   "accuracy": acc["mean"]["value"], "worst_class": worst, "worst": per[worst], "per_class": per,
                   "frechet_distance": s["frechet_distance"]["value"], "precision": s["precision"]["value"],
                   "recall": s["recall"]["value"], "seconds": round(time.perf_counter() - t0, 1)}
            results.append(row)
            line = (f"{str(run):34s} {row['codes']:9s} {row['temperature']:>4s} {w:4g} {row['accuracy']:8.4f} "
                    f"{worst + ' ' + format(row['worst'], '.3f'):>16s} {row['frechet_distance']:6.1f} "
                    f"{row['precision']:6.3f} {row['recall']:6.3f}")
            lines.append(line)
            print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_name(), "argv": sys.argv[1:] if argv is None else argv, "results": results}, indent=2))
        Path(args.json).with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
