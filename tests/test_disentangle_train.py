"""Factor data sets, the disentangling objectives and `cvae evaluate --metrics disentanglement`."""

import json
import math

import numpy as np
import pytest
import torch

from cvae.config import TrainConfig
from cvae.data import load_data
from cvae.data.factors import DSPRITES, render_dsprites
from cvae.errors import CvaeError
from cvae.objectives.disentangle import log_importance_weights, permute_dims, tc_decomposition


def test_dsprites_renders_on_demand_with_held_out_factors():
    data = load_data("dsprites", limit=300, val_fraction=0.1, seed=3)
    assert data.factor_names == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    assert data.schema.names == []  # factors are not conditions unless asked
    assert data.train.x.shape == (300, 1, 64, 64) and data.binary
    assert set(torch.unique(data.train.x).tolist()) <= {0.0, 1.0}
    # the rows are the published grid's: the factors of row i are its index unravelled
    ids = np.array(data.train.ids)
    assert np.array_equal(data.train.factors, DSPRITES.factors(ids))
    assert np.array_equal(data.train.x.numpy(), render_dsprites(DSPRITES.factors(ids)))
    again = load_data("dsprites", limit=300, val_fraction=0.1, seed=3)
    assert torch.equal(again.train.x, data.train.x)  # deterministic
    cond = load_data("dsprites", limit=50, condition="shape")
    assert cond.schema.names == ["shape"] and cond.schema.attributes[0].classes == ["square", "ellipse", "heart"]


def test_factors_of_a_npz_file_are_held_out(tmp_path):
    rng = np.random.default_rng(0)
    f = rng.integers(0, 4, (200, 2))
    x = np.concatenate([f, rng.normal(size=(200, 3))], 1).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, size=f[:, 0], colour=f[:, 1])
    data = load_data(str(tmp_path / "d.npz"), factors="size,colour", val_fraction=0.0)
    assert data.factor_names == ["size", "colour"] and np.array_equal(data.train.factors, f)
    with pytest.raises(CvaeError, match="no factor column"):
        load_data(str(tmp_path / "d.npz"), factors="weight")
    with pytest.raises(CvaeError, match="leave --factors out"):
        load_data("dsprites", limit=10, factors="size")


def test_a_factor_named_label_is_held_out_and_factor_columns_are_checked(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((200, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, label=rng.integers(0, 3, 200), b=rng.integers(0, 4, 200),
             width=rng.normal(size=200))
    data = load_data(str(tmp_path / "d.npz"), factors="label,b,width")
    assert not data.schema and data.factor_names == ["label", "b", "width"]  # the model was conditioned on it
    assert data.meta["binned_factors"] == {"width": 200} and data.train.factors[:, 2].max() <= 19
    assert load_data(str(tmp_path / "d.npz"), factors="b").schema.names == ["label"]  # not a factor: the condition
    with pytest.raises(CvaeError, match="names b more than once"):
        load_data(str(tmp_path / "d.npz"), factors="b,b")
    (tmp_path / "t.csv").write_text("u,v,s\n" + "".join(f"{i % 7},{i % 5},{'' if i == 3 else 'ab'[i % 2]}\n"
                                                         for i in range(40)))
    with pytest.raises(CvaeError, match="factor 's' has missing"):  # a blank cell in a text factor was a class
        load_data(str(tmp_path / "t.csv"), factors="s", condition="none")


def test_a_damaged_published_dsprites_file_is_refused_by_its_checksum(tmp_path):
    from cvae.data.factors import DSPRITES_FILE

    (tmp_path / "dsprites").mkdir()
    np.savez(tmp_path / "dsprites" / DSPRITES_FILE, imgs=np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(CvaeError, match="MD5 .* not the published dSprites file's .*delete it to use the images"):
        load_data("dsprites", limit=10, data_dir=str(tmp_path))


def test_minibatch_weights_of_btcvae():
    # MSS weights of each row sum to 1 over the data set: 1/N for itself, and B-1 codes standing for the rest
    b, n = 6, 1000
    w = log_importance_weights(b, n).exp()
    assert torch.allclose(w.diagonal(), torch.full((b,), 1 / n))
    assert torch.allclose(w.sum(1), torch.ones(b))  # 1/N + (N - M)/(N M) + (M - 1)/M = 1
    # a posterior equal for every example, factorised: q(z) = q(z|x) and the TC is 0. MSS's weights sum to 1, so
    # its estimate is exact; MWS's (1/(N B) each, Chen et al. eq. S5) give log q(z|x) - log N and so a TC of
    # (D - 1) log N, a constant
    z, mu, logvar = torch.randn(8, 3), torch.zeros(8, 3), torch.zeros(8, 3)
    log_qz_x, log_qz, log_prod = tc_decomposition(z, mu, logvar, 100, "mss")
    assert torch.allclose(log_qz, log_qz_x, atol=1e-5) and torch.allclose(log_qz, log_prod, atol=1e-5)
    log_qz_x, log_qz, log_prod = tc_decomposition(z, mu, logvar, 100, "mws")
    assert torch.allclose(log_qz, log_qz_x - math.log(100), atol=1e-5)
    assert torch.allclose(log_qz - log_prod, torch.full((8,), 2 * math.log(100)), atol=1e-4)
    p = permute_dims(torch.arange(12.0).view(6, 2))
    assert sorted(p[:, 0].tolist()) == list(range(0, 12, 2))  # each column permuted within itself


@pytest.mark.parametrize("objective,extra", [("btcvae", {"beta": 6.0}), ("factorvae", {"gamma": 10.0}),
                                              ("dip-vae-i", {}), ("dip-vae-ii", {"dip_lambda_od": 2.0}),
                                              ("capacity", {"capacity_max": 5.0})])
def test_each_objective_trains_and_logs_its_terms(tmp_path, objective, extra):
    from cvae.train import fit

    cfg = TrainConfig(data="dsprites", limit=256, epochs=1, batch_size=64, latent_dim=4, hidden=[32],
                      objective=objective, out=str(tmp_path / "run"), progress=False, tensorboard=False, **extra)
    fit(cfg)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    expected = {"btcvae": "train_total_correlation", "factorvae": "train_discriminator_accuracy",
                "dip-vae-i": "train_dip_off_diagonal", "dip-vae-ii": "train_dip_diagonal", "capacity": "capacity"}
    assert expected[objective] in row


def test_flags_of_other_objectives_are_refused():
    with pytest.raises(CvaeError, match="--gamma does not apply to --objective btcvae"):
        TrainConfig(objective="btcvae", gamma=3.0)
    with pytest.raises(CvaeError, match="--tc-estimator must be"):
        TrainConfig(objective="btcvae", tc_estimator="exact")
    with pytest.raises(CvaeError, match="--dip-lambda-od does not apply"):
        TrainConfig(objective="elbo", dip_lambda_od=1.0)


@pytest.mark.parametrize("step", ["autograd", "fused"])
def test_factorvae_resume_is_exact(tmp_path, step):
    from cvae.train import fit

    def cfg(out, epochs):
        return TrainConfig(data="dsprites", limit=128, epochs=epochs, batch_size=32, latent_dim=3, hidden=[16],
                           objective="factorvae", out=str(out), progress=False, tensorboard=False, precision="float32",
                           lr_schedule="constant", step=step)

    fit(cfg(tmp_path / "whole", 2))
    fit(cfg(tmp_path / "split", 1))
    fit(cfg(tmp_path / "split", 2), resume=True)
    from safetensors.torch import load_file

    assert json.loads((tmp_path / "split" / "config.json").read_text())["execution"]["step"] == (
        "fused-mlp" if step == "fused" else "autograd")
    a, b = (load_file(str(tmp_path / r / "trainer_state.safetensors")) for r in ("whole", "split"))
    assert any(k.startswith("objective.discriminator.") for k in a)
    for k in a:
        if not k.startswith("rng."):
            assert torch.equal(a[k], b[k]), k


def test_evaluate_disentanglement_writes_scores_codes_and_pictures(tmp_path):
    from cvae.cli import main
    from cvae.disentangle import disentanglement

    run = tmp_path / "run"
    assert main(["train", "--data", "dsprites", "--limit", "400", "--epochs", "1", "--latent-dim", "3", "--hidden",
                 "32", "--objective", "btcvae", "--beta", "6", "--out", str(run), "--no-progress",
                 "--no-tensorboard"]) == 0
    assert main(["evaluate", str(run), "--metrics", "disentanglement", "--split", "train", "--no-progress"]) == 0
    section = json.loads((run / "eval.json").read_text())["disentanglement"]
    for key in ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness", "beta_vae",
                "factor_vae", "modularity"):
        assert 0.0 <= section[key] <= 1.0
    assert (run / "disentanglement.png").stat().st_size > 0 and (run / "traversal_factors.png").stat().st_size > 0
    # the same numbers again from the codes file (what `cvae embed` gives for those ids)
    saved = dict(np.load(run / "disentanglement_codes.npz"))  # read now: the file is rewritten below
    again = disentanglement(saved["codes"].astype(np.float64), saved["factors"], seed=0, metrics=("mig",))
    assert again.scores["mig"] == pytest.approx(section["mig"], abs=1e-6)
    # --n draws its examples at random: the training split is in dSprites' order (shape varies slowest), so
    # its first 100 are all squares, which once left 'shape' out of every metric
    assert main(["evaluate", str(run), "--metrics", "disentanglement", "--split", "train", "--n", "100",
                 "--no-progress"]) == 0
    drawn = np.load(run / "disentanglement_codes.npz")
    assert len(drawn["ids"]) == 100 and set(drawn["factors"][:, 0]) == {0, 1, 2}
    assert set(drawn["ids"]) <= set(saved["ids"]) and list(drawn["ids"]) != list(saved["ids"][:100])
    assert "constant_factors_left_out" not in json.loads((run / "eval.json").read_text())["disentanglement"]["protocol"]
    assert main(["evaluate", str(run), "--metrics", "disentanglement", "--split", "train", "--n", "100",
                 "--subset", "first", "--no-progress"]) == 0
    first = np.load(run / "disentanglement_codes.npz")
    assert list(first["ids"]) == list(saved["ids"][:100]) and set(first["factors"][:, 0]) == {0}
    from cvae.evaluate import evaluate_run

    with pytest.raises(CvaeError, match="--subset must be random or first"):
        evaluate_run(run, split="train", metrics="disentanglement", n=100, subset="middle", write=False)
    # a model without factors: the metric is refused when asked by name
    plain = tmp_path / "plain"
    assert main(["train", "--data", "digits", "--epochs", "1", "--out", str(plain), "--no-progress",
                 "--no-tensorboard", "--condition", "none"]) == 0
    assert main(["evaluate", str(plain), "--metrics", "disentanglement"]) == 2


def _histogram_mig(codes, factors, bins=20):
    """MIG written again from its definition (Chen et al. 2018; disentanglement_lib's histogram of 20
    bins per code), independently of cvae.disentangle: the check a user makes on `cvae embed` output."""
    from sklearn.metrics import mutual_info_score

    discrete = [np.digitize(c, np.histogram(c, bins)[1][:-1]) for c in codes.T]
    mi = np.array([[mutual_info_score(f, d) for f in factors.T] for d in discrete])
    entropy = np.array([mutual_info_score(f, f) for f in factors.T])
    top = np.sort(mi, axis=0)[::-1]
    return float(np.mean((top[0] - top[1]) / entropy))


def test_evaluate_scores_the_codes_that_embed_writes_for_the_data_file(tmp_path):
    """A user's factor file: `cvae evaluate --metrics disentanglement` scores every row of it by default,
    so MIG recomputed from `cvae embed` on the same file (joined by id) is the reported one."""
    import csv

    from cvae.cli import main

    rng = np.random.default_rng(0)
    n = 600
    size, pos = rng.integers(0, 3, n), rng.integers(0, 6, n)
    x = np.zeros((n, 1, 12, 12), np.float32)
    for i in range(n):
        x[i, 0, 2 + pos[i]:4 + pos[i] + size[i], 3:5 + size[i]] = 1.0
    rows = rng.permutation(n)  # the file's row order is not the factors' order
    np.savez(tmp_path / "f.npz", x=x[rows], size=size[rows], pos=pos[rows])
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "f.npz"), "--factors", "size,pos", "--epochs", "2",
                 "--latent-dim", "3", "--hidden", "32", "--objective", "btcvae", "--out", str(run),
                 "--no-progress", "--no-tensorboard"]) == 0
    assert main(["evaluate", str(run), "--metrics", "disentanglement", "--no-progress"]) == 0
    section = json.loads((run / "eval.json").read_text())["disentanglement"]
    assert section["protocol"]["split"] == "all" and section["protocol"]["n_examples"] == n
    assert main(["embed", str(run), "--data", str(tmp_path / "f.npz"), "-o", str(tmp_path / "codes.csv")]) == 0
    with open(tmp_path / "codes.csv") as f:
        table = list(csv.DictReader(f))
    ids = np.array([int(r["id"]) for r in table])
    codes = np.array([[float(r[f"mu_{d}"]) for d in range(3)] for r in table])
    factors = np.stack([size[rows], pos[rows]], 1)[ids]
    assert _histogram_mig(codes, factors) == pytest.approx(section["mig"], abs=1e-4)
    saved = np.load(run / "disentanglement_codes.npz")
    assert [int(i) for i in saved["ids"]] == list(range(n))  # in the file's order
    np.testing.assert_allclose(saved["codes"], codes.astype(np.float32), rtol=1e-4, atol=1e-5)
    # --split all with --n: that many rows of the whole file, drawn at random; a named split as before
    assert main(["evaluate", str(run), "--metrics", "disentanglement", "--split", "all", "--n", "200",
                 "--no-progress"]) == 0
    section = json.loads((run / "eval.json").read_text())["disentanglement"]
    assert section["protocol"]["examples"] == "200 drawn at random (seed 0) of all 600"
    drawn = np.load(run / "disentanglement_codes.npz")
    picked = [int(i) for i in drawn["ids"]]
    np.testing.assert_array_equal(drawn["factors"], np.stack([size[rows], pos[rows]], 1)[picked])
    assert _histogram_mig(codes[picked], factors[picked]) == pytest.approx(section["mig"], abs=1e-4)
    assert main(["evaluate", str(run), "--metrics", "disentanglement", "--split", "val", "--no-progress"]) == 0
    assert json.loads((run / "eval.json").read_text())["disentanglement"]["protocol"]["n_examples"] == 60


def test_dsprites_without_limit_trains_on_the_images_that_fit(tmp_path, monkeypatch, capsys):
    """`cvae train --data dsprites` with no --limit: all 737,280 images would take 11 GiB as float32, so
    it trains on those that fit the rendering budget, drawn with --seed, and says so in one line."""
    from cvae.cli import main
    from cvae.data import factors

    monkeypatch.setattr(factors, "MAX_RENDER_BYTES", 1000 * 64 * 64 * 4)  # 1,000 images instead of 262,144
    data = load_data("dsprites", seed=0)
    assert (len(data.train.x), len(data.val.x)) == (900, 100)
    err = capsys.readouterr().err
    assert "dsprites: training on 900 of its 737,280 images, drawn at random with --seed" in err
    assert "--limit N sets another number" in err
    assert load_data("dsprites", seed=0).train.ids == data.train.ids  # the same draw again (evaluate, resume)
    assert load_data("dsprites", seed=1).train.ids != data.train.ids
    capsys.readouterr()
    assert len(load_data("dsprites", seed=0, limit=300).train.x) == 300  # --limit as before, no line
    assert "training on" not in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--data", "dsprites", "--objective", "btcvae", "--epochs", "1", "--hidden", "32",
                 "--latent-dim", "3", "--out", str(run), "--no-progress", "--no-tensorboard"]) == 0
    assert main(["evaluate", str(run), "--metrics", "disentanglement", "--no-progress"]) == 0
    section = json.loads((run / "eval.json").read_text())["disentanglement"]
    assert section["protocol"]["split"] == "all" and section["protocol"]["n_examples"] == 1000


def test_a_limit_past_the_default_subset_renders_up_to_half_the_free_memory(monkeypatch):
    """The rendering budget was a fixed 4 GiB: --limit 663552 (all of dSprites, the README's command for a
    full run) was refused even on a machine with 128 GiB. It is half the free memory, at least 4 GiB."""
    from cvae.data import factors

    image = 64 * 64 * 4
    monkeypatch.setattr(factors, "MAX_RENDER_BYTES", 1000 * image)  # the default subset: 1,000 images
    monkeypatch.setattr(factors, "free_memory", lambda: 2 * 3000 * image)  # room for 3,000
    assert factors.render_budget() == 3000 * image
    data = load_data("dsprites", seed=0, limit=2500)
    assert len(data.train.x) == 2500
    with pytest.raises(CvaeError, match=r"more than the .* GiB this machine has for them \(half its free memory\)"):
        load_data("dsprites", seed=0, limit=5000)
    monkeypatch.setattr(factors, "free_memory", lambda: 100 * image)  # little free: the default budget still holds
    assert factors.render_budget() == 1000 * image


def test_the_summary_train_figures_are_not_the_first_examples_of_an_ordered_data_set(tmp_path, monkeypatch):
    """dSprites is in factor order: its first training images are small squares. summary.json's train
    figures are taken over examples drawn at random, as many as SUMMARY_TRAIN_EXAMPLES."""
    import importlib

    import cvae
    from cvae.data import EVALUATION_SEED

    training = importlib.import_module("cvae.train")  # the module (cvae.train is also the function)

    monkeypatch.setattr(training, "SUMMARY_TRAIN_EXAMPLES", 100)
    res = cvae.train(data="dsprites", limit=600, epochs=1, hidden=[32], latent_dim=3, out=str(tmp_path / "r"),
                     progress=False, tensorboard=False, pictures=False, precision="float32")
    x = res.data.train.x
    rows = torch.from_numpy(np.sort(np.random.default_rng(EVALUATION_SEED).choice(len(x), 100, replace=False)))
    # the KL term is analytic (the reconstruction term draws z): it says which examples were scored
    drawn = training.evaluate_elbo(res.model, x[rows], None)["kl"]
    first = training.evaluate_elbo(res.model, x[:100], None)["kl"]
    assert res.summary["train"]["kl"] == pytest.approx(drawn, rel=1e-5)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["train"]["kl"] == pytest.approx(drawn, rel=1e-5)
    assert first != pytest.approx(drawn, rel=1e-3)  # the first 100 are not like the others


def test_data_with_factors_gets_the_disentanglement_literatures_network_by_default():
    from cvae.train import model_config_for

    data = load_data("dsprites", limit=100)
    default = model_config_for(TrainConfig(data="dsprites"), data)
    assert (default.latent_dim, default.hidden) == (10, [400, 400])
    given = model_config_for(TrainConfig(data="dsprites", latent_dim=6, hidden=[64]), data)
    assert (given.latent_dim, given.hidden) == (6, [64])  # flags win
    assert model_config_for(TrainConfig(data="dsprites", preset="burda"), data).latent_dim == 50  # another preset's own
    plain = model_config_for(TrainConfig(data="digits", condition="none"), load_data("digits", condition="none"))
    assert (plain.latent_dim, plain.hidden) == (20, [400])  # data without factors: as before


def test_data_with_factors_trains_at_adams_rate_of_1e_3_and_by_images_seen_unless_told(tmp_path):
    # at 3e-3 beta-TCVAE's posteriors collapsed on a Shapes3D-like colour set (README "Disentanglement")
    from cvae.cli import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", x=rng.random((80, 6)).astype(np.float32), size=rng.integers(0, 3, 80))
    factors = [("dsprites", []), (str(tmp_path / "f.npz"), ["--factors", "size"])]
    for data, extra in factors:
        for flags, lr in (([], 1e-3), (["--lr", "3e-3"], 3e-3)):
            run = tmp_path / f"r{len(flags)}-{len(extra)}"
            assert main(["train", "--data", data, *extra, "--limit", "60", "--epochs", "1", "--batch-size", "32",
                         "--no-pictures", *flags, "--out", str(run)]) == 0
            assert json.loads((run / "config.json").read_text())["train"]["lr"] == lr
    # and as many images as the dSprites default (10 epochs of its 235,930 rows in memory): more epochs of less
    from types import SimpleNamespace

    from cvae.models.cvae import CVAE

    def rows(n, factors=("size",)):
        return SimpleNamespace(train=SimpleNamespace(x=range(n)), factor_names=list(factors))

    assert CVAE.training_defaults(rows(235_930)) == {"lr": 1e-3}
    assert CVAE.training_defaults(rows(45_000)) == {"lr": 1e-3, "epochs": 53}
    assert CVAE.training_defaults(rows(45_000, ())) == {}
    run = tmp_path / "plain"  # data without factors: as before
    assert main(["train", "--data", "digits", "--condition", "none", "--limit", "60", "--epochs", "1",
                 "--no-pictures", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 3e-3


def test_btcvae_kl_warmup_grows_every_latent_term_and_trains_on_both_steps(tmp_path):
    """--kl-warmup E with beta-TCVAE: the MI, beta TC and dimension-wise KL all grow linearly from 0 over
    E epochs (the reconstruction alone at the start), on the fused step as on autograd's."""
    from cvae.objectives import build_objective
    from cvae.train import fit

    objective = build_objective("btcvae", TrainConfig(objective="btcvae", beta=6.0, kl_warmup=2.0))
    objective.attach(1000, 0)
    torch.manual_seed(0)
    z, mu, logvar = torch.randn(16, 3), torch.randn(16, 3), torch.randn(16, 3) * 0.3
    log_pz, kl = -0.5 * (z ** 2).sum(1), torch.zeros(16)
    full = build_objective("btcvae", TrainConfig(objective="btcvae", beta=6.0))
    full.attach(1000, 0)
    whole, terms = full.latent_loss(z, mu, logvar, log_pz, kl)
    for progress, factor in ((0.0, 0.0), (0.5, 0.25), (1.0, 0.5), (3.0, 1.0)):
        part, t = objective.latent_loss(z, mu, logvar, log_pz, kl, progress=progress)
        assert part.item() == pytest.approx(factor * whole.item(), rel=1e-5, abs=1e-6)
        assert t["total_correlation"].item() == pytest.approx(terms["total_correlation"].item(), rel=1e-5)
    assert objective.schedule(1.0) == {"kl_weight": 0.5} and full.schedule(1.0) == {}
    runs = {}
    for step in ("fused", "autograd"):
        cfg = TrainConfig(data="dsprites", limit=256, epochs=2, batch_size=64, latent_dim=4, hidden=[32], seed=1,
                          objective="btcvae", kl_warmup=2.0, step=step, precision="float32",
                          out=str(tmp_path / step), progress=False, tensorboard=False)
        fit(cfg)
        runs[step] = [json.loads(r) for r in (tmp_path / step / "metrics.jsonl").read_text().splitlines()]
        assert json.loads((tmp_path / step / "config.json").read_text())["objective"]["kl_warmup"] == 2.0
    assert [r["kl_weight"] for r in runs["fused"]] == [0.5, 1.0]
    for a, b in zip(runs["fused"], runs["autograd"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)


@pytest.mark.parametrize("limit, rows", [(270, 300), (2000, 2222)])  # 2,223 rendered, 2,001 left for 2,000 to train
def test_embed_of_a_rendered_run_encodes_the_rows_evaluate_scores(tmp_path, limit, rows):
    """`cvae embed RUN` on a dSprites run renders only the run's rows (not all 737,280 images: 11 GiB)
    and writes the same ids and codes that `cvae evaluate --metrics disentanglement` scored (it wrote
    one row more where the rendered count rounds up past the validation share and --limit)."""
    import csv

    from cvae.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "dsprites", "--limit", str(limit), "--epochs", "1", "--hidden", "32", "--latent-dim",
                 "3", "--out", str(run), "--no-progress", "--no-tensorboard"]) == 0
    assert main(["evaluate", str(run), "--metrics", "disentanglement", "--no-progress"]) == 0
    assert main(["embed", str(run), "-o", str(tmp_path / "codes.csv")]) == 0
    with open(tmp_path / "codes.csv") as f:
        table = list(csv.DictReader(f))
    saved = np.load(run / "disentanglement_codes.npz")
    assert [r["id"] for r in table] == list(saved["ids"]) and len(table) == rows  # --limit + the validation share
    codes = np.array([[float(r[f"mu_{d}"]) for d in range(3)] for r in table])
    np.testing.assert_allclose(codes, saved["codes"], rtol=1e-4, atol=1e-5)
    assert main(["embed", str(run), "--n", "20", "-o", str(tmp_path / "few.csv")]) == 0
    with open(tmp_path / "few.csv") as f:
        assert [r["id"] for r in csv.DictReader(f)] == list(saved["ids"][:20])


def test_bad_values_of_this_sessions_flags_are_one_error_line(tmp_path, capsys):
    from cvae.cli import main

    for argv, words in (
        (["train", "--data", "dsprites", "--limit", "100", "--objective", "btcvae", "--kl-warmup", "-1",
          "--out", str(tmp_path / "a")], "--kl-warmup must be zero or positive"),
        (["train", "--data", "dsprites", "--limit", "100", "--objective", "btcvae", "--kl-warmup", "nan",
          "--out", str(tmp_path / "b")], "--kl-warmup must be zero or positive"),
        (["evaluator", "train", "--data", "digits", "--epochs", "0", "--out", str(tmp_path / "e.safetensors")],
         "--epochs must be"),
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error:") and words in err[0], (argv, err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "e.safetensors").exists()


def test_evaluate_says_when_the_posterior_has_collapsed(tmp_path, capsys):
    from cvae.cli import main

    run = tmp_path / "run"  # beta 500: every KL term driven to 0 within three epochs
    assert main(["train", "--data", "dsprites", "--limit", "300", "--epochs", "3", "--latent-dim", "3", "--hidden",
                 "32", "--beta", "500", "--out", str(run), "--no-progress", "--no-tensorboard"]) == 0
    trained = [line for line in capsys.readouterr().out.splitlines() if "note:" in line]
    assert len(trained) == 1 and "collapsed" in trained[0] and "--kl-warmup" in trained[0]
    assert main(["evaluate", str(run), "--metrics", "disentanglement", "--split", "train", "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "note:" in line]
    assert len(notes) == 1 and "collapsed" in notes[0] and "--beta" in notes[0]
    section = json.loads((run / "eval.json").read_text())["disentanglement"]
    assert section["details"]["active_units"] == 0 and section["details"]["notes"]
