"""The disentanglement check as a user runs it: ``cvae train`` with nothing but the objective, then
``cvae evaluate --metrics disentanglement``, for the plain VAE and beta-TCVAE (beta 6), over seeds.

    python benchmarks/disentangle_defaults.py --data dsprites --seeds 0,1,2 --jobs 2
    python benchmarks/disentangle_defaults.py --data shapes3d-like --seeds 0,1,2 --jobs 2

``--data`` is a named factor data set (``dsprites``, ``color-shapes``), a ``.npz`` file whose factor
arrays ``--factors`` names, or ``shapes3d-like``: a stand-in for Shapes3D (Burgess & Kim 2018; not
available offline here) that this script renders once into ``--data-cache``: 64 x 64 RGB, channel-last
uint8 as Shapes3D's own file keeps them, the same six factors and sizes (floor, wall and object hue x 10
in [0, 0.9], scale x 8 in [0.75, 1.25], shape x 4: cube, cylinder, sphere, capsule, orientation x 15 in
[-30, 30] degrees), drawn flat with simple shading rather than ray-traced (the camera's orientation tilts
the floor's edge and moves the object sideways), ``--n`` of its 480,000 images drawn at random (seed 1).

Each run is a separate ``cvae train`` command with ``OMP_NUM_THREADS=1``, ``--jobs`` of them at once
(runs are kept under ``--out`` and reused when their eval.json exists). Printed and written to
``--json``: MIG, FactorVAE score and DCI disentanglement per run, then mean (min-max) per objective,
and whether beta-TCVAE's lowest MIG is above the plain VAE's highest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cvae.probe import cpu_name

OBJECTIVES = {"vae": [], "btcvae": ["--objective", "btcvae", "--beta", "6"]}
SHAPES3D_FACTORS = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
SHAPES3D_SIZES = (10, 10, 10, 8, 4, 15)


def render_shapes3d_like(factors: np.ndarray, size: int = 64) -> np.ndarray:
    """(n, size, size, 3) uint8 images of Shapes3D-like factor indices (n, 6)."""
    from matplotlib.colors import hsv_to_rgb

    yy, xx = np.mgrid[0:size, 0:size] / size  # y down
    out = np.empty((len(factors), size, size, 3), np.uint8)
    for i, (fh, wh, oh, sc, sh, orr) in enumerate(np.asarray(factors, np.int64)):
        ang = (orr / 14 - 0.5) * np.deg2rad(60)
        floor = yy > 0.55 + np.tan(ang) * 0.4 * (xx - 0.5)
        wall_c, floor_c = hsv_to_rgb([wh * 0.1, 0.85, 0.9]), hsv_to_rgb([fh * 0.1, 0.85, 0.9])
        img = np.where(floor[..., None], floor_c * (0.75 + 0.25 * (yy[..., None] - 0.55) / 0.45),
                       wall_c * (0.95 - 0.15 * xx[..., None]))
        r = 0.13 * (0.75 + sc * (0.5 / 7))
        u, v = (xx - (0.5 + 0.08 * np.sin(ang))) / r, (yy - 0.72) / r
        if sh == 0:  # cube: a square with a lighter top face
            body = (np.abs(u) <= 1) & (np.abs(v) <= 1)
            top = body & (v < -0.5)
        elif sh == 1:  # cylinder: a rectangle under an elliptic top
            cap = (u / 0.9) ** 2 + ((v + 1) / 0.35) ** 2 <= 1
            body = ((np.abs(u) <= 0.9) & (np.abs(v) <= 1)) | cap
            top = cap
        elif sh == 2:  # sphere with a highlight
            body = u * u + v * v <= 1
            top = body & ((u + 0.35) ** 2 + (v + 0.35) ** 2 <= 0.2)
        else:  # capsule
            body = ((np.abs(u) <= 0.55) & (np.abs(v) <= 0.6)) | (u * u + (np.abs(v) - 0.6) ** 2 <= 0.55 ** 2)
            top = body & (v < -0.8)
        obj = hsv_to_rgb([oh * 0.1, 0.9, 0.85])
        img = np.where(body[..., None], obj * (0.8 + 0.2 * (u[..., None] < 0)), img)
        img = np.where(top[..., None], np.minimum(obj * 1.2, 1.0), img)
        out[i] = (img * 255).round().astype(np.uint8)
    return out


def shapes3d_like_file(cache: Path, n: int) -> Path:
    path = cache / f"shapes3d_like_{n}.npz"
    if not path.exists():
        rng = np.random.default_rng(1)
        idx = np.sort(rng.choice(int(np.prod(SHAPES3D_SIZES)), n, replace=False))
        factors = np.stack(np.unravel_index(idx, SHAPES3D_SIZES), 1)
        cache.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        x = render_shapes3d_like(factors)
        np.savez(path, x=x, **{name: factors[:, k] for k, name in enumerate(SHAPES3D_FACTORS)})
        print(f"rendered {n:,} Shapes3D-like images into {path} ({time.perf_counter() - t:.0f} s)", flush=True)
    return path


def run_one(data: list[str], objective: str, seed: int, out: Path, extra: list[str]) -> dict:
    run = out / f"{objective}-s{seed}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not (run / "eval.json").exists():
        train = ["cvae", "train", *data, *OBJECTIVES[objective], "--seed", str(seed), *extra, "--out", str(run),
                 "--overwrite", "--no-progress"]
        subprocess.run(train, check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["cvae", "evaluate", str(run), "--metrics", "disentanglement"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    scores = json.loads((run / "eval.json").read_text())["disentanglement"]
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    config = json.loads((run / "config.json").read_text())
    return {"objective": objective, "seed": seed, "run": str(run), "mig": scores["mig"],
            "factor_vae": scores["factor_vae"], "dci_disentanglement": scores["dci_disentanglement"],
            "mig_per_factor": scores["details"]["mig_per_factor"], "val_loss": epochs[-1]["val_loss"],
            "val_kl": epochs[-1]["val_kl"], "seconds_per_epoch": float(np.mean([e["seconds"] for e in epochs])),
            "epochs": len(epochs), "lr": config["train"]["lr"], "latent_dim": config["model"]["latent_dim"],
            "hidden": config["model"]["hidden"]}


def spread(values) -> str:
    return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="dsprites")
    ap.add_argument("--factors", help="the factor arrays of a .npz file")
    ap.add_argument("--data-dir")
    ap.add_argument("--n", type=int, default=50_000, help="shapes3d-like: images rendered (default 50,000)")
    ap.add_argument("--data-cache", type=Path, default=Path("runs/data"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--extra", default="", help="more cvae train flags for every run, e.g. '--lr 1e-3'")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    if args.data == "shapes3d-like":
        data = ["--data", str(shapes3d_like_file(args.data_cache, args.n)), "--factors", ",".join(SHAPES3D_FACTORS)]
    else:
        data = ["--data", args.data, *(["--factors", args.factors] if args.factors else [])]
    if args.data_dir:
        data += ["--data-dir", args.data_dir]
    extra = args.extra.split()
    out = args.out or Path("runs") / f"dis-defaults-{Path(args.data).stem}"
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(o, s) for s in seeds for o in OBJECTIVES]
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda job: run_one(data, job[0], job[1], out, extra), jobs))
    print(f"{cpu_name()}; {len(rows)} runs, {args.jobs} at a time, one thread each; {time.perf_counter() - t:.0f} s")
    print(f"{'objective':10} {'seed':>4} {'MIG':>7} {'FactorVAE':>9} {'DCI dis.':>8} {'val -ELBO':>10} {'KL':>7} {'s/epoch':>7}")
    for r in rows:
        print(f"{r['objective']:10} {r['seed']:>4} {r['mig']:7.3f} {r['factor_vae']:9.3f} {r['dci_disentanglement']:8.3f} "
              f"{r['val_loss']:10.1f} {r['val_kl']:7.1f} {r['seconds_per_epoch']:7.1f}")
    summary = {}
    for o in OBJECTIVES:
        mine = [r for r in rows if r["objective"] == o]
        summary[o] = {k: {"mean": float(np.mean([r[k] for r in mine])), "min": min(r[k] for r in mine),
                          "max": max(r[k] for r in mine)} for k in ("mig", "factor_vae", "dci_disentanglement")}
        print(f"{o:10} MIG {spread([r['mig'] for r in mine])}  FactorVAE {spread([r['factor_vae'] for r in mine])}  "
              f"DCI {spread([r['dci_disentanglement'] for r in mine])}")
    separated = summary["btcvae"]["mig"]["min"] > summary["vae"]["mig"]["max"]
    print(f"beta-TCVAE's lowest MIG above the plain VAE's highest: {separated}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": f"{cpu_name()}, one thread per run, {args.jobs} runs at a time",
            "command": "python benchmarks/disentangle_defaults.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "data": data, "runs": rows, "summary": summary, "btcvae_min_mig_above_vae_max": separated}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
