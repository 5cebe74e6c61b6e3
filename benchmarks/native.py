"""The native step (cvae.native) against the Python fused step on the runs people start most.

Each case is trained twice by ``cvae.train.fit`` with its defaults (precision auto: the probe
chooses precision, step and threads for each side on its own), once as it is and once with
``CVAE_NATIVE=0`` (the Python step), alternating, in one process:

  mnist-uncond   MNIST, no condition: the speed benchmark's model (784-400-20, Bernoulli pixels)
  mnist-cond     MNIST with the defaults of ``cvae train --data mnist``: the label as condition,
                 classifier-free guidance (condition dropout), the conditional prior
  table          a table: scikit-learn's wine data (178 rows, 13 columns) replicated 112 times with
                 2% multiplicative noise (19,936 rows), the class as condition (learned sigma per
                 column, conditional prior)

It prints the CPU, the median seconds per epoch (epochs 2..N, training only), the ratio, and the
validation loss of each side (the same maths: they should agree).

    python benchmarks/native.py --data-dir ../shared/data [--epochs 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from cvae.config import TrainConfig
from cvae.train import fit


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                flags = Path("/proc/cpuinfo").read_text()
                return f"{name} (amx_bf16: {'amx_bf16' in flags}, avx512_bf16: {'avx512_bf16' in flags})"
    except OSError:
        pass
    return platform.processor()


def wine_table(path: Path) -> Path:
    from sklearn.datasets import load_wine

    d, rng = load_wine(), np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(d.feature_names) + ["target"])
        for _ in range(112):
            x = d.data * (1 + 0.02 * rng.standard_normal(d.data.shape))
            for row, t in zip(x, d.target):
                w.writerow([f"{v:.5g}" for v in row] + ["abc"[t]])
    return path


def train(settings: dict, out: Path, native: bool) -> dict:
    if native:
        os.environ.pop("CVAE_NATIVE", None)
    else:
        os.environ["CVAE_NATIVE"] = "0"
    seconds = []
    result = fit(TrainConfig(progress=False, tensorboard=False, out=str(out), **settings), overwrite=True,
                 on_epoch=lambda epoch, model, row: seconds.append(row["seconds"]))
    execution = json.loads((result.run_dir / "config.json").read_text())["execution"]
    return {"seconds_per_epoch": statistics.median(seconds[1:] or seconds), "val_loss": result.summary["val"]["loss"],
            "precision": result.config.precision, "threads": execution.get("threads"),
            "native": execution.get("native"), "step": execution.get("step")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="where MNIST is (the shared data folder)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cvae-native-"))
    cases = {
        "mnist-uncond": dict(data="mnist", data_dir=args.data_dir, condition="none", epochs=args.epochs),
        "mnist-cond": dict(data="mnist", data_dir=args.data_dir, epochs=args.epochs),
        "table": dict(data=str(wine_table(work / "wine20k.csv")), condition="target", epochs=4 * args.epochs),
    }
    print(f"machine: {cpu()}, {os.cpu_count()} cores, torch {torch.__version__}, load average {tuple(round(v, 2) for v in os.getloadavg())}")
    report = {"machine": cpu(), "torch": torch.__version__, "cases": {}}
    print(f"{'case':14s} {'native s/epoch':>15s} {'Python s/epoch':>15s} {'speed-up':>9s}   validation loss (native, Python); "
          "precision and threads each side chose")
    for name, settings in cases.items():
        native = train(settings, work / f"{name}-native", True)
        python = train(settings, work / f"{name}-python", False)
        ratio = python["seconds_per_epoch"] / native["seconds_per_epoch"]
        report["cases"][name] = {"native": native, "python": python, "speed_up": ratio}
        print(f"{name:14s} {native['seconds_per_epoch']:15.4f} {python['seconds_per_epoch']:15.4f} {ratio:8.2f}x   "
              f"{native['val_loss']:.3f}, {python['val_loss']:.3f}; {native['precision']} {native['threads']}t "
              f"(native: {native['native']}), {python['precision']} {python['threads']}t")
    os.environ.pop("CVAE_NATIVE", None)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
