"""Classifier-free guidance for the CVAE's (and M2's) decoders: condition dropout in training, the
guided likelihood when generating, the run's default weight, and the refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cvae.cli import main
from cvae.errors import CvaeError
from cvae.likelihoods import LIKELIHOODS
from cvae.models import ModelConfig
from cvae.models.base import build_model
from cvae.models.hvae import HVAEConfig
from cvae.models.multvae import MultVAEConfig

SCHEMA = {"attributes": [{"name": "label", "kind": "categorical", "classes": ["a", "b", "c"]}]}
QUIET = ["--no-progress", "--no-tensorboard", "--no-pictures"]


def _model(condition_dropout=0.3, guidance=0.0, likelihood="bernoulli", arch="mlp", **kw):
    torch.manual_seed(0)
    shape = (1, 8, 8)
    return build_model(ModelConfig(data_shape=shape, schema=SCHEMA, arch=arch, hidden=[16], channels=[8], latent_dim=3,
                                   likelihood=likelihood, condition_dropout=condition_dropout, guidance=guidance, **kw))


def _c(labels):
    return torch.nn.functional.one_hot(torch.tensor(labels), 3).float()


# -- the maths ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bernoulli", "gaussian", "gaussian-learned", "categorical-256"])
def test_a_guided_likelihood_is_the_renormalised_power_of_the_two(name):
    """Per element, guided(c, none, w) is proportional to p_c^(1 + w) / p_none^w; w = 0 is p_c itself."""
    lik = LIKELIHOODS.get(name)((1, 2, 2))
    g = torch.Generator().manual_seed(0)
    shape = (5, lik.params_per_element, 1, 2, 2) if lik.params_per_element > 1 else (5, 1, 2, 2)
    cond, none = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    x = torch.rand(5, 1, 2, 2, generator=g)
    if name == "bernoulli":
        x = (x > 0.5).float()
    if name == "categorical-256":
        x = (x * 255).round() / 255
    assert torch.allclose(lik.guided(cond, none, 0.0).log_prob(x), lik(cond).log_prob(x), atol=1e-5)
    w = 1.5
    guided = lik.guided(cond, none, w)
    if name == "bernoulli":  # the normaliser of a Bernoulli p^a q^-w is over {0, 1} per pixel
        a = (1 + w) * torch.sigmoid(cond).log() - w * torch.sigmoid(none).log()
        b = (1 + w) * torch.sigmoid(-cond).log() - w * torch.sigmoid(-none).log()
        expected = torch.where(x > 0.5, a, b) - torch.logaddexp(a, b)
        assert torch.allclose(guided.log_prob(x), expected.sum((1, 2, 3)), atol=1e-4)
    elif name.startswith("gaussian"):  # the same sigma: N((1 + w) m_c - w m_0, sigma^2)
        assert torch.allclose(guided.mean, (1 + w) * cond - w * none, atol=1e-6)
        assert torch.allclose(guided.log_prob(x), lik((1 + w) * cond - w * none).log_prob(x))
    else:  # a proper distribution over the 256 levels of each sub-pixel
        log_pi = guided._log_pi()
        assert torch.allclose(log_pi.exp().sum(1), torch.ones(5, 1, 2, 2), atol=1e-5)
        lp_c, lp_0 = torch.log_softmax(cond, 1), torch.log_softmax(none, 1)
        assert torch.allclose(log_pi, torch.log_softmax((1 + w) * lp_c - w * lp_0, 1), atol=1e-5)


def test_the_logistic_mixture_refuses_guidance_naming_the_likelihoods_that_have_it():
    lik = LIKELIHOODS.get("logistic-mixture")((1, 2, 2))
    with pytest.raises(CvaeError, match="not available for the logistic-mixture likelihood.*bernoulli"):
        lik.guided(torch.zeros(1, 30, 1, 2, 2), torch.zeros(1, 30, 1, 2, 2), 1.0)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_the_decoder_reads_a_presence_flag_and_training_drops_the_condition(arch):
    model = _model(arch=arch, condition_dropout=0.5).eval()
    c = _c([0, 1, 2, 1] * 250)
    z = torch.randn(1000, 3)
    assert torch.equal(model._decoder_condition(c), torch.cat([c, torch.ones(1000, 1)], 1))
    assert torch.equal(model._decoder_condition(c, present=False), torch.zeros(1000, 4))
    ev = model.p_x(z, c).mean
    model.train()
    torch.manual_seed(3)
    dropped = model._decoder_condition(c)
    blank = (dropped == 0).all(1)
    assert 400 < int(blank.sum()) < 600
    assert torch.equal(dropped[~blank], torch.cat([c, torch.ones(1000, 1)], 1)[~blank])
    torch.manual_seed(3)
    train_mean = model.p_x(z, c).mean
    assert torch.allclose(train_mean[~blank], ev[~blank], atol=1e-6) and not torch.allclose(train_mean[blank], ev[blank])
    # the encoder and the prior keep the condition: only the decoder learns p(x | z) on those rows
    assert model.encoder.net.cond_dim == 3 if arch == "mlp" else True
    assert model.prior.net.in_features == 3


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_guided_sampling_combines_the_two_decoder_passes(arch):
    model = _model(arch=arch, condition_dropout=0.2, guidance=1.0).eval()
    c = _c([0, 2, 1])
    z = torch.randn(3, 3)
    with_c = model.decoder(z, model._decoder_condition(c))
    without = model.decoder(z, model._decoder_condition(c, present=False))
    w = 2.5
    expected = torch.sigmoid((1 + w) * with_c - w * without)
    assert torch.allclose(model.p_x_guided(z, c, w).mean, expected, atol=1e-6)
    zs = torch.randn(4, 3, 3)  # leading sample dimensions pass through
    assert model.p_x_guided(zs, c, w).mean.shape == (4, 3, 1, 8, 8)
    # sample(): the run's default weight unless one is given; 0 is the plain conditional decoder
    default = model.sample(3, "label=b", generator=torch.Generator().manual_seed(0))
    one = model.sample(3, "label=b", generator=torch.Generator().manual_seed(0), guidance=1.0)
    none = model.sample(3, "label=b", generator=torch.Generator().manual_seed(0), guidance=0)
    plain_z = model.sample_z(3, model.condition_vector("label=b", 3), torch.Generator().manual_seed(0), 0.9)
    assert torch.equal(default, one) and not torch.allclose(one, none)
    assert torch.allclose(none, model.p_x(plain_z, model.condition_vector("label=b", 3)).mean)


def test_guidance_is_refused_in_one_line_where_it_cannot_work():
    plain_decoder = _model(condition_dropout=0.0)
    with pytest.raises(CvaeError, match="--condition-dropout"):
        plain_decoder.guidance_weight(1.0)
    with pytest.raises(CvaeError, match="--condition-dropout"):
        plain_decoder.sample(2, "label=a", guidance=1.0)
    assert plain_decoder.guidance_weight(None) == 0.0
    with pytest.raises(CvaeError, match="--guidance must be a number from 0 to 20"):
        _model().guidance_weight(float("nan"))
    with pytest.raises(CvaeError, match="--guidance needs a decoder"):
        _model(condition_dropout=0.0, guidance=1.0)
    with pytest.raises(CvaeError, match="a plain VAE"):
        build_model(ModelConfig(data_shape=(4,), hidden=[8], latent_dim=2, condition_dropout=0.2))
    with pytest.raises(CvaeError, match="not available for the multvae model.*cvae"):
        build_model(MultVAEConfig(model_class="multvae", data_shape=(30,), schema=SCHEMA, guidance=1.0,
                                  condition_dropout=0.2))
    with pytest.raises(CvaeError, match="logistic-mixture"):
        _model(likelihood="logistic-mixture", guidance=1.0).sample(2, "label=a")


# -- as a user runs it ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guided_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits-guided"
    assert main(["train", "--data", "digits", "--epochs", "3", "--hidden", "64", "--latent-dim", "4",
                 "--condition-dropout", "0.2", "--guidance", "1", "--out", str(out), *QUIET]) == 0
    return out


def test_a_guided_run_records_its_settings_and_keeps_the_fused_step(guided_run):
    cfg = json.loads((guided_run / "config.json").read_text())
    assert cfg["model"]["condition_dropout"] == 0.2 and cfg["model"]["guidance"] == 1.0
    assert cfg["execution"]["step"] == "fused-mlp"  # tests/test_fused.py holds it to the generic path
    rows = [json.loads(line) for line in (guided_run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["val_loss"]) for r in rows)


def test_sample_from_the_shell_uses_the_runs_weight_and_takes_another(guided_run, tmp_path):
    def sample(*flags):
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
        assert main(["sample", str(guided_run), "--condition", "label=3", "--n", "20", "--seed", "1", *flags,
                     "-o", str(out)]) == 0
        x = np.load(out)["x"]
        assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
        return x

    default, w1, w0, w3 = sample(), sample("--guidance", "1"), sample("--guidance", "0"), sample("--guidance", "3")
    assert np.array_equal(default, w1)
    assert not np.allclose(w1, w0) and not np.allclose(w1, w3)
    assert main(["sample", str(guided_run), "--n", "10", "--guidance", "3", "-o", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_augment_generates_with_the_runs_weight_or_another(guided_run, tmp_path, capsys):
    def augmented(*flags):
        out = tmp_path / f"a{len(list(tmp_path.iterdir()))}.npz"
        assert main(["augment", str(guided_run), "--per-class", "3", "--seed", "2", *flags, "-o", str(out)]) == 0
        x = np.load(out)["x"]
        assert x.shape[0] == 30 and np.isfinite(x).all()
        return x

    default, w1, w0 = augmented(), augmented("--guidance", "1"), augmented("--guidance", "0")
    assert np.array_equal(default, w1) and not np.allclose(w1, w0)
    # from the posterior of real examples too
    p1, p0 = augmented("--codes", "posterior"), augmented("--codes", "posterior", "--guidance", "0")
    assert not np.allclose(p1, p0)
    for bad in ("30", "nan", "-1"):
        capsys.readouterr()
        assert main(["augment", str(guided_run), "--per-class", "3", "--guidance", bad, "-o", str(tmp_path / "b.npz")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --guidance") and err.count("\n") == 1 and not (tmp_path / "b.npz").exists()


def test_guidance_flags_are_refused_in_one_line(guided_run, tmp_path, capsys):
    plain = tmp_path / "plain"
    assert main(["train", "--data", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--limit", "300",
                 "--condition-dropout", "0", "--out", str(plain), *QUIET]) == 0
    capsys.readouterr()
    for argv in (["sample", str(plain), "--n", "4", "--guidance", "1", "-o", str(tmp_path / "bad.png")],
                 ["sample", str(guided_run), "--n", "4", "--guidance", "-1", "-o", str(tmp_path / "bad.png")],
                 ["evaluate", str(plain), "--metrics", "samples", "--guidance", "2"],
                 ["train", "--data", "digits", "--epochs", "1", "--guidance", "1", "--condition-dropout", "0",
                  "--out", str(tmp_path / "x"), *QUIET],
                 ["train", "--data", "digits", "--epochs", "1", "--condition-dropout", "1",
                  "--out", str(tmp_path / "y"), *QUIET],
                 # a likelihood without guidance is refused before the training, not at every sample after it
                 *(["train", "--data", "digits", "--epochs", "1", *preset, "--likelihood", "logistic-mixture",
                    "--condition-dropout", "0.2", "--out", str(tmp_path / "z"), *QUIET]
                   for preset in ([], ["--preset", "hvae"]))):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert "--guidance" in err or "--condition-dropout" in err, err
        if "logistic-mixture" in argv:
            assert "the logistic-mixture likelihood does not have" in err and "categorical-256" in err, err
    assert not any((tmp_path / name).exists() for name in ("bad.png", "x", "y", "z"))


def test_evaluate_measures_the_guided_samples(guided_run, tmp_path):
    ev = tmp_path / "digits.safetensors"
    assert main(["evaluator", "train", "--data", "digits", "--epochs", "3", "--out", str(ev), "--no-progress"]) == 0
    figures = {}
    for w in ("0", "4"):
        assert main(["evaluate", str(guided_run), "--metrics", "samples", "--evaluator", str(ev), "--per-class", "40",
                     "--guidance", w, "--no-progress"]) == 0
        section = json.loads((guided_run / "eval.json").read_text())["samples"]
        assert section["guidance"] == float(w)
        figures[w] = section["conditional_accuracy"]["mean"]["value"]
    assert figures["0"] != figures["4"]  # the weight reaches the generated images


def test_image_runs_with_a_class_are_guided_by_default_and_others_are_not(tmp_path):
    """GUIDED_DEFAULTS for images with a categorical condition (cvae, m2 and hvae, guidable likelihoods);
    tables, plain VAEs and a logistic mixture keep an unguided decoder."""
    from cvae.train import GUIDED_DEFAULTS

    def model_of(*flags):
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        assert main(["train", "--epochs", "1", "--limit", "200", "--hidden", "16", "--latent-dim", "2", *flags,
                     "--out", str(out), *QUIET]) == 0
        return json.loads((out / "config.json").read_text())["model"]

    digits = model_of("--data", "digits")
    assert (digits["condition_dropout"], digits["guidance"]) == (GUIDED_DEFAULTS["condition_dropout"],
                                                                 GUIDED_DEFAULTS["guidance"])
    assert model_of("--data", "digits", "--guidance", "1.5")["guidance"] == 1.5  # the weight alone: dropout stays
    off = model_of("--data", "digits", "--condition-dropout", "0")
    assert (off["condition_dropout"], off["guidance"]) == (0.0, 0.0)
    plain = model_of("--data", "digits", "--condition", "none")
    assert (plain["condition_dropout"], plain["guidance"]) == (0.0, 0.0)
    mixture = model_of("--data", "digits", "--likelihood", "logistic-mixture")
    assert mixture["guidance"] == 0.0
    table = tmp_path / "t.csv"
    table.write_text("a,b,label\n" + "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(60)))
    assert model_of("--data", str(table), "--condition", "label")["guidance"] == 0.0


def _hvae(condition_dropout=0.3, guidance=0.0):
    torch.manual_seed(0)
    return build_model(HVAEConfig(data_shape=(1, 8, 8), schema=SCHEMA, depth=2, width=8, groups=1, z_channels=2,
                                  condition_dropout=condition_dropout, guidance=guidance))


def test_the_hierarchical_model_is_guided_through_its_whole_top_down_pass():
    """The condition enters every cell of the hierarchical model, so condition dropout blanks it for the
    whole pass of a row ([c, present] -> [0, 0]) and guidance decodes the same groups with and without it."""
    model = _hvae().eval()
    assert model.flagged and model.top_cond.in_features == 3 + 1
    c = _c([0, 2, 1])
    z = model.sample_z(3, c, torch.Generator().manual_seed(0))
    with_c = model.output(model.top_down(c, 3, z=model._split(z))[0], c)
    blank = torch.zeros(3, 4)
    without = model.output(model.top_down(blank, 3, z=model._split(z))[0], blank)
    w = 2.0
    assert torch.allclose(model.p_x_guided(z, c, w).mean, torch.sigmoid((1 + w) * with_c - w * without), atol=1e-5)
    assert not torch.allclose(with_c, without)
    assert torch.allclose(model.p_x_guided(z, c, 0.0).mean, model.p_x(z, c).mean, atol=1e-6)
    # training: a share of the rows lose the condition in the encoder, the prior and the decoder at once
    model.train()
    torch.manual_seed(1)
    dropped = model.drop_conditions(model._cond(_c([0, 1, 2, 1] * 250)))
    gone = (dropped == 0).all(1)
    assert 200 < int(gone.sum()) < 400 and bool((dropped[~gone, -1] == 1).all())
    x = (torch.rand(6, 1, 8, 8) > 0.5).float()
    assert torch.isfinite(model(x, _c([0, 1, 2, 0, 1, 2])).px.log_prob(x)).all()
    # guidance needs the dropout, as for the one-layer model
    with pytest.raises(CvaeError, match="--condition-dropout"):
        _hvae(condition_dropout=0.0).sample(2, "label=a", guidance=1.0)


def test_the_hierarchical_model_is_guided_by_default_and_its_weight_reaches_the_samples(tmp_path):
    from cvae.train import GUIDED_DEFAULTS

    def run(*flags):
        out = tmp_path / f"h{len(list(tmp_path.iterdir()))}"
        assert main(["train", "--data", "digits", "--preset", "hvae", "--width", "8", "--epochs", "1", "--limit", "300",
                     *flags, "--out", str(out), *QUIET]) == 0
        return out

    guided = run()
    cfg = json.loads((guided / "config.json").read_text())["model"]
    assert (cfg["condition_dropout"], cfg["guidance"]) == (GUIDED_DEFAULTS["condition_dropout"],
                                                           GUIDED_DEFAULTS["guidance"])
    cfg = json.loads((run("--condition-dropout", "0") / "config.json").read_text())["model"]
    assert (cfg["condition_dropout"], cfg["guidance"]) == (0.0, 0.0)
    # the 8-bit logistic mixture has no guidance: that run stays unguided rather than refused
    cfg = json.loads((run("--likelihood", "logistic-mixture") / "config.json").read_text())["model"]
    assert (cfg["condition_dropout"], cfg["guidance"]) == (0.0, 0.0)
    draws = {}
    for w in ("0", "2", "4"):
        out = tmp_path / f"s{w}.npz"
        assert main(["sample", str(guided), "--condition", "label=3", "--n", "6", "--seed", "1", "--guidance", w,
                     "-o", str(out)]) == 0
        draws[w] = np.load(out)["x"]
        assert np.isfinite(draws[w]).all()
    assert not np.allclose(draws["0"], draws["2"]) and not np.allclose(draws["2"], draws["4"])
    assert main(["sample", str(guided), "--condition", "label=3", "--n", "6", "--seed", "1", "-o",
                 str(tmp_path / "default.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "default.npz")["x"], draws["2"])  # the run's weight


def test_semi_supervised_runs_take_guidance_too(tmp_path):
    out = tmp_path / "semi"
    assert main(["train", "--data", "digits", "--labelled", "50", "--epochs", "1", "--hidden", "32", "--latent-dim", "4",
                 "--condition-dropout", "0.2", "--guidance", "2", "--out", str(out), *QUIET]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["model_class"] == "m2" and cfg["model"]["guidance"] == 2.0
    assert main(["sample", str(out), "--n", "10", "-o", str(tmp_path / "s.npz")]) == 0
    assert np.isfinite(np.load(tmp_path / "s.npz")["x"]).all()


def test_the_served_api_generates_with_a_chosen_weight(guided_run):
    pytest.importorskip("fastapi")  # the serve extra is part of cvae[test]: CI has it
    from fastapi.testclient import TestClient

    from cvae.serve import create_app

    with TestClient(create_app([guided_run])) as client:
        url = f"/v1/runs/{guided_run.name}/generate"
        body = {"condition": {"label": "3"}, "n": 8, "seed": 2}
        default = client.post(url, json=body)
        assert default.status_code == 200 and default.json()["guidance"] == 1.0
        assert client.post(url, json={**body, "guidance": 1}).json()["png"] == default.json()["png"]
        other = client.post(url, json={**body, "guidance": 3})
        assert other.status_code == 200 and other.json()["png"] != default.json()["png"]
        assert client.post(url, json={**body, "guidance": -1}).status_code == 422
