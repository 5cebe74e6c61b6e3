"""``cvae sweep``: many small models at once (seeds, beta, learning rates, latent sizes), each in its
own run folder (cvae.sweep)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import TrainConfig
from ..errors import CvaeError
from .core import add_train_flags


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "sweep", help="train many small models at once, each in its own run folder (seeds, beta, lr, latent size)",
        argument_default=argparse.SUPPRESS,
        description="Train one run per combination of the --vary values, in one process: the runs of one shape "
                    "are trained together (one batched step for all), each written to OUT/SETTING=VALUE,... "
                    "exactly as `cvae train` writes a run. Every other flag is a `cvae train` flag, the same for "
                    "every run. Covered: MLP models with the ELBO (the fused step, see --step).")
    p.add_argument("--vary", action="append", required=True, metavar="SETTING=V1,V2,...",
                   help="a setting and its values: seed, beta, lr, kl_warmup or latent_dim (repeatable; every "
                        "combination is a run)")
    p.add_argument("--config", help="a YAML file of settings (flags override it)")
    add_train_flags(p, skip=("out",))
    p.add_argument("--out", required=True, help="the folder that receives one run folder per combination")
    p.add_argument("--overwrite", action="store_true", help="replace existing runs in the run folders")
    p.add_argument("--no-pictures", dest="pictures", action="store_false", help="skip each run's pictures")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    import time

    from ..config import read_yaml
    from ..plots import run_pictures
    from ..sweep import expand, fit_sweep, parse_vary

    vary = parse_vary(args.vary)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CvaeError(f"--out {out} is a file; give a folder for the sweep's runs")
    if (out / "config.json").is_file():
        raise CvaeError(f"--out {out} is a run folder; give a folder of its own for the sweep's runs")
    if not getattr(args, "overwrite", False):
        held = [c for c in expand(TrainConfig(), vary, out) if (Path(c.out) / "config.json").is_file()]
        if held:
            raise CvaeError(f"{held[0].out} already holds a run; pass --overwrite to replace the sweep's runs, or choose "
                            "another --out")
    settings = read_yaml(args.config) if getattr(args, "config", None) else {}
    settings.update({k: v for k, v in vars(args).items() if k in TrainConfig.keys() and k != "out"})
    base = TrainConfig.from_dict(settings)
    configs = expand(base, vary, args.out)
    t = time.perf_counter()
    # the flags and YAML keys given (argparse leaves the others out), and the varied settings
    results = fit_sweep(configs, overwrite=getattr(args, "overwrite", False), explicit=set(settings) | set(vary))
    seconds = time.perf_counter() - t
    print(f"{len(configs)} runs in {seconds:.1f} s ({len(configs) * 3600 / seconds:.0f} models per hour) under {args.out}")
    for config, result in zip(configs, results):
        if result is None:
            print(f"  {config.out}: diverged (its config.json says where)")
            continue
        s = result.summary
        figures = "  ".join(f"{split} {s[split]['loss']:.3f}" for split in ("val", "test") if split in s)
        print(f"  {result.run_dir}: {s['epochs']} epochs, negative ELBO {figures}")
        if getattr(args, "pictures", True):
            run_pictures(result.model, result.data, result.run_dir, seed=result.config.seed)
    return 0
