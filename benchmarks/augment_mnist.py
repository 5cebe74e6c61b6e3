"""Does CVAE augmentation help a classifier on imbalanced data? MNIST with five rare classes.

The training set keeps every image of five digits and only ``--rare-count`` (20) images of each of the
other five. A conditional VAE is trained on that imbalanced set (``cvae.train``; with
``--cvae-repeat N`` the rare classes' images are repeated to N each in its training data), and
``augment(balance=True)`` (``cvae augment --balance``) tops every class up to the size of the
largest with generated images. A classifier (a small MLP, 784-256-10) is then trained four ways and
tested on the 10,000 MNIST test images:

    real            the imbalanced set as it is
    oversampled     every class's images repeated to the largest class's size (the standard baseline)
    cvae-prior      the imbalanced set plus CVAE images, z ~ p(z): new digits (``--codes prior``)
    cvae-posterior  the imbalanced set plus CVAE images, z ~ q(z | x, c) of a real image of the class:
                    variations of the 20 real ones (``--codes posterior``)

Printed: accuracy on the test images of the rare classes (the share of them classified correctly),
on the other classes, and overall, as mean and spread over ``--seeds`` classifier seeds.

    nice -n 5 python benchmarks/augment_mnist.py --data-dir ../shared/data        # ~10 min, 1 CPU thread
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import cvae
from cvae.apps import augment, read_inputs
from cvae.data.sources import load_mnist
from cvae.probe import cpu_name
from cvae.train import native_bfloat16

ROOT = Path(__file__).resolve().parents[1]


def train_classifier(x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int, batch_size: int = 128) -> nn.Module:
    """A 784-256-10 ReLU MLP, Adam 1e-3, cross-entropy; ``x`` (N, 784) in [0, 1]."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> float:
    sel = torch.isin(y, torch.tensor(classes))
    return float((net(x[sel]).argmax(1) == y[sel]).float().mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA") or str(ROOT.parent / "shared" / "data"))
    p.add_argument("--rare", default="0,2,4,6,8", help="the rare digits (default 0,2,4,6,8)")
    p.add_argument("--rare-count", type=int, default=20, help="training images kept of each rare digit (default 20)")
    p.add_argument("--preset", default="mlp-400", help="the CVAE's preset (default mlp-400)")
    p.add_argument("--cvae-epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="the CVAE's Adam learning rate (1e-3 constant: the setting of the README's figures)")
    p.add_argument("--lr-schedule", default="constant", help="constant (the README's figures) or cosine")
    p.add_argument("--cvae-repeat", type=int, default=0,
                   help="repeat each rare class's images to this many in the CVAE's training data (default 0: "
                   "train it on the imbalanced set as it is)")
    p.add_argument("--classifier-epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds per variant (default 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine more threads oversubscribe it)")
    p.add_argument("--out", help="where the CVAE run and the pictures go (default: a new temporary folder, kept)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}", flush=True)
    t_start = time.perf_counter()

    rare = [int(d) for d in args.rare.split(",")]
    common = [d for d in range(10) if d not in rare]
    raw = load_mnist(args.data_dir)
    x_train, y_train = raw.splits["train"][0], raw.splits["train"][1]["label"]
    x_test = torch.from_numpy(raw.splits["test"][0].reshape(-1, 784))
    y_test = torch.from_numpy(raw.splits["test"][1]["label"].astype(np.int64))
    rng = np.random.default_rng(0)
    keep = np.concatenate([np.flatnonzero(y_train == d) if d in common else
                           rng.choice(np.flatnonzero(y_train == d), args.rare_count, replace=False) for d in range(10)])
    keep.sort()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="cvae-augment-"))
    work.mkdir(parents=True, exist_ok=True)
    subset = work / "imbalanced.npz"
    np.savez_compressed(subset, x=np.round(x_train[keep] * 255).astype(np.uint8), y=y_train[keep])
    counts = np.bincount(y_train[keep], minlength=10)
    cvae_data = subset
    if args.cvae_repeat:
        rep = np.concatenate([np.resize(np.flatnonzero(y_train[keep] == d), args.cvae_repeat) if d in rare
                              else np.flatnonzero(y_train[keep] == d) for d in range(10)])
        cvae_data = work / "cvae_training.npz"
        np.savez_compressed(cvae_data, x=np.round(x_train[keep][rep] * 255).astype(np.uint8), y=y_train[keep][rep])
    print(f"imbalanced MNIST: rare digits {rare} with {args.rare_count} images each, the others full "
          f"({len(keep)} images); {args.threads} CPU thread(s)")

    # 1. the conditional VAE on the imbalanced set, and its synthetic rare images
    t0 = time.perf_counter()
    result = cvae.train(data=str(cvae_data), out=str(work / "cvae"), overwrite=True, preset=args.preset,
                        epochs=args.cvae_epochs, lr=args.lr, lr_schedule=args.lr_schedule, pictures=False, progress=False, tensorboard=False, val_fraction=0.05)
    model = result.model
    classes = model.schema.attributes[0].classes
    real = read_inputs(model, str(subset), split="train")
    print(f"CVAE ({args.preset}, {args.cvae_epochs} epochs on {result.summary.get('n_train', len(result.data.train))} "
          f"images): validation negative ELBO {result.summary['val']['loss']:.1f} nats, {time.perf_counter() - t0:.0f} s")
    from cvae.plots import save_image_grid

    synthetic = {}
    for codes in ("prior", "posterior"):
        aug = augment(model, balance=True, real=real, codes=codes, seed=0)
        syn_y = torch.tensor([int(classes[int(c)]) for c in aug.y[:, 0]])
        synthetic[codes] = (aug.x.reshape(len(aug.x), -1), syn_y)
        picks = torch.cat([torch.nonzero(syn_y == d)[:10, 0] for d in rare])
        save_image_grid(work / f"synthetic_rare_{codes}.png", aug.x[picks], 10, row_labels=[f"label={d}" for d in rare],
                        title=f"CVAE images of the rare digits, z from the {codes} ({args.rare_count} real images each)")
    print(f"synthetic images per class: {', '.join(f'{d}: {n}' for d, n in aug.generated.items() if n)}")

    # 2. the classifier, three ways
    x_real = torch.from_numpy(x_train[keep].reshape(-1, 784))
    y_real = torch.from_numpy(y_train[keep].astype(np.int64))
    top = int(counts.max())
    over = np.concatenate([np.resize(np.flatnonzero(y_train[keep] == d), top) for d in range(10)])
    variants = {
        "real": (x_real, y_real),
        "oversampled": (x_real[over], y_real[over]),
        **{f"cvae-{codes}": (torch.cat([x_real, sx]), torch.cat([y_real, sy])) for codes, (sx, sy) in synthetic.items()},
    }
    print(f"\nclassifier 784-256-10, {args.classifier_epochs} epochs, seeds 0..{args.seeds - 1}; test accuracy:")
    print(f"{'training set':>14} {'images':>7}   {'rare digits':>16}   {'other digits':>16}   {'all':>16}")
    results = {}
    for name, (x, y) in variants.items():
        accs = []
        for seed in range(args.seeds):
            net = train_classifier(x, y, epochs=args.classifier_epochs, seed=seed)
            accs.append([accuracy(net, x_test, y_test, rare), accuracy(net, x_test, y_test, common),
                         accuracy(net, x_test, y_test, list(range(10)))])
        a = np.array(accs)
        results[name] = {"n": len(x), "rare": a[:, 0].tolist(), "common": a[:, 1].tolist(), "all": a[:, 2].tolist()}
        cells = "   ".join(f"{a[:, j].mean():.4f} ± {a[:, j].std():.4f}" for j in range(3))
        print(f"{name:>14} {len(x):7d}   {cells}", flush=True)
    base = np.mean(results["real"]["rare"])
    print("\nrare-digit accuracy: real only {:.4f}; oversampled {:.4f}; with CVAE images {:.4f} (prior), {:.4f} "
          "(posterior). Pictures: {}. Total {:.0f} s".format(
              base, np.mean(results["oversampled"]["rare"]), np.mean(results["cvae-prior"]["rare"]),
              np.mean(results["cvae-posterior"]["rare"]), work / "synthetic_rare_*.png", time.perf_counter() - t_start))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
