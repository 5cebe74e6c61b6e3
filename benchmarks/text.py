"""Sentences in a requested language: the sequence VAE on the ChatterBot corpus, measured.

Trains the sequence model (characters, GRU encoder and decoder, conditional prior p(z | c)) on the
utterances of the chatterbot-corpus package in the Latin-script languages that have at least 200
distinct utterances (english, italian, spanish, portuguese, dutch, indonesian, turkish, german),
conditioned on the language, and measures on the held-out 10%:

- the importance-sampled NLL per sentence and per token (tokens counted with each sentence's <eos>,
  as Bowman et al. 2016) and the perplexity bound exp(NLL per token), the KL and the active units,
  all from `cvae evaluate --metrics elbo,nll,posterior` (the code a user runs);
- beside it the same decoder as a plain (conditional) language model: the run's architecture, with z
  fixed to 0 and no encoder, trained by the same optimiser for the same epochs and batches; its NLL is
  exact. This is Bowman et al. 2016's comparison (their Table 2: VAE vs RNNLM on the Penn Treebank);
- conditional accuracy: an independent classifier (character 1-4-gram counts, multinomial naive Bayes
  from scikit-learn) is trained here on the real training sentences; it reads N sentences generated per
  language (z ~ p(z | c), sampled decoding). Beside it: the classifier's accuracy on real held-out
  sentences (the ceiling) and, as a control, how often it reads the requested language in sentences
  the model generated for another language.

Run (about 30 minutes on one core shared with other jobs; an epoch took 2.4 min):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/text.py --epochs 8

Writes benchmarks/results/text-chatterbot.json and .txt.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from cvae.api import train  # noqa: E402
from cvae.evaluate import evaluate_run, load_run_data  # noqa: E402
from cvae.models import SeqVAE  # noqa: E402
from cvae.probe import cpu_name  # noqa: E402
from cvae.runs import load_model  # noqa: E402

LANGUAGES = ("english", "italian", "spanish", "portuguese", "dutch", "indonesian", "turkish", "german")
# Bowman et al. 2016, Table 2 (Penn Treebank, words, standard decoder): NLL per sentence (KL) and perplexity.
BOWMAN_PTB = {"rnnlm": {"nll": 100, "ppl": 116}, "vae": {"nll": 101, "kl": 2, "ppl": 119}}




def train_language_model(vae, data, *, epochs: int, batch_size: int, lr: float, seed: int) -> tuple[SeqVAE, float]:
    """The run's decoder as a plain conditional language model: a fresh model of the same config, z = 0,
    trained on -log p(x | z=0, c) (the encoder and prior are unused)."""
    torch.manual_seed(seed)
    lm = SeqVAE(vae.config)
    lm.train()
    params = [p for n, p in lm.named_parameters() if not n.startswith(("encoder", "to_q", "prior"))]
    opt = torch.optim.Adam(params, lr=lr)
    x, c = data.train.x, vae.schema.encode(data.train.y)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            z = torch.zeros(len(idx), vae.config.latent_dim)
            loss = -lm.p_x(z, c[idx]).log_prob(x[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    lm.eval()
    return lm, time.perf_counter() - t0


@torch.no_grad()
def language_model_nll(lm, schema, part) -> dict:
    c = schema.encode(part.y)
    z = torch.zeros(len(part.x), lm.config.latent_dim)
    nll = -lm.p_x(z, c).log_prob(part.x).double()
    tokens = (part.x != 0).sum(1).double()
    per_token = float(nll.sum() / tokens.sum())
    return {"nll_per_sentence": float(nll.mean()), "nll_per_token": per_token, "perplexity": math.exp(per_token)}


def classifier(train_texts, train_labels):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(CountVectorizer(analyzer="char_wb", ngram_range=(1, 4), lowercase=True), MultinomialNB(alpha=0.1))
    return clf.fit(train_texts, train_labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--languages", default=",".join(LANGUAGES))
    p.add_argument("--condition", default="language", choices=("language", "topic"),
                   help="topic: give one language (--languages english)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64, help="characters; longer utterances are skipped")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--k", type=int, default=25, help="importance samples per held-out sentence")
    p.add_argument("--per-label", type=int, default=200, help="sentences generated per language")
    p.add_argument("--token-temperature", type=float, default=1.0,
                   help="of each generated token (default 1: the model's own distribution; cvae sample's is 0.5)")
    p.add_argument("--steer", type=float, default=0.0,
                   help="train a prefix predictor of the language (FUDGE) and steer with this weight by default")
    p.add_argument("--steer-weights", default="",
                   help="with --steer: the conditional accuracy also at these weights, e.g. 0,1,4")
    p.add_argument("--no-language-model", dest="language_model", action="store_false",
                   help="skip the same decoder trained as a language model (10 min)")
    p.add_argument("--out", default="runs/bench-text-chatterbot")
    p.add_argument("--results", default=str(HERE / "results" / "text-chatterbot"))
    args = p.parse_args()
    settings = dict(data=f"chatterbot:{args.languages}", sequence="text", condition=args.condition, tokenizer="char",
                    max_length=args.max_length, epochs=args.epochs, batch_size=64, lr=2e-3, hidden=[args.hidden],
                    latent_dim=args.latent_dim, kl_warmup=4, word_dropout=0.25, free_bits=0.05, seed=0,
                    out=args.out, progress=False, device="cpu", precision="float32",
                    steer=args.steer)  # 0 unless asked (cvae train's default is 2): the unsteered figures reproduce
    t0 = time.perf_counter()
    train(overwrite=True, pictures=False, **settings)
    train_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    ev = evaluate_run(args.out, metrics="elbo,nll,posterior", k=args.k, seed=0).results
    eval_seconds = time.perf_counter() - t1
    model = load_model(args.out)
    data = load_run_data(model)
    lik, post = ev["likelihood"], ev["posterior"]

    def value(section, key):
        v = section.get(key)
        return v.get("value") if isinstance(v, dict) else v

    vae = {"nll_per_sentence": value(lik, "importance_sampled_nll"), "nll_per_token": value(lik, "nll_per_token"),
           "perplexity_bound": value(lik, "perplexity_bound"), "negative_elbo": value(lik, "negative_elbo"),
           "kl": value(post, "kl_total"), "active_units": value(post, "active_units"),
           "tokens_per_sentence": value(lik, "tokens_per_sequence")}

    if args.language_model:
        lm, lm_seconds = train_language_model(model, data, epochs=args.epochs, batch_size=settings["batch_size"],
                                              lr=settings["lr"], seed=0)
        lm_scores = language_model_nll(lm, model.schema, data.val)
    else:
        lm_seconds, lm_scores = 0.0, {"nll_per_sentence": None, "nll_per_token": None, "perplexity": None}  # "-"

    # the independent classifier: trained on the real training sentences, read on held-out ones (the ceiling)
    classes = model.schema.attributes[0].classes
    tr_text, va_text = data.meta["strings"]["train"], data.meta["strings"]["val"]
    tr_lab = [classes[int(v)] for v in data.train.y[:, 0]]
    va_lab = [classes[int(v)] for v in data.val.y[:, 0]]
    clf = classifier(tr_text, tr_lab)
    real_pred = clf.predict(va_text)
    real = {lang: (float(np.mean([p == lang for p, t in zip(real_pred, va_lab) if t == lang]))
                   if lang in va_lab else None) for lang in classes}  # None: no held-out utterance of that class

    def read_back(steer):
        """Per label: the share of sentences generated for it that the classifier reads as it, and of
        sentences generated for another label (the control)."""
        generated, control, empty, examples = {}, {}, 0, {}
        rng = np.random.default_rng(0)
        for j, lang in enumerate(classes):
            texts, _ = model.sample_strings(args.per_label, {args.condition: lang}, seed=j, decode="sample",
                                            token_temperature=args.token_temperature, steer=steer)
            empty += sum(not t for t in texts)
            generated[lang] = float(np.mean(clf.predict(texts) == lang))
            examples[lang] = texts[:5]
            others = [c for c in classes if c != lang]
            wrong = [others[i] for i in rng.integers(len(others), size=args.per_label)]
            texts_w = []
            for other in sorted(set(wrong)):
                t, _ = model.sample_strings(wrong.count(other), {args.condition: other}, seed=100 + j,
                                            decode="sample", token_temperature=args.token_temperature,
                                            steer=steer)
                texts_w += t
            control[lang] = float(np.mean(clf.predict(texts_w) == lang))
        return generated, control, empty, examples

    generated, control, empty, examples = read_back(None)  # the run's default steering weight
    by_steer = {}
    for w in [float(v) for v in args.steer_weights.split(",") if v.strip()]:
        g, c, _, e = read_back(w)
        by_steer[f"{w:g}"] = {"mean": float(np.mean(list(g.values()))), f"per_{args.condition}": g,
                              "wrong_label_mean": float(np.mean(list(c.values()))), "examples": {k: v[:3] for k, v in e.items()}}

    transfer = {}
    from cvae.apps.sequences import transfer_strings

    for text, own in (("How are you doing?", "english"), ("What is your favorite book?", "english")):
        if own in classes and args.condition == "language":
            rows = transfer_strings(model, [text], f"language={own}", [f"language={c}" for c in classes if c != own])
            transfer[text] = {r["target"].split("=", 1)[1]: r["output"] for r in rows}

    metrics = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((Path(args.out) / "config.json").read_text())["data"]
    report = {
        "machine": cpu_name(), "threads": torch.get_num_threads(), "shared_with_other_jobs": True,
        "torch": torch.__version__, "command": "OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/text.py "
        + " ".join(sys.argv[1:]), "settings": settings, "data": summary,
        "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "lm_train_seconds": round(lm_seconds, 1), "last_epoch": metrics[-1], "k": args.k,
        "vae": vae, "language_model": lm_scores, "bowman_ptb_published": BOWMAN_PTB,
        "classifier": {"kind": "character 1-4-grams (char_wb), multinomial naive Bayes alpha 0.1 (scikit-learn)",
                       "held_out_accuracy": float(np.mean(real_pred == np.array(va_lab))),
                       f"held_out_per_{args.condition}": real},
        "conditional_accuracy": {f"per_{args.condition}": generated, "mean": float(np.mean(list(generated.values()))),
                                 "decode": "sample", "temperature": args.token_temperature,
                                 "per_label": args.per_label,
                                 "steer": model.config.steer,
                                 "empty_share": empty / (args.per_label * len(classes))},
        "wrong_label_control": {f"per_{args.condition}": control, "mean": float(np.mean(list(control.values())))},
        "examples": examples, "transfer": transfer, "conditional_accuracy_by_steer": by_steer,
    }
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    n_train, n_val = len(tr_text), len(va_text)

    def lm(key, spec):  # the language model's column: "-" when it was not trained (--no-language-model)
        return f"{'-':>20}" if lm_scores[key] is None else f"{lm_scores[key]:20{spec}}"

    lines = [
        f"ChatterBot corpus ({args.languages}), conditioned on the {args.condition}, {len(classes)} classes "
        f"({', '.join(classes)}), utterances of <= {args.max_length} "
        f"characters: {n_train} training / {n_val} held-out sentences; {args.epochs} epochs; {report['machine']}, "
        f"{report['threads']} thread(s) shared with other jobs; training {train_seconds / 60:.1f} min, evaluation "
        f"{eval_seconds / 60:.1f} min, language model {lm_seconds / 60:.1f} min",
        f"command: {report['command']}",
        f"held-out, nats            {'VAE (IS, k=' + str(args.k) + ')':>18}{'same decoder as LM':>20}",
        f"NLL per sentence          {vae['nll_per_sentence']:18.2f}{lm('nll_per_sentence', '.2f')}",
        f"NLL per token             {vae['nll_per_token']:18.4f}{lm('nll_per_token', '.4f')}",
        f"perplexity (bound for VAE){vae['perplexity_bound']:18.3f}{lm('perplexity', '.3f')}",
        f"KL per sentence           {vae['kl']:18.3f}{'-':>20}",
        f"active units              {vae['active_units']!s:>18}{'-':>20}",
        f"negative ELBO             {vae['negative_elbo']:18.2f}{'-':>20}",
        "Bowman et al. 2016 (PTB words, another corpus): RNNLM NLL 100 / PPL 116, VAE NLL 101 (KL 2) / PPL 119",
        f"classifier held-out accuracy (real sentences, the ceiling): {report['classifier']['held_out_accuracy']:.3f}",
        f"{args.condition:<14}{'real held-out':>15}{'generated':>12}{'wrong label':>13}",
    ]
    for lang in classes:
        shown = f"{real[lang]:15.3f}" if real[lang] is not None else f"{'-':>15}"
        lines.append(f"{lang:<14}{shown}{generated[lang]:12.3f}{control[lang]:13.3f}")
    lines.append(f"{'mean':<14}{np.mean([v for v in real.values() if v is not None]):15.3f}{report['conditional_accuracy']['mean']:12.3f}"
                 f"{report['wrong_label_control']['mean']:13.3f}")
    lines.append(f"empty generated sentences: {report['conditional_accuracy']['empty_share']:.3f}"
                 + (f"; steered with weight {model.config.steer:g} (the run's default)" if model.config.steer else ""))
    for w, r in by_steer.items():
        lines.append(f"steer {w}: conditional accuracy {r['mean']:.3f} (per {args.condition}: "
                     + ", ".join(f"{k} {v:.3f}" for k, v in r[f"per_{args.condition}"].items())
                     + f"), wrong label {r['wrong_label_mean']:.3f}")
    for lang in classes:
        lines.append(f"  {lang}: " + " | ".join(examples[lang][:3]))
    text = "\n".join(lines)
    out.with_suffix(".txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
