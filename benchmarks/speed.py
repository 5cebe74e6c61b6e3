"""How fast cvae trains, beside its peers, measured in one process run.

    pip install -e '.[bench]'        # pythae 0.1.2, the peer library (after torch is installed)
    python benchmarks/speed.py --data-dir /work/shared/data                       # the full run
    python benchmarks/speed.py --data-dir /work/shared/data --quick            # about 3 minutes: the main
        # comparison at 10 epochs, short extras, no time-to-quality runs, no precision budget runs
    python benchmarks/speed.py --data-dir /work/shared/data --epochs 2 --limit 3000 --quick   # smoke test

The same model (PyTorch's VAE example: 784-400-20, ReLU, Bernoulli pixels, Adam, batch 128) is
trained on MNIST (60,000 training images, grey levels in [0, 1]; tested on the 10,000 test images) by

  (a) cvae (``cvae.train.fit``, default settings: precision auto, which on a CPU times precision x
      step x threads on the model's shapes and takes the fastest (``cvae.probe``; its choice and
      rates are printed), the fused MLP-VAE step where it covers the model (``cvae.fused``; its
      native C++ form with its own Adam, ``cvae.native``, where a compiler is present), fused
      Adam, data on the device, a peak learning rate of 3e-3 annealed to 0 over the N epochs by a
      cosine; the peers use 1e-3 constant, as the example does, and cvae at 1e-3 constant is among
      the time-to-quality runs),
  (b) a plain-PyTorch loop written as PyTorch's ``examples/vae/main.py`` writes it (a DataLoader over
      a TensorDataset, Adam, the batch sum of BCE + KL, ``loss.item()`` every step),
  (c) pythae 0.1.2 (its ``TrainingPipeline`` with a custom 784-400-20 encoder and decoder),

and it prints, for each: seconds per epoch (median of epochs 2..N, wall clock and process CPU time,
test evaluations excluded), samples per second, the test loss (one-sample negative ELBO, nats)
after N epochs, the ratios cvae / peer, and the compute floor: the FLOPs of one epoch over this
machine's measured matrix-multiplication rate for the step's own shapes, in float32 and bfloat16.
Then cvae's execution paths against each other on a subset (the fused step and autograd, each in
float32 and bfloat16, one thread and all; torch.compile; a streamed .npy), the test loss of the
fused step in bfloat16 against float32 after N epochs (the precision budget: 0.3 nats), time to quality (seconds until the test loss first reaches 105.56 nats, the value PyTorch's
example reaches after 10 epochs, for cvae's fastest settings and for each peer), samples per
second of ``cvae sample``, importance-sampled log-likelihood examples per second at k = 5000, and
the throughput of a memory-mapped ``.npy`` streamed in chunks against the same data in memory.

On a machine shared with other jobs, wall-clock times swing; the process CPU time (with
``--threads 1``) is the steadier figure, and the ratios come from one run.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

from cvae.config import TrainConfig
from cvae.data import load_data
from cvae.train import evaluate_elbo, fit, native_bfloat16

TARGET = 105.56  # nats: PyTorch's VAE example's test loss after 10 epochs (issue 5)
LAYERS = [(784, 400), (400, 40), (20, 400), (400, 784)]  # the model's linear layers (in, out)


# -- timing: trainers take turns, one epoch each ---------------------------------------------------

@dataclass
class Run:
    """One trainer's figures: per-epoch training time (wall and CPU) and test loss after each epoch."""

    name: str
    settings: str
    n_train: int
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def seconds_per_epoch(self) -> float:
        return statistics.median(self.wall[1:] or self.wall)

    @property
    def cpu_per_epoch(self) -> float:
        values = [c for c in (self.cpu[1:] or self.cpu) if c == c]
        return statistics.median(values) if values else math.nan

    @property
    def samples_per_second(self) -> float:
        return self.n_train / self.seconds_per_epoch

    def enough(self, args) -> bool:
        """Whether a trainer of the main comparison may stop: it has trained ``--epochs`` and has reached
        the target loss, or it has trained ``--max-epochs``."""
        n = len(self.test_loss)
        return n >= args.epochs and (self.time_to(TARGET) is not None or n >= args.max_epochs)

    def loss_after(self, epochs: int) -> float:
        return self.test_loss[epochs - 1] if len(self.test_loss) >= epochs else math.nan

    def time_to(self, target: float) -> tuple[float, int] | None:
        """Training seconds (wall) and epochs until the test loss first reaches ``target``."""
        for i, loss in enumerate(self.test_loss):
            if loss <= target:
                return sum(self.wall[:i + 1]), i + 1
        return None


class Clock:
    """Wall and process-CPU time of the spans between ``start`` and ``stop``."""

    def start(self):
        self.t = (time.perf_counter(), time.process_time())

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.t[0], time.process_time() - self.t[1]


class Turns:
    """Trainers that run one after the other in the main thread (``sequential``, the default: what a
    user's script does), or in threads that take turns, one epoch each, so that a machine whose
    load drifts (other jobs starting and stopping) slows them alike. Only one runs at a time, so
    the process CPU time of a span is that trainer's own.

    Taking turns costs the trainers themselves: each thread keeps its own OpenMP team, and measured
    here (2 threads, idle machine) cvae's epoch took 4.7-5.3 s beside any second trainer against
    2.6 s alone in the same harness. Use it on a machine whose load drifts.

    A trainer is ``train(pause)``: it calls ``pause()`` after each epoch (after its test evaluation).
    """

    sequential = True

    def __init__(self):
        self.players = []

    def add(self, train, *, threads: int | None = None):
        player = {"go": threading.Semaphore(0), "done": threading.Semaphore(0), "finished": False, "error": None,
                  "threads": threads}

        def pause():
            player["done"].release()
            player["go"].acquire()

        def body():
            player["go"].acquire()
            try:
                train(pause)
            except BaseException as e:  # handed to the main thread
                player["error"] = e
            finally:
                player["finished"] = True
                player["done"].release()

        player["thread"] = threading.Thread(target=body, daemon=True)
        player["train"] = train
        self.players.append(player)

    def play(self):
        """Round after round until every trainer has finished (or each in turn, whole, when sequential)."""
        default = torch.get_num_threads()
        if self.sequential:
            for player in self.players:
                torch.set_num_threads(player["threads"] or default)
                player["train"](lambda: None)
            torch.set_num_threads(default)
            return
        for player in self.players:
            player["thread"].start()
        while not all(p["finished"] for p in self.players):
            for player in self.players:
                if player["finished"]:
                    continue
                torch.set_num_threads(player["threads"] or default)
                player["go"].release()
                player["done"].acquire()
                if player["error"] is not None:
                    raise player["error"]
        torch.set_num_threads(default)


# -- (a) cvae ------------------------------------------------------------------------------------

def cvae_trainer(args, x_test, run: Run, *, batch_size=128, lr=1e-3, epochs=None, stop=None, data=None,
                 subset=None, **settings):
    """cvae's own trainer (``cvae.train.fit``); the test loss is measured after each epoch, untimed.

    Epoch 1's time is the trainer's own ``seconds`` (training only: data loading is left out);
    later epochs are timed from the end of one test evaluation to the next epoch's end, so they
    include cvae's run-folder writes (weights, trainer state, metrics row, TensorBoard).
    ``stop(run)`` says when to stop early (the trainer's ``on_epoch`` hook returns it).
    """
    limit = None if data else min(filter(None, (args.limit, subset)), default=None)  # the first images only
    config = TrainConfig(data=data or "mnist", data_dir=args.data_dir, condition="none", val_fraction=0.0,
                         limit=limit, epochs=epochs or args.max_epochs, batch_size=batch_size, lr=lr, seed=args.seed,
                         progress=False, out=str(Path(args.work) / re.sub(r"\W+", "_", run.name)), **settings)
    run.settings = f"batch {batch_size}, lr {lr:g}" + "".join(f", {k}={v}" for k, v in settings.items())

    def train(pause):
        clock = Clock()

        def on_epoch(epoch, model, row):
            wall, cpu = clock.stop()
            run.wall.append(row["seconds"] if epoch == 1 else wall)
            run.cpu.append(math.nan if epoch == 1 else cpu)
            if x_test is not None:
                run.test_loss.append(evaluate_elbo(model, x_test, None)["loss"])
            pause()
            clock.start()
            return stop is not None and stop(run)

        clock.start()
        run.result = fit(config, overwrite=True, on_epoch=on_epoch)  # the trained model, its run folder, its config
        run.n_train = len(run.result.data.train)

    return train


# -- (b) PyTorch's examples/vae/main.py, as written there ---------------------------------------

class ExampleVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def example_loss(recon_x, x, mu, logvar):
    # Reconstruction + KL divergence losses summed over all elements and batch
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    # see Appendix B from VAE paper: Kingma and Welling. Auto-Encoding Variational Bayes. ICLR, 2014
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def example_trainer(args, x_train, x_test, run: Run):
    """The example's train() and test() loops; its log lines are formatted as there and discarded."""
    log = open(os.devnull, "w")
    train_loader = DataLoader(TensorDataset(x_train, torch.zeros(len(x_train))), batch_size=128, shuffle=True)
    test_loader = DataLoader(TensorDataset(x_test, torch.zeros(len(x_test))), batch_size=128, shuffle=False)
    torch.manual_seed(args.seed)
    model = ExampleVAE()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    log_interval = 10

    def train(epoch):
        model.train()
        train_loss = 0
        for batch_idx, (data, _) in enumerate(train_loader):
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = example_loss(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
            if batch_idx % log_interval == 0:
                print("Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(  # noqa: UP032 (as in the example)
                    epoch, batch_idx * len(data), len(train_loader.dataset),
                    100.0 * batch_idx / len(train_loader), loss.item() / len(data)), file=log)
        print("====> Epoch: {} Average loss: {:.4f}".format(  # noqa: UP032 (as in the example)
            epoch, train_loss / len(train_loader.dataset)), file=log)

    def test(epoch):
        model.eval()
        test_loss = 0
        with torch.no_grad():
            for data, _ in test_loader:
                recon_batch, mu, logvar = model(data)
                test_loss += example_loss(recon_batch, data, mu, logvar).item()
        return test_loss / len(test_loader.dataset)

    def play(pause):
        clock = Clock()
        for epoch in range(1, args.max_epochs + 1):
            clock.start()
            train(epoch)
            wall, cpu = clock.stop()
            run.wall.append(wall)
            run.cpu.append(cpu)
            run.test_loss.append(test(epoch))
            pause()
            if run.enough(args):
                break

    run.settings, run.n_train = "batch 128, lr 0.001 (DataLoader over a TensorDataset)", len(x_train)
    return play


# -- (c) pythae 0.1.2 ----------------------------------------------------------------------------

class EnoughEpochs(Exception):
    pass


def pythae_trainer(args, x_train, x_test, run: Run):
    """pythae's TrainingPipeline with the example's architecture and settings (None when it is not
    installed: ``run.note`` says why)."""
    try:
        from pythae.models import VAE, VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
        from pythae.pipelines import TrainingPipeline
        from pythae.trainers import BaseTrainerConfig
        from pythae.trainers.training_callbacks import TrainingCallback
    except ImportError as e:
        run.note = f"not run: {e} (pip install -e '.[bench]')"
        return None
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.WARNING)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)

        def forward(self, x):
            h1 = F.relu(self.fc1(x.reshape(-1, 784)))
            return ModelOutput(embedding=self.fc21(h1), log_covariance=self.fc22(h1))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.fc4(F.relu(self.fc3(z)))).reshape(-1, 1, 28, 28))

    run.settings, run.n_train = "batch 128, lr 0.001 (TrainingPipeline, BaseTrainer)", len(x_train)
    clock, stderr = Clock(), sys.stderr

    class Turn(TrainingCallback):
        def on_epoch_begin(self, training_config, **kwargs):
            sys.stderr = io.StringIO()  # its per-step progress bar, during its own epochs only
            clock.start()

        def on_epoch_end(self, training_config, **kwargs):
            wall, cpu = clock.stop()
            sys.stderr = stderr
            run.wall.append(wall)
            run.cpu.append(cpu)
            model = kwargs["model"]
            model.eval()
            with torch.no_grad():
                total = sum(model({"data": x_test[i:i + 1000]}).loss.item() * len(x_test[i:i + 1000])
                            for i in range(0, len(x_test), 1000))
            run.test_loss.append(total / len(x_test))
            self.pause()
            if run.enough(args):
                raise EnoughEpochs  # pythae's loop has no way to stop early: leave it here
    torch.manual_seed(args.seed)
    model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder())
    config = BaseTrainerConfig(output_dir=str(Path(args.work) / "pythae"), num_epochs=args.max_epochs, learning_rate=1e-3,
                               per_device_train_batch_size=128, per_device_eval_batch_size=128, optimizer_cls="Adam",
                               keep_best_on_train=True, no_cuda=True, seed=args.seed)
    def play(pause):
        turn = Turn()
        turn.pause = pause
        try:
            TrainingPipeline(training_config=config, model=model)(train_data=x_train, callbacks=[turn])
        except EnoughEpochs:
            pass

    return play


# -- the compute floor ---------------------------------------------------------------------------

def step_products(batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product in one training step: forward, input gradients (all but the
    first layer's) and weight gradients."""
    enc1, enc2, dec1, dec2 = LAYERS
    forward = [(batch, i, o) for i, o in LAYERS]
    input_grads = [(batch, o, i) for i, o in (enc2, dec1, dec2)]
    weight_grads = [(o, batch, i) for i, o in LAYERS]
    return forward + input_grads + weight_grads


def matmul_rate(dtype: torch.dtype, batch: int = 128, repeats: int = 30) -> float:
    """FLOP/s of the step's own matrix products (best of ``repeats`` rounds)."""
    shapes = step_products(batch)
    a = [torch.randn(m, k).to(dtype) for m, k, _ in shapes]
    b = [torch.randn(k, n).to(dtype) for _, k, n in shapes]
    out = [torch.empty(m, n, dtype=dtype) for m, _, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(len(shapes)):
            torch.mm(a[i], b[i], out=out[i])
        best = min(best, time.perf_counter() - t)
    return flops / best


def flops_per_example() -> float:
    return sum(2 * m * k * n for m, k, n in step_products(1))


# -- sampling, likelihood, streaming -------------------------------------------------------------

def sampling_rate(model, work: Path, run_dir: Path, n: int) -> dict:
    from cvae.apps import sample_to_file

    t = time.perf_counter()
    sample_to_file(model, work / "samples.npz", n=n)
    in_process = n / (time.perf_counter() - t)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cvae", "sample", str(run_dir), "--n", str(n), "-o", str(work / "cli.npz")],
                   check=True, capture_output=True)
    seconds = time.perf_counter() - t
    return {"n": n, "in_process_per_s": in_process, "command_per_s": n / seconds, "command_seconds": seconds}


def likelihood_rate(model, x: torch.Tensor, k: int) -> dict:
    try:
        from cvae.evaluate import importance_sampled

        def estimate():
            return importance_sampled(model, x, None, k=k).log_likelihood
        how = "cvae.evaluate.importance_sampled"
    except ImportError:
        from cvae.objectives import iwae_bound

        def estimate():
            with torch.no_grad():
                return iwae_bound(model, x, None, k=k)
        how = "cvae.objectives.iwae_bound"
    t = time.perf_counter()
    log_px = estimate()
    seconds = time.perf_counter() - t
    return {"k": k, "examples": len(x), "per_s": len(x) / seconds, "how": how,
            "mean_log_px": float(log_px.double().mean())}


# -- the report ----------------------------------------------------------------------------------

def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "native_bfloat16": native_bfloat16(torch.device("cpu")),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def fmt(value, spec=".2f", missing="-"):
    return missing if value is None or value != value else format(value, spec)


def times(a, b) -> str:
    """The ratio a / b as "1.07x", or "-" where either figure is missing (a CPU time not measured)."""
    return "-" if a is None or b is None or a != a or b != b or not b else f"{a / b:.2f}x"


def json_safe(value):
    """``value`` with every NaN or infinity (a figure not measured) as None: JSON's null, not a bare NaN."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA"), help="folder holding mnist/ (e.g. ../shared/data)")
    p.add_argument("--epochs", type=int, default=10, help="the test loss is compared after this many epochs")
    p.add_argument("--max-epochs", type=int, default=15,
                   help="trainers go on past --epochs (up to this) until the test loss reaches the target")
    p.add_argument("--limit", type=int, help="train on this many images only (a quick run)")
    p.add_argument("--threads", type=int, help="torch threads for every trainer (default: torch's)")
    p.add_argument("--turns", action="store_true",
                   help="trainers take turns, one epoch each, in threads (for a machine whose load drifts; it slows "
                        "them: see Turns); default: one after the other in the main thread")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", default="", help="comma-separated: example, pythae, ttq, extras, budget, stream, sample")
    p.add_argument("--ttq", default="128:1e-3,128:2e-3,64:1e-3,128:3e-3:cos8,128:4e-3:cos7",
                   help="cvae settings BATCH:LR (constant rate, up to --max-epochs) or BATCH:LR:cosN (cosine over N "
                        "epochs) tried for time to quality besides the main run's")
    p.add_argument("--nll-examples", type=int, default=20, help="test images for the k=5000 likelihood rate")
    p.add_argument("--quick", action="store_true",
                   help="short extras, small sampling and likelihood runs, no time-to-quality or precision-budget runs")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    Turns.sequential = not args.turns
    args.max_epochs = max(args.epochs, args.max_epochs if not args.quick else args.epochs)
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        skip.add("ttq")
    work = tempfile.TemporaryDirectory(prefix="cvae-speed-")
    args.work = work.name

    data = load_data("mnist", data_dir=args.data_dir, condition="none", val_fraction=0.0, seed=args.seed, limit=args.limit)
    x_train, x_test = data.train.x, data.test.x
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} threads, "
          f"native bfloat16: {info['native_bfloat16']}, load average {tuple(round(v, 2) for v in info['load_average'])}")
    print(f"data: MNIST, {len(x_train)} training and {len(x_test)} test images; model 784-400-20; test loss after "
          f"{args.epochs} epochs (trainers go on to {args.max_epochs} epochs at most, until it reaches {TARGET})\n")

    # (a), (b), (c) and cvae at the time-to-quality settings take turns, one epoch each
    turns = Turns()
    cvae_run = Run("cvae", "", 0)
    # cvae as a user runs it: its defaults (peak lr 3e-3, cosine schedule over the --epochs compared)
    turns.add(cvae_trainer(args, x_test, cvae_run, lr=3e-3, lr_schedule="cosine", epochs=args.epochs,
                           stop=lambda r: r.enough(args)))
    runs = [cvae_run]
    if "example" not in skip:
        runs.append(Run("PyTorch example", "", 0))
        turns.add(example_trainer(args, x_train, x_test, runs[-1]))
    if "pythae" not in skip:
        runs.append(Run("pythae 0.1.2", "", 0))
        play = pythae_trainer(args, x_train, x_test, runs[-1])
        if play is not None:
            turns.add(play)
    ttq = [cvae_run]
    if "ttq" not in skip:
        for spec in args.ttq.split(","):
            bs, lr, *schedule = spec.split(":")
            if schedule:  # cosN: a cosine schedule planned over N epochs
                name, kw = f"cvae bs{bs} lr{lr} {schedule[0]}", dict(lr_schedule="cosine", epochs=int(schedule[0][3:]))
            else:
                name, kw = f"cvae bs{bs} lr{lr}", dict(lr_schedule="constant")
            ttq.append(Run(name, "", 0))
            turns.add(cvae_trainer(args, x_test, ttq[-1], batch_size=int(bs), lr=float(lr),
                                   stop=lambda r: r.time_to(TARGET) is not None, **kw))
    turns.play()

    f32, bf16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    epoch_flops = flops_per_example() * len(x_train)
    print(f"{'trainer':17s} {'s/epoch':>8s} {'CPU s/epoch':>11s} {'samples/s':>10s} {'test loss':>10s} "
          f"{'cvae speed-up (wall, CPU)':>26s}")
    for r in runs:
        if r.note:
            print(f"{r.name:17s} {r.note}")
            continue
        ratio = (f"{times(r.seconds_per_epoch, cvae_run.seconds_per_epoch)}, "
                 f"{times(r.cpu_per_epoch, cvae_run.cpu_per_epoch)}") if r is not cvae_run else ""
        print(f"{r.name:17s} {r.seconds_per_epoch:8.2f} {fmt(r.cpu_per_epoch):>11s} {r.samples_per_second:10.0f} "
              f"{r.loss_after(args.epochs):10.2f} {ratio:>26s}")
    print(f"{'compute floor':17s} {epoch_flops / f32:8.2f} float32 ({f32 / 1e9:.0f} GFLOP/s), "
          f"{epoch_flops / bf16:.2f} bfloat16 ({bf16 / 1e9:.0f} GFLOP/s): "
          f"{epoch_flops / 1e9:.0f} GFLOP per epoch in the step's own matrix shapes")
    execution = json.loads((cvae_run.result.run_dir / "config.json").read_text())["execution"]
    probe = execution.get("probe", {})
    native = execution.get("native")
    form = "" if native is None else " (native)" if native is True else f" (Python: {native})"
    print(f"cvae ran the {execution.get('step')}{form} step in {cvae_run.result.config.precision} with "
          f"{execution.get('threads')} thread(s) (precision auto: the probe's choice"
          f"{', cached' if probe.get('cached') else ''}); settings: {cvae_run.settings}")
    if probe.get("rates"):
        print("  the probe's rates (training samples/s on the run's first batch, best of 3 rounds): "
              + ", ".join(f"{k} {v}" for k, v in sorted(probe["rates"].items(), key=lambda kv: -(kv[1] or 0))))
    print()

    report = {"machine": info, "epochs": args.epochs, "n_train": len(x_train), "runs": [], "execution": execution,
              "floor": {
        "epoch_gflop": epoch_flops / 1e9, "float32_gflops": f32 / 1e9, "bfloat16_gflops": bf16 / 1e9,
        "float32_seconds": epoch_flops / f32, "bfloat16_seconds": epoch_flops / bf16}}

    # cvae's other execution paths, each against the default, taking turns
    extras = []
    if "extras" not in skip:  # on a subset of the images, three epochs (two in bfloat16)
        n, subset = (2, 3000) if args.quick else (3, 10000)
        threads = torch.get_num_threads()
        other = 1 if threads > 1 else os.cpu_count()
        variants = [("cvae (auto)", n, threads, {})]
        for step in ("fused", "autograd"):
            for precision in ("float32", "bfloat16"):
                for t in sorted({threads, other}):
                    variants.append((f"cvae {step} {precision} {t}t", n, t, {"step": step, "precision": precision}))
        variants.append(("cvae --compile", n, threads, {"compile": True, "precision": "float32"}))
        turns = Turns()
        for name, epochs, t, settings in variants:
            extras.append(Run(name, "", 0))
            turns.add(cvae_trainer(args, None, extras[-1], epochs=epochs, subset=subset, **settings), threads=t)
        turns.play()
    if "stream" not in skip:
        path = Path(args.work) / "mnist-train.npy"
        np.save(path, x_train.numpy())
        n = 2 if args.quick else min(3, args.epochs)
        turns = Turns()
        for name, stream in (("cvae .npy in memory", False), ("cvae .npy --stream", True)):
            extras.append(Run(name, "", 0))
            turns.add(cvae_trainer(args, None, extras[-1], epochs=n, data=str(path), stream=stream))
        turns.play()
    if extras:
        print(f"{'cvae variant':26s} {'s/epoch':>8s} {'CPU s/epoch':>11s} {'samples/s':>10s}")
        for r in extras:
            print(f"{r.name:26s} {r.seconds_per_epoch:8.2f} {fmt(r.cpu_per_epoch):>11s} {r.samples_per_second:10.0f}")
        print("(the first ones on a subset of the images, Nt: N threads; --compile compiles in epoch 1, left out of "
              "the median; the .npy file sits in the page cache)")
        base = next((r for r in extras if r.name == "cvae autograd float32 "
                     f"{torch.get_num_threads()}t"), None)
        if base is not None:
            print("  speed-up over autograd float32 at the default threads: " + ", ".join(
                f"{r.name.removeprefix('cvae ')} {base.seconds_per_epoch / r.seconds_per_epoch:.2f}x"
                for r in extras if r is not base and r.name.startswith("cvae ") and ".npy" not in r.name))
        print()

    # the precision budget: the fused step in bfloat16 against float32, test loss after --epochs
    if "budget" not in skip and not args.quick:
        budget = []
        turns = Turns()
        for precision in ("float32", "bfloat16"):
            budget.append(Run(f"cvae fused {precision}", "", 0))
            turns.add(cvae_trainer(args, x_test, budget[-1], lr=3e-3, lr_schedule="cosine", epochs=args.epochs,
                                   step="fused", precision=precision))
        turns.play()
        f32_loss, bf16_loss = (r.loss_after(args.epochs) for r in budget)
        print(f"precision budget: test loss after {args.epochs} epochs, fused step: float32 {f32_loss:.2f}, bfloat16 "
              f"{bf16_loss:.2f} nats ({bf16_loss - f32_loss:+.2f}; the budget is +0.30); s/epoch "
              f"{budget[0].seconds_per_epoch:.2f} and {budget[1].seconds_per_epoch:.2f}\n")
        report["budget"] = {"float32": f32_loss, "bfloat16": bf16_loss, "difference": bf16_loss - f32_loss}
        extras += budget

    # time to quality
    if "ttq" not in skip:
        print(f"time to a test loss of {TARGET} nats: training seconds (wall clock), epochs, and epochs x CPU s/epoch")
        for r in ttq + runs[1:]:
            reached = r.time_to(TARGET) if not r.note else None
            where = (f"{reached[0]:7.1f} s  {reached[1]:2d} epochs  {reached[1] * r.cpu_per_epoch:7.1f} CPU s"
                     if reached else f"not reached in {len(r.test_loss)} epochs "
                                     f"(best {min(r.test_loss, default=math.nan):.2f})")
            print(f"  {r.name:22s} {r.settings:52s} {where}")
        cvae_best = [r for r in ttq if r.time_to(TARGET)]
        peer_best = [r for r in runs[1:] if not r.note and r.time_to(TARGET)]
        if cvae_best and peer_best:
            for what, cost in (("wall", lambda r: r.time_to(TARGET)[0]),
                               ("CPU", lambda r: r.time_to(TARGET)[1] * r.cpu_per_epoch)):
                best, peer = min(cvae_best, key=cost), min(peer_best, key=cost)
                print(f"  {what}: cvae's fastest ({best.settings}) is {times(cost(peer), cost(best))} faster than "
                      f"the fastest peer ({peer.name})")
        print()

    # using the trained model
    if "sample" not in skip:
        model = cvae_run.result.model
        s = sampling_rate(model, Path(args.work), cvae_run.result.run_dir, 1000 if args.quick else 10000)
        nll = likelihood_rate(model, x_test[:2 if args.quick else args.nll_examples], 5000)
        print(f"cvae sample: {s['in_process_per_s']:.0f} samples/s in process ({s['n']} to .npz); the command "
              f"`cvae sample RUN --n {s['n']} -o x.npz` takes {s['command_seconds']:.1f} s with start-up "
              f"({s['command_per_s']:.0f} samples/s)")
        print(f"importance-sampled log-likelihood, k={nll['k']}: {nll['per_s']:.2f} test examples/s "
              f"({nll['how']}; mean log p(x) {nll['mean_log_px']:.2f} nats over {nll['examples']} images)")
        report.update(sampling=s, likelihood=nll)

    for r in runs + extras + ttq[1:]:
        d = {k: v for k, v in asdict(r).items()}
        if not r.note:
            d.update(seconds_per_epoch=r.seconds_per_epoch, cpu_per_epoch=r.cpu_per_epoch,
                     samples_per_second=r.samples_per_second, time_to_target=r.time_to(TARGET))
        report["runs"].append(d)
    if args.json:
        Path(args.json).write_text(json.dumps(json_safe(report), indent=2, default=float, allow_nan=False) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
