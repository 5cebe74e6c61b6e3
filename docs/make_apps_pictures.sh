#!/usr/bin/env bash
# Remake the README's pictures of the applications (interpolate, traverse, transfer, embed, anomaly).
# Usage: bash docs/make_apps_pictures.sh [DATA_DIR]   (DATA_DIR holds mnist/; default ../shared/data)
# About 5 minutes on 2 cores. On a busy shared machine, OMP_NUM_THREADS=1 is much faster.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-../shared/data}
work=$(mktemp -d)
img=docs/images

# The README's MNIST conditional VAE: an 8-D latent, beta 3, the condition at every layer.
cvae train --data mnist --data-dir "$data_dir" --epochs 20 --latent-dim 8 --beta 3 --condition-at -1 \
    --out "$work/mnist" --no-progress --no-pictures
cvae transfer "$work/mnist" --input mnist --n 6 -o $img/apps-transfer.png
cvae interpolate "$work/mnist" --input mnist --n 2 --method both --steps 10 -o $img/apps-interpolate.png
cvae traverse "$work/mnist" --input mnist --index 0 --top 6 -o $img/apps-traverse.png
cvae embed "$work/mnist" --data mnist -o "$work/latents.csv" --map $img/apps-embed-map.png

# Heartbeat-like signals with deliberately subtle anomalies (a flattened T wave, a wider QRS complex, no
# P wave), each within the normal beats' own variation in other respects.
python - "$work" <<'EOF'
import csv, sys
import numpy as np

def beats(n_normal, n_abnormal, seed, length=120):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length)
    kinds = np.r_[np.zeros(n_normal, int), rng.integers(1, 4, n_abnormal)]
    rng.shuffle(kinds)
    rows = []
    for k in kinds:
        shift, amp = 0.015 * rng.standard_normal(), 1 + 0.1 * rng.standard_normal()
        g = lambda mu, sd, a: a * np.exp(-0.5 * ((t - mu - shift) / sd) ** 2)
        p_amp, t_amp, qrs = 0.15 * (1 + 0.2 * rng.standard_normal()), 0.3 * (1 + 0.15 * rng.standard_normal()), 0.012 * (1 + 0.1 * rng.standard_normal())
        if k == 1:    # flattened T wave
            t_amp *= 0.4
        elif k == 2:  # wider QRS complex
            qrs *= 1.8
        elif k == 3:  # no P wave
            p_amp = 0.0
        x = g(0.2, 0.025, p_amp) + g(0.33, 0.01, -0.12) + g(0.36, qrs, amp) + g(0.39, 0.01, -0.2) + g(0.65, 0.05, t_amp)
        x = x + 0.02 * rng.standard_normal(length)
        rows.append([f"{v:.5f}" for v in (x - x.min()) / (x.max() - x.min())] + [int(k > 0)])
    return rows

for name, args in (("beats-train.csv", (2000, 200, 0)), ("beats-test.csv", (1000, 300, 1))):
    with open(f"{sys.argv[1]}/{name}", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"t{i}" for i in range(120)] + ["label"])
        w.writerows(beats(*args))
EOF
cvae anomaly fit --data "$work/beats-train.csv" --data-layout signal --normal 0 --preset conv --epochs 30 \
    --out "$work/beats" --no-progress
cvae anomaly score "$work/beats" --data "$work/beats-test.csv" -o "$work/scores.csv" --plot $img/apps-anomaly-heartbeats.png
cvae traverse "$work/beats" --top 3 -o $img/apps-traverse-heartbeats.png
# docs/images/apps-augment-rare.png is the synthetic_rare_posterior.png of `python benchmarks/augment_mnist.py --out DIR`.
echo "pictures in $img/ (work files in $work)"
