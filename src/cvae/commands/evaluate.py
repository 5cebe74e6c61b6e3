"""cvae evaluate | cvae evaluator train."""

from __future__ import annotations

import argparse

from ..errors import CvaeError
from .checks import token_choice


def add_parsers(sub) -> None:
    e = sub.add_parser(
        "evaluate", help="measure a trained run: likelihood, posterior health, sample quality",
        description="Measure a trained run and write RUN/eval.json: the negative ELBO (reconstruction + KL), the "
                    "importance-sampled negative log-likelihood with k samples, KL per latent dimension, active "
                    "units and I(x; z), and for images conditional accuracy, Fréchet distance, precision and recall "
                    "in the feature space of an evaluator classifier (see `cvae evaluator train`). Every figure is "
                    "per example, with its standard error.")
    e.add_argument("run", help="the run folder")
    e.add_argument("--split", choices=["test", "val", "train", "all"],
                   help="which examples (default: test, or val when the data has no test split; for --metrics "
                        "disentanglement alone: all, every split in the data's row order, as `cvae embed` encodes "
                        "it, up to 10,000 drawn at random)")
    e.add_argument("--k", type=int, default=5000, help="importance samples per example for the NLL (default 5000)")
    e.add_argument("--metrics", default="all",
                   help="comma-separated: elbo, nll, posterior, samples, classification, disentanglement (default "
                        "all; samples are skipped with a note when no evaluator exists, classification when the "
                        "model has no classifier q(y | x), disentanglement when the data has no factors, unless "
                        "asked for by name). disentanglement: MIG, SAP, DCI, BetaVAE and FactorVAE scores and "
                        "modularity of the posterior means against the data's factors, plus RUN/disentanglement.png "
                        "and RUN/traversal_factors.png")
    e.add_argument("--evaluator", help="an evaluator .safetensors file (default ~/.cache/cvae/evaluators/DATA.safetensors)")
    e.add_argument("--n", type=int, help="only N examples of the split, drawn at random with --seed (default all)")
    e.add_argument("--subset", choices=["random", "first"], default="random",
                   help="which N examples --n keeps: drawn at random (default; a split in its source's order, e.g. "
                        "an image folder class by class, has no representative first N) or the first N")
    e.add_argument("--per-class", type=int, default=1000, help="images generated per class for conditional accuracy")
    e.add_argument("--batch-size", type=int, default=4096,
                   help="(example, sample) pairs decoded at once in importance sampling; bounds the memory "
                        "(about batch-size x pixels x 8 bytes)")
    e.add_argument("--data-dir", help="where data files are looked up first (default: the run's)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--seed", type=int, default=0, help="seed of the importance samples and generated images")
    e.add_argument("--codes", choices=["aggregate", "prior"], default=None,
                   help="generated images: z from the aggregate posterior fitted after training (RUN/aggregate."
                        "safetensors, the default where the run has it) or from the prior p(z | c)")
    e.add_argument("--temperature", type=float, default=None,
                   help="of the draws of the codes behind the sample figures (default as cvae sample: 0.9 for the "
                        "prior, 1 for a fitted aggregate posterior; 1: exact)")
    e.add_argument("--molecules", type=int, default=10000,
                   help="molecules generated for --metrics molecules (runs on SMILES): validity, uniqueness at 1k "
                        "and 10k, novelty, internal diversity, FCD to the validation split, property control "
                        "(default 10000)")
    e.add_argument("--decode", choices=["greedy", "sample", "beam"], default=None,
                   help="sequence runs: how the molecules of --metrics molecules choose their tokens (default "
                        "sample, at --token-temperature, as cvae sample)")
    e.add_argument("--beam", type=int, default=5, help="sequence runs: beams of --decode beam (default 5)")
    e.add_argument("--token-temperature", type=float, default=None,
                   help="sequence runs: temperature of each sampled token's distribution (default 0.5, as cvae sample)")
    e.add_argument("--guidance", type=float, default=None,
                   help="runs trained with --condition-dropout: classifier-free guidance weight of the generated "
                        "images or molecules (default: the run's)")
    e.add_argument("--steer", type=float, default=None,
                   help="sequence runs trained with --steer: weight of the prefix predictor's steering of the "
                        "generated molecules (FUDGE; 0 turns it off; default: the run's)")
    e.add_argument("--json", action="store_true", help="print eval.json instead of the table")
    e.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    e.set_defaults(func=cmd_evaluate)

    ev = sub.add_parser("evaluator", help="the classifier that scores generated images (train it once per data set)",
                        description="The evaluator is a small CNN trained on a labelled image data set; "
                                    "`cvae evaluate` uses its predictions and features to score generated images.")
    ev_sub = ev.add_subparsers(dest="evaluator_command", metavar="ACTION", parser_class=type(ev))
    t = ev_sub.add_parser("train", help="train the evaluator of a data set",
                          description="Train the evaluator classifier on a labelled image data set and store it as "
                                      "safetensors + JSON (default ~/.cache/cvae/evaluators/DATA.safetensors).")
    t.add_argument("--data", required=True, help="mnist, fashion-mnist, digits, an image folder or a .npz with labels")
    t.add_argument("--epochs", type=int,
                   help="passes over the training images (default 10, more on a set smaller than 60,000 images: "
                        "600,000 images seen)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    t.add_argument("--limit", type=int, help="train on this many examples only")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random shifts of up to 2 pixels during training")
    t.add_argument("--out", help="the .safetensors file to write (a .json with the same name goes beside it)")
    t.add_argument("--data-dir", help="where data files are looked up first")
    t.add_argument("--device", default="cpu")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    t.set_defaults(func=cmd_evaluator_train)
    ev.set_defaults(func=lambda args, p=ev: p.print_help() or 2)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from ..evaluate import evaluate_run

    _check_sizes(args)
    if args.temperature is not None and not 0 <= args.temperature <= 10:  # before minutes of likelihood estimates
        raise CvaeError(f"--temperature must be a number from 0 to 10, got {args.temperature}")
    if args.decode is not None or args.token_temperature is not None or args.steer is not None:
        _check_sequence_run(args)
    decode, token_temperature = token_choice(args)
    result = evaluate_run(args.run, split=args.split, k=args.k, metrics=args.metrics, evaluator=args.evaluator,
                          n=args.n, per_class=args.per_class, rows=args.batch_size, data_dir=args.data_dir,
                          device=args.device, seed=args.seed, progress=args.progress, temperature=args.temperature,
                          molecules=args.molecules, decode=decode, beam=args.beam,
                          token_temperature=token_temperature, guidance=args.guidance, steer=args.steer,
                          subset=args.subset, codes=args.codes)
    pictures = _disentanglement_pictures(args, result)
    if args.json:
        print(json.dumps(result.results, indent=2))
    else:
        print(format_table(result.results))
        from ..evaluate import parse_metrics

        # the sections this call measured (eval.json keeps earlier calls' too): the examples they used
        wanted = set(parse_metrics(args.metrics)[0])
        measured = ["likelihood"] * bool({"elbo", "nll"} & wanted) + ["posterior"] * ("posterior" in wanted)
        used = max((result.results[name].get("protocol", {}).get("n_examples") or 0
                    for name in measured if isinstance(result.results.get(name), dict)), default=0)
        if args.n is not None and 0 < used < args.n:
            print(f"  (--n {args.n}: the split has {used} examples, all of them used)")
        print(f"wrote {result.path}" + "".join(f", {p}" for p in pictures))
    return 0


def _disentanglement_pictures(args, result) -> list:
    """The heat map and the factor-labelled traversal beside eval.json, from the model and data the
    evaluation loaded (a rendered set such as dSprites is not rendered a second time)."""
    section = result.results.get("disentanglement")
    if not section or "skipped" in section:
        return []
    from ..apps.disentangle import write_disentanglement_pictures
    from ..evaluate import every_split

    model, data = result.model, result.data
    model.eval()
    split = section["protocol"]["split"]
    n = min(args.n or 2000, 2000)
    part = every_split(data, n, "first")[0] if split == "all" else getattr(data, split)
    n = min(len(part.x), n)
    pictures = write_disentanglement_pictures(args.run, model, section, model.to_data_units(part.x[:n]),
                                              part.y[:n] if model.schema else None)
    return list(pictures.values())


def _check_sequence_run(args: argparse.Namespace) -> None:
    """--decode, --beam, --token-temperature and --steer choose tokens: only a sequence run has them."""
    from ..runs import read_config

    try:
        model_class = read_config(args.run)["model"].get("model_class")
    except (CvaeError, KeyError, TypeError, AttributeError):
        return  # evaluate_run says what is wrong with the run
    if model_class != "seqvae":
        flag = ("--decode" if args.decode is not None else "--steer" if args.steer is not None
                else "--token-temperature")
        raise CvaeError(f"{flag} is for sequence runs (trained with --sequence); leave it out for this run")
    if args.beam < 1:
        raise CvaeError(f"--beam must be a whole number of at least 1, got {args.beam}")


def _check_sizes(args: argparse.Namespace) -> None:
    """--batch-size (decoder rows at once) and --per-class (images generated per class) within memory."""
    from ..conditions import ConditionSchema
    from ..errors import CvaeError
    from ..models import ModelConfig
    from ..runs import read_config
    from .checks import check_rows, largest_class_count

    try:
        config = ModelConfig.from_dict(read_config(args.run)["model"])
    except (CvaeError, KeyError, TypeError):
        return  # evaluate_run says what is wrong with the run
    check_rows(config, args.batch_size, f"--batch-size {args.batch_size}", "--batch-size")
    classes = largest_class_count(ConditionSchema.from_dict(config.schema))
    check_rows(config, args.per_class * classes, f"--per-class {args.per_class} x {classes} classes", "--per-class")


def cmd_evaluator_train(args: argparse.Namespace) -> int:
    from ..evaluator import train_evaluator

    res = train_evaluator(args.data, data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, seed=args.seed, limit=args.limit, out=args.out, device=args.device,
                          augment=args.augment, progress=args.progress)
    from ..evaluator import accuracy_text

    print(f"evaluator for {res.evaluator.config.data}: {accuracy_text(res.accuracy, res.held_out)} ({res.epochs} "
          f"epochs, {res.seconds:.0f} s)")
    print(f"wrote {res.path} and {res.path.with_suffix('.json')}")
    return 0


# -- the table ---------------------------------------------------------------------------------------

def _row(name: str, fig: dict, width: int) -> str:
    value = fig.get("value")
    if isinstance(value, float):
        text = f"{value:12.4f}" if abs(value) < 1e5 else f"{value:12.4g}"
    else:
        text = f"{value:>7}     " if isinstance(value, int) else f"{value!s:>12}"
    se = fig.get("stderr")
    se_text = f"± {se:<9.3g}" if se is not None else " " * 11
    noise = ("  (below 0 by Monte Carlo noise: the information itself is at least 0)"
             if isinstance(value, float) and value < 0 and fig.get("name", "").startswith("I(") else "")
    return f"  {name:<{width}} {text} {se_text} {fig.get('unit', '')}{noise}"


def format_table(results: dict) -> str:
    """The printed summary of eval.json: one line per figure, value ± standard error, unit."""
    lines = [f"cvae evaluate {results.get('run', '')}"]
    lik, post, samples = results.get("likelihood"), results.get("posterior"), results.get("samples")
    width = 0
    figs = []
    for sec in (lik, post, samples):
        if sec:
            figs += [v for v in sec.values() if isinstance(v, dict) and "value" in v and "name" in v
                     and not isinstance(v["value"], list)]
    width = min(max((len(f["name"]) for f in figs), default=40), 64)

    def name(f):
        return f["name"] if len(f["name"]) <= width else f["name"][:width - 3] + "..."

    if lik:
        p = lik["protocol"]
        one = " (one sample: the ELBO alone; --metrics nll adds the importance-sampled NLL)" if p.get("k") == 1 \
            and "importance_sampled_nll" not in lik else ""
        lines.append(f"likelihood: {p.get('data')} {p.get('split')} split, {p.get('n_examples')} examples, "
                     f"k = {p.get('k')}{one}, {p.get('likelihood')} decoder")
        for key in ("binarization", "caution", "units", "unlabelled"):
            if key in p:
                lines.append(f"  {key}: {p[key]}")
        for key in ("negative_elbo", "reconstruction", "kl", "importance_sampled_nll", "bits_per_dim", "elbo_gap",
                    "effective_sample_size", "tokens_per_sequence", "nll_per_token", "perplexity_bound"):
            if key in lik:
                lines.append(_row(name(lik[key]), lik[key], width))
    if post:
        lines.append(f"posterior health ({post['protocol']['n_examples']} examples)")
        for key in ("kl_total", "active_units", "mutual_information", "reconstructed_exactly", "tokens_reconstructed"):
            if key in post and not (key == "kl_total" and lik):
                lines.append(_row(name(post[key]), post[key], width))
        kl = post.get("kl_per_dim", {}).get("value", [])
        if kl and len(kl) <= 64:
            lines.append("  KL per latent dimension (nats): " + " ".join(f"{v:.2f}" for v in kl))
        elif kl:  # a hierarchical model's hundreds of dimensions: the largest, the rest in eval.json
            top = sorted(range(len(kl)), key=lambda d: -kl[d])[:10]
            lines.append(f"  KL per latent dimension (nats), the 10 largest of {len(kl)} (all in eval.json): "
                         + " ".join(f"z{d} {kl[d]:.2f}" for d in top))
    samples = _measured(samples, "sample quality", lines)
    if samples:
        ev = samples.get("evaluator", {})
        from ..evaluator import accuracy_text

        acc = accuracy_text(ev.get("accuracy", {}), ev.get("held_out")) if ev.get("accuracy") else "unknown"
        lines.append(f"sample quality in the evaluator's feature space, NOT the Inception FID (evaluator: "
                     f"{ev.get('path', '')}; its held-out {acc})")
        for fig in samples.values():
            if isinstance(fig, dict) and "value" in fig and "name" in fig:
                lines.append(_row(name(fig), fig, width))
        cond = samples.get("conditional_accuracy")
        if cond:
            lines.append(f"  conditional accuracy per class of {cond['attribute']!r} "
                         f"({cond['n_per_class']} images each):")
            lines.append("    " + "  ".join(f"{c}: {v['value']:.3f}" for c, v in cond["per_class"].items()))
            lines.append(_row(name(cond["mean"]), cond["mean"], width))
            mistaken = _most_confused(cond)
            if mistaken:
                lines.append("  most often read as another class (share of that class's images):")
                lines.append("    " + "  ".join(f"{c} -> {o} {share:.3f}" for c, (o, share) in mistaken.items()))
        for note in samples.get("notes", []):
            lines.append(f"  note: {note}")
    dis = _measured(results.get("disentanglement"), "disentanglement", lines)
    if dis:
        p = dis["protocol"]
        lines.append(f"disentanglement of the posterior means ({p['split']} split, "
                     f"{p.get('examples') or str(p['n_examples']) + ' examples'}; "
                     f"disentanglement_lib's definitions, chance of the BetaVAE / FactorVAE scores "
                     f"{p['chance_of_beta_vae_and_factor_vae_scores']:.2f})")
        for key, label in (("mig", "MIG"), ("factor_vae", "FactorVAE score"), ("beta_vae", "BetaVAE score"),
                           ("sap", "SAP"), ("dci_disentanglement", "DCI disentanglement"),
                           ("dci_completeness", "DCI completeness"),
                           ("dci_informativeness", "DCI informativeness (test accuracy)"),
                           ("modularity", "modularity")):
            if key in dis:
                lines.append(f"  {label:<{width}}  {dis[key]:.4f}")
        lines.append("  each latent follows: " + "  ".join(f"z{d}: {f or '-'}"
                                                          for d, f in enumerate(dis["dimension_follows"])))
        if dis.get("codes_file"):
            lines.append(f"  the examples' ids, codes and factors: {results.get('run', 'RUN')}/{dis['codes_file']}")
        for note in dis.get("details", {}).get("notes", []):
            lines.append(f"  note: {note}")
    mols = _measured(results.get("molecules"), "molecules", lines)
    if mols:
        p = mols["protocol"]
        knobs = "".join(f", {name} {p[key]:g}" for key, name in (("token_temperature", "token temperature"),
                                                                  ("guidance", "guidance"), ("steer", "steer"))
                        if isinstance(p.get(key), (int, float)))
        lines.append(f"molecules: {p['generated']} generated (conditions {p['conditions']}; {p.get('decode', 'greedy')} "
                     f"decoding, temperature {p.get('temperature')}{knobs}), novelty against the "
                     f"{p['novelty_against']}, FCD against the {p['fcd_reference']}")
        if "moses" in p:
            lines.append(f"  MOSES's own references: {p['moses']}")
        shown = [("validity", "validity"), ("unique@1k", "unique@1k"), ("unique@10k", "unique@10k")]
        if mols.get("unique@1k") is None:  # MOSES's unique@k needs k generated: below 1,000, the share of all valid
            shown.append(("uniqueness", "unique (of the valid)"))
        for key, label in (*shown,
                           ("novelty", "novelty"), ("novelty_moses_train", "novelty against MOSES's training file"),
                           ("int_div", "internal diversity (IntDiv1)"), ("fcd", "FCD"),
                           ("fcd_moses_test", "FCD/Test (MOSES)")):
            if mols.get(key) is not None:
                over = f"  (over the {mols[key + '_of']:,} valid molecules)" if mols.get(key + "_of") else ""
                lines.append(f"  {label:<{width}}  {mols[key]:.4f}{over}")
        for prop, ctl in mols.get("property_control", {}).items():
            lines.append(f"  {prop} control over {len(ctl['grid'])} requests x {ctl['per_request']}: MAE "
                         f"{ctl['mae']:.3f} (training std {ctl['train_std']:.3f}), Spearman {ctl['spearman']:.3f}")
    cls = _measured(results.get("classification"), "classification", lines)
    if cls:
        p = cls["protocol"]
        for attr, fig in cls.items():
            if not isinstance(fig, dict) or "error" not in fig:
                continue
            lines.append(f"classification of {attr!r} by {p['classifier']} ({p['split']} split, "
                         f"{fig['n_examples']} labelled examples)")
            named = (("error", "error"), ("nll", "negative log-likelihood of the true class (nats)"),
                     ("brier", "Brier score"), ("ece", "expected calibration error (15 bins)"))
            own = max(len(label) for _, label in named)
            for key, label in named:
                lines.append(_row(label, fig[key], own))
            lines.append("  accuracy per class: " + "  ".join(f"{c}: {v['accuracy']:.3f}"
                                                              for c, v in fig["per_class_accuracy"].items()))
    return "\n".join(lines)


def _measured(section: dict | None, title: str, lines: list) -> dict | None:
    """The section when it was measured; when it was skipped, one line saying why (and None)."""
    if section and "skipped" in section:
        lines.append(f"{title}: skipped ({section['skipped']})")
        return None
    return section


def _most_confused(cond: dict, threshold: float = 0.02) -> dict:
    """For each class whose samples are read as one other class at least ``threshold`` of the time:
    that class and its share (from the confusion counts in eval.json)."""
    confusion = cond.get("confusion") or {}
    classes, counts = confusion.get("classes"), confusion.get("counts")
    if not classes or not counts:
        return {}
    out = {}
    for i, row in enumerate(counts):
        others = [(row[j], classes[j]) for j in range(len(row)) if j != i]
        if others:
            n, other = max(others)
            if n / cond["n_per_class"] >= threshold:
                out[classes[i]] = (other, n / cond["n_per_class"])
    return out
