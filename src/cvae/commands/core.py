"""cvae train | sample | reconstruct."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from ..config import TrainConfig
from ..errors import CvaeError
from .checks import check_condition_args, check_rows, condition_hint, guard_outputs, token_choice

HELP = {
    "data": "a named data set (digits, mnist, fashion-mnist, binarized-mnist, dsprites, color-shapes) or a path: "
            ".npz/.npy, image folder, .csv",
    "factors": "columns of a .npz/CSV file that are factors of variation (a,b): held out of the features and the "
               "conditions, scored by `cvae evaluate --metrics disentanglement`",
    "gamma": "capacity: weight of |KL - C| (default 1000, Burgess et al. 2018); factorvae: weight of the total "
             "correlation (default 10, Kim & Mnih 2018)",
    "capacity_max": "capacity: the KL target's final value C_max in nats (default 25)",
    "capacity_epochs": "capacity: epochs over which C grows linearly from 0 to C_max (default half of --epochs)",
    "tc_estimator": "btcvae: mss (minibatch-stratified sampling, default) or mws (minibatch-weighted), Chen et al. 2018",
    "dip_lambda_od": "dip-vae-i / dip-vae-ii: weight of the off-diagonal covariance penalty (default 10; Kumar et al. 2018)",
    "dip_lambda_d": "dip-vae-i / dip-vae-ii: weight of the diagonal penalty (default 10 x lambda_od for i, 1 x for ii)",
    "data_dir": "where data files are looked up first (then $CVAE_DATA, then ~/.cache/cvae)",
    "condition": "condition column(s): label (default when labelled), none (a plain VAE), or a,b:continuous",
    "sequence": "the column of strings for sequence data: SMILES (--data mols.csv/.smi/qm9/moses --sequence smiles) "
                "or text (--data reviews.csv --sequence text; --data chatterbot[:english,...] --sequence text "
                "--condition language|topic, from the chatterbot-corpus package); conditions such as logp,qed,mw,tpsa,hbd,hba are "
                "computed with RDKit when the file lacks them",
    "tokenizer": "sequence data: selfies (default for molecules: every decoded string is a molecule) | smiles "
                 "(chemistry-aware regex) | char (default for --data chatterbot) | word (default for text)",
    "max_length": "sequence data: most tokens per sequence; longer rows are skipped and counted (default: the longest)",
    "word_dropout": "sequence model: replace this share of the decoder's input tokens by <unk> in training "
                    "(word dropout, Bowman et al. 2016)",
    "condition_dropout": "share of training examples whose decoder sees no condition, so that it also learns "
                         "p(x | z) and can be guided (classifier-free guidance; e.g. 0.2; cvae, m2 and sequence models)",
    "guidance": "the run's default classifier-free guidance weight w when generating (needs --condition-dropout; "
                "0 none; cvae sample/evaluate --guidance override it)",
    "steer": "sequence model: train a prefix predictor of the condition beside the VAE (FUDGE, Yang & Klein 2021) "
             "and steer generation towards the requested condition with this default weight (default 2 when the "
             "run has a condition; 0 trains no predictor; cvae sample/evaluate --steer override it)",
    "data_layout": "auto | signal (each CSV row is a 1-D signal) | table",
    "image_size": "HxW: resize the images of an image folder",
    "binarize": "none | static (0/1 once) | dynamic (0/1 resampled every epoch)",
    "val_fraction": "share of training examples held out for validation when the data has no validation split",
    "limit": "train on this many examples only",
    "labelled": "keep this many training labels (the same number per class, drawn with --seed) and hide the rest and "
                "the validation split's: a semi-supervised experiment (data with missing labels needs no flag)",
    "model": "the model class: cvae (default) | m2 (semi-supervised: a classifier q(y | x) infers missing labels; "
             "the default when some labels are missing) | any registered class",
    "alpha": "m2: weight of q(y | x)'s cross-entropy on the labelled examples (default 0.1 x the number of labels, "
             "the paper's 0.1 N)",
    "consistency": "m2: weight of the FixMatch consistency term on q(y | x) (default 1; 0 trains M2 exactly)",
    "preset": "mlp-400 | textbook | conv | burda | hvae (the hierarchical model: top-down latent groups, "
              "--depth/--width/--groups/--z-channels)",
    "depth": "hvae: resolutions that carry latent groups (the image is halved this many times; default 2)",
    "width": "hvae: channels of the residual stream (default 32)",
    "groups": "hvae: latent groups per resolution (default 2)",
    "z_channels": "hvae: channels of each latent group (default 4)",
    "arch": "mlp | conv (override the preset)",
    "hidden": "hidden widths, e.g. 512,256",
    "channels": "conv channels, e.g. 32,64",
    "latent_dim": "size of z",
    "activation": "relu | tanh | elu | gelu | softplus | leaky_relu | silu",
    "condition_at": "MLP layer at which the condition joins (0 = input, 1 = after the first hidden layer, -1 = every layer)",
    "likelihood": "bernoulli | gaussian | gaussian-learned | logistic-mixture | categorical-256 (8-bit images: "
                  "bits per dimension) (default: bernoulli for images, gaussian-learned otherwise)",
    "likelihood_components": "logistic-mixture: components of each sub-pixel's mixture (default 10, as PixelCNN++)",
    "sigma": "decoder standard deviation (gaussian) or its initial value (gaussian-learned)",
    "prior": "auto (default: conditional when the model has a condition, else standard) | standard (N(0, I)) | "
             "conditional (a learned Gaussian p(z | c)) | mog (a learned mixture of Gaussians) | vamp (VampPrior, "
             "Tomczak & Welling 2018), or any registered prior",
    "prior_components": "components K of a mixture prior (default: mog 10, vamp 500 pseudo-inputs)",
    "prior_options": "the prior's own options as name=value pairs, e.g. scale=2 (a part you registered too)",
    "likelihood_options": "the likelihood's own options as name=value pairs, e.g. components=5",
    "free_bits": "free bits (Kingma et al., 2016): nats per latent dimension below which the ELBO's KL is not pressed",
    "beta": "weight of the KL term: 1 is the VAE, >1 the beta-VAE (Higgins et al., 2017), 0 an autoencoder; "
            "btcvae: weight of the total correlation (Chen et al., 2018)",
    "objective": "elbo (default) | iwae: the importance-weighted bound of Burda et al. (2015) with --iwae-k samples "
                 "| dreg: the same bound with doubly reparameterised encoder gradients (Tucker et al., 2019) "
                 "| m2: the semi-supervised bound of Kingma et al. (2014) (the m2 model's default) "
                 "| btcvae | factorvae | dip-vae-i | dip-vae-ii | capacity: disentangling objectives (--beta / --gamma / "
                 "--dip-lambda-od / --capacity-max)",
    "iwae_k": "samples per example of --objective iwae or dreg (default 5)",
    "kl_warmup": "epochs of linear KL annealing from 0 to 1 (Bowman et al., 2016)",
    "epochs": "epochs to train", "batch_size": "examples per step", "lr": "Adam learning rate (the peak of the schedule)",
    "lr_schedule": "cosine (default: from --lr down to 0 over --epochs, step by step) | constant | "
                   "burda (stage i of 3^i epochs at lr * 10^(-i/7), Burda et al. 2015)",
    "weight_decay": "Adam weight decay", "grad_clip": "clip the gradient norm to this value",
    "patience": "stop after this many epochs without validation improvement (and keep the best weights)",
    "seed": "random seed (data split, initialisation, sampling)",
    "device": "auto | cpu | cuda | cuda:N",
    "precision": "auto (measured: a short probe times float32 and, where native, bfloat16 with each step and thread "
                 "count on the model's own shapes, cached per machine, the choice in config.json; under torchrun or "
                 "on a GPU: bfloat16 where native) | float32 | bfloat16 (autocast)",
    "step": "auto (the fused MLP-VAE step where it covers the model, else autograd) | fused (or an error saying "
            "why not) | autograd",
    "compile": "use torch.compile", "stream": "read a .npy data set from its memory map in chunks (automatic when it does not fit in memory)",
    "out": "the run folder (default runs/DATA-PRESET)",
    "tensorboard": "write TensorBoard scalars to RUN/tb", "progress": "show a progress bar",
}


def temperatures(text: str):
    """--temperature: one number, or numbers separated by commas (one per latent group)."""
    parts = [t for t in text.replace(" ", "").split(",") if t]
    try:
        values = [float(t) for t in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or numbers separated by commas") from None
    if not values:
        raise argparse.ArgumentTypeError("give a number, or one per latent group separated by commas")
    return values[0] if len(values) == 1 and "," not in text else values


def _flag_type(type_text: str):
    t = str(type_text)
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    return str


def add_train_flags(p, *, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig setting (``--batch-size``, ``--no-progress``, ...), its help from HELP."""
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if str(f.type).startswith("bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=HELP.get(f.name))
        else:
            p.add_argument(flag, type=_flag_type(f.type), metavar=f.name.upper(), help=HELP.get(f.name))


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a VAE, beta-VAE or conditional VAE", argument_default=argparse.SUPPRESS,
                       description="Train a model. Settings come from --config FILE (YAML), then the flags.")
    p.add_argument("--config", help="a YAML file of settings (flags override it)")
    add_train_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--no-pictures", dest="pictures", action="store_false", help="skip the pictures at the end")
    p.set_defaults(func=cmd_train)

    a = sub.add_parser("aggregate", help="fit a trained run's aggregate posterior again (codes for sampling)",
                       description="Fit the aggregate posterior of a trained image run (a Gaussian mixture per class "
                                   "over the codes of up to 10,000 training examples) and write RUN/aggregate."
                                   "safetensors, which cvae sample and cvae evaluate then draw codes from. Training "
                                   "writes it; this is for runs trained before it did.")
    a.add_argument("run", help="the run folder")
    a.add_argument("--data-dir", help="where the run's data files are looked up first")
    a.add_argument("--device", default="cpu")
    a.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("sample", help="generate examples for chosen conditions")
    s.add_argument("run", help="the run folder")
    s.add_argument("--condition", help="e.g. label=7 or color=red,size=10; left out, a categorical condition cycles")
    s.add_argument("--n", type=int, default=64, help="how many examples (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--draw", action="store_true", help="draw x ~ p(x | z, c) instead of taking its mean")
    s.add_argument("--temperature", type=temperatures, default=None,
                   help="scale of the standard deviations of the codes' distribution: 1 samples it exactly; by "
                        "default 0.9 for the prior (samples more typical of their condition) and 1 for a fitted "
                        "aggregate posterior (--codes). A hierarchical model (--preset hvae) also takes one per latent "
                        "group, coarsest first: 1,1,0.8,0.6")
    s.add_argument("--codes", choices=["aggregate", "prior"], default=None,
                   help="z from the aggregate posterior fitted after training (RUN/aggregate.safetensors: codes where the "
                        "training examples' lie, the default where the run has it) or from the prior p(z | c)")
    s.add_argument("-o", "--output", required=True, help="a .png grid, an .npz (x plus conditions) or a .csv "
                   "(sequence runs: .csv with the requested and achieved properties, .smi, .txt or a .png)")
    s.add_argument("--decode", choices=["greedy", "sample", "beam"], default=None,
                   help="sequence runs: how tokens are chosen (default sample: each token drawn at "
                        "--token-temperature; greedy repeats itself)")
    s.add_argument("--beam", type=int, default=5, help="sequence runs: beams of --decode beam (default 5)")
    s.add_argument("--token-temperature", type=float, default=None,
                   help="sequence runs: temperature of each sampled token's distribution (default 0.5; with --draw "
                        "1, the model's own distribution)")
    s.add_argument("--guidance", type=float, default=None,
                   help="runs trained with --condition-dropout: classifier-free guidance weight w, the decoder's "
                        "p(x | z, c)^(1 + w) / p(x | z)^w (each token's, for sequences; default: the run's, set at "
                        "training)")
    s.add_argument("--steer", type=float, default=None,
                   help="sequence runs trained with --steer: weight of the prefix predictor's log p(c | prefix) added "
                        "to each token's (FUDGE); 0 turns it off (default: the run's)")
    s.add_argument("--within", metavar="PROPERTY=DISTANCE,...",
                   help="molecule runs: keep only molecules whose RDKit-computed property lies this near the "
                        "request (e.g. logp=0.3), generating more until --n are kept (at most 50 rounds)")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_sample)

    r = sub.add_parser("reconstruct", help="encode and decode inputs")
    r.add_argument("run", help="the run folder")
    r.add_argument("--input", required=True, help="a named data set (its test split), .npz/.npy/.csv, image folder "
                   "or image file; for a sequence run a string or a .txt/.smi file, one sequence per line")
    r.add_argument("--condition", help="use this condition instead of the input's own")
    r.add_argument("--n", type=int, help="only the first N examples (default: 16 for a .png, all otherwise)")
    r.add_argument("--data-dir")
    r.add_argument("-o", "--output", required=True, help="a .png (inputs above reconstructions), .npz or .csv")
    r.add_argument("--device", default="cpu")
    r.set_defaults(func=cmd_reconstruct)


def cmd_train(args) -> int:
    from ..api import train
    from ..config import read_yaml

    given = {k: v for k, v in vars(args).items() if k in TrainConfig.keys()}
    settings = read_yaml(args.config) if getattr(args, "config", None) else {}
    result = train(settings, resume=getattr(args, "resume", False), overwrite=getattr(args, "overwrite", False),
                   pictures=getattr(args, "pictures", True), **given)
    if result.rank:  # under torchrun only rank 0 reports
        return 0
    s = result.summary
    print(f"run folder: {result.run_dir}  ({s['epochs']} epochs, {s['seconds_per_epoch']:.2f} s per epoch"
          f"{', stopped early' if s['stopped_early'] else ''})")
    for split in ("train", "val", "test"):
        if split in s:
            v = s[split]
            print(f"  {split:5s} negative ELBO {v['loss']:9.3f} nats per example"
                  f"  (reconstruction {v['reconstruction']:.3f} + KL {v['kl']:.3f})")
    print(_step_line(result.run_dir))
    kl = s.get("val", s.get("train", {})).get("kl")
    if kl is not None and kl < COLLAPSED_KL:
        print(f"  note: the KL is {kl:.3f} nats per example: the posterior has collapsed (the decoder ignores z, "
              "every code decodes alike); train longer (leave out --epochs for the default length), lower --beta, "
              "or use --kl-warmup E or --free-bits F")
    if "pictures" in s:
        print("  pictures: " + ", ".join(str(p) for p in s["pictures"].values()))
    return 0


COLLAPSED_KL = 0.1  # nats per example: below it, no latent carries information worth a note


def _step_line(run_dir) -> str:
    """How the run trained, from its config.json: the step (and why not the fused one), the precision and
    the threads (a fall-back to the generic path was recorded there only)."""
    from ..runs import read_config

    cfg = read_config(run_dir)
    ex, train = cfg.get("execution") or {}, cfg.get("train") or {}
    step = ex.get("step", "autograd")
    if step == "fused-mlp":
        step += " (native)" if ex.get("native") is True else " (in Python: " + str(ex.get("native", "")) + ")"
    elif ex.get("step_reason"):
        step += f" (not the fused step: {ex['step_reason']})"
    chosen = " (measured by the probe)" if ex.get("probe") else ""
    threads = ex.get("threads")
    return (f"  step: {step}; {train.get('precision', 'float32')}{chosen}"
            + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""))


def cmd_aggregate(args) -> int:
    from ..api import fit_aggregate

    fit = fit_aggregate(args.run, data_dir=args.data_dir, device=args.device)
    print(f"wrote {args.run}/aggregate.safetensors: {sum(fit.counts)} codes, components per class "
          + ", ".join(f"{c} {k}" for c, k in zip(fit.classes, fit.components)))
    return 0


def cmd_sample(args) -> int:
    from ..api import load
    from ..apps import sample_to_file

    model = load(args.run, device=args.device)
    check_condition_args(model, args, "condition")
    if hasattr(model, "sample_strings"):
        return _sample_sequences(model, args)
    if args.within is not None:
        raise CvaeError("--within is for molecule runs (trained with --sequence smiles or selfies); leave it out")
    if args.decode is not None:
        raise CvaeError("--decode is for sequence runs (trained with --sequence); use --draw to sample x ~ p(x | z, c)")
    if args.token_temperature is not None:
        raise CvaeError("--token-temperature is for sequence runs (trained with --sequence); leave it out for this run")
    if args.steer is not None:
        raise CvaeError("--steer is for sequence runs (trained with --sequence ... --steer W); leave it out for this run")
    guidance = model.guidance_weight(args.guidance)  # refused (one line) for a run that cannot be guided
    model.sampling_codes(args.codes)  # refused (one line) where the run has no fit
    check_rows(model.config, args.n, f"--n {args.n}", "--n", hint=" (or write several files, each with its own --seed)")
    guard_outputs(model, condition_hint(model, args.condition))
    path = sample_to_file(model, args.output, n=args.n, condition=args.condition, seed=args.seed, mean=not args.draw,
                          temperature=args.temperature, guidance=guidance, codes=args.codes)
    print(f"wrote {path}")
    return 0


def _sample_sequences(model, args) -> int:
    from ..apps.sequences import parse_within, sample_to_file

    if not 1 <= args.n <= 1_000_000:
        raise CvaeError(f"--n must be from 1 to 1,000,000 sequences, got {args.n}")
    within = parse_within(model, args.within) if args.within is not None else None
    decode, token_temperature = token_choice(args)
    path, summary = sample_to_file(model, args.output, n=args.n, condition=args.condition, seed=args.seed,
                                   temperature=model.sampling_temperature(args.temperature),
                                   decode=decode, beam=args.beam,
                                   token_temperature=token_temperature, guidance=args.guidance, steer=args.steer,
                                   within=within)
    extra = ""
    if "valid" in summary:
        extra = f"; valid {summary['valid']:.1%}, unique {summary['unique']:.1%}" + "".join(
            f", {k.replace('_mae', '')} MAE {v:.3f}" for k, v in summary.items() if k.endswith("_mae") and v is not None)
    if within:
        extra += f"; kept of {summary['generated']:,} generated"
    print(f"wrote {path}  ({summary['n']} sequences{extra})")
    if summary.get("left_out_empty"):
        print(f"note: {summary['left_out_empty']} of them decoded to an empty sequence and are not in {path} (one "
              "sequence a line; the .csv output keeps every one)")
    if "valid" in summary and summary["valid"] < 0.5:
        steered = model.steer_weight(args.steer) if hasattr(model, "steer_weight") else 0
        print(f"note: only {summary['valid']:.0%} of the samples are valid molecules (a SELFIES string of branch "
              "or ring tokens alone decodes to none); ask for values nearer the training data's"
              + (f", or steer less (--steer, {steered:g} now)" if steered else ""))
    if within and summary["n"] < args.n:
        print(f"note: only {summary['n']} of the {args.n} asked for came within --within {args.within} in "
              f"{summary['generated']:,} generated; widen the distances or ask for values nearer the training data's")
    return 0


def cmd_reconstruct(args) -> int:
    from ..api import load
    from ..apps import reconstruct_file

    model = load(args.run, device=args.device)
    check_condition_args(model, args, "condition")
    if hasattr(model, "sample_strings"):
        return _reconstruct_sequences(model, args)
    guard_outputs(model, condition_hint(model, args.condition))
    path = reconstruct_file(model, args.input, args.output, condition=args.condition, n=args.n, data_dir=args.data_dir)
    print(f"wrote {path}")
    return 0


def _reconstruct_sequences(model, args) -> int:
    """Sequences given with --input (a string, or a .txt/.smi file) encoded with their --condition and
    decoded greedily: a .csv of input, reconstruction and whether they are the same."""
    from ..apps.sequences import (
        given_conditions,
        read_strings,
        reconstruct_strings,
        sequence_column,
        write_rows,
    )

    names, texts = read_strings(args.input, "--input", sequence_column(model))
    if args.n is not None:
        if args.n < 1:
            raise CvaeError(f"--n must be a positive number of sequences, got {args.n}")
        names, texts = names[:args.n], texts[:args.n]
    y = given_conditions(model, args.condition, texts, names=names, source=args.input)
    rows = reconstruct_strings(model, texts, y, names=names)
    out = write_rows(args.output, rows)
    same = sum(r["same"] for r in rows)
    print(f"wrote {out}  ({len(rows)} sequence(s), {same} reconstructed exactly)")
    return 0


def _dump(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
