"""How should a Mult-VAE use the user's attributes? Each way, measured on the VALIDATION users of
MovieLens-100K only (the test users are never looked at here), against the unconditioned Mult-VAE.

    OMP_NUM_THREADS=1 python benchmarks/recommend_conditioning.py --jobs 2       # 3 splits, ~15 min on 2 cores

Per seed (the split of benchmarks/recommend_ml100k.py), each variant is trained for 200 epochs with its
epoch kept by validation NDCG@100 (full fold-in, as `cvae recommend train` does), then scored on the
validation users with their full fold-in and cold-start (fold-in cut to at most 5 random items).
The demographic popularity (popularity within the user's gender x age band x occupation, smoothed
towards coarser groups) is measured beside global popularity on the same users. "vs plain" is the
paired difference in NDCG@100 over the same users against the unconditioned Mult-VAE, averaged over
the seeds (standard error sqrt(sum se^2) / seeds).
Output: benchmarks/results/recommend-conditioning.txt and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CONDITION = "age:continuous,gender,occupation"
VARIANTS = {  # name -> settings of cvae recommend train (the conditioning ones given explicitly)
    "plain": dict(condition="none"),
    "conditioned (every layer, the old default)": dict(),
    "conditioned, truncated inputs 0.5": dict(truncate_share=0.5),
    "plain, truncated inputs 0.5": dict(condition="none", truncate_share=0.5),
    "conditioned, attribute dropout 0.5": dict(condition_dropout=0.5),
    "conditioned, decoder only": dict(condition_in="decoder"),
    "conditioned, learned embedding 16": dict(condition_embedding=16),
    "conditioned, conditional prior p(z|c)": dict(prior="conditional"),
    "conditioned, KL weight up to 0.3": dict(beta=0.3),
}
EXPLICIT = dict(condition_in="both", condition_embedding=0, condition_dropout=0.0, truncate_share=0.0,
                truncate_items=5, history_dropout=0.0, condition_bias=0.0, prior_fold_in=0.0, popularity_mix=0.0)


def one(job):
    name, seed, epochs, tmp = job
    import torch

    torch.set_num_threads(1)
    from cvae.recommend import load_interactions, model_scorer, split
    from cvae.recommend.data import truncate_fold_in
    from cvae.recommend.metrics import per_user_scores
    from cvae.recommend.train import train_recommender

    settings = {**EXPLICIT, "condition": CONDITION, **VARIANTS[name]}
    r = train_recommender(data="ml-100k", seed=seed, epochs=epochs, out=f"{tmp}/{abs(hash(name))}-{seed}",
                          progress=False, **settings)
    s = split(load_interactions("ml-100k"), condition=CONDITION, seed=seed)
    scorer = model_scorer(r.model)
    full = per_user_scores(scorer, s.val)["ndcg@100"]
    cold = per_user_scores(scorer, truncate_fold_in(s.val, 5, seed=seed))["ndcg@100"]
    return name, seed, {"full": full.tolist(), "cold": cold.tolist(), "best_epoch": r.summary["best_epoch"]}


def _as_done(pool, jobs):
    from concurrent.futures import as_completed

    yield from (f.result() for f in as_completed([pool.submit(one, j) for j in jobs]))


def popularity_rows(seeds):
    from cvae.recommend import load_interactions, popularity_scorer, split
    from cvae.recommend.data import truncate_fold_in
    from cvae.recommend.metrics import group_popularity_scorer, per_user_scores

    out = {}
    data = load_interactions("ml-100k")
    for seed in seeds:
        s = split(data, condition=CONDITION, seed=seed)
        cold = truncate_fold_in(s.val, 5, seed=seed)
        for name, scorer in (("global popularity", popularity_scorer(s.train)),
                             ("demographic popularity (alpha 50)",
                              group_popularity_scorer(s.train, s.y_train, s.schema, alpha=50))):
            out.setdefault(name, {})[seed] = {"full": per_user_scores(scorer, s.val)["ndcg@100"].tolist(),
                                              "cold": per_user_scores(scorer, cold)["ndcg@100"].tolist()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    ap.add_argument("--report", action="store_true", help="train nothing: write the table of the results saved")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "recommend-conditioning"))
    args = ap.parse_args()
    names = [] if args.report else args.only or list(VARIANTS)
    out = Path(args.out)
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    results = {k: {int(s): v for s, v in d.items()} for k, d in old.get("results", {}).items()}
    results.update(popularity_rows(args.seeds))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(max(args.jobs, 1)) as pool:
        jobs = [(n, seed, args.epochs, tmp) for n in names for seed in args.seeds]
        for name, seed, res in _as_done(pool, jobs):
            results.setdefault(name, {})[seed] = res
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}) + "\n")
            print(f"{name} seed {seed}: val NDCG@100 {np.mean(res['full']):.4f}, cold {np.mean(res['cold']):.4f}, "
                  f"epoch {res['best_epoch']}", flush=True)
    order = ["global popularity", "demographic popularity (alpha 50)"] + [n for n in VARIANTS if n in results]
    lines = [f"MovieLens-100K, VALIDATION users only; seeds {args.seeds}; {args.epochs} epochs; NDCG@100 mean over "
             "the seeds measured; 'vs plain': paired difference against the unconditioned Mult-VAE on the same "
             "seeds (popularity rows: against global popularity)", "",
             "| variant | seeds | val NDCG@100 | vs plain | val cold-start NDCG@100 | vs plain | kept epochs |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name in order:
        per = results[name]
        ref = results.get("global popularity" if "popularity" in name else "plain")
        if ref is None:
            continue
        seeds = [s for s in sorted(per) if s in ref]
        cells = []
        for key in ("full", "cold"):
            mean = np.mean([np.mean(per[s][key]) for s in seeds])
            d = [np.array(per[s][key]) - np.array(ref[s][key]) for s in seeds]
            se = math.sqrt(sum((x.std(ddof=1) / math.sqrt(len(x))) ** 2 for x in d)) / len(d)
            cells += [f"{mean:.4f}", f"{np.mean([x.mean() for x in d]):+.4f} ± {se:.4f}"]
        epochs = ", ".join(str(per[s].get("best_epoch", "-")) for s in seeds)
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + f" | {epochs} |")
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}) + "\n")


if __name__ == "__main__":
    main()
