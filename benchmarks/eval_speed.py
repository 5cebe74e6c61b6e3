"""How long the importance-sampled NLL takes: 10,000 MNIST test images, k = 5000, the mlp-400 model.

    nice -n 5 python benchmarks/eval_speed.py --data-dir ../shared/data            # trains a 5-epoch model first
    nice -n 5 python benchmarks/eval_speed.py --run runs/mnist-mlp-400 --n 1000    # a subset, extrapolated

It times :func:`cvae.evaluate.importance_sampled` (the buffered MLP/Bernoulli kernel), compares it on
a few examples with the straightforward estimator of :mod:`cvae.objectives` (``iwae_bound``), and
prints both the measured time and, for ``--n`` below 10,000, the time extrapolated to 10,000 images.
The work is 10,000 x 5000 = 5e7 decoder passes of 20 -> 400 -> 784 (3.2e13 floating-point operations
in the last layer alone), so the matrix products set a floor of a few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

import cvae
from cvae.data import EVALUATION_SEED, fixed_binarization
from cvae.evaluate import importance_sampled, load_run_data, mean_and_stderr
from cvae.objectives import iwae_bound
from cvae.probe import cpu_name
from cvae.train import native_bfloat16


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="an mlp-400 run on MNIST (default: train one for --epochs into --out)")
    p.add_argument("--out", default="runs/bench-mnist-mlp-400")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--condition", default="none", help="none (a plain VAE, as PyTorch's example) or label (a CVAE)")
    p.add_argument("--data-dir", default=os.environ.get("CVAE_DATA"))
    p.add_argument("--n", type=int, default=10000, help="test images to evaluate (10000: all)")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--rows", type=int, default=4096, help="decoder rows per call")
    p.add_argument("--compare", type=int, default=8, help="examples for the comparison with objectives.iwae_bound")
    args = p.parse_args(argv)
    print(f"machine: {cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}", flush=True)

    if args.run:
        model = cvae.load(args.run)
    else:
        if Path(args.out, "model.safetensors").is_file():
            model = cvae.load(args.out)
        else:
            model = cvae.train(data="mnist", data_dir=args.data_dir, condition=args.condition, preset="mlp-400",
                               binarize="dynamic",
                               epochs=args.epochs, batch_size=128, out=args.out, progress=False, tensorboard=False,
                               pictures=False).model
    data = load_run_data(model, data_dir=args.data_dir)
    x = data.test.x[:args.n]
    if model.run_config["train"].get("binarize") == "dynamic":
        x = fixed_binarization(x, EVALUATION_SEED)
    c = model.schema.encode(data.test.y[:args.n]) if model.schema else None
    print(f"model {model.run_dir} ({model.config.arch} {model.config.hidden} latent {model.config.latent_dim}, "
          f"{model.config.activation}), {len(x)} test images, k = {args.k}, {torch.get_num_threads()} threads")
    sys.stdout.flush()

    load_before = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), time.process_time()
    res = importance_sampled(model, x, c, k=args.k, rows=args.rows, generator=torch.Generator().manual_seed(0))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    nll, se = mean_and_stderr(-res.log_likelihood)
    per_10k = seconds / len(x) * 10000
    print(f"importance_sampled: {seconds:.1f} s for {len(x)} images "
          f"({per_10k / 60:.2f} min per 10,000{' extrapolated' if len(x) < 10000 else ''}); "
          f"-log p(x|c) = {nll:.3f} ± {se:.3f} nats, -ELBO = {res.negative_elbo.mean():.3f}")
    print(f"  CPU time {cpu:.1f} s ({cpu / seconds:.2f} cores busy on average); load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other processes share the cores)")
    flops = 2 * len(x) * args.k * sum(a * b for a, b in zip([model.config.latent_dim, *model.config.hidden[::-1]],
                                                              [*model.config.hidden[::-1], math.prod(x.shape[1:])]))
    print(f"  decoder matrix products: {flops / 1e12:.1f} TFLOP, {flops / seconds / 1e9:.0f} GFLOP/s achieved overall")

    m = min(args.compare, len(x))
    if m:
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = iwae_bound(model.eval(), x[:m], None if c is None else c[:m], k=args.k, chunk=500)
        ref_seconds = time.perf_counter() - t0
        fast_per = seconds / len(x)
        print(f"objectives.iwae_bound on {m} images: {ref_seconds / m:.3f} s per image vs {fast_per:.3f} "
              f"({ref_seconds / m / fast_per:.1f}x); mean difference of the estimates "
              f"{(res.log_likelihood[:m] - ref.double()).mean():+.4f} nats (different draws)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
