"""The classifier q(y | x) of cvae's semi-supervised model, trained alone: a fast way to choose its
consistency settings by measurement.

With consistency regularisation on (the default), q(y | x) learns only from the labels and from the
FixMatch term; the generative bound does not reach it (``cvae.objectives.semi``). So the classifier of
a full run can be studied without the VAE: this script trains cvae's default classifier network
(``M2Config``) on the same labelled subset as ``cvae train --labelled N --seed S``, with the same
perturbations (``cvae.perturb``) and batches (100 unlabelled rows and up to 100 labelled ones), for
the steps of ``--epochs`` epochs, and reports the test error of each setting beside the
supervised-only baseline (the same network on the labels alone).

    python benchmarks/semi_classifier.py --data fashion-mnist --labels 100 --seed 0 --epochs 10 \
        --settings default,threshold=0.8,flex,align --data-dir ../shared/data

A setting is ``name=value`` pairs joined by ``+``: ``threshold`` (FixMatch's 0.95), ``flex`` (1: per-class
thresholds scaled by how many confident predictions each class has, FlexMatch, Zhang et al. 2021),
``align`` (1: distribution alignment of the weak predictions to the uniform prior, ReMixMatch,
Berthelot et al. 2020), ``lr`` (1e-3), ``ratio`` (unlabelled rows per labelled batch row, 1),
``flip`` (1: horizontal flips in both views, for data that is mirror-symmetric), and FixMatch's own
optimisation (Sohn et al. 2020, section 3 and their ablation): ``sgd`` (1: SGD with Nesterov momentum 0.9
and their cosine decay cos(7 pi k / 16 K), at ``lr``: use lr=0.03), ``wd`` (weight decay of the weights, 0;
theirs 5e-4) and ``ema`` (the decay of an exponential moving average of the weights that makes the
pseudo-labels and is evaluated, 0: none; theirs 0.999). Other methods and references: ``randaug`` (1: the
strong view is two of eight operations chosen per image at a random magnitude, then a cut-out of half
of each side, RandAugment in the spirit of FixMatch's, instead of cvae's strong perturbation),
``mixmatch`` (the weight of MixMatch's unlabelled term in place of the FixMatch term, Berthelot et al.
2019: two weak views averaged and sharpened at T 0.5, MixUp with Beta(0.75, 0.75) over the labelled and
unlabelled batches together, the squared error on the unlabelled part, its weight ramped up over the
first 40% of the steps; theirs 75), and ``full`` (1: every training image with its label and no
unlabelled term: what this network reaches in the same steps with all the labels). ``--linear`` also
reports a logistic regression on the raw pixels of the same labelled images.

Besides the test error, each setting reports how the pseudo-labels went over the last 100 steps: the
share of unlabelled images whose weak view passed the threshold, and how many of those were right
(the hidden training labels, read for this diagnosis only).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch
import torch.nn.functional as F

from cvae import perturb
from cvae.data import load_data
from cvae.evaluate import classification_metrics
from cvae.models import M2Config
from cvae.nn import CLASSIFIERS
from cvae.probe import cpu_name

DEFAULTS = {"threshold": 0.95, "flex": 0.0, "align": 0.0, "lr": 1e-3, "ratio": 1.0, "flip": 0.0, "sgd": 0.0,
            "wd": 0.0, "ema": 0.0, "randaug": 0.0, "mixmatch": 0.0, "full": 0.0}


def parse(setting: str) -> dict:
    out = dict(DEFAULTS)
    if setting != "default":
        for part in setting.split("+"):
            key, _, value = part.partition("=")
            if key not in DEFAULTS:
                raise SystemExit(f"unknown setting {key!r}; known: {', '.join(DEFAULTS)}")
            out[key] = float(value or 1)
    return out


def _flip(x, g):
    keep = torch.rand(len(x), generator=g) < 0.5
    return torch.where(keep[:, None, None, None], x, x.flip(-1))


def randaug(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1]: two operations per image, each one of rotate, scale, shear,
    translate, contrast, brightness, solarize and posterize at a random magnitude, then a cut-out of half
    of each side."""
    b = len(x)
    ops = torch.randint(0, 8, (b, 2), generator=g)
    out = x.clone()
    for slot in range(2):
        mag = torch.rand(b, generator=g)
        for op in range(8):
            sel = (ops[:, slot] == op).nonzero().flatten()
            if len(sel) == 0:
                continue
            h, m = out[sel], mag[sel][:, None, None, None]
            if op == 0:  # geometric ones draw their own magnitude: up to 30 degrees,
                h = perturb._affine(h, 30.0, 0.0, 0.0, 0.0, g)
            elif op == 1:  # 30% larger or smaller,
                h = perturb._affine(h, 0.0, 0.3, 0.0, 0.0, g)
            elif op == 2:  # 0.3 rad of shear,
                h = perturb._affine(h, 0.0, 0.0, 0.3, 0.0, g)
            elif op == 3:  # moved by up to 30% of the side
                h = perturb._affine(h, 0.0, 0.0, 0.0, 0.3, g)
            elif op == 4:
                mean = h.mean((1, 2, 3), keepdim=True)
                h = (mean + (h - mean) * (0.1 + 1.8 * m)).clamp(0, 1)
            elif op == 5:
                h = (h * (0.1 + 1.8 * m)).clamp(0, 1)
            elif op == 6:
                h = torch.where(h >= m, 1 - h, h)
            else:
                levels = 2 ** (1 + (m * 4).floor())
                h = (h * levels).floor() / levels
            out[sel] = h
    return perturb._cutout(out, 0.5, g)


def mixmatch_loss(net, xb, yb, u, pw, k, weight, ramp, g):
    """MixMatch's labelled cross-entropy and weighted unlabelled squared error on one batch (``pw``: the
    softmax of one weak view of ``u``; a second is drawn here)."""
    with torch.no_grad():
        p = (net(perturb.weak(u, generator=g)).softmax(1) + pw) / 2
        p = p ** 2  # sharpened at T = 0.5
        p = p / p.sum(1, keepdim=True)
    xa = torch.cat([perturb.weak(xb, generator=g), perturb.weak(u, generator=g)])
    ya = torch.cat([F.one_hot(yb, k).float(), p])
    lam = torch.distributions.Beta(0.75, 0.75).sample((len(xa),))
    lam = torch.maximum(lam, 1 - lam)  # each mixed example stays closer to its own
    perm = torch.randperm(len(xa), generator=g)
    xm = lam[:, None, None, None] * xa + (1 - lam[:, None, None, None]) * xa[perm]
    ym = lam[:, None] * ya + (1 - lam[:, None]) * ya[perm]
    out = net(xm)
    nl = len(xb)
    lx = -(ym[:nl] * out[:nl].log_softmax(1)).sum(1).mean()
    lu = ((out[nl:].softmax(1) - ym[nl:]) ** 2).mean()
    return lx + weight * ramp * lu


def train(data, setting: dict, steps: int, seed: int, truth: torch.Tensor, scored) -> dict:
    xl_all = data.train.x
    known = ~torch.isnan(data.train.y[:, 0])
    xl, yl = xl_all[known], data.train.y[known, 0].long()
    if setting["full"]:
        xl, yl = xl_all, truth
    xu = xl_all
    k = len(data.schema.attributes[0].classes)
    cfg = M2Config(data_shape=data.data_shape, schema=data.schema.to_dict())
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = CLASSIFIERS[cfg.classifier_arch](cfg.data_shape, k, channels=cfg.classifier_channels,
                                           hidden=cfg.classifier_hidden, act=cfg.activation)
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": setting["wd"]}, {"params": rest, "weight_decay": 0.0}]
    opt = (torch.optim.SGD(groups, lr=setting["lr"], momentum=0.9, nesterov=True) if setting["sgd"] else
           torch.optim.Adam(groups, lr=setting["lr"]))
    teacher = copy.deepcopy(net).requires_grad_(False) if setting["ema"] else net
    nu = int(100 * setting["ratio"])
    passed, right = [], []  # per step: the confident share, and the right share of those
    classwise = torch.full((k,), 0.0)  # FlexMatch: confident predictions per class (a running count)
    p_model = torch.full((k,), 1.0 / k)  # ReMixMatch: running mean of the weak predictions
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:  # cosine to zero, as the trainer's default schedule (FixMatch's with SGD)
            group["lr"] = setting["lr"] * (math.cos(7 * math.pi * step / (16 * steps)) if setting["sgd"] else
                                           0.5 * (1 + math.cos(math.pi * step / steps)))
        ui = torch.randint(0, len(xu), (nu,), generator=g)
        u = xu[ui]
        li = torch.randint(0, len(xl), (min(100, len(xl)),), generator=g)
        xb, yb = xl[li], yl[li]
        if setting["flip"]:
            u, xb = _flip(u, g), _flip(xb, g)
        ce = F.cross_entropy(net(perturb.weak(xb, generator=g)), yb)
        with torch.no_grad():
            pw = teacher(perturb.weak(u, generator=g)).softmax(1)
            if setting["align"]:
                p_model = 0.999 * p_model + 0.001 * pw.mean(0)
                pw = pw / p_model * (1.0 / k)
                pw = pw / pw.sum(1, keepdim=True)
            conf, target = pw.max(1)
            if setting["flex"]:
                beta = classwise / max(float(classwise.max()), float(len(xu) - classwise.sum()), 1.0)
                beta = beta / (2 - beta)  # the convex warping of FlexMatch
                mask = conf >= setting["threshold"] * beta[target]
                hit = conf >= setting["threshold"]
                classwise = 0.999 * classwise + torch.bincount(target[hit], minlength=k).float() * (len(xu) / nu) * 0.001
            else:
                mask = conf >= setting["threshold"]
            passed.append(float(mask.float().mean()))
            right.append(float((target == truth[ui])[mask].float().mean()) if mask.any() else float("nan"))
        if setting["full"]:
            loss = ce
        elif setting["mixmatch"]:
            loss = mixmatch_loss(net, xb, yb, u, pw, k, setting["mixmatch"], min(1.0, step / (0.4 * steps)), g)
        else:
            ls = net(randaug(u, g) if setting["randaug"] else perturb.strong(u, generator=g))
            cons = (F.cross_entropy(ls, target, reduction="none") * mask.float()).mean()
            loss = ce + cons
        opt.zero_grad()
        loss.backward()
        opt.step()
        if setting["ema"]:
            with torch.no_grad():
                for pt, p in zip(teacher.parameters(), net.parameters()):
                    pt.lerp_(p, 1.0 - setting["ema"])
    teacher.eval()
    with torch.no_grad():
        probs = torch.cat([teacher(scored.x[i:i + 1000]).softmax(1) for i in range(0, len(scored.x), 1000)])
    m = classification_metrics(probs.numpy(), scored.y[:, 0].numpy(), data.schema.attributes[0].classes)
    last = [r for r in right[-100:] if r == r]
    return {"error": m["error"]["value"], "seconds": time.perf_counter() - t0,
            "confident_share": sum(passed[-100:]) / len(passed[-100:]),
            "pseudo_label_accuracy": sum(last) / len(last) if last else None,  # None: none passed the threshold
            "per_class": {c: v["accuracy"] for c, v in m["per_class_accuracy"].items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--settings", default="default")
    p.add_argument("--json", help="append each result as a JSON line to this file")
    p.add_argument("--linear", action="store_true", help="also a logistic regression on the labelled raw pixels")
    args = p.parse_args(argv)
    data = load_data(args.data, data_dir=args.data_dir, labelled=args.labels, seed=args.seed)
    full = load_data(args.data, data_dir=args.data_dir, seed=args.seed)  # the hidden labels, for the diagnosis
    if not torch.equal(full.train.x, data.train.x):
        raise SystemExit("the labelled and the fully labelled loads split the data differently")
    truth = full.train.y[:, 0].long()
    # scored on the test split, or for a data set without one (scikit-learn's digits) on the validation
    # split this seed held out, with its labels from the fully labelled load (benchmarks/semi.py's scored_split)
    scored = data.test if data.test is not None else full.val
    if data.test is None and not torch.equal(full.val.x, data.val.x):
        raise SystemExit("the labelled and the fully labelled loads hold out different validation images")
    split = "test" if data.test is not None else "validation"
    steps = int(args.epochs * len(data.train.x) / 100)
    if steps < 1:
        raise SystemExit(f"--epochs {args.epochs:g} is less than one step (100 unlabelled images) on {args.data}")
    print(f"machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"{args.data}, {args.labels} labels, draw {args.seed}, {steps} steps; scored on the {split} split "
          f"({len(scored.x):,} images)", flush=True)
    if args.linear:
        from sklearn.linear_model import LogisticRegression

        known = ~torch.isnan(data.train.y[:, 0])
        t0 = time.perf_counter()
        fit = LogisticRegression(C=0.1, max_iter=2000).fit(data.train.x[known].flatten(1).numpy(),
                                                          data.train.y[known, 0].long().numpy())
        error = 1.0 - fit.score(scored.x.flatten(1).numpy(), scored.y[:, 0].long().numpy())
        print(f"  {'logistic regression, pixels':30s} {split} error {100 * error:.2f}%", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"data": args.data, "labels": args.labels, "seed": args.seed,
                                    "setting": "logistic-regression-pixels", "C": 0.1, "error": error,
                                    "seconds": time.perf_counter() - t0}) + "\n")
    for name in args.settings.split(","):
        r = train(data, parse(name), steps, args.seed, truth, scored)
        worst = min(r["per_class"], key=r["per_class"].get)
        right = r["pseudo_label_accuracy"]
        print(f"  {name:30s} {split} error {100 * r['error']:.2f}%  worst {worst} {r['per_class'][worst]:.3f}  "
              f"pseudo-labels: {100 * r['confident_share']:.0f}% confident, "
              f"{'-' if right is None else f'{100 * right:.1f}%'} of those right  {r['seconds'] / 60:.1f} min",
              flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"data": args.data, "labels": args.labels, "seed": args.seed, "steps": steps,
                                    "setting": name, **r}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
