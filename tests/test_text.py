"""Text (issue 13): the ChatterBot corpus as a labelled sequence source (--data chatterbot[:LANGUAGES]),
sentences per language through the command line, and bad text input: an empty cell, a character never
seen in training, a sentence longer than the model's maximum. A small subset (German and Swedish, about
360 utterances) keeps it fast.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import need_module

need_module("chatterbot_corpus", "python -m pip install --no-deps chatterbot-corpus==1.3.3")

import yaml  # noqa: E402

from cvae.cli import main  # noqa: E402
from cvae.data.sequences import load_sequences  # noqa: E402
from cvae.errors import CvaeError  # noqa: E402

SUBSET = "chatterbot:german,swedish"


def cli(*args):
    """``cvae ARGS`` in this process: its exit status and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _corpus_by_hand(language: str) -> dict[str, str]:
    """Distinct utterances of one language -> the first topic they appear under, read straight from the YAML."""
    import chatterbot_corpus

    first = {}
    for path in sorted(Path(chatterbot_corpus.__file__).parent.joinpath("data", language).glob("*.yml")):
        for conv in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            for u in [conv] if isinstance(conv, str) else conv:
                first.setdefault(" ".join(str(u).split()), path.stem)
    return first


# -- the source ------------------------------------------------------------------------------------------
def test_chatterbot_rows_are_the_distinct_utterances_with_language_and_topic():
    data = load_sequences(SUBSET, sequence="text", condition="language,topic", val_fraction=0.1, seed=0, quiet=True)
    assert data.meta["sequences"]["tokenizer"] == "char"  # the default for this multilingual corpus
    names = {a.name: a for a in data.schema.attributes}
    assert names["language"].classes == ["german", "swedish"]
    strings = data.meta["strings"]["train"] + data.meta["strings"]["val"]
    ys = data.train.y.tolist() + data.val.y.tolist()
    got = {}
    for s, (lang, topic) in zip(strings, ys):
        key = (names["language"].classes[int(lang)], s)
        assert key not in got, f"duplicate row {key}"
        got[key] = names["topic"].classes[int(topic)]
    for language in ("german", "swedish"):
        expected = _corpus_by_hand(language)
        assert {s: t for (lang, s), t in got.items() if lang == language} == expected


def test_chatterbot_bad_names_and_a_missing_package_get_one_line(monkeypatch):
    with pytest.raises(CvaeError, match="no language klingon in the corpus; choose from .*english"):
        load_sequences("chatterbot:klingon", sequence="text")
    with pytest.raises(CvaeError, match="no column 'sentence'.*text, language, topic"):
        load_sequences("chatterbot:german", sequence="sentence")
    r = cli("train", "--data", "chatterbot", "--out", "unused")
    assert r.returncode == 2 and r.stderr.strip() == "error: --data chatterbot is sequence data: add --sequence text"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "chatterbot_corpus" else real(name, *a))
    with pytest.raises(CvaeError, match=r"pip install --no-deps chatterbot-corpus==1\.3\.3"):
        load_sequences("chatterbot", sequence="text")


# -- end to end: train per language, sample, picture, transfer, embed, evaluate --------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text") / "run"
    r = cli("train", "--data", SUBSET, "--sequence", "text", "--condition", "language", "--max-length", "40",
            "--epochs", "2", "--hidden", "32", "--latent-dim", "4", "--batch-size", "32", "--word-dropout", "0.2",
            "--out", folder, "--no-progress", "--no-tensorboard")
    assert r.returncode == 0, r.stderr
    skipped = [line for line in r.stderr.splitlines() if "longer than --max-length 40" in line]
    assert len(skipped) == 1 and "skipped" in skipped[0] and "lines" in skipped[0]
    return folder


def test_sample_per_language_to_csv_and_a_picture(run, tmp_path):
    out = tmp_path / "s.csv"
    r = cli("sample", run, "--condition", "language=german", "--n", "20", "-o", out)
    assert r.returncode == 0, r.stderr
    with open(out, encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 20 and set(table[0]) == {"language_requested", "text"}
    assert all(row["language_requested"] == "german" for row in table)
    assert all(len(row["text"]) <= 40 for row in table)  # never past the model's maximum
    r = cli("sample", run, "--n", "12", "-o", tmp_path / "s.png")  # left out: the languages in turn
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.png").stat().st_size > 5000


def test_transfer_embed_and_evaluate_text(run, tmp_path):
    r = cli("transfer", run, "--input", "Hallo", "--condition", "language=german", "--to", "language=swedish",
            "-o", tmp_path / "t.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "t.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["input"] == "Hallo" and rows[0]["target"] == "language=swedish"
    for every in ([], ["--to", "language=all"]):  # every language, as for images
        r = cli("transfer", run, "--input", "Hallo", "--condition", "language=german", *every, "-o", tmp_path / "a.csv")
        assert r.returncode == 0, r.stderr
        with open(tmp_path / "a.csv", encoding="utf-8") as f:
            assert [row["target"] for row in csv.DictReader(f)] == ["language=german", "language=swedish"]
    (tmp_path / "two.txt").write_text("Hallo\n\nWie geht es dir?\n", encoding="utf-8")  # the blank line is skipped
    r = cli("embed", run, "--data", tmp_path / "two.txt", "--condition", "language=german", "-o", tmp_path / "z.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "z.csv", encoding="utf-8") as f:
        codes = list(csv.DictReader(f))
    assert [c["text"] for c in codes] == ["Hallo", "Wie geht es dir?"] and "mu_3" in codes[0]
    r = cli("evaluate", run, "--metrics", "elbo,nll", "--k", "2", "--json")
    assert r.returncode == 0, r.stderr
    lik = json.loads(r.stdout)["likelihood"]
    assert math.isfinite(lik["nll_per_token"]["value"]) and lik["nll_per_token"]["value"] > 0
    assert lik["nll_per_token"]["unit"] == "nats per token"
    assert lik["perplexity_bound"]["value"] == pytest.approx(math.exp(lik["nll_per_token"]["value"]), rel=1e-6)


def test_bad_text_input_gets_one_line(run, tmp_path):
    # a character never seen in training: a one-line error that names it (transfer and embed alike)
    r = cli("transfer", run, "--input", "Hallo ☃", "--condition", "language=german", "--to", "language=swedish",
            "-o", tmp_path / "t.csv")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "'☃'" in r.stderr and "never seen in training" in r.stderr
    # the file's own line number (blank lines count), for embed and transfer alike
    (tmp_path / "snow.txt").write_text("Hallo\n\nHallo ☃\n", encoding="utf-8")
    r = cli("embed", run, "--data", tmp_path / "snow.txt", "--condition", "language=german", "-o", tmp_path / "z.csv")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "line 3" in r.stderr
    assert not (tmp_path / "z.csv").exists()
    r = cli("transfer", run, "--input", tmp_path / "snow.txt", "--condition", "language=german", "--to",
            "language=swedish", "-o", tmp_path / "t.csv")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "line 3" in r.stderr
    # longer than the model's maximum (40 characters here): one line saying so
    r = cli("transfer", run, "--input", "Hallo " * 10, "--condition", "language=german", "--to", "language=swedish",
            "-o", tmp_path / "t.csv")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "more than the model's maximum of 40" in r.stderr and "--max-length" in r.stderr
    # an unknown language
    r = cli("sample", run, "--condition", "language=klingon", "--n", "2", "-o", tmp_path / "k.csv")
    assert r.returncode == 2 and "klingon" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_an_empty_text_cell_is_skipped_with_its_line(tmp_path):
    """The corpus exported to a CSV (as a user would hold it), one text cell emptied."""
    data = load_sequences("chatterbot:german", sequence="text", condition="topic", val_fraction=0.0, quiet=True)
    topics = data.schema.attributes[0].classes
    rows = [(s, topics[int(y)]) for s, y in zip(data.meta["strings"]["train"], data.train.y[:, 0])][:60]
    path = tmp_path / "german.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "topic"])
        w.writerows(rows[:9] + [("", rows[9][1])] + rows[10:])  # line 11: the empty cell
    r = cli("train", "--data", path, "--sequence", "text", "--condition", "topic", "--tokenizer", "char",
            "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--out", tmp_path / "run", "--no-progress",
            "--no-tensorboard")
    assert r.returncode == 0, r.stderr
    assert "skipped 1 of 60 rows: 1 empty sequence cells (line 11)" in r.stderr
