"""How a trained text run's sentences depend on the token choice: greedy, or sampled at temperatures.

For a run of `benchmarks/text.py` (a sequence run conditioned on a language), generates `--per-label`
sentences per language with each decoding and reports how often the benchmark's independent classifier
(character n-grams, naive Bayes, trained here on the run's real training sentences) reads the requested
language, the share of distinct sentences, and the share not copied from the training set.

    python benchmarks/text_decoding.py runs/bench-text-steer --json benchmarks/results/text-decoding.json

Prints one line per decoding.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from text import classifier  # noqa: E402

from cvae.evaluate import load_run_data  # noqa: E402
from cvae.probe import cpu_name  # noqa: E402
from cvae.runs import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--per-label", type=int, default=200)
    p.add_argument("--decodings", default="greedy,sample@1,sample@0.7,sample@0.5",
                   help="greedy, or sample@T (tokens drawn at temperature T)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    model = load_model(args.run)
    data = load_run_data(model)
    attribute = model.schema.attributes[0]
    classes = attribute.classes
    train_text = data.meta["strings"]["train"]
    clf = classifier(train_text, [classes[int(v)] for v in data.train.y[:, 0]])
    seen = set(train_text)
    rows = []
    for spec in args.decodings.split(","):
        how, _, t = spec.partition("@")
        accuracy, texts = [], []
        for j, label in enumerate(classes):
            got, _ = model.sample_strings(args.per_label, {attribute.name: label}, seed=j, decode=how,
                                          token_temperature=float(t or 1))
            accuracy.append(float(np.mean(clf.predict(got) == label)))
            texts += got
        row = {"decoding": spec, "conditional_accuracy": float(np.mean(accuracy)),
               "distinct": len(set(texts)) / len(texts), "novel": float(np.mean([s not in seen for s in texts])),
               "examples": texts[:: args.per_label][:4]}
        rows.append(row)
        print(f"{spec:<12} conditional accuracy {row['conditional_accuracy']:.3f}  distinct {row['distinct']:.3f}  "
              f"novel {row['novel']:.3f}  e.g. {row['examples'][0]!r}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"run": args.run, "per_label": args.per_label, "machine": cpu_name(),
                                               "steer": model.config.steer, "rows": rows,
                                               "command": "python benchmarks/text_decoding.py " + " ".join(sys.argv[1:])},
                                              indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
