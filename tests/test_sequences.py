"""Sequences (issue 13): tokenisers, sequence data with bad rows, the seqvae model's numerics, and
molecules / sentences end to end through the command line.

tests/data/qm9-150.csv: 150 molecules drawn (numpy seed 13) from QM9 as the qm9pack package ships
it, as RDKit canonical SMILES, with their Crippen logP computed by RDKit.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import need_module

need_module("rdkit", "pip install 'cvae[chem]'")
need_module("selfies", "pip install 'cvae[chem]'")

from rdkit import Chem  # noqa: E402
from rdkit.Chem import Crippen  # noqa: E402

from cvae.cli import main  # noqa: E402
from cvae.data.sequences import load_sequences  # noqa: E402
from cvae.errors import CvaeError, CvaeWarning  # noqa: E402
from cvae.models import SeqVAE, SeqVAEConfig  # noqa: E402
from cvae.tokens import EOS, PAD, SPECIALS, Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MOLECULES = ROOT / "tests" / "data" / "qm9-150.csv"


def cli(*args):
    """``cvae ARGS`` in this process: its exit status and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


# -- tokenisers ----------------------------------------------------------------------------------------
def test_smiles_regex_keeps_bracket_atoms_and_two_letter_elements_whole():
    tok = Tokenizer("smiles", SPECIALS)
    tokens = tok.split("Clc1ccc(Br)cc1[N+](=O)[O-]")
    assert tokens == ["Cl", "c", "1", "c", "c", "c", "(", "Br", ")", "c", "c", "1", "[N+]", "(", "=", "O", ")", "[O-]"]
    assert tok.join(tokens) == "Clc1ccc(Br)cc1[N+](=O)[O-]"


def test_selfies_round_trip_and_any_token_string_is_a_molecule():
    tok = Tokenizer("selfies", SPECIALS)
    smiles = "CC1OC2CC1N=CO2"
    tokens = tok.split(smiles)
    assert Chem.CanonSmiles(tok.join(tokens)) == Chem.CanonSmiles(smiles)
    fitted = Tokenizer.fit("selfies", [tokens])
    rng = np.random.default_rng(0)
    for _ in range(50):  # random token strings decode to valid molecules (Krenn et al. 2020)
        ids = rng.integers(len(SPECIALS), len(fitted), size=(1, 8))
        text = fitted.decode(ids)[0]
        assert text == "" or Chem.MolFromSmiles(text) is not None


def test_a_char_sample_cut_at_the_length_has_no_space_at_its_ends():
    tok = Tokenizer.fit("char", [list("ab c")])
    ids = tok.encode(["ab c"], 5)
    ids[0, 3:] = ids[0, 2]  # "ab " then the length runs out, no <eos>
    assert tok.decode(ids) == ["ab"]


def test_encode_refuses_an_unseen_token_and_a_too_long_sequence():
    tok = Tokenizer.fit("char", [list("abc")])
    ids = tok.encode(["ab"], 4)
    assert ids[0, 2] == EOS and ids[0, 3] == PAD
    with pytest.raises(CvaeError, match="token 'z' .* never seen in training"):
        tok.encode(["abz"], 8)
    with pytest.raises(CvaeError, match="more than the model's maximum of 3"):
        tok.encode(["abcab"], 4)


# -- data --------------------------------------------------------------------------------------------
def test_bad_rows_are_skipped_counted_and_located(tmp_path, capsys):
    rows = MOLECULES.read_text().splitlines()
    bad = tmp_path / "mols.csv"
    # line 3: a SMILES RDKit cannot parse; line 5: an empty cell; line 7: a logP that is not a number
    lines = rows[:2] + ["C1CC(,0.5"] + rows[2:3] + [",1.0"] + rows[3:4] + ["CCO,abc"] + rows[4:40] + ["C" * 2001 + ",1"]
    bad.write_text("\n".join(lines) + "\n")
    data = load_sequences(str(bad), sequence="smiles", condition="logp:continuous,qed", val_fraction=0.1, seed=0)
    err = capsys.readouterr().err
    assert "skipped 4 of" in err and "1 unparseable SMILES (line 3)" in err and "line 5" in err and "line 7" in err
    assert "1 SMILES over 2,000 characters (line 44)" in err
    seq = data.meta["sequences"]
    assert seq["rows_skipped"] == 4 and seq["computed_conditions"] == ["qed"]
    assert len(data.train) + len(data.val) == 39
    # qed computed by RDKit, logp read from the file
    strings = data.meta["strings"]["train"]
    qed = data.train.y[:, 1].numpy()
    from rdkit.Chem import QED

    assert np.allclose(qed, [QED.qed(Chem.MolFromSmiles(s)) for s in strings], atol=1e-5)
    with pytest.raises(CvaeError, match="no column 'smi'"):
        load_sequences(str(bad), sequence="smi")
    with pytest.raises(CvaeError, match="no condition column 'color'"):
        load_sequences(str(bad), sequence="smiles", condition="color")


def test_a_condition_of_undeclared_kind_skips_nan_cells_and_warns_of_stray_words(tmp_path, capsys):
    rows = MOLECULES.read_text().splitlines()[:61]
    # "nan" and "inf" stopped the run ("missing or non-finite values") where an empty cell was skipped
    nan = tmp_path / "nan.csv"
    nan.write_text("\n".join(rows[:3] + ["CCO,nan"] + rows[3:10] + ["CCN,inf"] + rows[10:]) + "\n")
    data = load_sequences(str(nan), sequence="smiles", condition="logp", val_fraction=0.1, seed=0)
    err = capsys.readouterr().err
    assert "skipped 2 of 62 rows: 2 non-finite logp values (lines 4, 12)" in err
    assert data.schema.attributes[0].kind == "continuous"
    # one word among the numbers made the column categorical, each number a class, without a word said
    words = tmp_path / "words.csv"
    words.write_text("\n".join(rows[:3] + ["CCO,abc"] + rows[3:]) + "\n")
    with pytest.warns(CvaeWarning, match=r"condition 'logp' is read as categorical \(each value a class\) because 1 of "
                      r"its .* training values are not numbers \('abc'\); if it is a quantity, write logp:continuous"):
        try:
            load_sequences(str(words), sequence="smiles", condition="logp", val_fraction=0.1, seed=0)
        except CvaeError:
            pass  # numbers of the validation rows that training never saw: refused, as for any unknown class
    data = load_sequences(str(words), sequence="smiles", condition="logp:continuous", val_fraction=0.1, seed=0)
    assert "1 non-numeric logp values (line 4)" in capsys.readouterr().err


@pytest.mark.parametrize("limit", [20, 31, 45])
def test_limit_trains_on_that_many_rows(limit):
    # --limit 2000 on QM9 trained on 2,001 (the validation share's rounding fell the other way)
    data = load_sequences(str(MOLECULES), sequence="smiles", condition="logp", val_fraction=0.1, seed=0, limit=limit,
                          quiet=True)
    assert len(data.train) == limit and len(data.val) >= 1


def test_max_length_skips_longer_rows(capsys):
    data = load_sequences(str(MOLECULES), sequence="smiles", tokenizer="smiles", max_length=10, val_fraction=0.0)
    assert data.data_shape == (11,)
    assert "longer than --max-length 10" in capsys.readouterr().err
    assert ((data.train.x != PAD).sum(1) <= 11).all()


def test_a_row_far_longer_than_the_rest_does_not_set_the_default_length(tmp_path, capsys):
    # one row of 20,000 words made every batch 20,000 tokens long: training seemed to hang and took 17 GB
    rng = np.random.default_rng(0)
    words = ["the", "story", "was", "great", "dull", "superb", "slow"]
    rows = ["text,sentiment"] + [" ".join(rng.choice(words, rng.integers(3, 9))) + f",{['pos', 'neg'][i % 2]}"
                                 for i in range(60)]
    rows.insert(7, " ".join(["word"] * 20000) + ",pos")  # line 8 of the file
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    data = load_sequences(str(tmp_path / "t.csv"), sequence="text", condition="sentiment", val_fraction=0.0)
    err = capsys.readouterr().err
    assert "skipped 1 of 61 rows" in err and "longer than 64 tokens" in err and "(line 8)" in err
    assert data.data_shape == (9,) and len(data.train) == 60  # the longest kept row, 8 words, plus <eos>
    data = load_sequences(str(tmp_path / "t.csv"), sequence="text", condition="sentiment", val_fraction=0.0,
                          max_length=20000)  # asked for: kept
    assert data.data_shape == (20001,) and len(data.train) == 61


def test_skipped_rows_are_named_by_their_first_line_numbers(tmp_path, capsys):
    rows = ["text,sentiment"] + [f"good film {i}," for i in range(20)] + ["a fine film,pos"] * 5
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    load_sequences(str(tmp_path / "t.csv"), sequence="text", condition="sentiment", val_fraction=0.0)
    assert "(lines 2, 3, 4, 5, 6, ...)" in capsys.readouterr().err  # not in the shuffled reading order


# -- the model's numerics --------------------------------------------------------------------------------
def _model(word_dropout=0.0, cond=0, condition_dropout=0.0, steer=0.0, schema=None):
    torch.manual_seed(0)
    tok = Tokenizer("char", SPECIALS + list("abcde"))
    schema = schema or ({"attributes": [{"name": "v", "kind": "continuous", "classes": [], "mean": 0.0, "std": 1.0}]}
                        if cond else {})
    cfg = SeqVAEConfig(data_shape=(7,), schema=schema, model_class="seqvae", hidden=[16], latent_dim=4,
                       likelihood="categorical", tokenizer=tok.to_dict(), embed_dim=8, word_dropout=word_dropout,
                       condition_dropout=condition_dropout, prefix_predictor=bool(steer), steer=steer)
    return SeqVAE(cfg), tok


def test_teacher_forced_log_prob_equals_the_step_by_step_product():
    model, tok = _model(cond=1)
    model.eval()
    x = torch.from_numpy(tok.encode(["abca", "e", "dddddd"], 7)).float()
    c = torch.tensor([[0.3], [-1.0], [2.0]])
    z = torch.randn(3, 4)
    lp = model.p_x(z, c).log_prob(x)
    zc = model._context(z, c)
    h, token, manual = model._start(zc), torch.full((3,), 1), torch.zeros(3)
    ids = x.long()
    for t in range(7):
        logp, h = model.step(token, zc, h)
        live = ids[:, t] != PAD
        manual += torch.where(live, logp.gather(1, ids[:, t:t + 1]).squeeze(1), torch.zeros(3))
        token = ids[:, t].clamp_min(2)
    assert torch.allclose(lp, manual, atol=1e-5)
    # several codes per example (importance sampling): (S, B, latent) against (B, L)
    zs = torch.randn(5, 3, 4)
    many = model.p_x(zs, c).log_prob(x)
    assert many.shape == (5, 3)
    assert torch.allclose(many[2], model.p_x(zs[2], c).log_prob(x), atol=1e-5)


def test_word_dropout_replaces_decoder_inputs_only_in_training():
    model, tok = _model(word_dropout=0.5)
    x = torch.from_numpy(tok.encode(["abcab"] * 64, 7)).float()
    z = torch.randn(64, 4)
    model.eval()
    a, b = model.p_x(z).log_prob(x), model.p_x(z).log_prob(x)
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(1)
    assert not torch.allclose(model.p_x(z).log_prob(x), a)


def test_condition_dropout_blanks_the_decoders_condition_only_in_training():
    model, tok = _model(cond=1, condition_dropout=0.5)
    x = torch.from_numpy(tok.encode(["abcab"] * 400, 7)).float()
    z, c = torch.randn(400, 4), torch.full((400, 1), 2.0)
    zc = model._context(z, c)
    assert torch.equal(zc[:, 4:], torch.tensor([[2.0, 1.0]]).expand(400, 2))  # c and the presence flag
    assert torch.equal(model._context(z, c, present=False)[:, 4:], torch.zeros(400, 2))
    model.eval()
    assert torch.equal(model._drop_condition(zc), zc)
    model.train()
    torch.manual_seed(3)
    dropped = model._drop_condition(zc)
    blank = (dropped[:, 4:] == 0).all(1)
    assert 120 < int(blank.sum()) < 280 and torch.equal(dropped[~blank], zc[~blank])
    assert torch.equal(dropped[:, :4], z)  # z is never dropped
    # the teacher-forced bound in training sees those blanks: it differs from the evaluation one
    model.eval()
    ev = model.p_x(z, c).log_prob(x)
    model.train()
    assert not torch.allclose(model.p_x(z, c).log_prob(x), ev)


def test_guidance_mixes_conditioned_and_unconditioned_log_probabilities():
    model, _ = _model(cond=1, condition_dropout=0.2)
    model.eval()
    z, c = torch.randn(6, 4), torch.tensor([[1.5], [-1.0], [0.0], [2.0], [0.5], [-2.0]])
    assert torch.equal(model.decode_tokens(z, c, how="greedy", guidance=0.0), model.decode_tokens(z, c, how="greedy"))
    w = 2.0
    bos = torch.full((6,), 1)
    cond, _ = model.step(bos, model._context(z, c), model._start(model._context(z, c)))
    none, _ = model.step(bos, model._context(z, c, present=False), model._start(model._context(z, c, present=False)))
    zc = model._decoder_contexts(z, c, w)
    both, _ = model.step(bos.repeat(2), zc, model._start(zc))
    guided = model._guided(both, w)
    want = torch.log_softmax(torch.where(torch.isfinite(cond), (1 + w) * cond - w * none, -torch.inf), -1)
    assert torch.allclose(guided, want, atol=1e-5) and torch.isfinite(guided[:, 4:]).all()
    assert torch.allclose(guided.exp().sum(1), torch.ones(6), atol=1e-5)
    first = model.decode_tokens(z, c, how="greedy", guidance=w)[:, 0]
    assert (want.argmax(1) == EOS).any()  # this untrained decoder would end some sequences at once ...
    assert torch.equal(first, want.index_fill(1, torch.tensor([EOS]), -torch.inf).argmax(1))  # ... but none is empty
    for how in ("greedy", "sample", "beam"):  # no training sequence is empty, and no decoded one either
        assert (model.decode_tokens(z.repeat(20, 1), c.repeat(20, 1), how=how, guidance=w)[:, 0] != EOS).all()
    # beam search with guidance: width 1 is guided greedy decoding
    assert torch.equal(model.decode_tokens(z, c, how="beam", beam=1, guidance=w),
                       model.decode_tokens(z, c, how="greedy", guidance=w))
    plain, _ = _model(cond=1)
    with pytest.raises(CvaeError, match="--condition-dropout"):
        plain.guidance_weight(1.0)
    with pytest.raises(CvaeError, match="--guidance must be"):
        model.guidance_weight(-1.0)


def test_the_python_sample_of_a_guided_sequence_run_is_guided_by_the_runs_weight():
    """model.sample() of a run trained with condition dropout and a default --guidance decodes guided
    (it raised NotImplementedError before p_x_guided was written for sequences); guidance 0 does not."""
    model, _ = _model(cond=1, condition_dropout=0.2)
    model.config.guidance = 2.0
    model.eval()
    cond = {"v": 0.5}
    g = torch.Generator().manual_seed(0)
    c = model.condition_vector(model.schema.parse(cond, 6), 6)
    z = model.sample_z(6, c, g, 0.9)
    guided = model.decode_tokens(z, c, how="greedy", guidance=2.0).float()
    assert torch.equal(model.sample(6, cond, generator=torch.Generator().manual_seed(0)), guided)
    plain = model.decode_tokens(z, c, how="greedy").float()
    assert torch.equal(model.sample(6, cond, generator=torch.Generator().manual_seed(0), guidance=0.0), plain)
    assert not torch.equal(guided, plain)


def test_beam_of_width_one_is_greedy_and_decoding_ends_with_eos_then_padding():
    model, tok = _model()
    model.eval()
    z = torch.randn(10, 4)
    greedy = model.decode_tokens(z, None, how="greedy")
    assert torch.equal(model.decode_tokens(z, None, how="beam", beam=1), greedy)
    wide = model.decode_tokens(z, None, how="beam", beam=4)
    for row in torch.cat([greedy, wide]):
        ends = (row == EOS).nonzero()
        assert len(ends) == 1 and (row[ends[0, 0] + 1:] == PAD).all()
    # beam search scores: the best of 4 beams is at least as probable as the greedy path here
    lp_g, lp_b = model.p_x(z).log_prob(greedy.float()), model.p_x(z).log_prob(wide.float())
    assert (lp_b >= lp_g - 1e-4).float().mean() >= 0.9


def test_prefix_predictor_loss_and_the_steered_step_written_out():
    """The predictor's loss is -log p(c | prefix) averaged over each sequence's prefixes (a Gaussian per
    continuous attribute, a softmax per categorical one); the steered step's GRU cell, written out for
    every candidate token, equals nn.GRU's; steering adds s log p(c | prefix + token) to the top-k tokens."""
    schema = {"attributes": [{"name": "v", "kind": "continuous", "classes": [], "mean": 0.0, "std": 1.0},
                             {"name": "k", "kind": "categorical", "classes": ["p", "q", "r"]}]}
    model, tok = _model(steer=2.0, schema=schema)
    ids = torch.from_numpy(tok.encode(["abca", "e", "dddddd"], 7)).long()
    c = torch.tensor([[0.3, 0, 1, 0], [-1.0, 1, 0, 0], [2.0, 0, 0, 1]])
    states = model.prefix_states(ids)
    want = []
    for i, row in enumerate(ids):
        lps = []
        for t in range(int((row != PAD).sum())):
            head = model.pred_head(states[i, t])
            mean, logvar = head[0], head[1]
            gauss = torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(c[i, 0])
            lps.append(gauss + torch.log_softmax(head[2:], -1)[c[i, 1:].argmax()])
        want.append(torch.stack(lps).mean())
    assert torch.allclose(model.prefix_nll(ids.float(), c), -torch.stack(want).mean(), atol=1e-5)
    # a missing value counts nothing: NaN for a continuous one, an all-zero block for a categorical one
    blank = torch.tensor([[float("nan"), 0, 0, 0]])
    assert torch.equal(model.condition_log_prob(states[:1, 0], blank), torch.zeros(1))
    # in training, forward gives the loss as an auxiliary term and the ELBO adds and logs it
    from cvae.objectives import ELBO
    model.train()
    out = ELBO()(model, ids.float(), c)
    assert torch.allclose(out.terms["prefix_nll"], model.prefix_nll(ids.float(), c), atol=1e-6)
    assert torch.allclose(out.loss, out.reconstruction + out.kl + out.terms["prefix_nll"], atol=1e-4)
    model.eval()
    assert ELBO()(model, ids.float(), c).terms == {}
    # the steered step
    hp = torch.randn(3, 16)
    logp = torch.log_softmax(torch.randn(3, len(tok)), -1)
    steered, cand, st = model._steer(logp, hp, c, 2.0)
    for i in range(3):
        for j in range(cand.shape[1]):
            _, h = model.pred_gru(model.pred_embed(cand[i, j].view(1, 1)), hp[i].view(1, 1, -1))
            assert torch.allclose(st[i, j], h[0, 0], atol=1e-5)
    k = cand.shape[1]
    top = logp.topk(k, -1)
    assert torch.equal(cand, top.indices)
    raw = top.values + 2.0 * model.condition_log_prob(st, c.unsqueeze(1))
    assert torch.allclose(steered.gather(1, cand), torch.log_softmax(raw, -1), atol=1e-5)
    assert torch.isinf(steered).sum(1).eq(len(tok) - k).all()  # every other token ruled out
    token = cand[:, 3]
    assert torch.equal(model._chosen_state(cand, st, token), st[:, 3])
    # decoding: steer 0 is the plain decoder; steering changes it; beam of width 1 is steered greedy
    z = torch.randn(8, 4)
    cc = c.repeat(3, 1)[:8]
    assert torch.equal(model.decode_tokens(z, cc, steer=0.0), model.decode_tokens(z, cc))
    assert torch.equal(model.decode_tokens(z, cc, how="beam", beam=1, steer=2.0),
                       model.decode_tokens(z, cc, how="greedy", steer=2.0))
    assert not torch.equal(model.decode_tokens(z, cc, steer=20.0), model.decode_tokens(z, cc))
    for how in ("greedy", "sample", "beam"):
        rows = model.decode_tokens(z, cc, how=how, steer=2.0)
        for row in rows:
            ends = (row == EOS).nonzero()
            assert row[0] != EOS and len(ends) == 1 and (row[ends[0, 0] + 1:] == PAD).all()
    # the predictor's state carried through sampled decoding is its state after each decoded prefix
    seen = []
    steer_step = model._steer

    def recording(logp, hp, c, weight):
        seen.append(hp.clone())
        return steer_step(logp, hp, c, weight)

    model._steer = recording
    rows = model.decode_tokens(z, cc, how="sample", steer=2.0, generator=torch.Generator().manual_seed(1))
    del model._steer
    states = model.prefix_states(rows)
    assert torch.equal(seen[0], torch.zeros(8, 16))
    for t in range(1, len(seen)):
        live = (rows[:, :t] != PAD).all(1) & (rows[:, :t] != EOS).all(1)  # rows still being decoded
        assert torch.allclose(seen[t][live], states[live, t - 1], atol=1e-5)
        assert live.any() or t > 2
    plain, _ = _model(cond=1)
    with pytest.raises(CvaeError, match="--steer needs a run trained"):
        plain.steer_weight(1.0)
    with pytest.raises(CvaeError, match="--steer must be"):
        model.steer_weight(-1.0)


# -- end to end: molecules ---------------------------------------------------------------------------
def test_molecules_train_sample_evaluate_interpolate(tmp_path, monkeypatch):
    run = tmp_path / "run"
    r = cli("train", "--data", MOLECULES, "--sequence", "smiles", "--condition", "logp,qed", "--epochs", "2",
            "--batch-size", "32", "--hidden", "32", "--latent-dim", "4", "--kl-warmup", "1", "--word-dropout", "0.1",
            "--steer", "0", "--out", run, "--no-progress", "--no-tensorboard")  # unsteered: steering's tests are below
    assert r.returncode == 0, r.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["model_class"] == "seqvae" and cfg["model"]["tokenizer"]["kind"] == "selfies"
    # molecules' defaults (free bits 0.05, not given here); what was given is kept
    assert [cfg["train"][k] for k in ("free_bits", "word_dropout", "kl_warmup")] == [0.05, 0.1, 1.0]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("val_active_units" in row and "val_kl" in row for row in rows)
    assert (run / "samples.png").is_file()

    out = tmp_path / "mols.csv"
    r = cli("sample", run, "--condition", "logp=1.5,qed=0.45", "--n", "60", "-o", out)
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 60 and set(table[0]) == {"logp_requested", "qed_requested", "smiles", "valid", "logp", "qed"}
    for row in table:  # recomputed independently with RDKit
        assert row["logp_requested"] == "1.5"
        m = Chem.MolFromSmiles(row["smiles"]) if row["smiles"] else None
        assert row["valid"] == str(int(m is not None))
        if m is not None:
            assert math.isclose(float(row["logp"]), Crippen.MolLogP(m), abs_tol=1e-3)
    assert sum(r["valid"] == "1" for r in table) >= 55  # SELFIES: only an empty string can be invalid
    assert "note: only" not in r.stdout
    r = cli("classify", run, "--data", "CCO", "-o", tmp_path / "p.csv")  # it said "trained without labels"
    assert r.returncode == 2 and ("this model has no categorical condition to classify (its conditions, logp, qed, are "
                                  "continuous: classification reads classes)") in r.stderr, r.stderr
    # a request far out, steered hard, gave every sample empty (valid 0%) and nothing said what to do
    import cvae.apps.sequences as sequences_apps

    with monkeypatch.context() as m:
        m.setattr(sequences_apps, "sample_to_file", lambda model, out, **_: (out, {"n": 10, "valid": 0.2, "unique": 0.2}))
        r = cli("sample", run, "--n", "10", "-o", tmp_path / "few.csv")
    assert r.returncode == 0 and ("note: only 20% of the samples are valid molecules (a SELFIES string of branch or "
                                  "ring tokens alone decodes to none); ask for values nearer the training data's\n"
                                  ) in r.stdout, r.stdout

    # --within: only molecules whose logP (recomputed here) lies that near the request, more rounds generated
    near = tmp_path / "near.csv"
    r = cli("sample", run, "--condition", "logp=1.5,qed=0.45", "--n", "20", "--decode", "sample", "--within",
            "logp=0.4", "-o", near)
    assert r.returncode == 0, r.stderr
    assert "generated" in r.stdout
    with open(near) as f:
        kept = list(csv.DictReader(f))
    assert 1 <= len(kept) <= 20 and (len(kept) == 20) == ("note:" not in r.stdout)
    for row in kept:
        assert abs(Crippen.MolLogP(Chem.MolFromSmiles(row["smiles"])) - 1.5) <= 0.4 + 1e-3
    for flag, says in (("logp=0", "must be a number above 0"), ("logp=x", "must be a number above 0"),
                       ("mw=1", "use one of logp, qed"), ("logp", "cannot read condition")):
        r = cli("sample", run, "--n", "5", "--within", flag, "-o", tmp_path / "bad.csv")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert not (tmp_path / "bad.csv").exists()

    r = cli("sample", run, "--n", "12", "--decode", "beam", "--beam", "3", "-o", tmp_path / "grid.png")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "grid.png").stat().st_size > 1000

    r = cli("evaluate", run, "--metrics", "elbo,molecules", "--molecules", "40", "--k", "1", "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    mol = ev["molecules"]
    assert 0 <= mol["validity"] <= 1 and 0 <= mol["novelty"] <= 1 and math.isfinite(mol["fcd"])
    assert set(mol["property_control"]) == {"logp", "qed"}
    assert ev["likelihood"]["nll_per_token"]["value"] > 0

    # the default draws each token at 0.5, as cvae sample does; greedy decoding, as a user asks for it, differs
    assert (mol["protocol"]["decode"], mol["protocol"]["token_temperature"]) == ("sample", 0.5)
    r = cli("evaluate", run, "--metrics", "molecules", "--molecules", "40", "--decode", "greedy", "--temperature", "1",
            "--json")
    assert r.returncode == 0, r.stderr
    greedy = json.loads(r.stdout)["molecules"]
    assert greedy["protocol"]["decode"] == "greedy" and greedy["protocol"]["temperature"] == 1.0
    assert mol["validity"] >= 0.9 and set(greedy["property_control"]) == {"logp", "qed"}
    assert (greedy["uniqueness"], greedy["int_div"]) != (mol["uniqueness"], mol["int_div"])
    # the FCD reference is said as used (the first 40 of the validation split, not all of it), and the
    # table shows uniqueness below MOSES's 1,000 and every decoding setting
    assert greedy["fcd_reference_size"] == 15 and greedy["protocol"]["fcd_reference"] == "validation split (15 molecules)"
    r = cli("evaluate", run, "--metrics", "molecules", "--molecules", "10")
    assert r.returncode == 0, r.stderr
    assert "token temperature 0.5" in r.stdout and "unique (of the valid)" in r.stdout and "FCD against the validation" \
        " split (10 molecules, the first of 15)" in r.stdout, r.stdout
    r = cli("evaluate", run, "--metrics", "molecules", "--decode", "beam", "--beam", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--beam must be" in r.stderr

    # reconstruct molecules: their own logP and QED computed by RDKit when --condition is left out
    (tmp_path / "two.smi").write_text("CCO ethanol\nc1ccoc1 furan\n")
    r = cli("reconstruct", run, "--input", tmp_path / "two.smi", "-o", tmp_path / "rec.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "rec.csv") as f:
        rec = list(csv.DictReader(f))
    assert [row["input"] for row in rec] == ["CCO", "c1ccoc1"]
    for row in rec:
        assert math.isclose(float(row["logp"]), Crippen.MolLogP(Chem.MolFromSmiles(row["input"])), abs_tol=1e-3)
        assert row["valid"] == str(int(bool(row["reconstruction"]) and Chem.MolFromSmiles(row["reconstruction"]) is not None))
    r = cli("traverse", run, "--top", "2", "--steps", "3", "--condition", "logp=0.5,qed=0.4", "-o", tmp_path / "t.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "t.csv") as f:
        trav = list(csv.DictReader(f))
    assert len(trav) == 6 and {"dimension", "kl", "value_sd", "smiles", "valid", "logp", "qed"} <= set(trav[0])
    for row in trav:  # the achieved properties, recomputed here (an empty string is no molecule)
        m = Chem.MolFromSmiles(row["smiles"]) if row["smiles"] else None
        assert row["valid"] == str(int(m is not None))
        if m is not None:
            assert math.isclose(float(row["logp"]), Crippen.MolLogP(m), abs_tol=1e-3)
    r = cli("traverse", run, "--top", "1", "--steps", "3", "--input", "CCO", "-o", tmp_path / "t1.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "t1.csv") as f:  # the base is named as given, not "#the string"
        assert next(csv.DictReader(f))["base"].startswith("the string (")
    r = cli("reconstruct", run, "--input", "C1CC(", "-o", tmp_path / "bad.csv")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a valid SMILES" in r.stderr
    (tmp_path / "bad.smi").write_text("CCO\nC1CC(\n")  # its logp and qed are computed: the bad line is named
    r = cli("reconstruct", run, "--input", tmp_path / "bad.smi", "-o", tmp_path / "bad.csv")
    assert r.returncode == 2 and "line 2: 'C1CC(' is not a valid SMILES" in r.stderr

    r = cli("interpolate", run, "--from", "CCO", "--to", "c1ccoc1", "--steps", "3", "-o", tmp_path / "own.csv")
    assert r.returncode == 0, r.stderr  # each end with its own logP and QED, as RDKit computes them
    r = cli("interpolate", run, "--from", "CCO", "--to", "c1ccoc1", "--condition", "logp=0.5,qed=0.4", "--steps", "5",
            "-o", tmp_path / "path.csv")
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "path.csv").read_text().splitlines()) == 6
    r = cli("interpolate", run, "--from", "CCO", "--to", "C1CC(", "--condition", "logp=0.5,qed=0.4", "-o", tmp_path / "p.csv")
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "not a valid SMILES" in r.stderr
    (tmp_path / "two.smi").write_text("CCO\nc1ccoc1\n")  # row numbers into a file are the image runs' way
    r = cli("interpolate", run, "--from", "0", "--to", "1", "--input", tmp_path / "two.smi", "--condition",
            "logp=0.5,qed=0.4", "-o", tmp_path / "p.csv")
    assert r.returncode == 2 and "--input is not read for a sequence run" in r.stderr
    r = cli("embed", run, "--n", "10", "-o", tmp_path / "lat.csv", "--map", tmp_path / "map.png")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "lat.csv") as f:
        lat = list(csv.DictReader(f))
    assert len(lat) == 10 and {"smiles", "logp", "qed", "mu_0", "var_3"} <= set(lat[0])
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # --map was ignored on sequence runs
    (tmp_path / "two.smi").write_text("CCO\nc1ccoc1\n")
    r = cli("embed", run, "--data", tmp_path / "two.smi", "--condition", "logp=0.1,qed=0.4", "-o", tmp_path / "l2.csv")
    assert r.returncode == 0, r.stderr
    # a string, as the README says every --data of a sequence run takes (embed alone refused one)
    r = cli("embed", run, "--data", "c1ccoc1", "--condition", "logp=0.1,qed=0.4", "-o", tmp_path / "l3.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "l2.csv") as f, open(tmp_path / "l3.csv") as g:
        assert math.isclose(float(next(csv.DictReader(g))["mu_0"]), float(list(csv.DictReader(f))[1]["mu_0"]),
                            rel_tol=1e-5, abs_tol=1e-6)  # the same code (batched with another: float rounding)
    r = cli("train", "--data", MOLECULES, "--sequence", "smiles", "--resume", "--epochs", "3", "--out", run,
            "--no-progress", "--no-tensorboard")
    assert r.returncode == 0, r.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def sampled_smiles(run, folder, condition, *flags, flag=("--decode", "sample")):
    """The SMILES column of `cvae sample RUN --condition CONDITION --n 40 --decode sample FLAGS` (``flag``
    None: without --decode sample; a new file in ``folder`` each call)."""
    out = folder / f"mols{len(list(folder.glob('mols*.csv')))}.csv"
    r = cli("sample", run, "--condition", condition, "--n", "40", *(flag or ()), *flags, "-o", out)
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        return [row["smiles"] for row in csv.DictReader(f)]


def test_guided_molecules_through_the_command_line(tmp_path):
    """Train with --condition-dropout and a default --guidance, then sample and evaluate as a user would:
    the run's default weight is used, --guidance 0 turns it off, --token-temperature sharpens sampling."""
    run = tmp_path / "run"
    r = cli("train", "--data", MOLECULES, "--sequence", "smiles", "--condition", "logp,qed", "--epochs", "2",
            "--batch-size", "32", "--hidden", "32", "--latent-dim", "4", "--condition-dropout", "0.3",
            "--guidance", "2", "--out", run, "--no-progress", "--no-tensorboard", "--no-pictures")
    assert r.returncode == 0, r.stderr
    model_cfg = json.loads((run / "config.json").read_text())["model"]
    assert (model_cfg["condition_dropout"], model_cfg["guidance"]) == (0.3, 2.0)

    def sample(*flags):
        return sampled_smiles(run, tmp_path, "logp=1.5,qed=0.45", *flags)

    default, explicit, off = sample(), sample("--guidance", "2"), sample("--guidance", "0")
    assert default == explicit and default != off
    # the default token choice is sampling at 0.5; --draw samples at 1, the model's own distribution
    assert sampled_smiles(run, tmp_path, "logp=1.5,qed=0.45", flag=None) == default == sample("--token-temperature", "0.5")
    assert sampled_smiles(run, tmp_path, "logp=1.5,qed=0.45", "--draw", flag=None) == sample("--token-temperature", "1")
    assert sampled_smiles(run, tmp_path, "logp=1.5,qed=0.45", "--decode", "greedy", flag=None) != default
    cold, hot = sample("--token-temperature", "0.2"), sample("--token-temperature", "3")
    assert len(set(cold)) < len(set(hot))  # a low token temperature repeats molecules

    r = cli("evaluate", run, "--metrics", "molecules", "--molecules", "30", "--decode", "sample", "--guidance", "1",
            "--token-temperature", "0.8", "--json")
    assert r.returncode == 0, r.stderr
    mol = json.loads(r.stdout)["molecules"]
    assert (mol["protocol"]["guidance"], mol["protocol"]["token_temperature"]) == (1.0, 0.8)
    assert set(mol["property_control"]) == {"logp", "qed"}

    for flags, says in ((("--guidance", "-1"), "--guidance must be"),
                        (("--token-temperature", "0"), "--token-temperature must be")):
        r = cli("sample", run, "--n", "5", *flags, "-o", tmp_path / "bad.csv")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    r = cli("train", "--data", MOLECULES, "--sequence", "smiles", "--guidance", "1", "--out", tmp_path / "r2",
            "--no-progress")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--condition-dropout" in r.stderr
    plain = tmp_path / "plain"
    r = cli("train", "--data", MOLECULES, "--sequence", "smiles", "--condition", "logp", "--epochs", "1",
            "--hidden", "16", "--latent-dim", "2", "--out", plain, "--no-progress", "--no-tensorboard", "--no-pictures")
    assert r.returncode == 0, r.stderr
    r = cli("sample", plain, "--n", "5", "--guidance", "1", "-o", tmp_path / "bad.csv")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--condition-dropout" in r.stderr
    assert not (tmp_path / "bad.csv").exists()


def test_steered_molecules_through_the_command_line(tmp_path):
    """Train with --steer (a prefix predictor beside the VAE, its loss logged), then sample and evaluate as a
    user would: the run's default weight is used, --steer 0 turns it off; bad uses are one line each."""
    run = tmp_path / "run"
    r = cli("train", "--data", MOLECULES, "--sequence", "smiles", "--condition", "logp", "--epochs", "2",
            "--batch-size", "32", "--hidden", "32", "--latent-dim", "4", "--steer", "3", "--out", run,
            "--no-progress", "--no-tensorboard", "--no-pictures")
    assert r.returncode == 0, r.stderr
    model_cfg = json.loads((run / "config.json").read_text())["model"]
    assert (model_cfg["prefix_predictor"], model_cfg["steer"]) == (True, 3.0)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row["train_prefix_nll"]) for row in rows)
    assert rows[-1]["train_loss"] == pytest.approx(rows[-1]["train_reconstruction"] + rows[-1]["train_kl"])

    def sample(*flags):
        return sampled_smiles(run, tmp_path, "logp=1.5", *flags)

    default, explicit, off = sample(), sample("--steer", "3"), sample("--steer", "0")
    assert default == explicit and default != off
    # transfer and interpolation decode steered towards their target condition too, with the run's weight
    from cvae import load
    from cvae.apps.sequences import interpolate_strings, transfer_strings

    model = load(run)
    with open(MOLECULES) as f:
        smiles = [row["smiles"] for row in csv.DictReader(f)][:12]
    moved = [transfer_strings(model, smiles, "logp=0.5", ["logp=3"], steer=w) for w in (None, 3.0, 0.0)]
    assert moved[0] == moved[1] and moved[0] != moved[2]
    paths = [interpolate_strings(model, smiles[0], smiles[1], steps=12, condition="logp=-2", steer=w) for w in (None, 0.0)]
    assert len(paths[0]) == 12 and paths[0] != paths[1]
    r = cli("evaluate", run, "--metrics", "molecules", "--molecules", "30", "--decode", "sample", "--steer", "1", "--json")
    assert r.returncode == 0, r.stderr
    mol = json.loads(r.stdout)["molecules"]
    assert mol["protocol"]["steer"] == 1.0 and set(mol["property_control"]) == {"logp"}

    r = cli("sample", run, "--n", "5", "--steer", "-1", "-o", tmp_path / "bad.csv")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--steer must be" in r.stderr, r.stderr
    # a conditioned run is steered by default (weight 2); --steer 0 trains no predictor
    default_run = tmp_path / "default"
    r = cli("train", "--data", MOLECULES, "--sequence", "smiles", "--condition", "logp", "--epochs", "1",
            "--hidden", "16", "--latent-dim", "2", "--out", default_run, "--no-progress", "--no-tensorboard", "--no-pictures")
    assert r.returncode == 0, r.stderr
    model_cfg = json.loads((default_run / "config.json").read_text())["model"]
    assert (model_cfg["prefix_predictor"], model_cfg["steer"]) == (True, 2.0)
    plain = tmp_path / "plain"
    r = cli("train", "--data", MOLECULES, "--sequence", "smiles", "--condition", "logp", "--epochs", "1", "--steer", "0",
            "--hidden", "16", "--latent-dim", "2", "--out", plain, "--no-progress", "--no-tensorboard", "--no-pictures")
    assert r.returncode == 0, r.stderr
    model_cfg = json.loads((plain / "config.json").read_text())["model"]
    assert (model_cfg["prefix_predictor"], model_cfg["steer"]) == (False, 0.0)
    for cmd in (("sample", plain, "--n", "5", "-o", tmp_path / "bad.csv"), ("evaluate", plain, "--metrics", "molecules")):
        r = cli(*cmd, "--steer", "1")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "trained with a prefix predictor" in r.stderr, r.stderr
    # a hand-edited run folder: each inconsistency of the predictor's settings is one line, nothing lost
    for change, says in (({"prefix_predictor": False, "steer": 2.0}, "steer needs prefix_predictor"),
                         ({"prefix_predictor": False, "steer": 0.0}, "pred_embed.weight"),
                         ({"prefix_predictor": "yes"}, "prefix_predictor must be true or false")):
        edited = tmp_path / "edited"
        shutil.rmtree(edited, ignore_errors=True)
        shutil.copytree(run, edited)
        cfg = json.loads((edited / "config.json").read_text())
        cfg["model"].update(change)
        (edited / "config.json").write_text(json.dumps(cfg))
        weights = (edited / "model.safetensors").read_bytes()
        r = cli("sample", edited, "--n", "5", "-o", tmp_path / "bad.csv")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
        assert (edited / "model.safetensors").read_bytes() == weights
    r = cli("train", "--data", MOLECULES, "--sequence", "smiles", "--condition", "none", "--steer", "1",
            "--out", tmp_path / "r2", "--no-progress")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--steer steers" in r.stderr, r.stderr
    r = cli("train", "--data", "digits", "--steer", "1", "--out", tmp_path / "r3", "--no-progress")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--steer is for sequence data" in r.stderr, r.stderr
    assert not (tmp_path / "bad.csv").exists()


def test_decode_flag_of_evaluate_is_refused_for_a_run_that_is_not_a_sequence_run(tmp_path):
    run = tmp_path / "digits"
    # --condition-dropout 0 opts out of the guided default of conditioned image runs
    r = cli("train", "--data", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--limit", "200",
            "--condition-dropout", "0", "--out", run, "--no-progress", "--no-tensorboard", "--no-pictures")
    assert r.returncode == 0, r.stderr
    r = cli("evaluate", run, "--metrics", "elbo", "--decode", "sample")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: --decode is for sequence runs")
    r = cli("evaluate", run, "--metrics", "elbo", "--guidance", "1")  # guidance needs a decoder trained for it
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--condition-dropout" in r.stderr
    r = cli("sample", run, "--n", "4", "--token-temperature", "0.5", "-o", tmp_path / "s.png")
    assert r.returncode == 2 and r.stderr.startswith("error: --token-temperature is for sequence runs")
    r = cli("sample", run, "--n", "4", "--within", "logp=0.3", "-o", tmp_path / "s.png")
    assert r.returncode == 2 and r.stderr.startswith("error: --within is for molecule runs")


# -- metrics as MOSES defines them -----------------------------------------------------------------------
def test_internal_diversity_is_moses_intdiv1_over_all_pairs_repeats_included(monkeypatch):
    """MOSES (moses/metrics/metrics.py): IntDiv1 = 1 - mean Tanimoto over all |A|^2 ordered pairs of the
    valid generated molecules, repeats and self-pairs included, Morgan radius 2, 1024 bits."""
    from rdkit import DataStructs
    from rdkit.Chem import AllChem

    from cvae import seqmetrics

    with open(MOLECULES) as f:
        smiles = [row["smiles"] for row in csv.DictReader(f)][:40]
    smiles += smiles[:10]  # repeats count, as in MOSES
    fps = [AllChem.GetMorganFingerprintAsBitVect(Chem.MolFromSmiles(s), 2, nBits=1024) for s in smiles]
    expected = 1 - np.mean([DataStructs.BulkTanimotoSimilarity(fp, fps) for fp in fps])
    monkeypatch.setattr(seqmetrics, "TANIMOTO_BLOCK", 7)  # several blocks, a ragged last one
    assert seqmetrics.internal_diversity(smiles) == pytest.approx(expected, abs=1e-7)  # float32, as MOSES
    distinct_only = 1 - np.mean([DataStructs.BulkTanimotoSimilarity(fp, fps[:40]) for fp in fps[:40]])
    assert abs(expected - distinct_only) > 1e-3  # the repeats matter: the test tells the definitions apart
    metrics = seqmetrics.molecule_metrics(smiles + ["", "C1CC("], set(smiles[:20]), fcd=False)
    assert metrics["int_div"] == pytest.approx(expected, abs=1e-7)  # over the valid molecules only
    assert metrics["validity"] == pytest.approx(50 / 52) and metrics["novelty"] == pytest.approx(20 / 40)
    assert metrics["unique@1k"] is None  # fewer than 1,000 generated: not defined
    # 1,000 generated, 2 of them invalid: unique@1k over the 998 valid ones, as MOSES computes it, and said so
    many = (smiles * 20)[:998] + ["", "C1CC("]
    metrics = seqmetrics.molecule_metrics(many, set(), fcd=False)
    assert metrics["unique@1k"] == pytest.approx(40 / 998) and metrics["unique@1k_of"] == 998


def test_moses_novelty_against_its_training_file_and_fcd_to_its_test_statistics():
    """A run on MOSES also gets MOSES's own novelty (its 1,584,663 training molecules) and FCD/Test (to
    its test set's stored ChemNet statistics): MOSES's test molecules are close to them, QM9's far."""
    import gzip
    import importlib.util

    need_module("fcd_torch", "python -m pip install --no-deps fcd-torch==1.0.7")
    spec = importlib.util.find_spec("moses")
    if spec is None:
        pytest.skip("molsets: python -m pip install --no-deps molsets==0.3.1")
    from cvae.seqmetrics import molecule_metrics

    folder = Path(list(spec.submodule_search_locations)[0], "dataset", "data")
    with gzip.open(folder / "train.csv.gz", "rt") as f:
        train = [next(f).strip() for _ in range(4)][1:]
    with gzip.open(folder / "test.csv.gz", "rt") as f:
        test = [line.strip() for line, _ in zip(f, range(601))][1:]
    # 3 training molecules, one new one, a repeat, an invalid string; novelty against the run's own
    # training split (here: none of them) and against MOSES's
    out = molecule_metrics(train + ["CCO", "CCO", ""], set(train[:1]), fcd=False, moses=True)
    assert out["novelty"] == pytest.approx(3 / 4) and out["novelty_moses_train"] == pytest.approx(1 / 4)
    with open(MOLECULES) as f:
        qm9 = [row["smiles"] for row in csv.DictReader(f)]
    near, far = molecule_metrics(test, set(), moses=True), molecule_metrics(qm9, set(), moses=True)
    assert near["novelty_moses_train"] == 1.0  # MOSES's test set is disjoint from its training set
    # 600 of MOSES's own test molecules (FCD 7.2: the sample is small) against QM9's small molecules (34.8)
    assert 0 < near["fcd_moses_test"] < 10 < 20 < far["fcd_moses_test"]


# -- end to end: text ------------------------------------------------------------------------------------
def test_sequence_reconstruction_counts_exact_sequences_and_tokens_in_place_by_hand():
    """Two of four sequences decoded back exactly; of the other two, one token of three and none of
    two (padding is not counted, <eos> is)."""
    from cvae.evaluate import sequence_reconstruction

    x = torch.tensor([[5, 6, EOS, PAD], [7, EOS, PAD, PAD], [5, 5, EOS, PAD], [6, EOS, PAD, PAD]])
    decoded = torch.tensor([[5, 6, EOS, PAD], [7, EOS, PAD, PAD], [5, 6, 6, EOS], [7, 7, EOS, PAD]])
    seen = {}

    def decode_tokens(mu, c, *, how, steer):
        seen.update(how=how, steer=steer, c=c)
        return decoded[mu[:, 0].long()]

    model = SimpleNamespace(q_z=lambda xb, c: SimpleNamespace(mu=torch.arange(len(xb)).float()[:, None]),
                            decode_tokens=decode_tokens, steer_weight=lambda w: 2.0)
    out = sequence_reconstruction(model, x.float(), None)
    assert out["reconstructed_exactly"].value == 0.5 and seen == {"how": "greedy", "steer": 2.0, "c": None}
    assert out["tokens_reconstructed"].value == pytest.approx((3 + 2 + 1 + 0) / 10)


def test_an_anomaly_detector_of_molecules_scores_a_smi_file(tmp_path):
    run = tmp_path / "detector"
    r = cli("anomaly", "fit", "--data", MOLECULES, "--sequence", "smiles", "--epochs", "2", "--hidden", "32",
            "--latent-dim", "4", "--out", run, "--no-progress", "--no-tensorboard", "--no-pictures")
    assert r.returncode == 0, r.stderr
    threshold = json.loads((run / "anomaly.json").read_text())["thresholds"]["elbo"]
    (tmp_path / "mols.smi").write_text("CCO ethanol\nFC(F)(F)C(F)(F)F\nC1CC1\n")
    r = cli("anomaly", "score", run, "--data", tmp_path / "mols.smi", "-o", tmp_path / "s.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "s.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["id"] for row in rows] == ["CCO", "FC(F)(F)C(F)(F)F", "C1CC1"]  # canonical SMILES
    assert all(math.isfinite(float(row["score"])) and row["flag"] == str(int(float(row["score"]) > threshold))
               for row in rows)
    # the training CSV itself: its smiles column is scored (its name was read as one SMILES string)
    r = cli("anomaly", "score", run, "--data", MOLECULES, "-o", tmp_path / "all.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "all.csv") as f:
        assert len(list(csv.DictReader(f))) == 150
    # and the web API scores an upload of SMILES lines as the command scores the file (it never could)
    from fastapi.testclient import TestClient  # the serve extra is part of cvae[test]

    from cvae.serve import create_app

    with TestClient(create_app([run])) as client:
        up = {"file": ("m.smi", (tmp_path / "mols.smi").read_bytes(), "text/plain")}
        web = client.post("/v1/runs/detector/score", files=up).json()
    assert web["ids"] == [row["id"] for row in rows]
    np.testing.assert_allclose(web["scores"], [float(row["score"]) for row in rows], rtol=1e-5)
    (tmp_path / "bad.smi").write_text("CCO\nXYZ\n")  # its logp cannot be computed: the line is named
    r = cli("anomaly", "score", run, "--data", tmp_path / "bad.smi", "-o", tmp_path / "x.csv")
    assert r.returncode == 2 and "line 2: 'XYZ' is not a valid SMILES string" in r.stderr
    (tmp_path / "long.smi").write_text("C" * 40 + "\n")
    r = cli("anomaly", "score", run, "--data", tmp_path / "long.smi", "-o", tmp_path / "x.csv")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "more than the model's maximum" in r.stderr
    assert not (tmp_path / "x.csv").exists()


def test_text_per_label_transfer_and_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    good, bad = ["great", "lovely", "superb", "fine"], ["awful", "dull", "poor", "bad"]
    lines = ["text,sentiment"]
    for i in range(120):
        label = "pos" if i % 2 else "neg"
        words = good if label == "pos" else bad
        lines.append(f"the film was {rng.choice(words)} and {rng.choice(words)},{label}")
    lines.append(",pos")  # an empty text cell: skipped
    data = tmp_path / "reviews.csv"
    data.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    r = cli("train", "--data", data, "--sequence", "text", "--condition", "sentiment", "--epochs", "3", "--hidden", "32",
            "--latent-dim", "4", "--batch-size", "16", "--out", run, "--no-progress", "--no-tensorboard")
    assert r.returncode == 0, r.stderr
    assert "1 empty sequence cells (line 122)" in r.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["tokenizer"]["kind"] == "word"
    # the sequence class's defaults for text against posterior collapse, unless given (0 turns each off)
    assert {k: saved["train"][k] for k in ("kl_warmup", "free_bits", "word_dropout")} == \
        {"kl_warmup": 1.0, "free_bits": 0.05, "word_dropout": 0.25} and saved["model"]["word_dropout"] == 0.25
    r = cli("train", "--data", data, "--sequence", "text", "--condition", "sentiment", "--epochs", "1", "--hidden", "8",
            "--latent-dim", "2", "--free-bits", "0", "--kl-warmup", "0", "--word-dropout", "0", "--out",
            tmp_path / "off", "--no-progress", "--no-tensorboard", "--no-pictures")
    assert r.returncode == 0, r.stderr
    off = json.loads((tmp_path / "off" / "config.json").read_text())
    assert [off["train"][k] for k in ("kl_warmup", "free_bits", "word_dropout")] == [0, 0, 0]
    assert off["model"]["word_dropout"] == 0
    # resumed without the flags, a run trains on with the settings it saved, not the class's defaults
    r = cli("train", "--data", data, "--sequence", "text", "--condition", "sentiment", "--epochs", "2", "--resume",
            "--out", tmp_path / "off", "--no-progress", "--no-tensorboard", "--no-pictures")
    assert r.returncode == 0, r.stderr
    resumed = json.loads((tmp_path / "off" / "config.json").read_text())
    assert [resumed["train"][k] for k in ("kl_warmup", "free_bits", "word_dropout")] == [0, 0, 0]
    assert resumed["model"]["word_dropout"] == 0 and resumed["summary"]["epochs"] == 2
    out = tmp_path / "s.csv"
    r = cli("sample", run, "--condition", "sentiment=pos", "--n", "10", "-o", out)
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert [row["sentiment_requested"] for row in table] == ["pos"] * 10 and all(row["text"] for row in table)
    r = cli("sample", run, "--n", "4", "--within", "sentiment=1", "-o", tmp_path / "w.csv")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--within keeps molecules" in r.stderr
    r = cli("transfer", run, "--input", "the film was awful and dull", "--condition", "sentiment=neg",
            "--to", "sentiment=pos", "-o", tmp_path / "t.csv")
    assert r.returncode == 0, r.stderr
    r = cli("transfer", run, "--input", "the film was wonderful", "--condition", "sentiment=neg",
            "--to", "sentiment=pos", "-o", tmp_path / "t.csv")
    assert r.returncode == 2 and "'wonderful'" in r.stderr and "never seen in training" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("train", "--data", data, "--word-dropout", "0.2", "--out", tmp_path / "x", "--no-progress")
    assert r.returncode == 2 and "--word-dropout is for sequence data" in r.stderr

    # reconstruct, classify and traverse a sequence run, from strings or a .txt file
    given = tmp_path / "given.txt"
    given.write_text("the film was great and lovely\n\nthe film was awful and poor\n")
    r = cli("reconstruct", run, "--input", given, "--condition", "sentiment=pos", "-o", tmp_path / "rec.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "rec.csv") as f:
        rec = list(csv.DictReader(f))
    assert [row["input"] for row in rec] == ["the film was great and lovely", "the film was awful and poor"]
    assert all(row["sentiment"] == "pos" and row["same"] == str(int(row["reconstruction"] == row["input"]))
               for row in rec)
    r = cli("classify", run, "--data", given, "-o", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "p.csv") as f:
        pred = list(csv.DictReader(f))
    assert [row["id"] for row in pred] == [row["input"] for row in rec]
    from cvae.runs import load_model

    model = load_model(run)  # Bayes' rule over the classes, from the Python API on the same tokens
    probs = model.classify(torch.as_tensor(model.tokenizer.encode([r["input"] for r in rec], model.length)).float())
    np.testing.assert_allclose([[float(row["p_neg"]), float(row["p_pos"])] for row in pred], probs.numpy(), rtol=1e-4)
    assert [row["sentiment"] for row in pred] == [model.schema.attributes[0].classes[int(k)] for k in probs.argmax(1)]
    r = cli("classify", run, "--data", data, "-o", tmp_path / "all.csv")  # the training CSV: its text column
    assert r.returncode == 0, r.stderr
    assert "on the 120 examples with a label" in r.stdout  # scored against its own sentiment column
    with open(tmp_path / "all.csv") as f:
        assert [row["true_sentiment"] for row in csv.DictReader(f)] == ["neg", "pos"] * 60
    # and its own sentiment column is each line's condition (--condition was demanded)
    r = cli("embed", run, "--data", data, "-o", tmp_path / "codes.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "codes.csv") as f:
        assert [row["sentiment"] for row in csv.DictReader(f)] == ["neg", "pos"] * 60
    (tmp_path / "gap.csv").write_text("text,sentiment\nthe film was great and lovely,pos\nthe film was dull and poor,\n")
    r = cli("embed", run, "--data", tmp_path / "gap.csv", "-o", tmp_path / "x.csv")  # the line is named
    assert r.returncode == 2 and "gap.csv, line 3: condition 'sentiment' has a missing value" in r.stderr
    # the web API classifies uploaded lines the same way, without a condition of their own
    from fastapi.testclient import TestClient  # the serve extra is part of cvae[test]

    from cvae.serve import create_app

    with TestClient(create_app([run])) as client:
        up = {"file": ("given.txt", given.read_bytes(), "text/plain")}
        web = client.post("/v1/runs/run/classify", files=up).json()
        assert web["strings"] == [row["input"] for row in rec] and web["ids"] == ["line 1", "line 3"]
        np.testing.assert_allclose(web["probs"], probs.numpy(), rtol=1e-4)
        # a CSV upload: its text column, each line with its own sentiment column (it asked for 'condition')
        head = "\n".join(data.read_text().splitlines()[:3]).encode() + b"\n"
        code = client.post("/v1/runs/run/encode", files={"file": ("r.csv", head, "text/csv")}).json()
        assert code["conditions"] == {"sentiment": ["neg", "pos"]} and len(code["mu"]) == 2
        scored = client.post("/v1/runs/run/classify", files={"file": ("r.csv", head, "text/csv")}).json()
        assert scored["labelled"] == 2 and 0 <= scored["error"] <= 1  # against the CSV's own labels
        up = {"file": ("x.txt", b"the film was wonderful\n", "text/plain")}
        r = client.post("/v1/runs/run/classify", files=up)
        assert r.status_code == 422 and r.json()["detail"].startswith("the upload, line 1: the token 'wonderful'")
    r = cli("classify", run, "--n", "10", "-o", tmp_path / "own.csv")  # the run's own validation sentences
    assert r.returncode == 0, r.stderr
    assert "error" in r.stdout and "on the 10 examples with a label" in r.stdout
    r = cli("traverse", run, "--top", "2", "--steps", "3", "--condition", "sentiment=neg", "-o", tmp_path / "tr.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "tr.csv") as f:
        trav = list(csv.DictReader(f))
    assert len(trav) == 6 and [float(row["value_sd"]) for row in trav[:3]] == [-3.0, 0.0, 3.0]
    assert all(row["text"] for row in trav) and len({row["dimension"] for row in trav}) == 2
    for args, says in ((("reconstruct", run, "--input", given, "-o", tmp_path / "x.csv"), "give the sequences' own"),
                       (("reconstruct", run, "--input", tmp_path / "none.txt", "--condition", "sentiment=pos", "-o",
                         tmp_path / "x.csv"), "no such file"),
                       (("traverse", run, "-o", tmp_path / "x.png"), "written as a .csv file"),
                       (("classify", run, "--data", "the film was wonderful", "-o", tmp_path / "x.csv"),
                        "never seen in training")):
        r = cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert not (tmp_path / "x.csv").exists()

    # the web page's strings (cvae serve, without HTTP): moved to every class, as cvae transfer moves them
    from cvae.serve.served import ServedRun

    served = ServedRun("toy", run)
    moved = served.transfer(b"the film was awful and dull\n\nthe film was poor\n", condition="sentiment=neg")
    assert moved["targets"] == ["sentiment=neg", "sentiment=pos"] and moved["inputs"] == 2
    r = cli("transfer", run, "--input", "the film was poor", "--condition", "sentiment=neg", "-o", tmp_path / "m.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "m.csv") as f:
        assert [row["output"] for row in csv.DictReader(f)] == moved["strings"][2:]  # input by input
    rec = served.reconstruct(b"the film was poor\n", condition="sentiment=neg")
    assert rec["input"]["strings"] == ["the film was poor"] and rec["conditions"] == ["sentiment=neg"]

    # cvae evaluate's share of sequences decoded back exactly: the strings' own reconstructions agree
    from cvae.apps.sequences import own_strings, reconstruct_strings
    from cvae.evaluate import evaluate_run
    from cvae.runs import load_model

    post = evaluate_run(run, metrics="posterior", write=False).results["posterior"]
    model = load_model(run)
    texts, y, _ = own_strings(model)
    same = [r["same"] for r in reconstruct_strings(model, texts, y)]
    assert post["protocol"]["n_examples"] == len(texts) and len(same) == len(texts)
    assert post["reconstructed_exactly"]["value"] == pytest.approx(np.mean(same))
    assert 0 <= post["tokens_reconstructed"]["value"] <= 1 and (post["tokens_reconstructed"]["value"] == 1) == all(same)


def test_a_very_long_smiles_is_refused_before_rdkit_sees_it(tmp_path):
    """RDKit overflows its stack on a 20,000-character chain and kills the process (no exception): such a
    string is never handed to it. Run in a child process, so that a crash fails the test, not the suite."""
    import subprocess
    import sys

    rows = MOLECULES.read_text().splitlines()
    header = rows[0].split(",")
    long_row = ["C" * 20000 if h == "smiles" else "0" for h in header]
    data = tmp_path / "m.csv"
    data.write_text("\n".join(rows[:60] + [",".join(long_row)]) + "\n")
    (tmp_path / "long.smi").write_text("C" * 20000 + "\n")
    script = (f"from cvae.cli import main; import sys; "
              f"sys.exit(main(['train', '--data', r'{data}', '--sequence', 'smiles', '--condition', 'logp', "
              f"'--epochs', '1', '--hidden', '16', '--latent-dim', '2', '--max-length', '60', '--out', "
              f"r'{tmp_path / 'run'}', '--no-progress', '--no-tensorboard', '--no-pictures']))")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]  # the long row is skipped and counted, the rest trains
    assert "skipped 1 of 60 rows" in r.stdout + r.stderr
    script = (f"from cvae.cli import main; import sys; sys.exit(main(['reconstruct', r'{tmp_path / 'run'}', "
              f"'--input', r'{tmp_path / 'long.smi'}', '-o', r'{tmp_path / 'r.csv'}']))")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert "longer than 2,000 characters" in r.stderr and len(r.stderr) < 400  # the input is not repeated


def test_a_reconstruction_is_the_same_when_its_tokens_are(tmp_path):
    """The word tokeniser lower-cases and spaces punctuation: "Hello, World." decoded back as
    "hello , world ." is the same sequence (reconstruct said 0 where evaluate said every one came back)."""
    lines = ["text,label"] + [('"Hello, World.",a' if i % 2 else "Good night!,b") for i in range(150)]
    (tmp_path / "two.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    r = cli("train", "--data", tmp_path / "two.csv", "--sequence", "text", "--condition", "label", "--epochs", "40",
            "--hidden", "32", "--latent-dim", "4", "--out", run, "--no-progress", "--no-tensorboard", "--no-pictures")
    assert r.returncode == 0, r.stderr
    r = cli("reconstruct", run, "--input", "Hello, World.", "--condition", "label=a", "-o", tmp_path / "r.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "r.csv") as f:
        row = next(csv.DictReader(f))
    assert row["input"] == "Hello, World." and row["reconstruction"] == "hello , world ." and row["same"] == "1"


def test_a_txt_of_samples_holds_one_sequence_a_line(tmp_path, monkeypatch):
    """A generated string with a line break in it (a character vocabulary that learnt '\\n') is one line,
    and an empty one is left out with a note, not written as a blank line that readers skip."""
    import cvae.apps.sequences as seq
    from cvae.runs import load_model

    lines = ["text"] + [f"good film {i % 7}" for i in range(60)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    r = cli("train", "--data", tmp_path / "t.csv", "--sequence", "text", "--epochs", "1", "--hidden", "16",
            "--latent-dim", "2", "--out", run, "--no-progress", "--no-tensorboard", "--no-pictures")
    assert r.returncode == 0, r.stderr
    model = load_model(run)
    made = ["good\nfilm", "", "good film 3"]
    monkeypatch.setattr(seq, "_generate", lambda *a, **k: (made, None, [None] * 3, {}, 3))
    path, summary = seq.sample_to_file(model, tmp_path / "s.txt", n=3)
    assert path.read_text().splitlines() == ["good film", "good film 3"] and summary["left_out_empty"] == 1


def test_a_property_rdkit_computes_needs_a_molecular_tokeniser(tmp_path):
    """--tokenizer char reads SMILES as text: asking for a property RDKit computes says so (it said the
    file had no column 'mw' and no labels)."""
    (tmp_path / "m.smi").write_text("CCO\nc1ccoc1\nCCN\n")
    r = cli("train", "--data", tmp_path / "m.smi", "--sequence", "smiles", "--condition", "mw", "--tokenizer", "char",
            "--epochs", "1", "--out", tmp_path / "run", "--no-progress")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "--condition mw: RDKit computes it for molecules read by the selfies or smiles tokeniser" in r.stderr


def test_an_anomaly_detector_of_text_measures_auroc_on_a_labelled_csv(tmp_path):
    """anomaly score on a sequence run's CSV reads its label column as it does a table's (no AUROC before)."""
    rng = np.random.default_rng(0)
    words = ["the", "film", "was", "great", "fine"]  # one vocabulary: the detector sees only the normal rows
    lines = ["text,sentiment"] + [(" ".join(words[:3] + [str(rng.choice(words[3:]))]) + ",pos") if i % 2 else
                                  (" ".join(rng.choice(words, 4)) + ",neg") for i in range(80)]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "det"
    r = cli("anomaly", "fit", "--data", tmp_path / "r.csv", "--sequence", "text", "--label-column", "sentiment",
            "--normal", "pos", "--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--out", run, "--no-progress",
            "--no-pictures")
    assert r.returncode == 0, r.stderr
    r = cli("anomaly", "score", run, "--data", tmp_path / "r.csv", "-o", tmp_path / "s.csv")
    assert r.returncode == 0, r.stderr
    assert "labels (sentiment; normal = pos): 40 normal, 40 anomalous" in r.stdout and "AUROC" in r.stdout
