#!/usr/bin/env bash
# Remake the README's pictures of the quick start: the run the README's first command trains.
# Usage: bash docs/make_pictures.sh   (about a minute on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
run=$(mktemp -d)/digits
cvae train --data digits --epochs 200 --batch-size 64 --out "$run" --no-progress
for f in samples reconstructions latent loss; do cp "$run/$f.png" "docs/images/digits-$f.png"; done
cvae sample "$run" --condition label=7 --n 32 --seed 1 -o docs/images/digits-sample-7.png
echo "pictures in docs/images/"
