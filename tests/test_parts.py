"""The shared conformance suite over every registered part: each prior x likelihood x objective that
fits together trains a step, keeps its gradients finite, samples, scores, saves and reloads, and each
prior's KL agrees with its Monte-Carlo estimate. A part that a user registers (examples/) runs here
like a built-in one."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import cvae
from cvae.cli import main
from cvae.conditions import Attribute, ConditionSchema
from cvae.distributions import DiagonalGaussian, GaussianMixture
from cvae.evaluate import importance_sampled
from cvae.likelihoods import LIKELIHOODS
from cvae.models import MODELS, ModelConfig, build_model
from cvae.objectives import OBJECTIVES, build_objective
from cvae.priors import PRIORS
from cvae.runs import load_tensors, save_tensors

ROOT = Path(__file__).resolve().parents[1]
for example_file in sorted((ROOT / "examples").glob("*.py")):  # every part there, as a user's own module would
    spec = importlib.util.spec_from_file_location(example_file.stem, example_file)  # (laplace_prior: --prior laplace)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
from cvae.registry import load_plugins  # noqa: E402

load_plugins()  # and the parts of every installed package's cvae.parts entry point run here too

SCHEMA = ConditionSchema([Attribute("label", "categorical", ["a", "b", "c"])])
SHAPE = (1, 4, 4)


class Settings:
    beta, kl_warmup, free_bits, iwae_k, alpha, consistency = 1.0, 0.0, 0.0, 5, None, None

    def __init__(self, objective):
        if "iwae_k" in OBJECTIVES.get(objective).uses:
            self.iwae_k = 3


def make(prior, likelihood, conditioned, model_class="cvae", **over):
    torch.manual_seed(0)
    model_class = PRIORS.get(prior).model_class or model_class  # a model class's own prior (top-down: hvae)
    schema = SCHEMA if conditioned else ConditionSchema()
    options = {"components": 4} if "components" in PRIORS.get(prior).options else {}
    over = {"prior_options": options, **over}
    config = MODELS.get(model_class).config_class(data_shape=SHAPE, schema=schema.to_dict(), hidden=[16], latent_dim=3,
                                                  prior=prior, likelihood=likelihood, model_class=model_class, **over)
    return build_model(config)


def model_class_of(objective: str) -> str:
    """The model class an objective trains: its own (m2: the semi-supervised model), else the CVAE."""
    return OBJECTIVES.get(objective).model_class or "cvae"


def batch(n=6, conditioned=True):
    g = torch.Generator().manual_seed(0)
    x = torch.rand((n, *SHAPE), generator=g).round()
    c = SCHEMA.encode(torch.arange(n).remainder(3).float().unsqueeze(1)) if conditioned else None
    return x, c


COMBOS = [(p, lik, obj, cond) for p in PRIORS for lik in LIKELIHOODS for obj in OBJECTIVES for cond in (True, False)
          if (cond or not (PRIORS.get(p).needs_condition or OBJECTIVES.get(obj).model_class))
          and not (PRIORS.get(p).model_class and OBJECTIVES.get(obj).model_class)]


@pytest.mark.parametrize("prior,likelihood,objective,conditioned", COMBOS)
def test_every_compatible_combination_trains_samples_scores_and_reloads(prior, likelihood, objective, conditioned,
                                                                       tmp_path):
    model = make(prior, likelihood, conditioned, model_class_of(objective))
    x, c = batch(conditioned=conditioned)
    if OBJECTIVES.get(objective).labelled_batches:
        c = c.clone()
        c[::2] = 0  # every other label missing: a semi-supervised batch
    obj = build_objective(objective, Settings(objective))
    out = obj(model, x, c, progress=0.5)
    assert math.isfinite(out.loss.item()) and math.isfinite(out.neg_elbo.item())
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    cond = "label=b" if conditioned else None
    assert model.sample(5, cond, generator=torch.Generator().manual_seed(1)).shape == (5, *SHAPE)
    res = importance_sampled(model, x, c, k=8, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.log_likelihood).all() and torch.isfinite(res.kl).all()
    mean, std = model.prior.spread(c, len(x))
    assert mean.shape == std.shape == (len(x), model.config.latent_dim) and (std > 0).all()
    save_tensors(tmp_path / "m.safetensors", model.state_dict())
    again = build_model(model.config.to_dict())
    again.load_state_dict(load_tensors(tmp_path / "m.safetensors"))
    assert type(again) is type(model)
    torch.manual_seed(4)
    a = obj(model, x, c).neg_elbo
    torch.manual_seed(4)
    assert torch.equal(a, obj(again, x, c).neg_elbo)


@pytest.mark.parametrize("prior", sorted(PRIORS))
@pytest.mark.parametrize("conditioned", [True, False])
def test_prior_kl_agrees_with_its_monte_carlo_estimate(prior, conditioned):
    if conditioned is False and PRIORS.get(prior).needs_condition:
        pytest.skip("this prior needs a condition")
    model = make(prior, "bernoulli", conditioned)
    with torch.no_grad():
        for p in model.prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, c = batch(conditioned=conditioned)
    with torch.no_grad():
        qz = model.q_z(x, c)
        z = qz.rsample((20000,))
        mc = model.prior.kl_monte_carlo(qz, z, c)  # (S, B)
        kl = model.prior.kl(qz, z, c)  # analytic, or the same estimate
        se = mc.std(0) / math.sqrt(len(mc))
        assert ((kl.mean(0) - mc.mean(0)).abs() < 4 * se + 1e-3).all()
        per_dim = model.prior.kl_per_dim(qz, z, c)
        if model.prior.factorized:
            assert torch.allclose(per_dim.sum(-1).mean(0), kl.mean(0), atol=4 * float(se.max()) + 1e-3)
        drawn = model.prior.sample(4000, None if c is None else c[:1].expand(4000, -1),
                                   torch.Generator().manual_seed(0))
        mean, std = model.prior.spread(None if c is None else c[:1], 1)
        assert torch.allclose(drawn.mean(0), mean[0], atol=0.15) and torch.allclose(drawn.std(0), std[0], rtol=0.1)


def test_gaussian_mixture_matches_torch_distributions():
    torch.manual_seed(0)
    k, d = 5, 3
    mu, logvar, logits = torch.randn(k, d), torch.randn(k, d) * 0.3, torch.randn(k)
    ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=logits),
                                                torch.distributions.Independent(torch.distributions.Normal(
                                                    mu, (0.5 * logvar).exp()), 1))
    z = torch.randn(7, 2, d)
    assert torch.allclose(GaussianMixture(mu, logvar, logits).log_prob(z), ref.log_prob(z), atol=1e-4)
    # one mixture per example (B = 2) against z of (S, B, D)
    mu2, lv2, lg2 = torch.randn(2, k, d), torch.randn(2, k, d) * 0.3, torch.randn(2, k)
    mix = GaussianMixture(mu2, lv2, lg2)
    for b in range(2):
        ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=lg2[b]),
                                                    torch.distributions.Independent(torch.distributions.Normal(
                                                        mu2[b], (0.5 * lv2[b]).exp()), 1))
        assert torch.allclose(mix.log_prob(z)[:, b], ref.log_prob(z[:, b]), atol=1e-4)
    one = GaussianMixture(mu[:1], logvar[:1], logits[:1])
    assert torch.allclose(one.log_prob(z), DiagonalGaussian(mu[0], logvar[0]).log_prob(z), atol=1e-4)


def test_dreg_has_the_iwae_value_and_decoder_gradient_and_its_own_encoder_gradient():
    model = make("standard", "bernoulli", True)
    x, c = batch()

    def grads(name, k):
        model.zero_grad()
        torch.manual_seed(7)
        out = OBJECTIVES.get(name)(k)(model, x, c)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    for k in (1, 5):
        iw_loss, iw = grads("iwae", k)
        dr_loss, dr = grads("dreg", k)
        assert torch.allclose(iw_loss, dr_loss, atol=1e-5)
        for n in iw:
            if n.startswith("decoder"):
                assert torch.allclose(iw[n], dr[n], atol=1e-5), n
        assert not torch.allclose(iw["encoder.net.layers.0.weight"], dr["encoder.net.layers.0.weight"])
    # k = 1: w = 1, so DReG's encoder gradient is that of log p(x, z) - log q(z) with q's parameters held
    # fixed in the density (the 'sticking the landing' estimator of Roeder et al. 2017)
    model.zero_grad()
    torch.manual_seed(7)
    out = model(x, c, samples=1)
    qz = out.qz
    held = DiagonalGaussian(qz.mu.detach(), qz.logvar.detach())
    (-(out.px.log_prob(x) + out.log_prior() - held.log_prob(out.z)).mean()).backward()
    stl = {n: p.grad.clone() for n, p in model.named_parameters()}
    _, dr1 = grads("dreg", 1)
    for n in stl:
        assert torch.allclose(stl[n], dr1[n], atol=1e-5), n


def test_free_bits_hold_the_kl_term_at_lambda_per_dimension():
    model = make("conditional", "bernoulli", True)
    x, c = batch()
    elbo_fb = OBJECTIVES.get("elbo")(free_bits=50.0)
    torch.manual_seed(0)
    out = elbo_fb(model, x, c)
    assert out.terms["kl_free_bits"].item() == pytest.approx(50.0 * 3)
    assert out.loss.item() == pytest.approx(out.reconstruction.item() + 150.0, rel=1e-5)
    mog = make("mog", "bernoulli", True)
    torch.manual_seed(0)
    out = elbo_fb(mog, x, c)  # a mixture: all dimensions form one group
    assert out.terms["kl_free_bits"].item() == pytest.approx(150.0)
    torch.manual_seed(0)
    small = OBJECTIVES.get("elbo")(free_bits=1e-6)(model, x, c)
    assert small.loss.item() == pytest.approx((small.reconstruction + small.kl).item(), rel=1e-5)


def test_registries_refuse_unknown_names_and_options():
    with pytest.raises(cvae.CvaeError, match="unknown prior 'gamma'.*standard"):
        ModelConfig(data_shape=SHAPE, prior="gamma")
    with pytest.raises(cvae.CvaeError, match="prior 'standard' has no option"):
        make("standard", "bernoulli", False, prior_options={"components": 3})
    with pytest.raises(cvae.CvaeError, match="unknown model class"):
        build_model({"model_class": "nvae", "data_shape": [1, 4, 4]})
    assert "cvae" in MODELS


# the precision pinned: with --precision auto the straight and the resumed run each probe float32 against
# bfloat16, and on a loaded machine (measurements not cached) the two can choose differently
FAST = ["--data", "digits", "--limit", "300", "--batch-size", "64", "--latent-dim", "4", "--hidden", "32",
        "--no-progress", "--no-tensorboard", "--lr-schedule", "constant", "--lr", "1e-3", "--precision", "float32"]


@pytest.mark.parametrize("flags", [["--prior", "vamp", "--prior-components", "20"], ["--prior", "mog"],
                                   ["--objective", "dreg", "--iwae-k", "3"], ["--free-bits", "0.5"],
                                   ["--prior", "laplace", "--condition", "none"]])
def test_a_user_trains_resumes_reloads_samples_and_evaluates_each_part(flags, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *FAST, *flags, "--epochs", "2", "--no-pictures", "--out", str(straight)]) == 0
    assert main(["train", *FAST, *flags, "--epochs", "1", "--no-pictures", "--out", str(split)]) == 0
    assert main(["train", "--resume", "--epochs", "2", "--no-pictures", "--out", str(split)]) == 0
    a, b = (load_tensors(r / "model.safetensors") for r in (straight, split))
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed exactly
    rows = [json.loads(r) for r in (split / "metrics.jsonl").read_text().splitlines()]
    if "--free-bits" in flags:
        assert "train_kl_free_bits" in rows[-1]
    if "dreg" in flags:
        assert 1 <= rows[-1]["train_ess"] <= 3
    model = cvae.load(split)
    assert model.config.prior == flags[1] if flags[0] == "--prior" else True
    cond = None if "none" in flags else "label=7"
    assert torch.isfinite(model.sample(4, cond)).all()
    capsys.readouterr()
    assert main(["sample", str(split), *(["--condition", cond] if cond else []), "--n", "8",
                 "-o", str(tmp_path / "s.png")]) == 0
    assert main(["evaluate", str(split), "--metrics", "elbo,nll,posterior", "--k", "20", "--n", "50"]) == 0
    ev = json.loads((split / "eval.json").read_text())
    assert math.isfinite(ev["likelihood"]["importance_sampled_nll"]["value"])
    assert math.isfinite(ev["posterior"]["kl_total"]["value"])


def test_the_mixtures_logsumexp_matches_torch_in_value_and_gradient():
    from cvae.distributions import _logsumexp_finite

    x = (torch.randn(9, 300, generator=torch.Generator().manual_seed(0)) * 40).requires_grad_()
    ours, ref = _logsumexp_finite(x), torch.logsumexp(x, -1)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0])


def test_a_run_of_a_part_not_imported_says_to_import_it_not_that_the_run_is_damaged(tmp_path, monkeypatch):
    from cvae.priors import PRIORS

    run = tmp_path / "lap"
    assert main(["train", *FAST, "--prior", "laplace", "--condition", "none", "--epochs", "1", "--no-pictures",
                 "--out", str(run)]) == 0
    monkeypatch.delitem(PRIORS._parts, "laplace")  # a new process that has not imported the user's module
    with pytest.raises(cvae.CvaeError) as e:
        cvae.load(run)
    message = str(e.value)
    assert "was trained with the prior 'laplace'" in message and "import the module" in message
    assert "damaged" not in message


def test_a_parts_own_options_are_set_from_the_command_line_and_python(tmp_path, capsys):
    """The README's example prior says its scale is an option; nothing but --prior-components could set
    one (a QA audit of the README). --prior-options / prior_options set any part's own."""
    run = tmp_path / "lap"
    assert main(["train", *FAST, "--prior", "laplace", "--prior-options", "scale=2.5", "--condition", "none",
                 "--epochs", "1", "--no-pictures", "--out", str(run)]) == 0
    model = cvae.load(run)
    assert model.config.prior_options == {"scale": 2.5}
    res = cvae.train(data="digits", prior="mog", condition="none", prior_options={"components": 3}, epochs=1,
                     limit=200, progress=False, pictures=False, out=str(tmp_path / "mog"))
    assert res.model.config.prior_options == {"components": 3}
    assert main(["train", *FAST, "--prior", "laplace", "--prior-options", "width=2", "--condition", "none",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "the prior 'laplace' has no option(s) width; its options: scale" in capsys.readouterr().err
    assert main(["train", *FAST, "--prior-options", "scale", "--out", str(tmp_path / "bad")]) == 2
    assert "--prior-options 'scale': give name=value pairs" in capsys.readouterr().err


def test_an_unknown_prior_names_the_usable_ones_and_how_to_bring_ones_own(capsys):
    """The list named top-down, which --prior then refused, and said nothing of plug-ins (a README audit)."""
    assert main(["train", *FAST, "--prior", "nosuch", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "unknown prior 'nosuch' (--prior); choose one of auto, " in err and "top-down" not in err
    assert "name its file in CVAE_PARTS" in err and err.count("\n") == 1


def test_a_part_in_a_file_of_its_own_works_from_the_command_line_through_cvae_parts(tmp_path):
    """From the command line a part needed a package with an entry point: a newcomer's one file could not
    be used. CVAE_PARTS names the file; a fresh process trains, samples and evaluates with it."""
    import os
    import subprocess
    import sys

    def cvae_cli(*args, parts=None):
        env = {k: v for k, v in os.environ.items() if k != "CVAE_PARTS"}
        env.update({"OMP_NUM_THREADS": "1", **({"CVAE_PARTS": parts} if parts is not None else {})})
        return subprocess.run([sys.executable, "-m", "cvae", *map(str, args)], capture_output=True, text=True, env=env)

    example = str(ROOT / "examples" / "laplace_prior.py")
    run = tmp_path / "lap"
    r = cvae_cli("train", *FAST, "--prior", "laplace", "--condition", "none", "--epochs", "1", "--no-pictures",
                 "--out", run, parts=example)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["model"]["prior"] == "laplace"
    r = cvae_cli("sample", run, "--n", "4", "-o", tmp_path / "s.png", parts=example)
    assert r.returncode == 0 and (tmp_path / "s.png").is_file(), r.stderr
    for args in (("sample", run, "--n", "4", "-o", tmp_path / "t.png"), ("evaluate", run, "--metrics", "elbo"),
                 ("train", "--resume", "--epochs", "2", "--out", run)):  # without it: one line that says how
        r = cvae_cli(*args)  # (evaluate and resume said "config.json is damaged ... restore it from a copy")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "was trained with the prior 'laplace', which " \
            "nothing in this process registers" in r.stderr and "name its file in CVAE_PARTS" in r.stderr, r.stderr
    broken = tmp_path / "broken_prior.py"
    broken.write_text("import torch\nraise ValueError('scale must be positive')\n")
    clash = tmp_path / "my_mog.py"  # trained the built-in mog while its author believed it was theirs
    clash.write_text("from cvae.priors import PRIORS, Prior\n\n@PRIORS.register('mog')\nclass Mine(Prior):\n    pass\n")
    for parts, says in ((str(broken), "broken_prior.py'; importing it failed: ValueError: scale must be positive"),
                        (str(tmp_path / "missing.py"), "missing.py', which is not a file"),
                        (str(clash), "importing it failed: a prior named 'mog' is already registered")):
        # read before the command runs, whether or not the command needs a part of its own (it was read only
        # when a name was missing, so these passed unnoticed with the built-in priors)
        r = cvae_cli("train", *FAST, "--prior", "mog", "--epochs", "1", "--out", tmp_path / "x", parts=parts)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
        assert not (tmp_path / "x").exists()
    # the same file imported by the user and named in CVAE_PARTS is one part, not a clash
    r = subprocess.run([sys.executable, "-c", "import importlib.util, sys, cvae\n"
                        f"spec = importlib.util.spec_from_file_location('laplace_prior', {example!r})\n"
                        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
                        f"print(cvae.load({str(run)!r}).prior.name)"],
                       capture_output=True, text=True, env={**os.environ, "CVAE_PARTS": example, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "laplace", r.stderr


def test_part_options_as_a_mapping_or_as_text_are_one_setting_on_resume(tmp_path, capsys):
    """A YAML mapping could not be resumed with the same options as text; --prior-components and a
    components option that disagreed trained with one of them silently (a regression hunt)."""
    (tmp_path / "c.yaml").write_text("prior: mog\nprior_options:\n  components: 4\n")
    run = tmp_path / "m"
    assert main(["train", *FAST, "--config", str(tmp_path / "c.yaml"), "--condition", "none", "--epochs", "1",
                 "--no-pictures", "--out", str(run)]) == 0
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--prior-options", "components=4",
                 "--no-progress", "--no-pictures"]) == 0
    capsys.readouterr()
    assert main(["train", *FAST, "--prior", "mog", "--prior-options", "components=5", "--prior-components", "7",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--prior-components 7 and --prior-options components=5 disagree" in capsys.readouterr().err
