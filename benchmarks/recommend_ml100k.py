"""Mult-VAE, Mult-DAE, EASE and popularity on MovieLens-100K with the protocol of Liang et al. (2018),
and the conditional Mult-VAE (age, gender, occupation) against the plain one on cold-start users.

    python -m pip install --no-deps recbole==1.2.1     # ships ml-100k.inter / ml-100k.user; nothing imported
    OMP_NUM_THREADS=1 python benchmarks/recommend_ml100k.py              # 3 splits (seeds 0, 1, 2)

Per seed: ratings >= 4 kept, users with >= 5 of them, 10% of users held out for validation and 10%
for test, each held-out user's items split 80% folded in / 20% scored; EASE's lambda and each
neural model's epoch (so Mult-VAE's KL weight, annealed to 1) chosen on validation NDCG@100. Test
figures are means over users with their standard error; the "all seeds" rows average the seeds
(standard error sqrt(sum se^2) / seeds). Cold-start: the same test users with their fold-in cut to
at most 5 random items; "conditional - plain" is the paired difference over those users.
Output: benchmarks/results/recommend-ml100k.txt and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cvae.recommend import (
    ease_scorer,
    ease_weights,
    load_interactions,
    model_scorer,
    popularity_scorer,
    split,
)
from cvae.recommend.data import truncate_fold_in
from cvae.recommend.metrics import per_user_scores, summarise
from cvae.recommend.train import train_recommender

CONDITION = "age:continuous,gender,occupation"
LAMBDAS = (50, 100, 200, 300, 500, 800, 1200)
METRICS = ("ndcg@100", "recall@20", "recall@50")


def ease_on_validation(s) -> tuple[float, object]:
    best = (-1.0, None, None)
    for lam in LAMBDAS:
        scorer = ease_scorer(ease_weights(s.train, lam))
        v = per_user_scores(scorer, s.val)["ndcg@100"].mean()
        if v > best[0]:
            best = (v, lam, scorer)
    return best[1], best[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "recommend-ml100k"))
    args = ap.parse_args()
    data = load_interactions("ml-100k")
    rows: dict[str, dict[str, list]] = {}  # table -> method -> per-seed {metric: (mean, se)}
    diffs, chosen, seconds = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            s = split(data, condition=CONDITION, seed=seed)
            cold = truncate_fold_in(s.test, 5, seed=seed)
            lam, ease = ease_on_validation(s)
            scorers = {"popularity": popularity_scorer(s.train), f"EASE (lambda {lam} on validation)": ease}
            info = {"seed": seed, "ease_lambda": lam, **{k: s.meta[k] for k in ("train_users", "val_users",
                                                                                 "test_users", "model_items")}}
            for name, settings in (("Mult-VAE", dict(model="multvae", condition="none")),
                                   ("Mult-DAE", dict(model="multdae", condition="none")),
                                   ("Mult-VAE conditional", dict(model="multvae", condition=CONDITION))):
                t0 = time.perf_counter()
                r = train_recommender(data="ml-100k", seed=seed, epochs=args.epochs, batch_size=args.batch_size,
                                      out=f"{tmp}/{name}-{seed}", progress=False, **settings)
                seconds.setdefault(name, []).append(time.perf_counter() - t0)
                scorers[name] = model_scorer(r.model)
                info[name] = {"best_epoch": r.summary["best_epoch"],
                              "kl_weight_at_best_epoch": r.summary["kl_weight_at_best_epoch"],
                              "seconds_per_epoch": r.summary["seconds_per_epoch"]}
            chosen.append(info)
            per_user = {}
            for table, part in (("test", s.test), ("cold-start test (<= 5 fold-in items)", cold)):
                for name, scorer in scorers.items():
                    values = per_user_scores(scorer, part)
                    per_user[(table, name)] = values
                    key = name.split(" (lambda")[0]
                    rows.setdefault(table, {}).setdefault(key, []).append(
                        {m: summarise(values[m]).to_dict() for m in METRICS})
            cold_name = "cold-start test (<= 5 fold-in items)"
            d = per_user[(cold_name, "Mult-VAE conditional")]["ndcg@100"] - per_user[(cold_name, "Mult-VAE")]["ndcg@100"]
            full = per_user[("test", "Mult-VAE conditional")]["ndcg@100"] - per_user[("test", "Mult-VAE")]["ndcg@100"]
            diffs.append({"seed": seed, "cold": summarise(d).to_dict(), "full": summarise(full).to_dict()})
            print(f"seed {seed} done: {json.dumps(info)}", flush=True)
    lines = [f"MovieLens-100K (recbole 1.2.1's ml-100k.inter / ml-100k.user), the protocol of Liang et al. (2018); "
             f"seeds {args.seeds}; {args.epochs} epochs, batch {args.batch_size} users; torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}", ""]
    for table, methods in rows.items():
        lines += [f"### {table}", "", "| method | NDCG@100 | Recall@20 | Recall@50 |", "|---|---:|---:|---:|"]
        for name, per_seed in methods.items():
            cells = []
            for m in METRICS:
                means = [p[m]["mean"] for p in per_seed]
                se = math.sqrt(sum(p[m]["se"] ** 2 for p in per_seed)) / len(per_seed)
                cells.append(f"{np.mean(means):.4f} ± {se:.4f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    for key, label in (("cold", "cold-start"), ("full", "full fold-in")):
        means = [d[key]["mean"] for d in diffs]
        se = math.sqrt(sum(d[key]["se"] ** 2 for d in diffs)) / len(diffs)
        per = ", ".join(f"seed {d['seed']}: {d[key]['mean']:+.4f} ± {d[key]['se']:.4f}" for d in diffs)
        lines.append(f"NDCG@100, conditional - plain Mult-VAE, paired over the same users, {label}: "
                     f"{np.mean(means):+.4f} ± {se:.4f} ({per})")
    lines.append("")
    lines.append("training seconds per run (incl. validation every epoch): " +
                 ", ".join(f"{k} {np.mean(v):.1f}" for k, v in seconds.items()))
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "tables": rows, "paired": diffs,
                                                    "chosen": chosen, "seconds": seconds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
