"""Time per epoch of Mult-VAE at the scale of MovieLens-20M, on a synthetic matrix of its shape.

ML-20M under the paper's protocol: 136,677 training users, 20,108 items, about 10M interactions
(ratings >= 4). This script builds a random sparse matrix of that shape and density (item
popularity drawn from a power law, so some columns are dense as in the real data), then times
``--steps`` training steps of the paper's network (items -> 600 -> 200 -> 600 -> items, batch 500
users) two ways, in the same process:

  cvae     the recommender's step: a batch of rows taken from the CSR matrix and made dense, then
           the registered ELBO objective, backward, Adam (what `cvae recommend train` runs)
  floor    the same model and step on a batch made dense beforehand (no sparse work at all)

and prints seconds per step, their ratio, and the projected seconds per epoch (steps per epoch =
ceil(136,677 / 500) = 274) plus one validation pass over 10,000 users. A projection from a few
steps, not a measured epoch: the machine, threads and torch version are printed beside it.

    OMP_NUM_THREADS=1 python benchmarks/recommend_ml20m_speed.py          # ~2 minutes on one thread
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from cvae.models import MULTVAE_DEFAULTS, MultVAEConfig, build_model
from cvae.objectives import build_objective
from cvae.probe import cpu_name
from cvae.recommend.data import HeldOut, dense_rows
from cvae.recommend.metrics import model_scorer, per_user_scores
from cvae.train import native_bfloat16

USERS, ITEMS, INTERACTIONS, BATCH = 136_677, 20_108, 10_000_000, 500


class _Settings:
    beta, kl_warmup, free_bits, iwae_k = 0.2, 0.0, 0.0, 5


def synthetic(users: int, items: int, nnz: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    popularity = rng.pareto(1.2, items) + 1.0
    popularity /= popularity.sum()
    per_user = np.maximum(5, rng.geometric(0.9 * users / nnz, users))  # the floor of 5 adds about 10%
    per_user = np.minimum(per_user, items // 2)
    rows = np.repeat(np.arange(users), per_user)
    cols = rng.choice(items, size=len(rows), p=popularity)
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(users, items))
    m.data[:] = 1.0
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "recommend-ml20m-speed.txt"))
    args = ap.parse_args()
    print(f"machine: {cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    m = synthetic(USERS, ITEMS, INTERACTIONS)
    built = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_model(MultVAEConfig(data_shape=(ITEMS,), **MULTVAE_DEFAULTS))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    objective = build_objective("elbo", _Settings())
    rng = np.random.default_rng(1)
    batches = [rng.choice(USERS, BATCH, replace=False) for _ in range(args.steps + 1)]

    def step(x):
        out = objective(model, x, None, progress=1.0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    step(dense_rows(m, batches[0]))  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for rows in batches[1:]:
        step(dense_rows(m, rows))
    cvae_step, cvae_cpu = ((time.perf_counter() - t0) / args.steps, (time.process_time() - c0) / args.steps)
    dense = [dense_rows(m, rows) for rows in batches[1:]]
    t0, c0 = time.perf_counter(), time.process_time()
    for x in dense:
        step(x)
    floor_step, floor_cpu = ((time.perf_counter() - t0) / args.steps, (time.process_time() - c0) / args.steps)
    val_users = 1000  # a validation pass over 10,000 users is projected from 1,000 of them
    rows = np.arange(val_users)
    fold = m[rows]
    part = HeldOut(np.arange(val_users).astype(str), fold, fold, None)  # scoring time does not depend on the split
    c0 = time.process_time()
    per_user_scores(model_scorer(model), part)
    val_pass = (time.process_time() - c0) * 10
    steps_per_epoch = math.ceil(USERS / BATCH)
    lines = [
        f"Mult-VAE at MovieLens-20M's shape: {USERS:,} users x {ITEMS:,} items, {m.nnz:,} interactions (synthetic; "
        f"built in {built:.1f} s); batch {BATCH}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}",
        f"seconds per step, cvae (CSR rows made dense per batch): {cvae_step:.3f} wall, {cvae_cpu:.3f} CPU",
        f"seconds per step, floor (the batch dense beforehand):   {floor_step:.3f} wall, {floor_cpu:.3f} CPU",
        f"ratio cvae / floor: {cvae_step / floor_step:.3f} wall, {cvae_cpu / floor_cpu:.3f} CPU",
        "(wall > CPU: the process waited for a core; on a machine of its own, wall ~ CPU time)",
        f"projected seconds per epoch ({steps_per_epoch} steps), from the CPU time: {cvae_cpu * steps_per_epoch:.0f}, plus "
        f"{val_pass:.0f} s for NDCG@100 / Recall@20, 50 over 10,000 validation users",
        f"projected hours for the paper's 200 epochs: {200 * (cvae_cpu * steps_per_epoch + val_pass) / 3600:.1f}",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
