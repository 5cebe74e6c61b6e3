"""Does a trained molecule run's decoder use the condition, and through which path?

For a sequence run conditioned on logP (and QED, held at --qed), with --n codes per cell:

    (A) z fixed, c varied / c fixed, z varied: codes z ~ p(z | logP low) and z ~ p(z | logP high) (the
        same noise), each decoded with c = low and c = high. If the achieved logP follows c and not
        the z source, control runs through the decoder's c; if it follows z, through the prior.
    (B) for each guidance weight w: molecules for requested logP values (z ~ p(z | c), matched c),
        the achieved mean and spread per request, MAE and Spearman's rho over all of them.

Run (a few minutes on one thread):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/molecules_condition_use.py RUN --guidance 0,1,2

Prints the table and writes it to --out (default RUN/condition_use.txt).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cvae.chem import canonical, properties  # noqa: E402
from cvae.runs import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--n", type=int, default=200, help="codes per cell (default 200)")
    p.add_argument("--low", type=float, default=1.0)
    p.add_argument("--high", type=float, default=4.0)
    p.add_argument("--requests", default="1,2,3,4", help="logP values asked for in (B)")
    p.add_argument("--qed", type=float, default=0.84, help="the QED held fixed (MOSES's median is about 0.84)")
    p.add_argument("--guidance", default="0", help="guidance weights of (B), comma-separated")
    p.add_argument("--decode", default="sample", choices=["greedy", "sample"])
    p.add_argument("--token-temperature", type=float, default=1.0)
    p.add_argument("--out")
    args = p.parse_args()
    from scipy.stats import spearmanr

    m = load_model(args.run).eval()
    n = args.n
    lines = [f"run {args.run}; {n} codes per cell, {args.decode} decoding, token temperature "
             f"{args.token_temperature:g}, z at prior temperature 1, QED held at {args.qed}"]

    def achieved(ids):
        smiles = [canonical(s) for s in m.tokenizer.decode(ids.cpu().numpy())]
        v = properties(smiles, ["logp"])[:, 0]
        valid = [s for s in smiles if s]
        return v[np.isfinite(v)], len(set(valid)) / max(1, len(valid))

    def c_of(v):
        return m.condition_vector({"logp": v, "qed": args.qed}, n)

    def z_of(c):  # the same noise for every condition: only p(z | c)'s mean and scale differ
        return m.sample_z(n, c, torch.Generator().manual_seed(1), 1.0)

    def decode(z, c, w):
        return m.decode_tokens(z, c, how=args.decode, generator=torch.Generator().manual_seed(2),
                               temperature=args.token_temperature, guidance=w)

    with torch.no_grad():
        c_lo, c_hi = c_of(args.low), c_of(args.high)
        z_lo, z_hi = z_of(c_lo), z_of(c_hi)
        lines.append(f"(A) |mean z ~ p(z|logP {args.high:g}) - mean z ~ p(z|logP {args.low:g})| = "
                     f"{float((z_hi - z_lo).mean(0).norm()):.2f} over {m.config.latent_dim} dimensions "
                     f"(prior sd per dimension about {float(z_lo.std(0).mean()):.2f}); achieved logP mean (sd), no guidance:")
        lines.append(f"    {'':24}{'c = logP ' + format(args.low, 'g'):>18}{'c = logP ' + format(args.high, 'g'):>18}")
        for name, z in ((f"z ~ p(z | logP {args.low:g})", z_lo), (f"z ~ p(z | logP {args.high:g})", z_hi)):
            cells = []
            for c in (c_lo, c_hi):
                a, _ = achieved(decode(z, c, 0.0))
                cells.append(f"{a.mean():.2f} ({a.std():.2f})")
            lines.append(f"    {name:24}" + "".join(f"{x:>18}" for x in cells))
        lines.append("(B) requested logP -> achieved mean (sd); MAE, Spearman, uniqueness")
        for w in [float(x) for x in args.guidance.split(",")]:
            req, got, uniq, cells = [], [], [], []
            for v in [float(x) for x in args.requests.split(",")]:
                c = c_of(v)
                a, u = achieved(decode(z_of(c), c, w))
                req += [v] * len(a)
                got += a.tolist()
                uniq.append(u)
                cells.append(f"{v:g} -> {a.mean():.2f} ({a.std():.2f})")
            req, got = np.array(req), np.array(got)
            lines.append(f"    w {w:g}: " + ", ".join(cells) + f"; MAE {np.abs(req - got).mean():.3f}, Spearman "
                         f"{spearmanr(req, got).statistic:.3f}, unique {np.mean(uniq):.3f}")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out) if args.out else Path(args.run) / "condition_use.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
