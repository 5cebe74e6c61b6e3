"""How cold is cold? The user's attributes against the number of items a new user has: MovieLens-100K,
every user tested once (K-fold over users), the fold-in cut to 0, 1, 2, 3 and 5 items.

    python -m pip install --no-deps recbole==1.2.1     # ships ml-100k.inter / ml-100k.user; nothing imported
    for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/recommend_coldstart.py --seed $s \
        --out benchmarks/results/recommend-coldstart-seed$s; done      # 8-16 min per seed on one thread
    python benchmarks/recommend_coldstart.py --report benchmarks/results/recommend-coldstart-seed{0,1,2} \
        --out benchmarks/results/recommend-coldstart                   # the seeds pooled

`benchmarks/recommend_kfold.py` asked whether age, gender and occupation help users with at most 5
items folded in, and found that they do not, measurably (+0.0008 ± 0.0018 NDCG@100 over two seeds).
A user with 5 items has already told the model much of what the attributes say. This benchmark asks
where the attributes stop helping: the same 5-fold protocol (users shuffled with --seed; test fold f,
validation fold f+1, training the other three; 200 epochs, the epoch kept on validation NDCG@100 with
full histories, as `cvae recommend train --folds 5 --fold f` does), and each test user's fold-in cut
to its first n items of one random order (so the cuts are nested: the 1-item history is part of the
2-item one), n in 0, 1, 2, 3, 5, and the full fold-in (80% of the user's items). The scored items are
always the user's held-out 20%; the items of the cut history are excluded from the ranking.

Nothing is chosen after seeing test figures: the networks are fixed in advance (the plain Mult-VAE,
and the default of a run with attributes: the attributes in every decoder layer and the conditional
prior p(z | c), scored at the posterior mean of z), and so are the baselines (global popularity,
demographic popularity: the smoothed popularity within the user's gender x age band x occupation,
alpha 50; EASE with lambda chosen on validation users). "vs plain" is the paired per-user difference
against the plain Mult-VAE on the same users and the same cut, ± its standard error. With 0 items
EASE scores every item 0 (it has nothing to propagate), so its row is left empty there.
Output: OUT.txt and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from recommend_kfold import CONDITION, NETWORKS, OFF, machine_line

from cvae.recommend import (
    ease_scorer,
    ease_weights,
    load_interactions,
    load_recommender,
    model_scorer,
    split,
)
from cvae.recommend.config import EASE_LAMBDAS, GROUP_ALPHA
from cvae.recommend.data import HeldOut
from cvae.recommend.metrics import (
    evaluate_scorer,
    group_popularity_scorer,
    per_user_scores,
    popularity_scorer,
)
from cvae.recommend.train import train_recommender

CUTS = (0, 1, 2, 3, 5)
NETS = {"plain": "Mult-VAE, plain", "prior": "Mult-VAE with the attributes (the default: decoder, p(z | c))"}
BASELINES = ("global popularity", "demographic popularity", "EASE")


def nested_cuts(part: HeldOut, cuts, seed: int) -> dict:
    """For each n in ``cuts``: the same users and scored items, each fold-in cut to its first n items of
    one random order per user (nested cuts), and the full fold-in under the key "full"."""
    rng = np.random.default_rng(seed)
    m = part.fold_in
    orders = [rng.permutation(m.indices[m.indptr[r]:m.indptr[r + 1]]) for r in range(m.shape[0])]
    out = {"full": part}
    for n in cuts:
        rows = [r for r, o in enumerate(orders) for _ in o[:n]]
        cols = [i for o in orders for i in o[:n]]
        fold = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=m.shape)
        out[str(n)] = HeldOut(part.users, fold, part.scored, part.y)
    return out


def one_fold(fold: int, folds: int, epochs: int, seed: int, tmp: str, data, log) -> dict:
    s = split(data, condition=CONDITION, folds=folds, fold=fold, seed=seed)
    parts = nested_cuts(s.test, CUTS, seed=500 + fold + 1000 * seed)
    lam = max(EASE_LAMBDAS, key=lambda v: evaluate_scorer(ease_scorer(ease_weights(s.train, v)), s.val)["ndcg@100"].mean)
    scorers = {"global popularity": popularity_scorer(s.train),
               "demographic popularity": group_popularity_scorer(s.train, s.y_train, s.schema, alpha=GROUP_ALPHA),
               "EASE": ease_scorer(ease_weights(s.train, lam))}
    info = {"fold": fold, "test_users": s.meta["test_users"], "ease_lambda": lam, "networks": {}}
    for name in NETS:
        t0 = time.perf_counter()
        r = train_recommender(data="ml-100k", folds=folds, fold=fold, seed=seed, epochs=epochs, progress=False,
                              out=f"{tmp}/{name}-{fold}", **{**OFF, **NETWORKS[name]})
        scorers[name] = model_scorer(load_recommender(r.run_dir))
        info["networks"][name] = {"best_epoch": r.summary["best_epoch"], "seconds": time.perf_counter() - t0}
        log(f"fold {fold}: trained {name} in {time.perf_counter() - t0:.0f} s, epoch {r.summary['best_epoch']}")
    scores = {m: {cut: per_user_scores(sc, part)["ndcg@100"].tolist() for cut, part in parts.items()
                  if not (m == "EASE" and cut == "0")} for m, sc in scorers.items()}
    return {"info": info, "users": s.test.users.tolist(), "scores": scores}


def report(results: list[dict], machine: str) -> str:
    """One table over every (seed, fold) given: NDCG@100 per cut, and the paired difference against plain."""
    cuts = [str(c) for c in CUTS] + ["full"]

    def pooled(m, cut):
        got = [f["scores"][m].get(cut) for r in results for f in r["folds"].values()]
        return None if any(g is None for g in got) else np.concatenate([np.asarray(g) for g in got])

    seeds = sorted({r["seed"] for r in results})
    n = len(pooled("plain", "full"))
    counts = [len(r["folds"]) for r in results]  # the folds saved (a run stopped early saves fewer)
    folds = (f"{counts[0]} folds each" if len(set(counts)) == 1 else
             "folds " + ", ".join(f"{c} (seed {r['seed']})" for c, r in zip(counts, results)))
    lines = [f"MovieLens-100K (recbole 1.2.1's files), ratings >= 4; seeds {', '.join(map(str, seeds))}: "
             f"{n} test figures (every user once per seed; {folds}); the fold-in cut to its first n items of "
             f"one random order per user; NDCG@100 of the held-out 20%, mean ± standard error; 'vs plain': the "
             f"paired per-user difference against the plain Mult-VAE. {machine}", "",
             "| items folded in | " + " | ".join(["0", "1", "2", "3", "5", "all (80%)"]) + " |",
             "|---|" + "---:|" * len(cuts)]
    for m in list(BASELINES) + list(NETS):
        cells = []
        for cut in cuts:
            v = pooled(m, cut)
            cells.append("—" if v is None else f"{v.mean():.4f} ± {v.std(ddof=1) / math.sqrt(len(v)):.4f}")
        lines.append(f"| {NETS.get(m, m)} | " + " | ".join(cells) + " |")
    for m in ("prior", "demographic popularity", "EASE"):
        cells = []
        for cut in cuts:
            v, ref = pooled(m, cut), pooled("plain", cut)
            if v is None:
                cells.append("—")
                continue
            d = v - ref
            cells.append(f"{d.mean():+.4f} ± {d.std(ddof=1) / math.sqrt(len(d)):.4f}")
        lines.append(f"| {NETS.get(m, m)}, vs plain | " + " | ".join(cells) + " |")
    per_seed = []
    for r in results:
        d = []
        for cut in cuts:
            a = np.concatenate([np.asarray(f["scores"]["prior"][cut]) for f in r["folds"].values()])
            b = np.concatenate([np.asarray(f["scores"]["plain"][cut]) for f in r["folds"].values()])
            d.append(f"{(a - b).mean():+.4f} ± {(a - b).std(ddof=1) / math.sqrt(len(a)):.4f}")
        per_seed.append(f"seed {r['seed']}: " + ", ".join(f"{c} items {x}" for c, x in zip(cuts, d)))
    lines += ["", "attributes vs plain, per seed: " + "; ".join(per_seed)]
    epochs = {name: [f["info"]["networks"][name]["best_epoch"] for r in results for f in r["folds"].values()]
              for name in NETS}
    secs = {name: np.mean([f["info"]["networks"][name]["seconds"] for r in results for f in r["folds"].values()])
            for name in NETS}
    lines.append("kept epochs: " + "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in epochs.items())
                 + ". Training seconds per network (mean): " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5,
                    help="folds the users are cut into, at least 3: test, validation and training (default 5)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="shuffles the users into folds, draws the cuts, seeds training")
    ap.add_argument("--report", nargs="*", metavar="RESULTS",
                    help="train nothing: pool the saved results given (paths without .json)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "recommend-coldstart"))
    args = ap.parse_args()
    out = Path(args.out)
    if args.folds < 3:
        ap.error(f"--folds {args.folds}: at least 3 are needed (a test fold, a validation fold, training folds)")
    if args.report is not None:
        missing = [str(Path(p).with_suffix(".json")) for p in (args.report or [out]) if not Path(p).with_suffix(".json").exists()]
        if missing:
            raise SystemExit(f"no saved folds under {', '.join(missing)}")
        saved = [json.loads(Path(p).with_suffix(".json").read_text()) for p in (args.report or [out])]
        text = report(saved, saved[0]["machine"])
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        data = load_interactions("ml-100k")
        result = {"seed": args.seed, "args": vars(args), "machine": machine_line(), "folds": {}}

        def log(text):
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

        with tempfile.TemporaryDirectory() as tmp:
            for fold in range(args.folds):
                result["folds"][str(fold)] = one_fold(fold, args.folds, args.epochs, args.seed, tmp, data, log)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.with_suffix(".json").write_text(json.dumps(result) + "\n")
                log(f"fold {fold} done")
        text = report([result], result["machine"])
    print(text)
    out.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
