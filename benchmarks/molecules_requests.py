"""A user's check of property control: `cvae sample` at several requested logP values, then RDKit alone.

Runs the command a user runs, `cvae sample RUN --condition logp=V --n N -o mols.csv` (plus any extra
flags, e.g. `--decode sample --steer 0`), for each requested value, and recomputes everything from the
written SMILES with RDKit directly, not with cvae's own chemistry code: validity (RDKit parses it),
uniqueness (distinct canonical SMILES over all requests), achieved Crippen logP, its mean absolute error
against the request and Spearman's rank correlation (scipy) over all valid molecules.

    python benchmarks/molecules_requests.py runs/bench-molecules-moses-80k-steer --values 1,2,3,4 --n 1000
    python benchmarks/molecules_requests.py RUN --values 1,2,3,4 --n 1000 --flags "--decode sample --steer 0"

Prints one line per request and the totals; --json writes them.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--values", default="1,2,3,4", help="requested logP values (default 1,2,3,4)")
    p.add_argument("--n", type=int, default=1000, help="molecules per request (default 1000)")
    p.add_argument("--flags", default="", help="more `cvae sample` flags, e.g. \"--decode sample --steer 0\"")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    from rdkit import Chem, RDLogger
    from rdkit.Chem import Crippen
    from scipy.stats import spearmanr

    RDLogger.DisableLog("rdApp.*")
    requested, achieved, seen, rows = [], [], set(), []
    total = valid = 0
    with tempfile.TemporaryDirectory() as tmp:
        for v in [float(s) for s in args.values.split(",")]:
            out = Path(tmp) / f"logp{v:g}.csv"
            cmd = [sys.executable, "-m", "cvae", "sample", args.run, "--condition", f"logp={v:g}", "--n", str(args.n),
                   *shlex.split(args.flags), "-o", str(out)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            with open(out, newline="") as f:
                smiles = [r["smiles"] for r in csv.DictReader(f)]
            mols = [Chem.MolFromSmiles(s) for s in smiles]
            ok = [m for m in mols if m is not None]
            got = np.array([Crippen.MolLogP(m) for m in ok])
            canon = {Chem.MolToSmiles(m) for m in ok}
            total, valid = total + len(smiles), valid + len(ok)
            seen |= canon
            requested += [v] * len(got)
            achieved += got.tolist()
            row = {"requested": v, "n": len(smiles), "valid": len(ok) / max(1, len(smiles)),
                   "distinct": len(canon) / max(1, len(ok)), "achieved_mean": float(got.mean()),
                   "achieved_sd": float(got.std()), "mae": float(np.abs(got - v).mean()), "seconds": round(seconds, 1)}
            rows.append(row)
            print(f"logP {v:+.2f}: valid {row['valid']:.3f}, distinct {row['distinct']:.3f}, achieved "
                  f"{row['achieved_mean']:+.2f} +- {row['achieved_sd']:.2f}, MAE {row['mae']:.3f} ({seconds:.0f} s)",
                  flush=True)
    req, ach = np.array(requested), np.array(achieved)
    summary = {"run": args.run, "flags": args.flags, "n_per_request": args.n, "validity": valid / max(1, total),
               "unique": len(seen) / max(1, valid), "mae": float(np.abs(ach - req).mean()),
               "spearman": float(spearmanr(req, ach).statistic), "requests": rows,
               "command": "python benchmarks/molecules_requests.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    print(f"all {total} molecules: validity {summary['validity']:.4f}, unique {summary['unique']:.4f}, "
          f"logP MAE {summary['mae']:.3f}, Spearman {summary['spearman']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
