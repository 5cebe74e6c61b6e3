"""cvae interpolate | traverse | transfer | anomaly fit/score | augment | embed | classify."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import TrainConfig
from ..errors import CvaeError
from .checks import (
    check_condition_args,
    check_rows,
    condition_hint,
    guard_outputs,
    largest_class_count,
)
from .core import HELP, add_train_flags

INPUT_HELP = "a named data set (its test split), .npz/.npy/.csv, image folder or image file (default: the run's own data)"


def _common(p, *, output_help: str, output_required: bool = True) -> None:
    p.add_argument("run", help="the run folder")
    p.add_argument("-o", "--output", required=output_required, help=output_help)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--data-dir", help=HELP["data_dir"] + " (default: the run's)")


def add_parsers(sub) -> None:
    p = sub.add_parser("interpolate", help="walk between two inputs or two conditions in latent space",
                       description="Interpolate in latent space between two inputs (each encoded with its own "
                       "condition), or between two conditions with the code held. Writes a strip per path: "
                       ".png for images and signals, .csv/.npz for any data.")
    _common(p, output_help="a .png strip, or a .csv / .npz of the decoded steps")
    p.add_argument("--from", dest="start", help="where to start: an index (or id) into --input, e.g. 0 or 0,2 "
                   "for several paths; an image file; or a condition such as label=3")
    p.add_argument("--to", dest="end", help="where to end, the same way (label=8, 1 or 1,3, an image file)")
    p.add_argument("--input", help=INPUT_HELP)
    p.add_argument("--split", default="test", help="split of a named data set (default test)")
    p.add_argument("--steps", type=int, default=10, help="points on each path, ends included (default 10)")
    p.add_argument("--method", choices=["linear", "spherical", "both"], default="linear",
                   help="straight line or great circle (slerp) between the codes; both: a row each (default linear)")
    p.add_argument("--n", type=int, default=4, help="paths when --from/--to are left out (pairs 0-1, 2-3, ...) or "
                   "codes when interpolating between conditions (default 4)")
    p.add_argument("--condition", help="decode every step with this condition (default: the ends' own, blended); "
                   "with conditions at both ends: the condition to encode --input with, if it has none")
    p.set_defaults(func=cmd_interpolate)

    t = sub.add_parser("traverse", help="change one latent dimension at a time, dimensions ordered by KL",
                       description="Traverse latent dimensions one at a time (the others fixed), from LOW to "
                       "HIGH prior standard deviations. Dimensions are ordered by their KL averaged over data "
                       "(dimensions with KL near 0 are unused).")
    _common(t, output_help="a .png grid (a row per dimension), or a .csv / .npz of the decoded steps")
    t.add_argument("--dims", help="dimensions to traverse, e.g. 0,3,5 (default: the --top ones by KL)")
    t.add_argument("--top", type=int, default=10, help="how many dimensions, highest KL first (default 10)")
    t.add_argument("--range", nargs=2, type=float, default=[-3.0, 3.0], metavar=("LOW", "HIGH"),
                   help="values in prior standard deviations (default -3 3)")
    t.add_argument("--steps", type=int, default=9, help="values per dimension (default 9)")
    t.add_argument("--input", help="start from the posterior mean of an input of this source (default: the prior mean)")
    t.add_argument("--index", default="0", help="which examples of --input, e.g. 0 or 0,7 (default 0)")
    t.add_argument("--n", type=int, default=1, help="without --input: 1 = the prior mean, more = prior draws")
    t.add_argument("--condition", help="decode with this condition (default: the input's own; without input, "
                   "the first class)")
    t.add_argument("--data", help="examples to measure the KL per dimension on (default: the run's own data)")
    t.add_argument("--split", default="test", help="split of a named data set (default test)")
    t.add_argument("--kl-examples", type=int, default=2000, help="examples for the KL (default 2000)")
    t.set_defaults(func=cmd_traverse)

    r = sub.add_parser("transfer", help="encode with the input's condition, decode with target conditions",
                       description="Condition transfer (analogies): each input is encoded with its own condition "
                       "and decoded with every target; a target names only what changes (label=3), the other "
                       "conditions keep the input's values.")
    _common(r, output_help="a .png grid (inputs x targets), or a .csv / .npz")
    r.add_argument("--input", help=INPUT_HELP)
    r.add_argument("--split", default="test", help="split of a named data set (default test)")
    r.add_argument("--n", type=int, default=8, help="the first N inputs (default 8)")
    r.add_argument("--to", action="append", help="a target, e.g. label=3 or color=red,size=10; repeat it, or "
                   "label=all for every class (default: every class of the first categorical condition)")
    r.add_argument("--condition", help="the inputs' own condition when the input has none (e.g. an image file)")
    r.set_defaults(func=cmd_transfer)

    a = sub.add_parser("anomaly", help="anomaly detection: fit on normal data, score new data",
                       description="Train on normal data only; score = negative ELBO, importance-sampled NLL "
                       "or reconstruction error; flag what lies above a threshold set on held-out normal data.")
    asub = a.add_subparsers(dest="anomaly_command", metavar="fit|score")
    f = asub.add_parser("fit", help="train a detector on the normal rows of a data set", argument_default=argparse.SUPPRESS,
                        description="Keep the normal rows (--label-column, --normal), train a model on them "
                        "(every `cvae train` flag works), and set the threshold on its validation split.")
    add_train_flags(f, skip=("condition",))
    f.add_argument("--condition", default="none", help="condition column(s) for a conditional detector (default none)")
    f.add_argument("--label-column", default="auto", help="the column that says what is normal: auto (label, class, "
                   "target, ...), a name, last, or none (every row is normal)")
    f.add_argument("--normal", default=None, help="the label value(s) that mean normal, e.g. 0 or N,L")
    f.add_argument("--fpr", type=float, default=0.05, help="target false-positive rate on held-out normal data (default 0.05)")
    f.add_argument("--score", choices=["elbo", "iwae", "recon"], default="elbo",
                   help="negative ELBO, importance-sampled NLL, or reconstruction error (default elbo)")
    f.add_argument("--k", type=int, default=100, help="importance samples for --score iwae (default 100)")
    f.add_argument("--samples", type=int, default=10, help="draws of z for the ELBO's reconstruction term (default 10)")
    f.add_argument("--overwrite", action="store_true", default=False, help="replace an existing run in --out")
    f.add_argument("--no-pictures", dest="pictures", action="store_false", default=True, help="skip the pictures")
    f.set_defaults(func=cmd_anomaly_fit)
    s = asub.add_parser("score", help="score examples; flag anomalies; measure AUROC when labels are there")
    _common(s, output_help="the CSV to write: columns id, score, flag (one row per input row, in order)")
    s.add_argument("--data", required=True, help=INPUT_HELP.replace(" (default: the run's own data)", ""))
    s.add_argument("--split", default="test", help="split of a named data set (default test)")
    s.add_argument("--n", type=int, help="only the first N examples")
    s.add_argument("--label-column", help="the column with the true labels (default: the detector's, when present)")
    s.add_argument("--normal", help="the label value(s) that mean normal (default: the detector's)")
    s.add_argument("--score", choices=["elbo", "iwae", "recon"], help="which score (default: the detector's)")
    s.add_argument("--condition", help="the condition of every example (conditional detectors, data without it)")
    s.add_argument("--plot", help="also draw the score histograms to this .png")
    s.set_defaults(func=cmd_anomaly_score)
    a.set_defaults(func=lambda args: _need_sub(a))

    g = sub.add_parser("augment", help="write a balanced synthetic data set (optionally merged with the real one)",
                       description="Generate examples for every class of a categorical condition: --per-class N "
                       "each, or --balance to top every class up to the largest (with the real data).")
    _common(g, output_help="an .npz, a .csv, or a folder (no suffix) of images OUT/CLASS/*.png")
    how = g.add_mutually_exclusive_group(required=True)
    how.add_argument("--per-class", type=int, help="synthetic examples per class")
    how.add_argument("--balance", action="store_true", help="per class, as many as it lacks to reach the largest class")
    g.add_argument("--attribute", help="the categorical condition to balance (default: the first)")
    g.add_argument("--merge", action="store_true", help="write the real data too (one data set, ready to train on)")
    g.add_argument("--data", help="the real data (default: the run's own training data)")
    g.add_argument("--split", default="train", help="split of a named data set (default train)")
    g.add_argument("--codes", choices=["prior", "aggregate", "posterior"], default="prior",
                   help="z from the prior p(z | c) (new examples), from the run's fitted aggregate posterior (new "
                   "examples more surely of their class, less varied), or from the posterior q(z | x, c) of real "
                   "examples of the class (variations of them: better for classes with very few examples); default prior")
    g.add_argument("--draw", action=argparse.BooleanOptionalAction, default=None,
                   help="draw x ~ p(x | z, c) (default for tables and signals) or take its mean (--no-draw, "
                   "default for images)")
    g.add_argument("--guidance", type=float, default=None,
                   help="runs trained with --condition-dropout: classifier-free guidance weight (default: the run's; "
                   "0 draws exactly from the model, the most varied)")
    g.set_defaults(func=cmd_augment)

    e = sub.add_parser("embed", help="export latent means and variances per example (CSV/npz) and a 2-D map",
                       description="Encode examples (each with its own condition) and write the posterior means "
                       "and variances with ids and conditions; optionally draw the 2-D map.")
    _common(e, output_help="latents as .csv (id, conditions, mu_*, var_*) or .npz; a .png writes only the map",
            output_required=True)
    e.add_argument("--data", help=INPUT_HELP)
    e.add_argument("--split", default="test", help="split of a named data set (default test)")
    e.add_argument("--n", type=int, help="only the first N examples")
    e.add_argument("--condition", help="encode every example with this condition (data without condition columns)")
    e.add_argument("--columns", help="further columns of the data to carry into the export, e.g. label")
    e.add_argument("--map", help="also draw the 2-D map (the latent, or its first two principal components) here")
    e.add_argument("--color-by", help="the condition or column to colour the map by (default: the first categorical)")
    e.add_argument("--latent", choices=("all", "top"), default="all",
                   help="all: the whole code (a hierarchical model's groups concatenated, coarsest first; default) | "
                        "top: its coarsest latent group only")
    e.set_defaults(func=cmd_embed)

    c = sub.add_parser("classify", help="class probabilities per example (semi-supervised runs: q(y | x))",
                       description="Classify examples: the probability of every class of a categorical condition, "
                       "per example, with its id. A semi-supervised run (trained with missing labels) answers "
                       "from its classifier q(y | x); a model with one categorical condition by Bayes' rule over "
                       "the classes. When the input has labels, the error is printed too.")
    _common(c, output_help="predictions as .csv (id, predicted class, its probability, p_CLASS per class, the "
            "input's own label) or .npz")
    c.add_argument("--data", help=INPUT_HELP)
    c.add_argument("--split", default="test", help="split of a named data set (default test)")
    c.add_argument("--n", type=int, help="only the first N examples")
    c.add_argument("--attribute", help="the categorical condition to classify (default: the first)")
    c.set_defaults(func=cmd_classify)


def _need_sub(parser) -> int:
    parser.print_help()
    return 2


# -- helpers ------------------------------------------------------------------------------------

def _load(args):
    """The run's model, with the command's conditions checked and its outputs guarded (never NaN)."""
    from ..api import load

    model = load(args.run, device=args.device)
    if not getattr(args, "data_dir", None):
        args.data_dir = model.run_config.get("train", {}).get("data_dir")
    names = ("condition", "to", "start", "end")
    check_condition_args(model, args, *names)
    specs = []
    for name in names:
        value = getattr(args, name, None)
        specs += value if isinstance(value, list) else [value]
    guard_outputs(model, condition_hint(model, *specs))
    return model


def _rows(model, rows: int, what: str, lower: str) -> None:
    check_rows(model.config, rows, what, lower)


def _own_source(model, given: str | None) -> str:
    if given:
        return given
    from ..data.core import recorded_source

    source = recorded_source(model.run_config)
    if not source:
        raise CvaeError("this run does not record its data; pass --input/--data SOURCE")
    return source


def _is_condition(spec: str | None) -> bool:
    return spec is not None and "=" in spec and not Path(spec).exists()


def _select(inputs, keys: list[str], source: str):
    """Rows of ``inputs`` picked by id (when ids are names) or by 0-based index."""
    import torch

    from ..apps.io import Inputs

    by_id = {str(i): j for j, i in enumerate(inputs.ids)}
    rows = []
    for key in keys:
        if key in by_id:
            rows.append(by_id[key])
            continue
        try:
            i = int(key)
        except ValueError:
            raise CvaeError(f"{source} has no example {key!r} (give a 0-based index or an id)") from None
        if not 0 <= i < len(inputs.x):
            raise CvaeError(f"{source} has {len(inputs.x)} examples; index {i} is out of range")
        rows.append(i)
    idx = torch.tensor(rows, dtype=torch.long)
    return Inputs(inputs.x[idx], None if inputs.y is None else inputs.y[idx], [inputs.ids[i] for i in rows],
                  {k: v[rows] for k, v in inputs.columns.items()}, inputs.missing)


def _keys(spec: str) -> list[str]:
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    if not keys:
        raise CvaeError(f"cannot read {spec!r}; give an index such as 0, or several: 0,2")
    return keys


def _endpoint(model, spec: str, source: str, args):
    """Examples for one end of an interpolation: an image file, or indices/ids into ``source``."""
    from ..apps.io import read_inputs

    if Path(spec).is_file():
        return read_inputs(model, spec, data_dir=args.data_dir)
    return _select(read_inputs(model, source, data_dir=args.data_dir, split=args.split), _keys(spec), source)


# -- commands -----------------------------------------------------------------------------------

def cmd_interpolate(args) -> int:
    from ..apps.io import conditions_of, read_inputs
    from ..apps.latent import interpolate_conditions, interpolate_inputs, write_interpolation

    if _sequence_run(args):
        return _interpolate_sequences(args)
    model = _load(args)
    start_cond, end_cond = _is_condition(args.start), _is_condition(args.end)
    per_path = args.steps * (2 if args.method == "both" else 1)
    if start_cond != end_cond:
        raise CvaeError("--from and --to must both be conditions (label=3 --to label=8) or both inputs")
    if start_cond:
        x = y = ids = None
        if args.input:
            inputs = read_inputs(model, args.input, data_dir=args.data_dir, n=args.n, split=args.split)
            x, ids = inputs.x, inputs.ids
            y = conditions_of(model, inputs, args.condition, source=args.input)
        paths = len(x) if x is not None else args.n
        _rows(model, paths * per_path, f"{paths} path(s) x --steps {args.steps}", "--steps or --n")
        result = interpolate_conditions(model, args.start, args.end, steps=args.steps, n=args.n, x=x, y=y, ids=ids,
                                        seed=args.seed)
    else:
        source = _own_source(model, args.input)
        if (args.start is None) != (args.end is None):
            raise CvaeError("give both --from and --to, or neither (then pairs 0-1, 2-3, ... of the input)")
        if args.start is None:
            if args.n < 1:
                raise CvaeError(f"--n must be at least 1, got {args.n}")
            both = read_inputs(model, source, data_dir=args.data_dir, n=2 * args.n, split=args.split)
            if len(both.x) < 2:
                raise CvaeError(f"{source} has fewer than two examples to interpolate between")
            m = len(both.x) // 2
            a = _select(both, [str(i) for i in range(0, 2 * m, 2)], source)
            b = _select(both, [str(i) for i in range(1, 2 * m, 2)], source)
        else:
            a, b = _endpoint(model, args.start, source, args), _endpoint(model, args.end, source, args)
            if len(a.x) != len(b.x):
                raise CvaeError(f"--from gives {len(a.x)} example(s) and --to {len(b.x)}; give as many of each")
        _rows(model, len(a.x) * per_path, f"{len(a.x)} path(s) x --steps {args.steps}", "--steps")
        fixed = args.condition if args.condition not in (None, "") else None
        ya = conditions_of(model, a, fixed, source=args.start or source, own_first=True)
        yb = conditions_of(model, b, fixed, source=args.end or source, own_first=True)
        result = interpolate_inputs(model, a.x, b.x, y_from=ya, y_to=yb, condition=fixed, steps=args.steps,
                                    method=args.method, ids_from=a.ids, ids_to=b.ids)
    path = write_interpolation(args.output, model, result)
    print(f"wrote {path}  ({len(result.x)} path(s) of {len(result.t)} steps)")
    return 0


def cmd_traverse(args) -> int:
    from ..apps.io import conditions_of, read_inputs
    from ..apps.latent import kl_per_dimension, traverse, write_traversal

    if _sequence_run(args):
        return _traverse_sequences(args)
    model = _load(args)
    dims = len(_keys(args.dims)) if args.dims else min(args.top, model.config.latent_dim)
    codes = len(_keys(args.index)) if args.input else args.n
    _rows(model, dims * args.steps * codes, f"{dims} dimension(s) x --steps {args.steps} x {codes} code(s)",
          "--steps, --top (--dims) or --n")
    kl_source = _own_source(model, args.data or args.input)
    kl_inputs = read_inputs(model, kl_source, data_dir=args.data_dir, n=args.kl_examples, split=args.split)
    kl_x = kl_inputs.x
    if kl_inputs.missing and args.condition in (None, ""):  # the KL of the examples whose labels are known
        known = ~model.schema.missing(kl_inputs.y)
        if bool(known.any()):  # (none known: conditions_of says to pass --condition)
            kl_x, kl_inputs.y = kl_x[known], kl_inputs.y[known]
    kl = kl_per_dimension(model, kl_x, conditions_of(model, kl_inputs, args.condition, source=kl_source,
                                                     own_first=True))
    x = y = ids = None
    if args.input:
        base = _select(read_inputs(model, args.input, data_dir=args.data_dir, split=args.split), _keys(args.index),
                       args.input)
        x, ids = base.x, base.ids
        has = model.schema and (base.y is not None or args.condition not in (None, ""))
        y = conditions_of(model, base, args.condition, source=args.input, own_first=True) if has else None
    dims = [int(d) for d in _keys(args.dims)] if args.dims else None
    result = traverse(model, kl=kl, dims=dims, top=args.top, low=args.range[0], high=args.range[1], steps=args.steps,
                      x=x, y=y, condition=args.condition, n=args.n, ids=ids, seed=args.seed)
    path = write_traversal(args.output, model, result)
    shown = ", ".join(f"z{d} {float(kl[d]):.2f}" for d in result.dims)
    active = int((kl > 0.01).sum())
    print(f"wrote {path}")
    print(f"  KL per dimension (nats, averaged over {len(kl_x)} examples of {kl_source}): {shown}")
    print(f"  {active} of {len(kl)} dimensions have KL above 0.01 nats (averaged over these inputs; `cvae evaluate`'s "
          "active units count dimensions whose posterior mean varies across the test set, Burda et al.'s test)")
    return 0


def cmd_transfer(args) -> int:
    from ..apps.io import conditions_of, read_inputs
    from ..apps.latent import transfer, write_transfer

    if _sequence_run(args):
        return _transfer_sequences(args)
    model = _load(args)
    source = _own_source(model, args.input)
    inputs = read_inputs(model, source, data_dir=args.data_dir, n=args.n, split=args.split)
    classes = largest_class_count(model.schema)
    targets = sum(classes if t.strip().endswith("=all") else 1 for t in args.to) if args.to else classes
    _rows(model, len(inputs.x) * targets, f"{len(inputs.x)} input(s) x {targets} target(s)", "--n (or give fewer --to)")
    y = conditions_of(model, inputs, args.condition, source=source, own_first=True)
    result = transfer(model, inputs.x, y, args.to, ids=inputs.ids)
    path = write_transfer(args.output, model, result)
    print(f"wrote {path}  ({len(inputs.x)} input(s) x {len(result.target_labels)} target(s): "
          + ", ".join(result.target_labels[:10]) + (" ..." if len(result.target_labels) > 10 else "") + ")")
    return 0


def cmd_anomaly_fit(args) -> int:
    from ..apps.anomaly import fit_anomaly

    given = {k: v for k, v in vars(args).items() if k in TrainConfig.keys() and k not in ("data", "out", "condition")}
    if "data" not in vars(args) or "out" not in vars(args):
        raise CvaeError("cvae anomaly fit needs --data FILE (the normal data, or labelled data with --normal) and --out RUN")
    seed = given.pop("seed", 0)
    given.pop("data_dir", None)
    given.pop("data_layout", None)
    fit = fit_anomaly(args.data, out=args.out, label_column=args.label_column, normal=args.normal, fpr=args.fpr,
                      score=args.score, k=args.k, samples=args.samples, condition=args.condition,
                      data_dir=getattr(args, "data_dir", None), data_layout=getattr(args, "data_layout", "auto"),
                      overwrite=args.overwrite, pictures=args.pictures, seed=seed, **given)
    d = fit.detector
    what = f"{d.label_column} in {{{', '.join(d.normal)}}}" if d.label_column else "every row is normal"
    print(f"run folder: {fit.run_dir}  (trained on {d.n_train} normal examples, {d.n_val} more held out for the "
          f"threshold: {what})")
    if "val" in fit.summary:
        v = fit.summary["val"]
        print(f"  validation negative ELBO {v['loss']:.3f} nats per example")
    above = float((fit.val_scores[d.score] > d.threshold).mean())
    print(f"  threshold ({d.score}): {d.threshold:.6g}, set to flag {d.fpr:.1%} of normal examples (--fpr; the "
          f"{1 - d.fpr:.1%} quantile of the scores of {d.n_val} held-out normal examples, taken at one of them: "
          f"{above:.1%} lie above it" + ("; more held-out examples (--val-fraction) come closer to --fpr)"
                                                 if abs(above - d.fpr) > 0.01 else ")"))
    print(f"  detector: {fit.run_dir / 'anomaly.json'}" + (f"; picture: {fit.pictures['val_scores']}" if fit.pictures else ""))
    return 0


def cmd_anomaly_score(args) -> int:
    import json

    from ..apps.anomaly import save_scores_picture, score_anomalies, write_scores

    model = _load(args)
    result = score_anomalies(model, args.data, data_dir=args.data_dir, split=args.split, n=args.n,
                             label_column=args.label_column, normal=args.normal, score=args.score,
                             condition=args.condition, seed=args.seed)
    path = write_scores(args.output, result)
    print(f"wrote {path}  ({len(result.scores)} examples; {int(result.flags.sum())} flagged "
          f"({result.flags.mean():.1%}) above the {result.score} threshold {result.threshold:.6g})")
    if result.metrics:
        m = result.metrics
        if "auroc" in m:
            print(f"  labels ({m['label_column']}; normal = {', '.join(m['normal'])}): {m['n_normal']} normal, "
                  f"{m['n_anomaly']} anomalous" + (f" ({m['unlabelled']} without a label, left out of the figures "
                                                  "below)" if m.get("unlabelled") else ""))
            print(f"  AUROC {m['auroc']:.4f}   average precision {m['average_precision']:.4f}")
            (tn, fp), (fn, tp) = m["confusion_matrix"]
            print("  confusion matrix        flagged   not flagged")
            print(f"    anomaly            {tp:9d}   {fn:11d}")
            print(f"    normal             {fp:9d}   {tn:11d}")
            rates = [f"{name} {m[key]:.3f}" for name, key in (("recall", "true_positive_rate"),
                     ("false-positive rate", "false_positive_rate"), ("precision", "precision")) if m.get(key) is not None]
            print("  at the threshold: " + ", ".join(rates))
        if "note" in m:
            print(f"  note: {m['note']}")
        metrics_path = path.with_suffix(".metrics.json")
        metrics_path.write_text(json.dumps({"score": result.score, "threshold": result.threshold, **m}, indent=2) + "\n")
        print(f"  metrics: {metrics_path}")
    if args.plot:
        print(f"  picture: {save_scores_picture(args.plot, result)}")
    return 0


def cmd_augment(args) -> int:
    from ..apps.augment import augment, write_augmented
    from ..apps.io import read_inputs

    model = _load(args)
    if args.per_class is not None:
        classes = largest_class_count(model.schema, args.attribute)
        _rows(model, args.per_class * classes, f"--per-class {args.per_class} x {classes} classes", "--per-class")
    real = None
    if args.balance or args.merge or args.data or args.codes == "posterior":
        source = _own_source(model, args.data)
        real = read_inputs(model, source, data_dir=args.data_dir, split=args.split)
    aug = augment(model, per_class=args.per_class, balance=args.balance, attribute=args.attribute, real=real,
                  merge=args.merge, mean=None if args.draw is None else not args.draw, codes=args.codes, seed=args.seed,
                  guidance=args.guidance)
    path = write_augmented(args.output, model, aug)
    n_syn = int(aug.synthetic.sum())
    print(f"wrote {path}  ({n_syn} synthetic" + (f" + {len(aug.x) - n_syn} real" if args.merge else "") + " examples)")
    for cls, n in aug.generated.items():
        real_n = aug.real.get(cls)
        print(f"  {aug.attribute}={cls}: {n} synthetic" + (f" ({real_n} real in the data" + ("" if args.merge else
              ", not written: --merge writes them too") + ")" if real_n is not None else ""))
    return 0


def cmd_embed(args) -> int:
    from ..apps.embed import embed, save_embedding_map, write_embedding

    if _sequence_run(args):
        return _embed_sequences(args)
    model = _load(args)
    source = _own_source(model, args.data)
    columns = _keys(args.columns) if args.columns else []
    if args.color_by and args.color_by not in columns and args.color_by not in (model.schema.names if model.schema else []):
        columns.append(args.color_by)
    emb = embed(model, source, data_dir=args.data_dir, n=args.n, split=args.split, condition=args.condition,
                columns=columns, latent=args.latent)
    out = Path(args.output)
    if out.suffix.lower() == ".png":
        print(f"wrote {save_embedding_map(out, emb, args.color_by)}  ({len(emb)} examples)")
        return 0
    groups = len(model.latent_groups())
    which = "" if groups == 1 else (" of the top group" if args.latent == "top" else f", all {groups} groups concatenated")
    print(f"wrote {write_embedding(out, emb)}  ({len(emb)} examples, {emb.mu.shape[1]} latent dimensions{which})")
    if args.map:
        print(f"  map: {save_embedding_map(args.map, emb, args.color_by)}")
    return 0


def cmd_classify(args) -> int:
    from ..apps.classify import classify_inputs, classify_strings, write_predictions

    if args.n is not None and args.n < 1:
        raise CvaeError(f"--n must be a positive number of examples, got {args.n}")
    if Path(args.output).suffix.lower() not in (".csv", ".npz"):  # before any work
        raise CvaeError(f"cannot write {args.output}: use a .csv or .npz file name")
    model = _load(args)
    if _sequence_run(args):
        from ..apps.sequences import own_strings, read_strings, sequence_column, table_labels

        if args.data:
            names, texts = read_strings(args.data, "--data", sequence_column(model))
            texts, names = texts[:args.n], names[:args.n]
            truth = table_labels(model, args.data, names)  # a CSV's own labels: scored against
        else:  # the run's own validation sequences, with their labels
            texts, truth, _ = own_strings(model, args.n)
            names = None
        result = classify_strings(model, texts, attribute=args.attribute, names=names, y=truth, seed=args.seed)
    else:
        source = _own_source(model, args.data)
        result = classify_inputs(model, source, attribute=args.attribute, data_dir=args.data_dir, n=args.n,
                                 split=args.split, seed=args.seed)
    path = write_predictions(args.output, result)
    print(f"wrote {path}  ({len(result.ids)} examples, {len(result.classes)} classes of {result.attribute!r})")
    m = result.metrics()
    if m is not None:
        print(f"  error {100 * m['error']['value']:.2f}% ± {100 * m['error']['stderr']:.2f} on the {m['n_examples']} "
              f"examples with a label; expected calibration error {m['ece']['value']:.3f}")
    return 0


# -- sequence runs (trained with --sequence): strings in, strings out ---------------------------------
def _sequence_run(args) -> bool:
    from ..runs import read_config

    return read_config(Path(args.run)).get("model", {}).get("model_class") == "seqvae"


def _interpolate_sequences(args) -> int:
    from ..api import load
    from ..apps.sequences import interpolate_strings, write_rows

    model = load(args.run, device=args.device)
    if getattr(args, "input", None):
        raise CvaeError("--input is not read for a sequence run: give the two ends themselves, --from 'CCO' --to "
                        "'c1ccccc1' (SMILES or text), not row numbers")
    if not args.start or not args.end:
        raise CvaeError("give the two ends as sequences: --from 'CCO' --to 'c1ccccc1' (SMILES or text)")
    path = interpolate_strings(model, args.start, args.end, steps=args.steps, condition=args.condition)
    out = write_rows(args.output, [{"step": i, "sequence": s} for i, s in enumerate(path)])
    print(f"wrote {out}  ({len(path)} steps)")
    return 0


def _traverse_sequences(args) -> int:
    """Traversals of a sequence run: the KL per dimension over the run's own validation sequences (or
    --data, a .txt/.smi file with --condition), from the prior mean or from --input (a string or a file,
    encoded with --condition), each step decoded greedily; a .csv of the strings."""
    import torch

    from ..apps.latent import kl_per_dimension, traverse
    from ..apps.sequences import (
        given_conditions,
        own_strings,
        read_strings,
        sequence_column,
        token_ids,
        traversal_rows,
        write_rows,
    )

    model = _load(args)
    if Path(args.output).suffix.lower() != ".csv":
        raise CvaeError(f"-o {args.output}: a sequence run's traversal is written as a .csv file (one string a row)")
    dims = len(_keys(args.dims)) if args.dims else min(args.top, model.config.latent_dim)
    if args.data:
        names, texts = read_strings(args.data, "--data", sequence_column(model))
        texts, names = texts[:args.kl_examples], names[:args.kl_examples]
        texts, ids = token_ids(model, texts, names, "--data")
        y_kl = given_conditions(model, args.condition, texts, names=names, source=args.data)
        kl_from = f"{len(texts)} sequences of {args.data}"
    else:
        _, y_kl, ids = own_strings(model, args.kl_examples)
        kl_from = f"{len(ids)} of the run's own validation sequences"
    kl = kl_per_dimension(model, torch.as_tensor(ids).float(), y_kl)
    x = y = base_ids = None
    if args.input:
        names, texts = read_strings(args.input, "--input", sequence_column(model))
        keep = [int(k) for k in _keys(args.index)]
        if any(not 0 <= k < len(texts) for k in keep):
            raise CvaeError(f"--index {args.index}: --input holds {len(texts)} sequence(s), numbered from 0")
        texts, base_ids = [texts[k] for k in keep], [names[k] for k in keep]
        texts, x = token_ids(model, texts, base_ids, "--input")
        y = given_conditions(model, args.condition, texts, names=base_ids, source=args.input)
    codes = len(x) if x is not None else args.n
    _rows(model, dims * args.steps * codes, f"{dims} dimension(s) x --steps {args.steps} x {codes} code(s)",
          "--steps, --top (--dims) or --n")
    result = traverse(model, kl=kl, dims=[int(d) for d in _keys(args.dims)] if args.dims else None, top=args.top,
                      low=args.range[0], high=args.range[1], steps=args.steps, x=x, y=y,
                      condition=None if x is not None else args.condition, n=args.n, ids=base_ids, seed=args.seed)
    out = write_rows(args.output, traversal_rows(model, result))
    print(f"wrote {out}")
    print(f"  KL per dimension (nats, averaged over {kl_from}): "
          + ", ".join(f"z{d} {float(kl[d]):.2f}" for d in result.dims))
    return 0


def _transfer_sequences(args) -> int:
    from ..api import load
    from ..apps.sequences import (
        given_conditions,
        read_strings,
        sequence_column,
        transfer_strings,
        write_rows,
    )

    model = load(args.run, device=args.device)
    if not args.input:
        raise CvaeError("give the sequences to transfer with --input: a string, or a .txt/.smi file (one per line)")
    names, texts = read_strings(args.input, "--input", sequence_column(model))
    names, texts = names[:args.n], texts[:args.n]
    if not model.schema:
        raise CvaeError("this run is a plain VAE (no condition): there is no condition to transfer to")
    own = given_conditions(model, args.condition, texts, names=names, source=args.input)  # molecules: their own properties when left out
    rows = transfer_strings(model, texts, own, args.to, names=names)
    out = write_rows(args.output, rows)
    print(f"wrote {out}  ({len(texts)} input(s) x {len(rows) // max(1, len(texts))} target(s))")
    return 0


def _embed_sequences(args) -> int:
    """Posterior means and variances of sequences: a .smi/.txt file (one per line, every line with
    --condition) or, without --data, the run's own validation split with its own conditions."""
    from ..api import load
    from ..apps.sequences import (
        embed_strings,
        given_conditions,
        own_strings,
        read_strings,
        sequence_column,
        write_rows,
    )

    model = load(args.run, device=args.device)
    if args.data:
        path = Path(args.data)
        if path.suffix.lower() not in (".smi", ".txt", ".csv", ".tsv") and path.is_file():
            raise CvaeError(f"--data {args.data}: give a .smi or .txt file, one sequence per line, a CSV with the "
                            "run's sequence column, or a sequence in quotes (or leave --data out for the run's own "
                            "validation split)")
        names, texts = read_strings(args.data, "--data", sequence_column(model))
        y = given_conditions(model, args.condition, texts, names=names, source=args.data)
    else:
        texts, y, _ = own_strings(model)
        names = None
    if args.n:
        texts, y = texts[:args.n], (y[:args.n] if y is not None else None)
        names = names[:args.n] if names is not None else None
    rows = embed_strings(model, texts, y, names=names)
    out = write_rows(args.output, rows)
    print(f"wrote {out}  ({len(rows)} sequences, {model.config.latent_dim} latent dimensions)")
    if args.map:  # the same 2-D map as for other runs, coloured by a condition
        import numpy as np

        from ..apps.embed import Embedding, save_embedding_map

        d = model.config.latent_dim
        mu = np.array([[r[f"mu_{j}"] for j in range(d)] for r in rows], np.float32)
        conds = {a: np.array([r[a] for r in rows]) for a in (model.schema.names if model.schema else [])}
        emb = Embedding(ids=list(range(len(rows))), mu=mu, var=np.ones_like(mu), conditions=conds)
        print(f"  map: {save_embedding_map(args.map, emb, args.color_by)}")
    return 0
