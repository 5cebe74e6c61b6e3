"""Mult-VAE, Mult-DAE, EASE and popularity on MovieLens-100K with the protocol of Liang et al. (2018),
and the conditional Mult-VAE (age, gender, occupation) against the plain one on cold-start users.

    python -m pip install --no-deps recbole==1.2.1     # ships ml-100k.inter / ml-100k.user; nothing imported
    OMP_NUM_THREADS=1 python benchmarks/recommend_ml100k.py --jobs 2     # 3 splits (seeds 0, 1, 2)

Per seed: ratings >= 4 kept, users with >= 5 of them, 10% of users held out for validation and 10%
for test, each held-out user's items split 80% folded in / 20% scored; EASE's lambda and each
neural model's epoch (so Mult-VAE's KL weight, annealed to 1) chosen on validation NDCG@100. Test
figures are means over users with their standard error; the "all seeds" rows average the seeds
(standard error sqrt(sum se^2) / seeds). Cold-start: the same test users with their fold-in cut to
at most 5 random items; "conditional - plain" is the paired difference over those users. The
conditioned network trains with the conditioned defaults of `cvae recommend train`
(cvae.recommend.config.CONDITIONED_DEFAULTS, chosen on validation users by
benchmarks/recommend_conditioning.py); when they change the training itself (truncated inputs),
the plain network trained the same way is measured too, so the attributes' own share is seen; when
they blend in the popularity of the user's group (--popularity-mix k), the plain network blended
the same way with the global popularity is measured too.
Demographic popularity: popularity within the user's gender x age band x occupation group,
smoothed towards coarser groups, its smoothing chosen on the validation users' cold start.
Output: benchmarks/results/recommend-ml100k.txt and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cvae.recommend import (
    ease_scorer,
    ease_weights,
    group_popularity_scorer,
    load_interactions,
    load_recommender,
    model_scorer,
    popularity_scorer,
    split,
)
from cvae.recommend.config import CONDITIONED_DEFAULTS, EASE_LAMBDAS, PLAIN_DEFAULTS
from cvae.recommend.data import truncate_fold_in
from cvae.recommend.metrics import (
    GroupPopularity,
    per_user_scores,
    popularity_mix,
    run_scorer,
    summarise,
)
from cvae.recommend.train import train_recommender

CONDITION = "age:continuous,gender,occupation"
METRICS = ("ndcg@100", "recall@20", "recall@50")
ALPHAS = (10, 20, 50, 100, 200)
GLOBAL_BLEND = "Mult-VAE blended with global popularity (no attributes)"
TRAINING_ONLY = ("truncate_share", "truncate_items", "history_dropout")  # change the training, not what c does  # demographic popularity's smoothing, chosen on validation cold-start users


def ease_on_validation(s) -> tuple[float, object]:
    best = (-1.0, None, None)
    for lam in EASE_LAMBDAS:
        scorer = ease_scorer(ease_weights(s.train, lam))
        v = per_user_scores(scorer, s.val)["ndcg@100"].mean()
        if v > best[0]:
            best = (v, lam, scorer)
    return best[1], best[2]


def demographic_on_validation(s, seed) -> tuple[float, object]:
    cold = truncate_fold_in(s.val, 5, seed=seed)
    best = (-1.0, None, None)
    for alpha in ALPHAS:
        scorer = group_popularity_scorer(s.train, s.y_train, s.schema, alpha=alpha)
        v = per_user_scores(scorer, cold)["ndcg@100"].mean()
        if v > best[0]:
            best = (v, alpha, scorer)
    return best[1], best[2]


def networks() -> dict[str, dict]:
    """The networks trained per split: the conditioned one with the conditioned defaults, and the
    plain one with the same training when those defaults change the training (truncated inputs)."""
    out = {"Mult-VAE": dict(model="multvae", condition="none"),
           "Mult-DAE": dict(model="multdae", condition="none")}
    same = {k: v for k, v in CONDITIONED_DEFAULTS.items() if k in TRAINING_ONLY and v != PLAIN_DEFAULTS[k]}
    if same:
        out["Mult-VAE, truncated inputs (no attributes)"] = dict(model="multvae", condition="none", **same)
    out["Mult-VAE conditional"] = dict(model="multvae", condition=CONDITION)
    return out


def _train(job):
    name, settings, seed, epochs, batch_size, out = job
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    r = train_recommender(data="ml-100k", seed=seed, epochs=epochs, batch_size=batch_size, out=out, progress=False,
                          **settings)
    return name, seed, out, time.perf_counter() - t0, {"best_epoch": r.summary["best_epoch"],
                                                       "kl_weight_at_best_epoch": r.summary["kl_weight_at_best_epoch"],
                                                       "seconds_per_epoch": r.summary["seconds_per_epoch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--jobs", type=int, default=1, help="networks trained at once (one thread each)")
    ap.add_argument("--only", nargs="*", help="train only these networks (e.g. 'Mult-VAE' 'Mult-VAE conditional'); "
                    "the rows of the others are carried over from the saved .json, and the output says so")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "recommend-ml100k"))
    args = ap.parse_args()
    data = load_interactions("ml-100k")
    nets = networks()
    old = {}
    if args.only:
        unknown = set(args.only) - set(nets)
        if unknown:
            raise SystemExit(f"--only: unknown network(s) {sorted(unknown)}; choose from {list(nets)}")
        nets = {k: v for k, v in nets.items() if k in args.only}
        saved = Path(args.out).with_suffix(".json")
        old = json.loads(saved.read_text()) if saved.exists() else {}
    rows: dict[str, dict[str, list]] = {}  # table -> method -> per-seed {metric: (mean, se)}
    diffs, chosen, seconds = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(name, settings, seed, args.epochs, args.batch_size, f"{tmp}/{i}-{seed}")
                for seed in args.seeds for i, (name, settings) in enumerate(nets.items())]
        trained = {}
        with ProcessPoolExecutor(args.jobs) as pool:
            for name, seed, out, secs, info in pool.map(_train, jobs):
                trained[(name, seed)] = (out, info)
                seconds.setdefault(name, []).append(secs)
                print(f"trained {name}, seed {seed}: {json.dumps(info)}", flush=True)
        for seed in args.seeds:
            s = split(data, condition=CONDITION, seed=seed)
            cold = truncate_fold_in(s.test, 5, seed=seed)
            lam, ease = ease_on_validation(s)
            alpha, demo = demographic_on_validation(s, seed)
            scorers = {"popularity": popularity_scorer(s.train),
                       "demographic popularity (gender x age band x occupation)": demo, "EASE": ease}
            info = {"seed": seed, "ease_lambda": lam, "demographic_alpha": alpha,
                    **{k: s.meta[k] for k in ("train_users", "val_users", "test_users", "model_items")}}
            for name in nets:
                out, info[name] = trained[(name, seed)]
                scorers[name] = run_scorer(load_recommender(out))  # with the run's popularity blend, if any
            mix = CONDITIONED_DEFAULTS["popularity_mix"]
            if mix:  # the same blend with the global popularity, on the plain network: the attributes' own share
                scorers[GLOBAL_BLEND] = popularity_mix(model_scorer(load_recommender(trained[("Mult-VAE", seed)][0])),
                                                       GroupPopularity.fit(s.train, None, None), mix)
            chosen.append(info)
            per_user = {}
            for table, part in (("test", s.test), ("cold-start test (<= 5 fold-in items)", cold)):
                for name, scorer in scorers.items():
                    values = per_user_scores(scorer, part)
                    per_user[(table, name)] = values
                    rows.setdefault(table, {}).setdefault(name, []).append(
                        {m: summarise(values[m]).to_dict() for m in METRICS})
            cold_name = "cold-start test (<= 5 fold-in items)"
            d = {}
            for label, ref in (("conditional - plain Mult-VAE", "Mult-VAE"),
                               ("conditional - Mult-VAE trained the same way", "Mult-VAE, truncated inputs (no attributes)"),
                               ("conditional - plain Mult-VAE blended with global popularity", GLOBAL_BLEND),
                               ("demographic - global popularity", "popularity")):
                new = "Mult-VAE conditional" if label.startswith("conditional") else \
                    "demographic popularity (gender x age band x occupation)"
                if ref not in scorers or new not in scorers:  # --only: a pair needs both its sides
                    continue
                for table, key in ((cold_name, "cold"), ("test", "full")):
                    diff = per_user[(table, new)]["ndcg@100"] - per_user[(table, ref)]["ndcg@100"]
                    d[f"{label}, {key}"] = summarise(diff).to_dict()
            previous = next((x for x in old.get("paired", []) if x.get("seed") == seed), {})
            for key, value in previous.items():  # --only: the paired differences not measured now
                if key != "seed" and key not in d and not key.startswith("previous run: "):
                    d[f"previous run: {key}"] = value
            diffs.append({"seed": seed, **d})
            print(f"seed {seed} done: {json.dumps(info)}", flush=True)
    carried = []
    for table, methods in old.get("tables", {}).items():  # --only: the rows not measured now, from the last run
        merged = {}
        for name in [*methods, *[n for n in rows.get(table, {}) if n not in methods]]:
            if name in rows.get(table, {}):
                merged[name] = rows[table][name]
            else:
                merged[name] = methods[name]
                carried.append(name)
        rows[table] = merged
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
    for key in [k for k in diffs[0] if k != "seed"]:
        means = [d[key]["mean"] for d in diffs]
        se = math.sqrt(sum(d[key]["se"] ** 2 for d in diffs)) / len(diffs)
        per = ", ".join(f"seed {d['seed']}: {d[key]['mean']:+.4f} ± {d[key]['se']:.4f}" for d in diffs)
        lines.append(f"NDCG@100, {key} (paired over the same users): {np.mean(means):+.4f} ± {se:.4f} ({per})")
    lines.append("")
    if carried:
        lines.append(f"not rerun (--only {args.only}): the rows of {', '.join(sorted(set(carried)))} are those of the "
                     "previous run of this script, saved in the .json")
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
