"""The cold-start aids of the recommender: history dropout (DropoutNet), the per-condition item bias,
the fold-in towards the conditional prior, the blend with group popularity, and K-fold over users;
each through the model, the Python API and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_recommend import ndcg_at_100, recommend_heldout, run_cli, synthetic

import cvae
from cvae.errors import CvaeError
from cvae.models import MultVAEConfig, build_model
from cvae.recommend import evaluate_scorer, load_interactions, model_scorer, split
from cvae.recommend.metrics import GroupPopularity, popularity_mix, run_scorer

SCHEMA = {"attributes": [{"name": "kind", "kind": "categorical", "classes": ["a", "b"]}]}
BASE = dict(data_shape=(30,), hidden=[16], latent_dim=4, activation="tanh", likelihood="multinomial",
            prior="standard", model_class="multvae", schema=SCHEMA, dropout=0.0)


def test_history_dropout_blanks_whole_inputs_in_training_only():
    torch.manual_seed(0)
    x = (torch.rand(40, 30) < 0.4).float()
    c = torch.tensor([[1.0, 0.0]]).expand(40, 2)
    model = build_model(MultVAEConfig(**BASE, history_dropout=1.0, condition_in="decoder"))
    model.train()
    qz, n = model._encode(x, c)
    empty, n0 = model._encode(torch.zeros_like(x), c)
    assert torch.equal(n, torch.zeros(40)) and torch.equal(qz.mu, empty.mu)  # the encoder saw nothing
    out = model(x, c)
    assert torch.isfinite(out.px.log_prob(x)).all()  # the target is still the whole history
    model.eval()
    qz, n = model._encode(x, c)
    assert torch.equal(n, (x > 0).sum(1).float()) and not torch.equal(qz.mu, empty.mu)
    half = build_model(MultVAEConfig(**BASE, history_dropout=0.5)).train()
    blanked = (half._encode(x, c)[1] == 0).float().mean()
    assert 0.2 < blanked < 0.8
    with pytest.raises(CvaeError, match="history_dropout must be a number from 0 to 1"):
        MultVAEConfig(**BASE, history_dropout=1.5)


def test_condition_bias_is_weighted_by_history_length():
    torch.manual_seed(0)
    plain = build_model(MultVAEConfig(**BASE)).eval()
    model = build_model(MultVAEConfig(**BASE, condition_bias=4.0)).eval()
    model.load_state_dict({**plain.state_dict(), "bias.weight": torch.zeros(30, 2)})
    x = torch.zeros(3, 30)
    x[0, :2] = 1
    x[1, :6] = 1
    x[2, :12] = 1
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert torch.allclose(model.item_scores(x, c), plain.item_scores(x, c))  # a zero bias changes nothing
    with torch.no_grad():
        model.bias.weight.normal_()
    logits = plain.p_x(plain.q_z(x, c).mu, c).logits
    n = torch.tensor([2.0, 6.0, 12.0])
    want = torch.log_softmax(logits + (4 / (4 + n)).unsqueeze(1) * (c @ model.bias.weight.T), dim=-1)
    assert torch.allclose(model.item_scores(x, c), want, atol=1e-5)
    # without a history length (decoding a code alone) the bias weighs as for an empty history
    z = torch.zeros(3, 4)
    assert torch.allclose(model.p_x(z, c).logits, plain.p_x(z, c).logits + c @ model.bias.weight.T, atol=1e-5)
    with pytest.raises(CvaeError, match="condition_bias must be a finite number of at least 0"):
        MultVAEConfig(**BASE, condition_bias=-1)


def test_prior_fold_in_pulls_short_histories_towards_the_prior_of_their_group():
    torch.manual_seed(0)
    model = build_model(MultVAEConfig(**{**BASE, "prior": "conditional"})).eval()
    with torch.no_grad():
        model.prior.net.bias.normal_()
        model.prior.net.weight.normal_()
    x = torch.zeros(2, 30)
    x[0, :1] = 1
    x[1, :20] = 1
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mu_q = model.q_z(x, c).mu
    mu_p = model.prior.distribution(c).mu
    base = model.item_scores(x, c)
    model.config.prior_fold_in = 5.0
    n = torch.tensor([[1.0], [20.0]])
    z = (n * mu_q + 5 * mu_p) / (n + 5)
    assert torch.allclose(model.item_scores(x, c), torch.log_softmax(model.p_x(z, c).logits, -1), atol=1e-5)
    assert not torch.allclose(model.item_scores(x, c), base)


def test_group_popularity_saves_loads_and_blends_by_history_length(tmp_path):
    inter, attrs = synthetic(tmp_path)
    data = load_interactions(str(inter), min_rating=4, user_attributes=str(attrs))
    s = split(data, condition="kind,age:continuous", heldout_users=0.15, seed=0)
    groups = GroupPopularity.fit(s.train, s.y_train, s.schema, alpha=5)
    groups.save(tmp_path / "g.safetensors")
    again = GroupPopularity.load(tmp_path / "g.safetensors")
    assert np.allclose(again.shares(s.test.y, len(s.test)), groups.shares(s.test.y, len(s.test)))
    glob = GroupPopularity.fit(s.train, None, None)
    assert np.allclose(glob.shares(s.test.y, 3)[0], np.asarray(s.train.mean(0)).ravel())
    # the blend: log((1 - w) pi + w p), w = k / (k + n)
    logits = torch.randn(len(s.test), len(s.items))

    def score(x, y=None):
        return torch.log_softmax(logits[: len(x)], -1)

    x = torch.from_numpy(s.test.fold_in.toarray())
    mixed = popularity_mix(score, groups, 3.0)(x, s.test.y)
    p = torch.from_numpy(groups.shares(s.test.y, len(x)).astype(np.float32))
    p = p / p.sum(1, keepdim=True)
    w = 3 / (3 + (x > 0).sum(1, keepdim=True).float())
    assert torch.allclose(mixed, torch.log((1 - w) * score(x).exp() + w * p), atol=1e-5)
    assert torch.isfinite(mixed).all()
    # a large k ranks by the group's popularity: the user's kind decides the half of the items
    cold = popularity_mix(score, groups, 1e6)
    assert evaluate_scorer(cold, s.test)["recall@20"].mean > 0.99


def test_cold_start_settings_from_the_command_line_and_recs_csv(tmp_path):
    inter, attrs = synthetic(tmp_path)
    run = tmp_path / "run"
    args = ["recommend", "train", "--data", str(inter), "--user-attributes", str(attrs), "--condition", "kind",
            "--min-rating", "4", "--hidden", "32", "--latent-dim", "8", "--epochs", "12", "--batch-size", "32",
            "--heldout-users", "0.15", "--history-dropout", "0.3", "--condition-bias", "5", "--popularity-mix", "5",
            "--out", str(run), "--no-progress"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert (run / "groups.safetensors").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["history_dropout"] == 0.3 and config["model"]["condition_bias"] == 5.0
    assert config["recommend"]["popularity_mix"] == 5.0 and "popularity_mix" not in config["model"]
    summary = json.loads((run / "summary.json").read_text())
    model = cvae.load(run)
    data = load_interactions(str(inter), min_rating=4, user_attributes=str(attrs))
    s = split(data, condition="kind", heldout_users=0.15, seed=0)
    mixed = evaluate_scorer(run_scorer(model), s.test)["ndcg@100"].mean
    assert mixed == pytest.approx(summary["test"]["ndcg@100"]["mean"], abs=1e-6)
    assert mixed != pytest.approx(evaluate_scorer(model_scorer(model), s.test)["ndcg@100"].mean, abs=1e-9)
    # recs.csv ranks with the blend: NDCG@100 recomputed from it is the run's test figure
    items = s.items
    rows, hist, recs = recommend_heldout(run, s.test, items, attrs, tmp_path)
    ranked: dict[str, list[str]] = {}
    for row in rows:
        ranked.setdefault(row["user"], []).append(row["item"])
        assert 0 < float(row["score"]) <= 1  # the blend is a probability
    ndcgs = [ndcg_at_100(ranked[u], {items[j] for j in s.test.scored[r_].indices}) for r_, u in enumerate(s.test.users)]
    assert float(np.mean(ndcgs)) == pytest.approx(summary["test"]["ndcg@100"]["mean"], abs=1e-6)
    # bad settings: one line each
    r = run_cli(*args[:-5], "--popularity-mix=-1", "--out", str(tmp_path / "bad"), "--no-progress")
    assert r.returncode == 2 and "--popularity-mix must be a finite number of at least 0" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("recommend", "train", "--model", "ease", "--data", str(inter), "--min-rating", "4",
                "--popularity-mix", "5", "--out", str(tmp_path / "ease"))
    assert r.returncode == 2 and "EASE's scores are not probabilities" in r.stderr
    (run / "groups.safetensors").unlink()
    r = run_cli("recommend", str(run), "--user-history", str(hist), "--user-attributes", str(attrs), "-o", str(recs))
    assert r.returncode == 2 and "has no groups.safetensors" in r.stderr


def test_k_folds_test_every_user_once(tmp_path):
    from cvae.recommend import train_recommender

    inter, attrs = synthetic(tmp_path, users=60)
    data = load_interactions(str(inter), min_rating=4, user_attributes=str(attrs))
    tested, validated = [], []
    for fold in range(4):
        s = split(data, condition="kind", folds=4, fold=fold, seed=3)
        test, val, train = set(s.test.users), set(s.val.users), set(s.train_users)
        assert not (test & val) and not (test & train) and not (val & train)
        assert len(test | val | train) == s.meta["users_kept"]
        tested += list(test)
        validated.append(val)
    assert len(tested) == len(set(tested)) == s.meta["users_kept"]  # each user a test user exactly once
    assert validated[0] == set(split(data, condition="kind", folds=4, fold=1, seed=3).test.users)
    with pytest.raises(CvaeError, match="--folds K needs a whole K of at least 3 and --fold from 0 to K - 1"):
        split(data, folds=4, fold=4)
    with pytest.raises(CvaeError, match="--fold 2 needs --folds K"):
        train_recommender(data=str(inter), min_rating=4, fold=2, out=str(tmp_path / "nofolds"))
    r = run_cli("recommend", "train", "--data", str(inter), "--min-rating", "4", "--folds", "4", "--fold", "2",
                "--hidden", "8", "--latent-dim", "4", "--epochs", "2", "--out", str(tmp_path / "f2"), "--no-progress")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "f2" / "summary.json").read_text())
    assert summary["test"]["ndcg@100"]["users"] == len(split(data, folds=4, fold=2).test)


def test_resume_is_exact_with_the_cold_start_settings_and_for_runs_saved_before_them(tmp_path):
    from safetensors.torch import load_file

    from cvae.recommend import train_recommender

    inter, attrs = synthetic(tmp_path, users=80)
    common = dict(data=str(inter), min_rating=4, user_attributes=str(attrs), condition="kind", hidden=[16],
                  latent_dim=4, batch_size=16, heldout_users=0.2, anneal_steps=40, history_dropout=0.4,
                  condition_bias=3.0, popularity_mix=2.0, progress=False)
    train_recommender(**common, epochs=4, out=str(tmp_path / "once"))
    train_recommender(**common, epochs=2, out=str(tmp_path / "twice"))
    with pytest.raises(CvaeError, match="cannot change --history-dropout when resuming"):
        train_recommender(out=str(tmp_path / "twice"), resume=True, epochs=4, history_dropout=0.1)
    train_recommender(out=str(tmp_path / "twice"), resume=True, epochs=4, progress=False)
    a, b = (load_file(str(tmp_path / d / "trainer_state.safetensors")) for d in ("once", "twice"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "once" / "summary.json").read_text())["test"] == \
        json.loads((tmp_path / "twice" / "summary.json").read_text())["test"]
    # a run saved before these settings existed resumes with them off, whatever today's defaults
    old = dict(common, history_dropout=0.0, condition_bias=0.0, popularity_mix=0.0)
    train_recommender(**old, epochs=2, out=str(tmp_path / "old"))
    path = tmp_path / "old" / "config.json"
    config = json.loads(path.read_text())
    for key in ("history_dropout", "condition_bias", "prior_fold_in", "popularity_mix"):
        config["recommend"].pop(key)
        config["model"].pop(key, None)
    path.write_text(json.dumps(config))
    r = train_recommender(out=str(tmp_path / "old"), resume=True, epochs=3, progress=False)
    assert r.summary["best_epoch"] >= 1 and not (tmp_path / "old" / "groups.safetensors").exists()


def test_new_users_are_recommended_from_their_attributes_alone(tmp_path):
    """A conditioned run recommends for users with no history (`cvae recommend RUN --user-attributes FILE`
    without --user-history, or an empty history in the Python API) from their attributes: on data where
    kind a likes the first half of the items and kind b the second, a new user of each kind gets their
    kind's items. A run without attributes refuses, in one line, to recommend from nothing."""
    from cvae.recommend.apps import recommend

    inter, attrs = synthetic(tmp_path)
    common = ["--data", str(inter), "--min-rating", "4", "--hidden", "32", "--latent-dim", "8", "--epochs", "15",
              "--batch-size", "32", "--heldout-users", "0.15", "--no-progress"]
    run, plain = tmp_path / "run", tmp_path / "plain"
    r = run_cli("recommend", "train", *common, "--user-attributes", str(attrs), "--condition", "kind", "--out", str(run))
    assert r.returncode == 0, r.stderr
    new = tmp_path / "new.csv"
    new.write_text("user,kind\nnew_a,a\nnew_b,b\n")
    recs = tmp_path / "recs.csv"
    r = run_cli("recommend", str(run), "--user-attributes", str(new), "--top", "10", "-o", str(recs))
    assert r.returncode == 0, r.stderr
    assert "2 new users, recommended from their attributes alone" in r.stdout
    import csv

    with open(recs, newline="") as f:
        rows = list(csv.DictReader(f))
    half = {u: [int(row["item"][1:]) < 20 for row in rows if row["user"] == u] for u in ("new_a", "new_b")}
    assert len(half["new_a"]) == len(half["new_b"]) == 10
    assert sum(half["new_a"]) >= 8 and sum(half["new_b"]) <= 2  # mostly its kind's half (chance: 5 of 10)
    for row in rows:
        assert 0 < float(row["score"]) <= 1 and np.isfinite(float(row["score"]))
    # the Python API: an empty history is a new user, the same ranking as the command's
    out = recommend(run, {"new_a": []}, top=10, attributes={"new_a": {"kind": "a"}})
    assert [i for _, _, i, _ in out] == [row["item"] for row in rows if row["user"] == "new_a"]

    r = run_cli("recommend", "train", *common, "--out", str(plain))
    assert r.returncode == 0, r.stderr
    r = run_cli("recommend", str(plain), "--user-attributes", str(new), "-o", str(recs))
    assert r.returncode == 2 and "--user-history FILE is needed: this model uses no user attributes" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(CvaeError, match="user 'new_a' has no history, and this model uses no user attributes"):
        recommend(plain, {"new_a": []})
    r = run_cli("recommend", str(run), "-o", str(recs))  # neither file
    assert r.returncode == 2 and "pass --user-attributes" in r.stderr
    # an unknown kind names the user whose row holds it
    with pytest.raises(CvaeError, match=r"^user 'new_c': unknown value 'c' for condition 'kind'; known values: a, b$"):
        recommend(run, {"new_c": []}, top=10, attributes={"new_c": {"kind": "c"}})


def test_a_user_attribute_far_outside_the_training_range_is_named_not_dropped():
    import numpy as np

    from cvae.conditions import Attribute, ConditionSchema
    from cvae.errors import CvaeError
    from cvae.recommend.data import user_codes

    schema = ConditionSchema([Attribute("age", "continuous", mean=34.0, std=12.0)])
    assert user_codes(schema, {"age": np.array(["30", "70"])}).tolist() == [[30.0], [70.0]]
    for value in ("1e300", "1e6"):  # the first overflowed float32: the user vanished from recs.csv
        with pytest.raises(CvaeError, match=f"'age' = {value} is more than 1,000 standard deviations"):
            user_codes(schema, {"age": np.array(["30", value])})
