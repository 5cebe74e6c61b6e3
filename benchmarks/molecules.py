"""Molecules for requested properties on a QM9 subset: the MOSES metrics and logP / QED control.

Trains the sequence model (SELFIES tokens, GRU encoder and decoder, conditional prior) on a seeded
subset of QM9 (read from the qm9pack package's files) with logP and QED computed by RDKit as the
conditions, then measures with `cvae evaluate --metrics molecules` (greedy decoding) and the same
metrics with token-by-token sampling:

    validity, unique@1k / @10k, novelty (against the training split), IntDiv1, FCD (to the validation
    split), and property control: MAE and Spearman's rho between requested and achieved logP / QED
    over 9 requests (5% .. 95% quantiles of the training values) x 100 molecules.

Run (about 20 minutes on one core):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/molecules.py --limit 30000 --epochs 20

Writes benchmarks/results/molecules-qm9.json and .txt, and docs/images/molecules-logp.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from cvae.api import train  # noqa: E402
from cvae.evaluate import evaluate_run  # noqa: E402
from cvae.runs import load_model  # noqa: E402

# MOSES benchmark, Table 2 (Polykovskiy et al. 2020), its VAE row on the full MOSES set.
MOSES_VAE = {"validity": 0.953, "unique@1k": 1.0, "unique@10k": 0.999, "fcd_test": 0.254, "novelty": 0.695,
             "int_div": 0.856}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown"


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=30000, help="training + validation molecules drawn from QM9")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--molecules", type=int, default=10000, help="molecules generated for the metrics")
    p.add_argument("--out", default="runs/bench-molecules-qm9")
    p.add_argument("--results", default=str(HERE / "results" / "molecules-qm9"))
    p.add_argument("--picture", default=str(ROOT / "docs" / "images" / "molecules-logp.png"))
    args = p.parse_args()
    settings = dict(data="qm9", sequence="smiles", condition="logp,qed", tokenizer="selfies", limit=args.limit,
                    epochs=args.epochs, batch_size=128, lr=3e-3, kl_warmup=5, word_dropout=0.1, free_bits=0.05,
                    seed=0, out=args.out, progress=False, device="cpu", precision="float32")
    t0 = time.perf_counter()
    result = train(overwrite=True, pictures=True, **settings)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    ev = evaluate_run(args.out, metrics="elbo,posterior,molecules", k=1, molecules=args.molecules, seed=0,
                      temperature=1.0).results
    eval_seconds = time.perf_counter() - t1

    # the same metrics with token-by-token sampling instead of greedy decoding
    from cvae.evaluate import load_run_data
    from cvae.seqmetrics import molecule_metrics, property_control

    model = load_model(args.out)
    data = load_run_data(model)
    g = torch.Generator().manual_seed(0)
    y = data.train.y[torch.randint(len(data.train.y), (args.molecules,), generator=g)]
    strings, _ = model.sample_strings(args.molecules, y, seed=0, temperature=1.0, decode="sample")
    sampled = molecule_metrics(strings, set(data.meta["strings"]["train"]), data.meta["strings"]["val"], seed=0)
    sampled["property_control"] = property_control(model, data.train.y, seed=0, temperature=1.0, decode="sample")
    picture = logp_picture(model, Path(args.picture))

    metrics = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    report = {
        "machine": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "settings": settings, "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "data": result.summary.get("data") or json.loads((Path(args.out) / "config.json").read_text())["data"],
        "last_epoch": metrics[-1],
        "greedy": ev["molecules"], "sampled": sampled, "posterior": {
            k: ev["posterior"][k] for k in ("active_units", "kl_total") if k in ev["posterior"]},
        "moses_vae_published": MOSES_VAE, "picture": str(picture),
    }
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"QM9 subset: {report['data'].get('n_train')} training / {report['data'].get('n_val')} validation "
             f"molecules, {args.epochs} epochs, {report['machine']}, {report['threads']} thread(s); "
             f"training {train_seconds / 60:.1f} min, evaluation {eval_seconds / 60:.1f} min",
             f"last epoch: val negative ELBO {metrics[-1].get('val_loss', float('nan')):.3f} nats, val KL "
             f"{metrics[-1].get('val_kl', float('nan')):.3f}, active units {metrics[-1].get('val_active_units')}",
             f"{'metric':<14}{'greedy':>10}{'sampled':>10}{'MOSES VAE (full MOSES)':>26}"]
    for key in ("validity", "unique@1k", "unique@10k", "novelty", "int_div", "fcd"):
        def fmt(v):
            return f"{v:10.4f}" if isinstance(v, (int, float)) else f"{'-':>10}"
        pub = MOSES_VAE.get("fcd_test" if key == "fcd" else key)
        lines.append(f"{key:<14}{fmt(ev['molecules'].get(key))}{fmt(sampled.get(key))}{fmt(pub):>26}")
    for prop in ("logp", "qed"):
        for name, sec in (("greedy", ev["molecules"].get("property_control", {})),
                          ("sampled", sampled["property_control"])):
            c = sec.get(prop)
            if c:
                lines.append(f"{prop} control ({name}): MAE {c['mae']:.3f} (training std {c['train_std']:.3f}), "
                             f"Spearman {c['spearman']:.3f}, {c['n_valid']} valid molecules")
    text = "\n".join(lines)
    out.with_suffix(".txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
