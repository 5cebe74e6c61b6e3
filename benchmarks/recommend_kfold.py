"""Do the user's attributes help cold-start users? Every user of MovieLens-100K scored once, by K-fold
over users, with every choice made on validation users.

    python -m pip install --no-deps recbole==1.2.1     # ships ml-100k.inter / ml-100k.user; nothing imported
    OMP_NUM_THREADS=1 python benchmarks/recommend_kfold.py            # 5 folds x 5 networks, one at a time
    OMP_NUM_THREADS=1 python benchmarks/recommend_kfold.py --only-folds 3 4 --networks plain decoder prior
    OMP_NUM_THREADS=1 python benchmarks/recommend_kfold.py --report   # the table of the folds saved
    OMP_NUM_THREADS=1 python benchmarks/recommend_kfold.py --seed 1 --networks plain prior decoder \
        --out benchmarks/results/recommend-kfold-seed1                # the blind replication

The saved results: every network on folds 0-2, then (for lack of machine time) only plain, decoder
and prior on folds 3-4 (the second command); a method's row covers the folds it ran on, and its
"vs plain" pairs it with the plain model on those users. recommend-kfold-seed1.* is the blind
replication: users shuffled with seed 1, only plain, decoder and prior, nothing chosen after seeing it
(a rerun of some networks keeps the fold's saved results of the others).

The paper's protocol (benchmarks/recommend_ml100k.py) tests 94 users per split, too few to see a
difference of 0.01 NDCG@100. Here the 938 users (ratings >= 4, users with >= 5) are shuffled once
(seed 0; `--seed`) and cut into 5 folds; for fold f the test users are fold f, the validation users fold f+1
(cyclically) and the training users the other three (`cvae recommend train --folds 5 --fold f`).
Each held-out user's items are split 80% folded in / 20% scored as in the paper; "cold start" is the
same users with their fold-in cut to at most 5 random items (the same cut for every method).

Per fold, each network trains 200 epochs, its epoch (so Mult-VAE's KL weight, annealed to 1) kept
by validation NDCG@100 with the full fold-in, as `cvae recommend train` does. The networks:

    plain          Mult-VAE without attributes
    decoder        conditioned on age, gender, occupation in every decoder layer (the previous default)
    dropoutnet     decoder + history dropout 0.3: a user's whole input blanked in training (Volkovs et al. 2017)
    bias           dropoutnet + a per-condition item bias weighted 5 / (5 + history length)
    prior          decoder + the conditional prior p(z | c), scored with z pulled towards p's mean for c by
                   k / (k + history length), k chosen on validation (0 among the choices)

and, on top of each, the blend with popularity: log((1 - w) pi_model + w p_group), w = k / (k + history
length), p_group the smoothed popularity within the user's gender x age band x occupation group
(alpha 50), or the global popularity for the "global mix" of the plain model (which uses no
attribute: it shows how much of a gain is the attributes'). EASE's lambda is chosen on validation too.

Every knob k (and EASE's lambda) is chosen per fold on that fold's validation users, by the mean of
their full-history and cold-start NDCG@100; test figures are then over all 938 users, each scored by
the model of the fold that held them out. "vs plain" is the paired per-user difference against the
plain Mult-VAE, with its standard error (standard deviation / sqrt(938)). The "chosen by validation"
row picks, per fold, the method that uses the attributes with the best validation criterion (the
plain network blended with weight 0 does not count as one).
Output: benchmarks/results/recommend-kfold.txt and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cvae.recommend import (
    ease_scorer,
    ease_weights,
    load_interactions,
    load_recommender,
    model_scorer,
    split,
)
from cvae.recommend.config import EASE_LAMBDAS, GROUP_ALPHA
from cvae.recommend.data import truncate_fold_in
from cvae.recommend.metrics import GroupPopularity, per_user_scores, popularity_mix
from cvae.recommend.train import train_recommender

CONDITION = "age:continuous,gender,occupation"
OFF = dict(condition_in="decoder", condition_embedding=0, condition_dropout=0.0, truncate_share=0.0,
           truncate_items=5, history_dropout=0.0, condition_bias=0.0, prior_fold_in=0.0, popularity_mix=0.0,
           prior="standard")  # explicit: the prior a run with attributes gets by default changed with this study
NETWORKS = {  # name -> settings of cvae recommend train (every conditioning setting given explicitly)
    "plain": dict(condition="none", condition_in="both"),
    "decoder": dict(condition=CONDITION),
    "dropoutnet": dict(condition=CONDITION, history_dropout=0.3),
    "bias": dict(condition=CONDITION, history_dropout=0.3, condition_bias=5.0),
    "prior": dict(condition=CONDITION, prior="conditional"),
}
MIX_KS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
PRIOR_KS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
COLD = 5


def criterion(full: np.ndarray, cold: np.ndarray) -> float:
    """What validation maximises: the mean of the full-history and the cold-start NDCG@100."""
    return 0.5 * (float(full.mean()) + float(cold.mean()))


def scored(scorer, s, cold_val, cold_test) -> dict:
    out = {}
    for key, part in (("val_full", s.val), ("val_cold", cold_val), ("test_full", s.test), ("test_cold", cold_test)):
        out[key] = per_user_scores(scorer, part)["ndcg@100"]
    return out


def choose(candidates: dict) -> tuple:
    """The knob whose validation criterion is best: (knob, its scores)."""
    knob = max(candidates, key=lambda k: criterion(candidates[k]["val_full"], candidates[k]["val_cold"]))
    return knob, candidates[knob]


def one_fold(fold: int, folds: int, epochs: int, tmp: str, data, log, networks=None, seed: int = 0) -> dict:
    s = split(data, condition=CONDITION, folds=folds, fold=fold, seed=seed)
    cold_val = truncate_fold_in(s.val, COLD, seed=100 + fold + 1000 * seed)
    cold_test = truncate_fold_in(s.test, COLD, seed=200 + fold + 1000 * seed)
    demo = GroupPopularity.fit(s.train, s.y_train, s.schema, alpha=GROUP_ALPHA)
    glob = GroupPopularity.fit(s.train, None, None)
    methods: dict[str, tuple] = {}  # name -> (chosen knob, scores)

    def pop(groups):
        def score(x, y=None):
            return torch.from_numpy(np.asarray(groups.shares(y, len(x)), dtype=np.float32))
        return score

    methods["global popularity"] = (None, scored(pop(glob), s, cold_val, cold_test))
    methods["demographic popularity"] = (None, scored(pop(demo), s, cold_val, cold_test))
    methods["EASE"] = choose({lam: scored(ease_scorer(ease_weights(s.train, lam)), s, cold_val, cold_test)
                              for lam in EASE_LAMBDAS})
    info = {"fold": fold, "train_users": s.meta["train_users"], "val_users": s.meta["val_users"],
            "test_users": s.meta["test_users"], "networks": {}}
    for name, settings in NETWORKS.items():
        if networks and name not in networks:
            continue
        t0 = time.perf_counter()
        r = train_recommender(data="ml-100k", folds=folds, fold=fold, seed=seed, epochs=epochs, progress=False,
                              out=f"{tmp}/{name}-{fold}", **{**OFF, **settings})
        model = load_recommender(r.run_dir)
        info["networks"][name] = {"best_epoch": r.summary["best_epoch"], "seconds": time.perf_counter() - t0}
        log(f"fold {fold}: trained {name} in {time.perf_counter() - t0:.0f} s, epoch {r.summary['best_epoch']}")
        base = model_scorer(model)
        if name == "prior":
            def with_k(k, model=model):
                model.config.prior_fold_in = k
                return scored(model_scorer(model), s, cold_val, cold_test)
            methods["prior, fold-in towards p(z|c)"] = choose({k: with_k(k) for k in PRIOR_KS})
            model.config.prior_fold_in = 0.0
            methods[name] = (None, scored(base, s, cold_val, cold_test))
        else:
            methods[name] = (None, scored(base, s, cold_val, cold_test))
        methods[f"{name} + demographic mix"] = choose(
            {k: scored(popularity_mix(base, demo, k) if k else base, s, cold_val, cold_test) for k in MIX_KS})
        if name == "plain":
            methods["plain + global mix"] = choose(
                {k: scored(popularity_mix(base, glob, k) if k else base, s, cold_val, cold_test) for k in MIX_KS})
    users = {"val": s.val.users.tolist(), "test": s.test.users.tolist()}
    return {"info": info, "users": users,
            "methods": {m: {"knob": knob, **{k: v.tolist() for k, v in sc.items()}} for m, (knob, sc) in methods.items()}}


def uses_attributes(name: str, knob) -> bool:
    """Whether a method, with the knob validation gave it, uses the user's attributes (the plain
    network blended with weight 0 is the plain network)."""
    if name in ("global popularity", "EASE", "plain", "plain + global mix"):
        return False
    return not (name == "plain + demographic mix" and not knob)


def report(results: dict, args, machine: str) -> str:
    folds = sorted(results, key=int)
    names = list(dict.fromkeys(m for f in folds for m in results[f]["methods"]))
    keys = ("val_full", "val_cold", "test_full", "test_cold")

    def pooled(m, fs):
        return {k: np.concatenate([results[f]["methods"][m][k] for f in fs]) for k in keys}

    # per fold, the method using the attributes with the best validation criterion
    picked = []
    for f in folds:
        ms = results[f]["methods"]
        picked.append(max((m for m in ms if uses_attributes(m, ms[m]["knob"])),
                          key=lambda m: criterion(np.array(ms[m]["val_full"]), np.array(ms[m]["val_cold"]))))
    n_all = sum(len(results[f]["methods"]["plain"]["test_full"]) for f in folds)
    lines = [f"MovieLens-100K (recbole 1.2.1's files), ratings >= 4, {n_all} users each tested once: {len(folds)} folds "
             f"(users shuffled with seed {args.seed}; test fold f, validation fold f+1, training the other {args.folds - 2}); {args.epochs} epochs; "
             f"every knob chosen per fold on validation users (mean of full and cold-start NDCG@100); "
             f"'vs plain': paired per-user difference against the plain Mult-VAE on the same users ± its standard "
             f"error; cold start: at most {COLD} items folded in. {machine}", "",
             "| method | folds | users | knob per fold | val criterion | test NDCG@100 | vs plain | "
             "test cold-start NDCG@100 | vs plain |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    rows = [(m, [f for f in folds if m in results[f]["methods"]]) for m in names]
    rows.append(("chosen by validation (per fold)", folds))
    for m, fs in rows:
        if m.startswith("chosen"):
            v = {k: np.concatenate([results[f]["methods"][p][k] for f, p in zip(folds, picked)]) for k in keys}
            knobs = ", ".join(picked)
        else:
            v = pooled(m, fs)
            knobs = ", ".join("-" if results[f]["methods"][m]["knob"] is None else
                              f"{results[f]['methods'][m]['knob']:g}" for f in fs)
        ref = pooled("plain", fs)
        n = len(v["test_full"])
        cells = [f"{criterion(v['val_full'], v['val_cold']):.4f}"]
        for key in ("test_full", "test_cold"):
            d = v[key] - ref[key]
            cells += [f"{v[key].mean():.4f} ± {v[key].std(ddof=1) / math.sqrt(n):.4f}",
                      f"{d.mean():+.4f} ± {d.std(ddof=1) / math.sqrt(n):.4f}"]
        lines.append(f"| {m} | {','.join(fs)} | {n} | {knobs} | " + " | ".join(cells) + " |")
    lines.append("")
    nets = [name for name in NETWORKS if any(name in results[f]["info"]["networks"] for f in folds)]
    lines.append("kept epochs per fold: " + "; ".join(
        f"{name} " + ", ".join(str(results[f]["info"]["networks"][name]["best_epoch"]) for f in folds
                               if name in results[f]["info"]["networks"]) for name in nets))
    lines.append("training seconds per network (mean over its folds): " + ", ".join(
        f"{name} {np.mean([results[f]['info']['networks'][name]['seconds'] for f in folds if name in results[f]['info']['networks']]):.0f}"
        for name in nets))
    return "\n".join(lines)


def machine_line() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return (f"{model}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), a machine shared with other "
            "jobs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5,
                    help="folds the users are cut into, at least 3: test, validation and training (default 5)")
    ap.add_argument("--only-folds", type=int, nargs="*", help="folds to run (default: all)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--networks", nargs="*", help=f"networks to train (default: all of {list(NETWORKS)})")
    ap.add_argument("--seed", type=int, default=0,
                    help="shuffles the users into folds, draws the cold-start cuts and seeds training; the saved "
                         "results are seed 0, and seed 1 (plain, decoder, prior) is the blind replication")
    ap.add_argument("--report", action="store_true", help="train nothing: write the table of the folds saved")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "recommend-kfold"))
    args = ap.parse_args()
    if args.folds < 3:
        ap.error(f"--folds {args.folds}: at least 3 are needed (a test fold, a validation fold, training folds)")
    if any(not 0 <= f < args.folds for f in args.only_folds or []):
        ap.error(f"--only-folds: folds are numbered 0 to {args.folds - 1}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = Path(args.out)
    saved = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    results = saved.get("folds", {})
    if args.report and not results:
        raise SystemExit(f"no saved folds under {out.with_suffix('.json')}")
    machine = saved.get("machine") or machine_line()
    todo = [] if args.report else [f for f in (args.only_folds if args.only_folds is not None else range(args.folds))]
    data = load_interactions("ml-100k")

    def log(text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for fold in todo:
            done = one_fold(fold, args.folds, args.epochs, tmp, data, log, args.networks, args.seed)
            if str(fold) in results:  # networks not rerun keep their saved results
                kept = results[str(fold)]
                done["methods"] = {**kept["methods"], **done["methods"]}
                done["info"]["networks"] = {**kept["info"]["networks"], **done["info"]["networks"]}
            results[str(fold)] = done
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "machine": machine,
                                                            "folds": results}) + "\n")
            log(f"fold {fold} done")
    text = report(results, args, machine)
    print(text)
    out.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
