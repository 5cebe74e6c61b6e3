"""Training throughput on a busy machine: an idle machine against one competing CPU-bound process,
cvae's command-line tool beside PyTorch's VAE example, each with its own default threading.

Each measurement is a fresh process with the environment's OMP_* settings removed (so each side uses
its own defaults) training the example's model (784-400-20, Bernoulli pixels, Adam at 1e-3, batch
128) on --limit MNIST training images for --epochs epochs: cvae through ``python -m cvae train``,
the example as a plain loop written as PyTorch's ``examples/vae/main.py`` writes it (a DataLoader, the
batch sum of BCE + KL, ``loss.item()`` every step). The competitor is a Python process spinning on
one core (``while True: pass``). Reported: the median seconds per epoch after the first, and the
slowdown busy / idle of each side.

    python benchmarks/busy.py --data-dir ../shared/data [--limit 20000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cvae.probe import cpu_name
from cvae.train import native_bfloat16

EXAMPLE = r'''
import sys, time, statistics, torch
from torch import nn, optim
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from cvae.data import load_data

data_dir, limit, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
x = load_data("mnist", data_dir=data_dir, condition="none", val_fraction=0.0, limit=limit).train.x.reshape(-1, 784)
torch.manual_seed(0)

class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)
    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar

model = VAE()
opt = optim.Adam(model.parameters(), lr=1e-3)
loader = DataLoader(TensorDataset(x), batch_size=128, shuffle=True)
times = []
for epoch in range(epochs):
    t0 = time.perf_counter()
    for (xb,) in loader:
        opt.zero_grad()
        rec, mu, logvar = model(xb)
        loss = F.binary_cross_entropy(rec, xb, reduction="sum") - 0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp())
        loss.backward()
        loss.item()
        opt.step()
    times.append(time.perf_counter() - t0)
print(statistics.median(times[1:] or times))
'''


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("OMP_") and k != "MKL_NUM_THREADS"}


def cvae_epoch_seconds(data_dir: str, limit: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "cvae", "train", "--data", "mnist", "--data-dir", data_dir, "--condition",
                        "none", "--limit", str(limit), "--val-fraction", "0", "--epochs", str(epochs), "--lr", "1e-3",
                        "--lr-schedule", "constant", "--no-progress", "--no-tensorboard", "--no-pictures", "--out",
                        str(run)], env=clean_env(), check=True, capture_output=True)
        secs = [json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(secs[1:] or secs)


def example_epoch_seconds(data_dir: str, limit: int, epochs: int) -> float:
    done = subprocess.run([sys.executable, "-c", EXAMPLE, data_dir, str(limit), str(epochs)], env=clean_env(),
                          check=True, capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA"))
    p.add_argument("--limit", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    print(f"machine: {cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, {os.cpu_count()} cores; "
          f"load average "
          f"{os.getloadavg()[0]:.2f} before; {args.limit} images, {args.epochs} epochs per measurement")
    players = {"cvae (python -m cvae train)": cvae_epoch_seconds, "PyTorch's example": example_epoch_seconds}
    results = {}
    for condition in ("idle", "one competing process"):
        competitor = None
        if condition != "idle":
            competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            for name, measure in players.items():
                results.setdefault(name, {})[condition] = measure(args.data_dir, args.limit, args.epochs)
                print(f"  {name:30s} {condition:22s} {results[name][condition]:7.2f} s per epoch", flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    print(f"\n{'':30s} {'idle':>8s} {'busy':>8s} {'busy / idle':>12s}")
    for name, r in results.items():
        print(f"{name:30s} {r['idle']:8.2f} {r['one competing process']:8.2f} "
              f"{r['one competing process'] / r['idle']:11.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_name(),
                                               "cores": os.cpu_count(), "limit": args.limit, "epochs": args.epochs,
                                               "seconds_per_epoch": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
