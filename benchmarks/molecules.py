"""Molecules for requested properties on a QM9 or MOSES subset: the MOSES metrics and logP / QED control.

Trains the sequence model (SELFIES tokens, GRU encoder and decoder, conditional prior) on a seeded
subset of QM9 or MOSES (read from the qm9pack / molsets packages' files) with logP and QED computed by
RDKit as the conditions, then measures it with `cvae evaluate --metrics molecules` (the function the
command runs, once per decoding setting: greedy, and token-by-token sampling at prior temperatures):

    validity, unique@1k / @10k, novelty (against the training split), IntDiv1, FCD (to the validation
    split), and property control: MAE and Spearman's rho between requested and achieved logP / QED
    over 9 requests (5% .. 95% quantiles of the training values) x 100 molecules. On MOSES also
    MOSES's own novelty (against its whole training file) and FCD/Test (to its test set's statistics).

Run (one thread; about 30 minutes for QM9, see the README for MOSES):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/molecules.py --limit 25000 --epochs 20
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/molecules.py --data moses --limit 14000 --epochs 8
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/molecules.py --data moses --limit 20000 --epochs 10 \
        --kl-warmup 1 --condition-dropout 0.2 --guidance 1 --settings sample:1,sample:1:g0,sample:1:g2 \
        --out runs/bench-molecules-moses-guided --results benchmarks/results/molecules-moses-guided \
        --picture docs/images/molecules-logp-moses-guided.png

Writes benchmarks/results/molecules-DATA.json and .txt and docs/images/molecules-logp[-moses].png (with
--out and no --picture: that picture in the --out folder, so other runs never replace the README's);
--eval-only measures an already trained --out run again (e.g. at other --settings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from cvae.api import train  # noqa: E402
from cvae.evaluate import evaluate_run, load_run_data  # noqa: E402
from cvae.probe import cpu_name  # noqa: E402
from cvae.runs import load_model  # noqa: E402

# MOSES benchmark, Table 2 (Polykovskiy et al. 2020), its VAE row on the full MOSES set.
MOSES_VAE = {"validity": 0.953, "unique@1k": 1.0, "unique@10k": 0.999, "fcd_test": 0.254, "novelty": 0.695,
             "int_div": 0.856}




def logp_picture(model, path: Path, values=(-1.0, 0.0, 1.0, 2.0), per_row: int = 6, seed: int = 0) -> Path:
    """Rows of molecules generated at requested logP values (QED at its training median), each
    labelled with its achieved logP."""
    from rdkit.Chem import Draw

    from cvae.chem import canonical, mol, properties

    mols, legends = [], []
    for v in values:
        strings, _ = model.sample_strings(4 * per_row, {"logp": v}, seed=seed)
        seen = []
        for s in strings:
            c = canonical(s)
            if c and c not in seen:
                seen.append(c)
            if len(seen) == per_row:
                break
        got = properties(seen, ["logp"])[:, 0]
        for s, g in zip(seen, got):
            mols.append(mol(s))
            legends.append(f"asked {v:+.1f}, got {g:+.2f}")
        for _ in range(per_row - len(seen)):
            mols.append(mol("C"))
            legends.append("(no further distinct molecule)")
    img = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(210, 160), legends=legends)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(str(path))
    return path


def parse_settings(spec: str) -> list[tuple[str, float, float | None, float, float | None]]:
    """``greedy:1,sample:1,sample:1:g2:t0.7:s2`` -> [(decode, prior temperature, guidance weight or None,
    token temperature, steering weight or None), ...] (None: the run's default; token temperature 1
    unless tT)."""
    out = []
    for part in spec.split(","):
        decode, *rest = part.strip().split(":")
        extra = {f[0]: f[1:] for f in rest[1:] if f[:1] in ("g", "t", "s")}
        if decode not in ("greedy", "sample", "beam") or len(extra) != len(rest[1:]):
            raise SystemExit(f"--settings: {part!r} is not DECODE:TEMPERATURE[:gWEIGHT][:tTOKEN_TEMPERATURE][:sSTEER] "
                             "with DECODE greedy, sample or beam")
        out.append((decode, float(rest[0] if rest and rest[0] else 1.0),
                     float(extra["g"]) if "g" in extra else None, float(extra.get("t", 1.0)),
                     float(extra["s"]) if "s" in extra else None))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=["qm9", "moses"], default="qm9")
    p.add_argument("--limit", type=int, default=30000, help="training molecules drawn (the validation split adds 1/9)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden", type=int, default=256, help="GRU width")
    p.add_argument("--molecules", type=int, default=10000, help="molecules generated for the metrics")
    p.add_argument("--settings", default="greedy:1,sample:1",
                   help="decodings measured, DECODE:PRIOR_TEMPERATURE[:gGUIDANCE], comma-separated (default "
                        "greedy:1,sample:1; sample:1:g2:t0.7 samples with classifier-free guidance weight 2, tokens at "
                        "temperature 0.7)")
    p.add_argument("--kl-warmup", type=float, default=5, help="epochs of KL annealing (default 5)")
    p.add_argument("--condition-dropout", type=float, default=0.0,
                   help="share of training molecules whose decoder sees no condition (classifier-free guidance)")
    p.add_argument("--guidance", type=float, default=0.0, help="the run's default guidance weight (default 0)")
    p.add_argument("--steer", type=float, default=0.0,
                   help="train a prefix predictor and make this the run's default steering weight (FUDGE; default 0: none, "
                        "unlike cvae train's 2, so that the earlier unsteered measurements reproduce)")
    p.add_argument("--word-dropout", type=float, default=0.1, help="Bowman's word dropout (default 0.1)")
    p.add_argument("--free-bits", type=float, default=0.05,
                   help="nats per latent dimension below which the KL is not pushed down (default 0.05)")
    p.add_argument("--eval-only", action="store_true", help="measure the trained run in --out again, no training")
    p.add_argument("--out", help="the run folder (default runs/bench-molecules-DATA)")
    p.add_argument("--results", help="results path without suffix (default benchmarks/results/molecules-DATA)")
    p.add_argument("--picture", help="the logP picture (default docs/images/molecules-logp.png, -moses for MOSES, "
                                     "or that name in --out when --out is given)")
    args = p.parse_args()
    out_dir = args.out or f"runs/bench-molecules-{args.data}"
    results = Path(args.results or HERE / "results" / f"molecules-{args.data}")
    # the README's pictures are the default runs'; any other --out keeps its picture in its own folder
    picture_name = f"molecules-logp{'' if args.data == 'qm9' else '-' + args.data}.png"
    picture_path = Path(args.picture or (Path(out_dir) if args.out else ROOT / "docs" / "images") / picture_name)
    extra = dict(condition_dropout=args.condition_dropout, guidance=args.guidance) if args.condition_dropout else {}
    extra["steer"] = args.steer  # 0 unless asked: the measurements before steering stay reproducible
    settings = dict(data=args.data, sequence="smiles", condition="logp,qed", tokenizer="selfies", limit=args.limit,
                    epochs=args.epochs, batch_size=128, lr=3e-3, kl_warmup=args.kl_warmup,
                    word_dropout=args.word_dropout, free_bits=args.free_bits, hidden=[args.hidden], seed=0, out=out_dir, progress=False, device="cpu", precision="float32", **extra)
    train_seconds = None
    if not args.eval_only:
        t0 = time.perf_counter()
        train(overwrite=True, pictures=True, **settings)
        train_seconds = time.perf_counter() - t0
    else:
        settings = {**settings, **{k: v for k, v in json.loads((Path(out_dir) / "config.json").read_text())["train"].items()
                                   if k in settings and k != "out"
                                   or k in ("condition_dropout", "guidance", "steer") and v is not None}}
    model = load_model(out_dir)
    picture = logp_picture(model, picture_path, values=(-1.0, 0.0, 1.0, 2.0) if args.data == "qm9"
                           else (1.0, 2.0, 3.0, 4.0))
    data = load_run_data(model)  # once for every setting (minutes on MOSES: canonical SMILES, SELFIES, QED)
    measured, posterior = {}, None
    for decode, temp, guidance, token_temp, steer in parse_settings(args.settings):  # rewritten after each setting
        ev = evaluate_run(out_dir, metrics="molecules" if posterior else "elbo,posterior,molecules", k=1,
                          molecules=args.molecules, seed=0, temperature=temp, decode=decode, data=data,
                          guidance=guidance, token_temperature=token_temp, steer=steer).results
        used, steered = ev["molecules"]["protocol"]["guidance"], ev["molecules"]["protocol"]["steer"]
        measured[f"{decode}@{temp:g}" + (f"/g{used:g}" if used else "") + (f"/t{token_temp:g}" if token_temp != 1
                                                                          else "")
                 + (f"/s{steered:g}" if steered else "")] = ev["molecules"]  # its "seconds": the section's own time
        posterior = posterior or {k: ev["posterior"][k] for k in ("active_units", "kl_total", "reconstructed_exactly",
                                                                  "tokens_reconstructed") if k in ev["posterior"]}
        write_report(args, settings, out_dir, results, train_seconds, measured, posterior, picture)


def write_report(args, settings, out_dir, results, train_seconds, measured, posterior, picture) -> None:
    metrics = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((Path(out_dir) / "config.json").read_text())
    train_seconds = train_seconds if train_seconds is not None else sum(m.get("seconds", 0) for m in metrics)
    report = {
        "machine": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "shared": "the machine's 2 cores were shared with other jobs", "settings": settings,
        "train_seconds": round(train_seconds, 1), "data": config.get("data"), "last_epoch": metrics[-1],
        "evaluations": measured, "posterior": posterior, "moses_vae_published": MOSES_VAE, "picture": str(picture),
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=src python " + " ".join(sys.argv),
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    data_info = report["data"] or {}
    lines = [f"{args.data.upper()} subset: {data_info.get('n_train')} training / {data_info.get('n_val')} validation "
             f"molecules, {len(metrics)} epochs, {report['machine']}, {report['threads']} thread(s), shared with "
             f"other jobs; training {train_seconds / 60:.1f} min; {args.molecules} molecules per evaluation",
             f"last epoch: val negative ELBO {metrics[-1].get('val_loss', float('nan')):.3f} nats, val KL "
             f"{metrics[-1].get('val_kl', float('nan')):.3f}, active units {metrics[-1].get('val_active_units')}"
             + "".join(f"; {posterior[k]['name']}: {posterior[k]['value']:.3f}" for k in
                       ("reconstructed_exactly", "tokens_reconstructed") if k in (posterior or {})),
             f"command: {report['command']}",
             f"{'metric':<22}" + "".join(f"{k:>12}" for k in measured) + f"{'MOSES VAE (full MOSES)':>26}"]

    def fmt(v):
        return f"{v:12.4f}" if isinstance(v, (int, float)) else f"{'-':>12}"

    for key in ("validity", "unique@1k", "unique@10k", "novelty", "novelty_moses_train", "int_div", "fcd",
                "fcd_moses_test", "seconds"):
        if not any(key in m for m in measured.values()):
            continue
        pub = MOSES_VAE.get({"fcd_moses_test": "fcd_test", "novelty_moses_train": "novelty"}.get(key, key))
        lines.append(f"{key:<22}" + "".join(fmt(m.get(key)) for m in measured.values())
                     + (f"{fmt(pub):>26}" if key not in ("fcd", "novelty", "seconds") else ""))
    for prop in ("logp", "qed"):
        for name, m in measured.items():
            c = m.get("property_control", {}).get(prop)
            if c:
                lines.append(f"{prop} control ({name}): MAE {c['mae']:.3f} (training std {c['train_std']:.3f}), "
                             f"Spearman {c['spearman']:.3f}, {c['n_valid']} valid molecules")
    text = "\n".join(lines)
    results.with_suffix(".txt").write_text(text + "\n")
    print(text)



if __name__ == "__main__":
    main()
