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
                    "as `cvae train` writes a run (the same weights, metrics and trainer state; config.json says "
                    "step fused, and the first run of each shape holds the precision probe's rates). Every other "
                    "flag is a `cvae train` flag, the same for every run. Covered: the models the fused step covers "
                    "(MLPs; the ELBO and the disentanglement objectives). Resume a run with cvae train --resume.")
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
    import json
    import sys
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
    if not getattr(args, "overwrite", False):  # (a folder whose run diverged before saving an epoch is reused, as by train)
        held = [c for c in expand(TrainConfig(), vary, out) if (Path(c.out) / "model.safetensors").is_file()]
        if held:
            raise CvaeError(f"{held[0].out} already holds a run; pass --overwrite to replace the sweep's runs, or choose "
                            "another --out")
    settings = read_yaml(args.config) if getattr(args, "config", None) else {}
    settings.update({k: v for k, v in vars(args).items() if k in TrainConfig.keys() and k != "out"})
    base = TrainConfig.from_dict(settings)
    configs = expand(base, vary, args.out)
    t = time.perf_counter()
    new = not out.exists()
    # the flags and YAML keys given (argparse leaves the others out), and the varied settings
    try:
        results = fit_sweep(configs, overwrite=getattr(args, "overwrite", False), explicit=set(settings) | set(vary))
    except KeyboardInterrupt:
        print(f"interrupted; each run folder under {out} keeps its last finished epoch (continue one with "
              f"cvae train --resume --out {configs[0].out} --epochs N, each run on its own)", file=sys.stderr)
        return 130
    except CvaeError:
        if new and out.is_dir():  # a refusal leaves no empty folders behind
            for folder in sorted(out.rglob("*"), reverse=True):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            if not any(out.iterdir()):
                out.rmdir()
        raise
    seconds = time.perf_counter() - t
    print(f"{len(configs)} runs in {seconds:.1f} s ({len(configs) * 3600 / seconds:.0f} models per hour) under {args.out}")
    failed = 0
    for config, result in zip(configs, results):
        if result is None:
            failed += 1
            status = json.loads((Path(config.out) / "config.json").read_text()).get("status", "") \
                if (Path(config.out) / "config.json").is_file() else ""
            print(f"  {config.out}: {status or 'diverged'}")
            continue
        s = result.summary
        figures = "  ".join(f"{split} {s[split]['loss']:.3f}" for split in ("val", "test") if split in s)
        print(f"  {result.run_dir}: {s['epochs']} epochs, negative ELBO {figures}")
        if getattr(args, "pictures", True):
            run_pictures(result.model, result.data, result.run_dir, seed=result.config.seed)
    if failed:
        print(f"error: {failed} of the {len(configs)} runs did not finish (above; the others did): a diverged one "
              "needs a lower --lr, --grad-clip 1.0, or data without extreme values", file=sys.stderr)
        return 2
    return 0
