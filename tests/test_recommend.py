"""Mult-VAE / Mult-DAE for implicit feedback: the likelihood, the model class, the protocol, the metrics
(against hand and independent computations), EASE's closed form, and the commands end to end."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import cvae
from cvae.distributions import Multinomial
from cvae.errors import CvaeError, CvaeWarning
from cvae.models import MultVAEConfig, build_model
from cvae.recommend import ease_weights, evaluate_scorer, load_interactions, model_scorer, split
from cvae.recommend.data import HeldOut, named_files, truncate_fold_in
from cvae.recommend.metrics import per_user_metrics

ROOT = Path(__file__).resolve().parents[1]


def synthetic(tmp_path: Path, users: int = 160, items: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """Two kinds of users (attribute 'kind' a or b) who like the first or the second half of the items."""
    rng = np.random.default_rng(seed)
    inter, attrs = tmp_path / "ratings.csv", tmp_path / "users.csv"
    with open(inter, "w", newline="") as f, open(attrs, "w", newline="") as g:
        w, a = csv.writer(f), csv.writer(g)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        a.writerow(["user", "kind", "age"])
        for u in range(users):
            kind = "a" if u % 2 else "b"
            a.writerow([f"u{u}", kind, 20 + u % 30])
            half = np.arange(items // 2) + (0 if kind == "a" else items // 2)
            for i in rng.choice(half, size=int(rng.integers(8, 16)), replace=False):
                w.writerow([f"u{u}", f"i{i}", int(rng.integers(3, 6)), 0])
    return inter, attrs


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cvae", *args], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def recommend_heldout(run: Path, test: HeldOut, items, attrs: Path, tmp_path: Path) -> tuple[list[dict], Path, Path]:
    """``cvae recommend RUN`` for the held-out users' fold-in items, written as a history file: the rows of
    recs.csv (top 100), the history file and recs.csv."""
    hist, recs = tmp_path / "history.csv", tmp_path / "recs.csv"
    with open(hist, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item"])
        for r_, u in enumerate(test.users):
            w.writerows((u, items[j]) for j in test.fold_in[r_].indices)
    r = run_cli("recommend", str(run), "--user-history", str(hist), "--user-attributes", str(attrs), "--top", "100",
                "-o", str(recs))
    assert r.returncode == 0, r.stderr
    with open(recs, newline="") as f:
        return list(csv.DictReader(f)), hist, recs


def ndcg_at_100(ranked: list[str], relevant: set[str]) -> float:
    """NDCG@100 of one user's ranked items, computed here independently of cvae.recommend.metrics."""
    dcg = sum(1 / math.log2(k + 2) for k, item in enumerate(ranked[:100]) if item in relevant)
    return dcg / sum(1 / math.log2(k + 2) for k in range(min(100, len(relevant))))


def test_multinomial_log_prob_is_torch_multinomial_without_its_coefficient():
    torch.manual_seed(0)
    logits, x = torch.randn(4, 7), torch.randint(0, 3, (4, 7)).float()
    ours = Multinomial(logits).log_prob(x)
    for b in range(4):
        n = x[b].sum()
        log_coef = torch.lgamma(n + 1) - torch.lgamma(x[b] + 1).sum()
        full = torch.distributions.Multinomial(int(n), logits=logits[b]).log_prob(x[b])
        assert torch.allclose(ours[b], full - log_coef, atol=1e-5)
    assert torch.allclose(Multinomial(logits).mean.sum(1), torch.ones(4))
    assert torch.equal(Multinomial(logits).sample(5).sum(1), torch.full((4,), 5.0))


def test_mult_dae_is_the_same_class_with_a_point_encoder_and_no_kl():
    cfg = dict(data_shape=(30,), hidden=[16], latent_dim=4, activation="tanh", likelihood="multinomial",
               prior="standard")
    vae, dae = build_model(MultVAEConfig(**cfg)), build_model(MultVAEConfig(**cfg, variational=False))
    assert type(vae) is type(dae) and type(vae).__name__ == "MultVAE"  # its config names its class
    assert vae.encoder.layers[-1].out_features == 8 and dae.encoder.layers[-1].out_features == 4
    x = (torch.rand(5, 30) < 0.3).float()
    out = dae(x)
    assert torch.equal(out.kl(), torch.zeros(5)) and torch.equal(out.z, out.qz.mu)
    assert (vae(x).kl() > 0).all()
    vae.train()
    a, b = vae.item_scores(x), vae.item_scores(x)  # no dropout, z at its mean: deterministic
    assert torch.equal(a, b) and vae.training
    assert torch.allclose(a.exp().sum(1), torch.ones(5), atol=1e-5)


def test_ndcg_and_recall_match_hand_computation():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    fold_in = torch.tensor([[1.0, 0, 0, 0, 0, 0]])  # item 0 seen: excluded
    scored = sp.csr_matrix(np.array([[0, 0, 1, 0, 1, 0]], dtype=np.float32))  # relevant at ranks 2 and 4
    m = per_user_metrics(scores, fold_in, scored, metrics=(("ndcg", 3), ("recall", 1), ("recall", 3)))
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg@3"][0] == pytest.approx((1 / math.log2(3)) / ideal)
    assert m["recall@1"][0] == pytest.approx(0.0)
    assert m["recall@3"][0] == pytest.approx(1 / 2)  # 1 hit of min(3, 2) relevant items


def test_ease_weights_solve_the_constrained_ridge_regression():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((40, 8)) < 0.3).astype(np.float32))
    lam = 3.0
    b = ease_weights(x, lam)
    xd = x.toarray().astype(np.float64)
    for j in range(8):
        others = [i for i in range(8) if i != j]
        a = xd[:, others]
        w = np.linalg.solve(a.T @ a + lam * np.eye(7), a.T @ xd[:, j])
        assert b[j, j] == 0 and np.allclose(b[others, j], w, atol=1e-4)


def test_protocol_splits_users_and_items_as_the_paper(tmp_path):
    inter, attrs = synthetic(tmp_path)
    data = load_interactions(str(inter), min_rating=4, user_attributes=str(attrs))
    s = split(data, condition="kind,age:continuous", heldout_users=0.1, seed=3)
    train, val, test = set(s.train_users), set(s.val.users), set(s.test.users)
    assert not (train & val or train & test or val & test)
    assert len(val) == len(test) == round(0.1 * s.meta["users_kept"])
    assert s.schema.names == ["kind", "age"] and s.schema.dim == 3
    index = {u: i for i, u in enumerate(data.users)}
    columns = {i: j for j, i in enumerate(data.items)}
    model_cols = [columns[i] for i in s.items]
    for part in (s.val, s.test):
        assert (part.fold_in.multiply(part.scored)).nnz == 0
        for r, u in enumerate(part.users):
            full = set(np.flatnonzero(data.matrix[index[u]].toarray()[0][model_cols]))
            fold, held = set(part.fold_in[r].indices), set(part.scored[r].indices)
            assert fold | held == full and len(held) == int(0.2 * len(full))
    cold = truncate_fold_in(s.test, 5, seed=0)
    assert cold.fold_in.getnnz(axis=1).max() <= 5 and (cold.scored != s.test.scored).nnz == 0
    assert set(cold.fold_in.nonzero()[1]) <= set(s.test.fold_in.nonzero()[1])


def test_reading_interactions_refuses_bad_input_and_counts_duplicates_once(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\na,x,5\na,x,5\na,y,2\nb,x,4\n")
    with pytest.warns(CvaeWarning, match="1 duplicate"):
        data = load_interactions(str(path), min_rating=4)
    assert data.matrix.nnz == 2 and data.matrix.max() == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,rating\na,x,5\na,y,great\n")
    with pytest.raises(CvaeError, match=r"bad.csv, line 3, column rating: rating 'great' is not a number"):
        load_interactions(str(bad))
    unnamed = tmp_path / "h.csv"
    unnamed.write_text("a,b,c\n1,2,5\n")  # a header of names cvae does not know: said so, not just 'not a number'
    with pytest.raises(CvaeError, match=r"rating 'c' is not a number.*first line was read as data"):
        load_interactions(str(unnamed))
    nan = tmp_path / "nan.csv"
    nan.write_text("a,x,nan\n")
    with pytest.raises(CvaeError, match="line 1: rating 'nan' is not a finite number"):
        load_interactions(str(nan))
    empty = tmp_path / "e.csv"
    empty.write_text("user,item\n")
    with pytest.raises(CvaeError, match="holds no interactions"):
        load_interactions(str(empty))
    plain = tmp_path / "n.csv"
    plain.write_text("user,item\na,x\n")
    with pytest.raises(CvaeError, match="no rating column"):
        load_interactions(str(plain), min_rating=4)


def test_movielens_100k_is_read_from_the_recbole_package_files():
    try:
        named_files("ml-100k")
    except CvaeError as e:
        assert "pip install --no-deps recbole==1.2.1" in str(e)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):  # .ci/run installs them: a green CI read them
            pytest.fail(f"MovieLens-100K is missing under CI: {e}")
        pytest.skip("recbole's data files are not installed")
    data = load_interactions("ml-100k")  # ratings >= 4, the paper's threshold, by default
    assert data.matrix.shape == (942, 1447) and data.matrix.nnz == 55375
    assert {"age", "gender", "occupation"} <= set(data.attributes)


def test_train_recommend_and_recompute_ndcg_from_recs_csv(tmp_path):
    inter, attrs = synthetic(tmp_path)
    run = tmp_path / "run"
    args = ["recommend", "train", "--data", str(inter), "--user-attributes", str(attrs), "--condition", "kind",
            "--min-rating", "4", "--hidden", "32", "--latent-dim", "8", "--epochs", "20", "--batch-size", "32",
            "--heldout-users", "0.15", "--out", str(run), "--no-progress"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "NDCG@100" in r.stdout
    for name in ("config.json", "model.safetensors", "items.csv", "metrics.jsonl", "summary.json", "training.png"):
        assert (run / name).is_file(), name
    again = run_cli(*args)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    model = cvae.load(run)
    assert model.schema.names == ["kind"]
    summary = __import__("json").loads((run / "summary.json").read_text())

    # the test users' fold-in items as a history file, then recs.csv with the top 100
    data = load_interactions(str(inter), min_rating=4, user_attributes=str(attrs))
    s = split(data, condition="kind", heldout_users=0.15, seed=0)
    items = np.array([row[1] for row in list(csv.reader(open(run / "items.csv")))[1:]])
    assert list(items) == list(s.items)
    rows, hist, recs = recommend_heldout(run, s.test, items, attrs, tmp_path)
    ranked: dict[str, list[str]] = {}
    for row in rows:
        ranked.setdefault(row["user"], []).append(row["item"])
        assert int(row["rank"]) == len(ranked[row["user"]])
    ndcgs = []
    for r_, u in enumerate(s.test.users):
        seen = {items[j] for j in s.test.fold_in[r_].indices}
        assert not seen & set(ranked[u])  # seen items are never recommended
        ndcgs.append(ndcg_at_100(ranked[u], {items[j] for j in s.test.scored[r_].indices}))
    assert float(np.mean(ndcgs)) == pytest.approx(summary["test"]["ndcg@100"]["mean"], abs=1e-6)
    g = torch.Generator().manual_seed(0)
    chance = evaluate_scorer(lambda x, y: torch.rand(x.shape, generator=g), s.test)["ndcg@100"].mean
    assert summary["test"]["ndcg@100"]["mean"] > chance + 0.1  # two clear kinds of users: far above chance

    # bad input: a conditioned model without attributes; a user with only unknown items; unknown mixed in
    r = run_cli("recommend", str(run), "--user-history", str(hist), "-o", str(recs))
    assert r.returncode == 2 and "conditioned on the user's kind: pass --user-attributes" in r.stderr
    odd = tmp_path / "odd.csv"
    odd.write_text("user,item\nu1,i1\nu1,nosuch\nu1,i1\n")
    r = run_cli("recommend", str(run), "--user-history", str(odd), "--user-attributes", str(attrs), "-o", str(recs))
    assert r.returncode == 0, r.stderr
    assert "1 duplicate" in r.stderr and "unknown to the model and dropped" in r.stderr and "'nosuch'" in r.stderr
    odd.write_text("user,item\nu1,zzz\n")
    r = run_cli("recommend", str(run), "--user-history", str(odd), "--user-attributes", str(attrs), "-o", str(recs))
    assert r.returncode == 2 and "user 'u1' has no item this model knows (unknown: 'zzz')" in r.stderr
    odd.write_text("user,item\nnewbie,i1\n")
    r = run_cli("recommend", str(run), "--user-history", str(odd), "--user-attributes", str(attrs), "-o", str(recs))
    assert r.returncode == 2 and "no row for user(s) 'newbie'" in r.stderr
    odd.write_text("user,item,rating\nu1,i1,lots\n")
    r = run_cli("recommend", str(run), "--user-history", str(odd), "--user-attributes", str(attrs), "-o", str(recs))
    assert r.returncode == 2 and "rating 'lots' is not a number" in r.stderr


def test_python_api_scores_match_the_run_summary(tmp_path):
    inter, attrs = synthetic(tmp_path, users=80)
    from cvae.recommend import train_recommender

    with warnings.catch_warnings():
        warnings.simplefilter("error", CvaeWarning)
        result = train_recommender(data=str(inter), min_rating=4, model="multdae", hidden=[16], latent_dim=4,
                                   epochs=3, batch_size=16, heldout_users=0.2, out=str(tmp_path / "dae"),
                                   progress=False)
    model = cvae.load(tmp_path / "dae")
    assert not model.config.variational and not model.schema
    got = evaluate_scorer(model_scorer(model), result.splits.test)["ndcg@100"].mean
    assert got == pytest.approx(result.summary["test"]["ndcg@100"]["mean"], abs=1e-6)
    assert isinstance(result.splits.test, HeldOut)


def test_demographic_popularity_uses_the_group_and_backs_off_to_coarser_ones(tmp_path):
    from cvae.recommend import group_popularity_scorer, popularity_scorer

    inter, attrs = synthetic(tmp_path)
    data = load_interactions(str(inter), min_rating=4, user_attributes=str(attrs))
    s = split(data, condition="kind,age:continuous", heldout_users=0.15, seed=0)
    cold = truncate_fold_in(s.test, 2, seed=0)
    demo = group_popularity_scorer(s.train, s.y_train, s.schema, alpha=5, bands=3)
    glob = evaluate_scorer(popularity_scorer(s.train), cold)["recall@20"].mean
    assert glob < 0.7 and evaluate_scorer(demo, cold)["recall@20"].mean > 0.99  # the kind says which half
    kind = s.schema.names.index("kind")
    a_user = s.y_train[s.y_train[:, kind] == 0][:1]
    share = demo(torch.zeros(1, len(s.items)), a_user)[0].numpy()
    train = s.train.toarray()
    liked = train[s.y_train[:, kind] == 0].mean(0) > 0
    assert share[liked].min() > share[~liked].max()  # kind 'a' users' items first
    unseen = a_user.copy()
    unseen[0, 1 - kind] = 1e6  # an age beyond every band: still its kind's items first
    share = demo(torch.zeros(1, len(s.items)), unseen)[0].numpy()
    assert share[liked].min() > share[~liked].max()


def test_cold_start_training_settings_of_the_model():
    cfg = dict(data_shape=(30,), hidden=[16], latent_dim=4, activation="tanh", likelihood="multinomial",
               prior="standard", model_class="multvae",
               schema={"attributes": [{"name": "kind", "kind": "categorical", "classes": ["a", "b"]}]})
    torch.manual_seed(0)
    model = build_model(MultVAEConfig(**cfg, truncate_share=1.0, truncate_items=3, dropout=0.0))
    x = (torch.rand(50, 30) < 0.5).float()
    model.train()
    cut = model._truncate(x)
    kept = cut.sum(1)
    assert (kept >= 1).all() and (kept <= 3).all() and ((cut > 0) <= (x > 0)).all()
    model.eval()
    assert torch.equal(model._truncate(x), x)  # scoring sees the whole history
    with pytest.raises(CvaeError, match="truncate_share must be a number from 0 to 1"):
        MultVAEConfig(**cfg, truncate_share=2)
    # the decoder alone conditioned: q(z | x) ignores c; a learned embedding sits between c and both nets
    dec = build_model(MultVAEConfig(**cfg, condition_in="decoder", condition_embedding=6)).eval()
    assert dec.encoder.layers[0].in_features == 30 and dec.decoder.layers[0].in_features == 4 + 6
    c0, c1 = torch.tensor([[1.0, 0.0]]).expand(50, 2), torch.tensor([[0.0, 1.0]]).expand(50, 2)
    assert torch.equal(dec.q_z(x, c0).mu, dec.q_z(x, c1).mu)
    assert not torch.equal(dec.item_scores(x, c0), dec.item_scores(x, c1))
    # attribute dropout: a blanked condition is all zeros, which the model sees in training
    drop = build_model(MultVAEConfig(**cfg, condition_dropout=1.0, dropout=0.0))
    drop.train()
    torch.manual_seed(1)
    a = drop(x, c0).px.logits
    torch.manual_seed(1)
    b = drop(x, torch.zeros(50, 2)).px.logits
    assert torch.equal(a, b)


def test_ease_from_the_command_line_is_a_run_folder(tmp_path):
    from cvae.recommend import load_recommender, recommend, train_recommender

    inter, _ = synthetic(tmp_path, users=80)
    run = tmp_path / "ease"
    r = run_cli("recommend", "train", "--model", "ease", "--data", str(inter), "--min-rating", "4",
                "--heldout-users", "0.2", "--out", str(run))
    assert r.returncode == 0, r.stderr
    assert "kept lambda" in r.stdout
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["ease_lambda"] == max(rows, key=lambda row: row["val_ndcg@100"])["lambda"]
    data = load_interactions(str(inter), min_rating=4)
    s = split(data, heldout_users=0.2, seed=0)
    model = load_recommender(run)
    want = ease_weights(s.train, summary["ease_lambda"])
    assert np.allclose(model.weights.numpy(), want, atol=1e-6)
    assert evaluate_scorer(model_scorer(model), s.test)["ndcg@100"].mean == pytest.approx(
        summary["test"]["ndcg@100"]["mean"], abs=1e-9)
    user = s.test.users[0]
    history = [s.items[j] for j in s.test.fold_in[0].indices]
    recs = recommend(run, {user: history}, top=5)
    scores = torch.from_numpy(s.test.fold_in[0].toarray()) @ torch.from_numpy(want)
    scores[0, s.test.fold_in[0].indices] = -math.inf
    assert [row[2] for row in recs] == [s.items[j] for j in torch.topk(scores[0], 5).indices.tolist()]
    assert recs[0][3] == pytest.approx(float(scores.max()), rel=1e-5)
    with pytest.raises(CvaeError, match="is an EASE run"):
        cvae.load(run)
    with pytest.raises(CvaeError, match="does not use user attributes"):
        train_recommender(data=str(inter), min_rating=4, model="ease", condition="kind", out=str(tmp_path / "x"))
    with pytest.raises(CvaeError, match="nothing to resume"):
        train_recommender(out=str(run), resume=True)


def test_resume_is_exact(tmp_path):
    from safetensors.torch import load_file

    from cvae.recommend import train_recommender

    inter, attrs = synthetic(tmp_path, users=80)
    common = dict(data=str(inter), min_rating=4, user_attributes=str(attrs), condition="kind", hidden=[16],
                  latent_dim=4, batch_size=16, heldout_users=0.2, anneal_steps=40, truncate_share=0.5,
                  condition_dropout=0.3, progress=False)
    train_recommender(**common, epochs=4, out=str(tmp_path / "once"))
    train_recommender(**common, epochs=2, out=str(tmp_path / "twice"))
    with pytest.raises(CvaeError, match="already holds a run; pass --resume"):
        train_recommender(**common, epochs=4, out=str(tmp_path / "twice"))
    with pytest.raises(CvaeError, match="cannot change --lr when resuming"):
        train_recommender(out=str(tmp_path / "twice"), resume=True, epochs=4, lr=0.1)
    train_recommender(out=str(tmp_path / "twice"), resume=True, epochs=4, progress=False)
    a, b = (load_file(str(tmp_path / d / "trainer_state.safetensors")) for d in ("once", "twice"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "once" / "metrics.jsonl").read_text().count("\n") == 4
    strip = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
              for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("once", "twice")]
    assert strip[0] == strip[1]
    with pytest.raises(CvaeError, match="already trained 4 epochs"):
        train_recommender(out=str(tmp_path / "twice"), resume=True, epochs=4)


def test_what_the_recommendation_audit_found(tmp_path, capsys):
    """Each found by a QA audit: a traceback, a silently ignored input or a user dropped without a word."""
    import shutil

    from cvae.cli import main
    from cvae.recommend import train_recommender
    from cvae.recommend.apps import recommend

    inter, attrs = synthetic(tmp_path, users=80)
    small = dict(hidden=[8], latent_dim=2, epochs=1, batch_size=16, heldout_users=0.2, progress=False)
    # a held-out fraction that scores no item: one line before anything is written (a KeyError before)
    with pytest.raises(CvaeError, match="none of the 16 validation users has an item to score"):
        train_recommender(data=str(inter), heldout_fraction=0.01, out=str(tmp_path / "hf"), **small)
    assert not (tmp_path / "hf").exists()
    with pytest.raises(CvaeError, match="at least --min-user-interactions 100 interactions"):
        train_recommender(data=str(inter), min_user_interactions=100, out=str(tmp_path / "mu"), **small)
    with pytest.raises(CvaeError, match="no CUDA GPU is available"):  # an AssertionError from torch before
        train_recommender(data=str(inter), device="cuda", out=str(tmp_path / "dv"), **small)
    with pytest.raises(CvaeError, match="--dropout must be a number from 0 to below 1"):
        train_recommender(data=str(inter), dropout=1.0, out=str(tmp_path / "dr"), **small)
    with pytest.raises(CvaeError, match="has no user attributes to condition on; pass --user-attributes"):
        train_recommender(data=str(inter), condition="age", out=str(tmp_path / "na"), **small)
    # --user-attributes without --condition conditions on every column (they were read, then ignored)
    train_recommender(data=str(inter), user_attributes=str(attrs), min_rating=4, out=str(tmp_path / "all"), **small)
    assert cvae.load(tmp_path / "all").schema.names == ["kind", "age"]
    run = tmp_path / "plain"
    result = train_recommender(data=str(inter), min_rating=4, **{**small, "heldout_users": 1},
                               out=str(run))
    assert result.summary["test"]["ndcg@100"]["se"] is None  # one user: no spread (NaN in JSON before)
    assert '"se": null' in (run / "summary.json").read_text()
    # a user whose every row is below the run's --min-rating is named, not silently left out
    hist = tmp_path / "h.csv"
    hist.write_text("user,item,rating\nu0,i1,5\nu1,i3,1\n")
    assert main(["recommend", str(run), "--user-history", str(hist), "-o", str(tmp_path / "r.csv")]) == 0
    err = capsys.readouterr().err  # the others still get theirs (a regression hunt: the whole file was refused)
    assert "1 user(s) have no row rated 4 or more, so nothing to recommend from, and are left out: 'u1'" in err
    assert {r["user"] for r in csv.DictReader(open(tmp_path / "r.csv"))} == {"u0"}
    # item ids given as whole numbers in Python are the run's ids; a string is not a list of items
    items = [row[1] for row in list(csv.reader(open(run / "items.csv")))[1:]]
    numbered = tmp_path / "numbered"
    numbered.mkdir()
    shutil.copytree(run, numbered / "run")
    with open(numbered / "run" / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "item", "train_users"])
        w.writerows([j, 100 + j, 1] for j in range(len(items)))
    by_int = recommend(numbered / "run", {"a": [100, np.int64(101)]}, top=3)
    by_text = recommend(numbered / "run", {"a": ["100", "101"]}, top=3)
    assert by_int == by_text and len(by_int) == 3
    with pytest.raises(CvaeError, match="the history of user 'a' is 'i1', not a list of item ids"):
        recommend(run, {"a": "i1"})
    # a hand-edited items.csv: one line, not an IndexError or a shape mismatch inside a product
    for edit, says in ((lambda rows: rows[:4] + ["garbage"] + rows[5:], "items.csv is damaged (line 5 is 'garbage'"),
                       (lambda rows: rows[:10], "lists 9 items but the model scores")):
        damaged = tmp_path / f"damaged{len(says)}"
        shutil.copytree(run, damaged)
        rows = (run / "items.csv").read_text().splitlines()
        (damaged / "items.csv").write_text("\n".join(edit(rows)) + "\n")
        with pytest.raises(CvaeError, match=re.escape(says)):
            recommend(damaged, {"a": [items[0]]})
    # a deleted model.safetensors: the advice names the recommender's command, and following it works
    lost = tmp_path / "lost"
    shutil.copytree(run, lost)
    (lost / "model.safetensors").unlink()
    with pytest.raises(CvaeError, match=re.escape(f"`cvae recommend train --resume --out {lost} --epochs N`")):
        recommend(lost, {"a": [items[0]]})
    with pytest.warns(CvaeWarning, match="the epoch it kept \\(epoch 1\\) is lost"):
        train_recommender(out=str(lost), resume=True, epochs=2, progress=False)
    assert len(recommend(lost, {"a": [items[0]]}, top=2)) == 2
    # an unknown header is read as data, with a warning; a user who has seen everything is said so
    visitor = tmp_path / "v.csv"
    visitor.write_text("visitor,article\n" + "".join(f"u0,{i}\n" for i in items))
    with pytest.warns(CvaeWarning) as caught:
        from cvae.recommend.apps import recommend_file

        with pytest.raises(CvaeError, match="user 'visitor' has no item this model knows"):
            recommend_file(run, visitor, tmp_path / "r.csv")
    assert "line 1 (visitor, article) is read as an interaction" in str(caught[0].message)
    visitor.write_text("user,item\n" + "".join(f"u0,{i}\n" for i in items))
    with pytest.warns(CvaeWarning, match="1 user\\(s\\) have seen every item the model knows"):
        recommend_file(run, visitor, tmp_path / "r.csv")
    # a recommender run is refused by cvae serve in one line (it served nonsense before)
    from cvae.serve.served import ServedRun

    with pytest.raises(CvaeError, match="is a recommender run: cvae serve does not serve recommendations"):
        ServedRun("plain", run)
    # a .npy saved under the name .npz
    np.save(tmp_path / "m.npy", np.ones((3, 3)))
    (tmp_path / "m.npy").rename(tmp_path / "m.npz")
    with pytest.raises(CvaeError, match="cannot read .* as a sparse matrix saved by scipy.sparse.save_npz"):
        load_interactions(str(tmp_path / "m.npz"))
