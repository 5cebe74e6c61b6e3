"""Proofs that the evaluation numbers are right.

The likelihood estimators are checked on a linear-Gaussian CVAE (probabilistic PCA with a learned
conditional prior), where log p(x | c) has a closed form; the fast decoder kernel against the
model's own distributions; the KL of a trained conditional prior against Monte Carlo; the Fréchet
distance against closed forms; and the command line end to end on tiny runs trained on digits.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cvae
from cvae.cli import main
from cvae.evaluate import (
    _log_px,
    active_units,
    importance_sampled,
    likelihood,
    mutual_information,
)
from cvae.evaluator import (
    Evaluator,
    EvaluatorConfig,
    frechet_distance,
    frechet_distance_from_stats,
    load_evaluator,
    precision_recall,
)
from cvae.kernels import BernoulliMLPKernel, sum_softplus_
from cvae.models import CVAE, ModelConfig
from cvae.objectives import iwae_bound

LOG_2PI = math.log(2 * math.pi)


# -- a linear-Gaussian CVAE with a closed-form likelihood --------------------------------------------

class LinearGaussian:
    """p(z|c) = N(m_c, diag(s)), p(x|z,c) = N(W z + V c + b, sigma^2 I); q(z|x,c) has the exact
    posterior mean and the mean-field variances 1 / diag(precision), so it is close but not exact."""

    def __init__(self, *, p=6, d=3, sigma=0.5, classes=0, seed=0, shrink=1.0):
        g = torch.Generator().manual_seed(seed)
        self.p, self.d, self.sigma, self.n_classes = p, d, sigma, classes
        self.W = torch.randn(p, d, generator=g, dtype=torch.float64)  # correlated posterior: not diagonal
        self.b = torch.randn(p, generator=g, dtype=torch.float64)
        self.V = torch.randn(p, classes, generator=g, dtype=torch.float64) if classes else torch.zeros(p, 0, dtype=torch.float64)
        self.M = torch.randn(d, classes, generator=g, dtype=torch.float64) if classes else torch.zeros(d, 0, dtype=torch.float64)
        self.s = torch.full((d,), 1.0, dtype=torch.float64) if not classes else torch.rand(d, generator=g).double() + 0.5
        schema = {"attributes": [{"name": "label", "kind": "categorical", "classes": [str(i) for i in range(classes)]}]} \
            if classes else {}
        cfg = ModelConfig(data_shape=(p,), schema=schema, arch="mlp", hidden=[], latent_dim=d, likelihood="gaussian",
                          sigma=sigma, prior="conditional" if classes else "standard")
        self.model = CVAE(cfg).eval()
        prec = torch.diag(1 / self.s) + self.W.T @ self.W / sigma**2  # posterior precision
        self.cov = torch.linalg.inv(prec)
        self.A = self.cov @ self.W.T / sigma**2  # mean = A (x - V c - b) + cov S^-1 m_c
        self.q_var = shrink / torch.diag(prec)  # mean-field variances
        with torch.no_grad():
            dec = self.model.decoder.net.layers[0]
            dec.weight.copy_(torch.cat([self.W, self.V], 1).float())
            dec.bias.copy_(self.b.float())
            enc = self.model.encoder.net.layers[0]
            offset = -self.A @ self.b  # (d,)
            per_class = -self.A @ self.V + self.cov @ torch.diag(1 / self.s) @ self.M  # (d, classes)
            w_mu = torch.cat([self.A, per_class], 1)
            w_lv = torch.zeros(d, p + classes, dtype=torch.float64)
            enc.weight.copy_(torch.cat([w_mu, w_lv]).float())
            enc.bias.copy_(torch.cat([offset, self.q_var.log()]).float())
            if classes:
                self.model.prior.net.weight.copy_(torch.cat([self.M, self.s.log()[:, None].expand(d, classes)]).float())
                self.model.prior.net.bias.zero_()

    def sample(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, max(self.n_classes, 1), (n,), generator=g)
        c = F.one_hot(y, self.n_classes).double() if self.n_classes else torch.zeros(n, 0, dtype=torch.float64)
        z = (c @ self.M.T) + self.s.sqrt() * torch.randn(n, self.d, generator=g, dtype=torch.float64)
        x = z @ self.W.T + c @ self.V.T + self.b + self.sigma * torch.randn(n, self.p, generator=g, dtype=torch.float64)
        return x.float(), (c.float() if self.n_classes else None)

    def log_px(self, x, c):
        """Exact log p(x | c): x ~ N(W m_c + V c + b, W S W^T + sigma^2 I)."""
        x = x.double()
        c = torch.zeros(len(x), 0, dtype=torch.float64) if c is None else c.double()
        mean = c @ (self.W @ self.M + self.V).T + self.b
        cov = self.W @ torch.diag(self.s) @ self.W.T + self.sigma**2 * torch.eye(self.p, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)

    def elbo(self, x, c):
        """Exact ELBO of the encoder above: E_q[log p(x|z,c)] - KL(q || p(z|c))."""
        x = x.double()
        c = torch.zeros(len(x), 0, dtype=torch.float64) if c is None else c.double()
        mu = (x - c @ self.V.T - self.b) @ self.A.T + c @ (self.cov @ torch.diag(1 / self.s) @ self.M).T
        resid = x - mu @ self.W.T - c @ self.V.T - self.b
        expected = (-0.5 * self.p * math.log(2 * math.pi * self.sigma**2)
                    - ((resid**2).sum(1) + (self.W**2).sum(0) @ self.q_var) / (2 * self.sigma**2))
        m = c @ self.M.T
        kl = 0.5 * (torch.log(self.s / self.q_var) + (self.q_var + (mu - m) ** 2) / self.s - 1).sum(1)
        return expected - kl


@pytest.mark.parametrize("classes", [0, 3])
def test_importance_sampled_likelihood_matches_the_exact_value(classes):
    lg = LinearGaussian(classes=classes)
    x, c = lg.sample(40)
    exact = lg.log_px(x, c)
    # 20000 samples in chunks of 1000 rows: the log-sum-exp is accumulated across 20 chunks
    res = importance_sampled(lg.model, x, c, k=20000, rows=1000, generator=torch.Generator().manual_seed(0))
    err = (res.log_likelihood - exact).abs()
    assert err.max() < 0.05, err.max()
    assert (res.log_likelihood - exact).mean().abs() < 0.01
    elbo = lg.elbo(x, c)
    assert (elbo < exact - 0.01).all()  # the encoder is not exact: the ELBO is strictly below log p
    assert torch.allclose(-res.negative_elbo, elbo, atol=0.05)  # k-sample ELBO estimate, analytic KL
    assert (res.ess > 100).all()


def test_the_bound_tightens_as_k_grows_and_stays_below_log_p():
    # a too-narrow q (variances x 0.3): heavy-tailed weights, so the bound closes slowly and each
    # step in k is clearly larger than the sampling noise
    lg = LinearGaussian(classes=3, seed=3, shrink=0.3)
    x, c = lg.sample(400, seed=5)
    exact = lg.log_px(x, c).mean().item()
    means = [likelihood(lg.model, x, c, k=k, seed=k).per_example.log_likelihood.mean().item()
             for k in (1, 10, 100, 5000)]
    assert means[0] < means[1] < means[2] < means[3] < exact, (means, exact)
    assert means[1] - means[0] > 0.2 and means[3] - means[2] > 0.05
    # a good q (variances x 2, wider than the posterior) reaches log p quickly
    good = LinearGaussian(classes=3, seed=3, shrink=2.0)
    x, c = good.sample(400, seed=5)
    assert abs(likelihood(good.model, x, c, k=1000).per_example.log_likelihood.mean().item()
               - good.log_px(x, c).mean().item()) < 0.02


def test_k_equal_one_is_the_elbo_in_expectation():
    lg = LinearGaussian(classes=0, seed=1, shrink=1.5)
    x, _ = lg.sample(4, seed=2)
    reps = 4000
    xr = x.repeat_interleave(reps, 0)
    res = importance_sampled(lg.model, xr, None, k=1, generator=torch.Generator().manual_seed(0))
    est = res.log_likelihood.view(4, reps)
    se = est.std(1) / math.sqrt(reps)
    elbo = lg.elbo(x, None)
    assert ((est.mean(1) - elbo).abs() < 4 * se + 1e-3).all(), (est.mean(1), elbo, se)
    # the library's own IWAE bound (cvae.objectives) agrees too
    torch.manual_seed(0)
    with torch.no_grad():
        lib = iwae_bound(lg.model, xr, None, k=1).view(4, reps).double()
    assert ((lib.mean(1) - elbo).abs() < 4 * lib.std(1) / math.sqrt(reps) + 1e-3).all()


def test_likelihood_report_names_and_orders_its_figures():
    lg = LinearGaussian(classes=3)
    x, c = lg.sample(50)
    rep = likelihood(lg.model, x, c, k=500)
    d = rep.to_dict()
    for key in ("negative_elbo", "reconstruction", "kl", "importance_sampled_nll", "effective_sample_size"):
        assert d[key]["stderr"] > 0 and d[key]["name"]
    assert d["importance_sampled_nll"]["name"] == "-log p(x|c), importance-sampled, k = 500"
    assert d["importance_sampled_nll"]["value"] <= d["negative_elbo"]["value"]
    assert abs(d["negative_elbo"]["value"] - d["reconstruction"]["value"] - d["kl"]["value"]) < 1e-9
    assert "importance_sampled_nll" not in likelihood(lg.model, x, c, k=1).figures


# -- the fast kernel equals the model's distributions ------------------------------------------------

@pytest.mark.parametrize("activation,cond_at,prior", [("relu", 0, "standard"), ("tanh", 1, "conditional"),
                                                      ("gelu", 2, "conditional"), ("relu", -1, "conditional")])
def test_fast_kernel_equals_the_models_own_log_weights(activation, cond_at, prior):
    torch.manual_seed(0)
    schema = {"attributes": [{"name": "label", "kind": "categorical", "classes": ["a", "b", "c"]}]}
    cfg = ModelConfig(data_shape=(1, 5, 7), schema=schema, hidden=[24, 16], latent_dim=4, activation=activation,
                      condition_at=cond_at, prior=prior)
    model = CVAE(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.rand(6, 1, 5, 7)
    c = F.one_hot(torch.tensor([0, 1, 2, 2, 1, 0]), 3).float()
    s = 9
    z = torch.randn(6 * s, 4)
    c_rep = c.repeat_interleave(s, 0)
    with torch.no_grad():
        reference = model.p_x(z, c_rep).log_prob(x.repeat_interleave(s, 0)).view(6, s)  # cvae.distributions
        generic = _log_px(model, z, c_rep, x, s)
        kernel = BernoulliMLPKernel(model, 6 * s)
        kernel.prepare(x, c)
        fast = kernel(z.clone(), 6, s)
    assert torch.allclose(generic, reference, atol=1e-4)
    assert torch.allclose(fast, reference, atol=1e-4)
    # whole estimator: the same draws give the same numbers with and without the kernel
    a = importance_sampled(model, x, c, k=50, rows=64, generator=torch.Generator().manual_seed(1))
    b = importance_sampled(model, x, c, k=50, rows=64, generator=torch.Generator().manual_seed(1), fast=False)
    assert torch.allclose(a.log_likelihood, b.log_likelihood, atol=1e-4)
    assert torch.allclose(a.reconstruction, b.reconstruction, atol=1e-4)


def test_log_weights_are_those_of_the_objectives_module():
    """k = 1 with a known draw: log w = log p(x|z,c) + log p(z|c) - log q(z|x,c) as cvae.objectives writes it."""
    torch.manual_seed(0)
    schema = {"attributes": [{"name": "label", "kind": "categorical", "classes": ["a", "b"]}]}
    model = CVAE(ModelConfig(data_shape=(1, 4, 4), schema=schema, hidden=[8], latent_dim=3, prior="conditional")).eval()
    with torch.no_grad():
        model.prior.net.weight.normal_()
    x = torch.rand(5, 1, 4, 4).round()
    c = F.one_hot(torch.tensor([0, 1, 1, 0, 1]), 2).float()
    res = importance_sampled(model, x, c, k=1, generator=torch.Generator().manual_seed(7))
    eps = torch.randn((5, 1, 3), generator=torch.Generator().manual_seed(7))[:, 0]
    with torch.no_grad():
        qz = model.q_z(x, c)
        z = qz.mu + qz.std * eps
        log_w = model.p_x(z, c).log_prob(x) + model.prior.log_prob(z, c) - qz.log_prob(z)
    assert torch.allclose(res.log_likelihood.float(), log_w, atol=1e-4)


@pytest.mark.parametrize("p", [784, 13])
def test_sum_softplus_matches_torch(p):
    logits = torch.randn(50, p) * 8
    ref = F.softplus(logits.double()).sum(-1)
    assert torch.allclose(sum_softplus_(logits.clone()).double(), ref, rtol=1e-5, atol=1e-3)


# -- posterior health ------------------------------------------------------------------------------

def test_active_units_and_mutual_information_on_a_linear_encoder():
    lg = LinearGaussian(p=6, d=3, classes=0, seed=2)
    with torch.no_grad():  # dimension 2 ignores x: inactive, and carries no information
        lg.model.encoder.net.layers[0].weight[2].zero_()
    x, _ = lg.sample(3000, seed=4)
    qz = lg.model.encode(x)
    n_active, var = active_units(qz.mu, 0.01)
    assert n_active == 2 and var[2] < 1e-10
    # closed form: x ~ N(b, C), mean A x + a, variance v: I(x; z) = 0.5 log det(A C A^T + diag v) - 0.5 sum log v
    a = lg.model.encoder.net.layers[0].weight[:3].double()
    v = lg.model.encoder.net.layers[0].bias[3:].double().exp()
    cx = lg.W @ lg.W.T + lg.sigma**2 * torch.eye(6, dtype=torch.float64)
    exact = 0.5 * torch.logdet(a @ cx @ a.T + torch.diag(v)) - 0.5 * v.log().sum()
    terms = mutual_information(qz.mu, qz.logvar, generator=torch.Generator().manual_seed(0))
    assert abs(terms.mean().item() - exact.item()) < 0.1, (terms.mean().item(), exact.item())
    with torch.no_grad():  # an encoder that ignores x has no mutual information
        mi_none = mutual_information(torch.zeros(2000, 3), torch.zeros(2000, 3))
    assert abs(mi_none.mean().item()) < 1e-9


# -- the learned conditional prior: analytic KL vs Monte Carlo --------------------------------------

@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    common = dict(data="digits", epochs=4, batch_size=64, progress=False, tensorboard=False, pictures=False)
    cond = cvae.train(out=str(root / "cvae"), prior="conditional", **common)
    plain = cvae.train(out=str(root / "vae"), condition="none", latent_dim=4, **common)
    return cond, plain


def test_analytic_kl_of_the_learned_conditional_prior_matches_monte_carlo(digits_runs):
    result, _ = digits_runs
    model = copy.deepcopy(result.model)
    x = result.data.val.x[:16]
    c = model.schema.encode(result.data.val.y[:16])
    with torch.no_grad():
        model.prior.net.bias.add_(torch.linspace(-0.5, 0.5, model.prior.net.bias.numel()))  # far from N(0, I)
        qz, pz = model.q_z(x, c), model.prior.distribution(c)
        analytic = qz.kl(pz)
        torch.manual_seed(0)
        z = qz.rsample((20000,))  # (S, B, D)
        mc = qz.log_prob(z) - model.prior.log_prob(z, c)
    se = mc.std(0) / math.sqrt(len(mc))
    assert ((mc.mean(0) - analytic).abs() < 4 * se + 1e-4).all()
    assert torch.allclose(qz.kl_per_dim(pz).sum(-1), analytic, atol=1e-5)


# -- Fréchet distance, precision, recall ------------------------------------------------------------

def test_frechet_distance_against_closed_forms():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, generator=g).double() + 0.1, torch.rand(5, generator=g).double() + 0.1
    m1, m2 = torch.randn(5, generator=g).double(), torch.randn(5, generator=g).double()
    diag = frechet_distance_from_stats(m1, torch.diag(a), m2, torch.diag(b))
    assert abs(diag - ((m1 - m2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum()).item()) < 1e-9
    r1, r2 = torch.randn(5, 5, generator=g).double(), torch.randn(5, 5, generator=g).double()
    s1, s2 = r1 @ r1.T, r2 @ r2.T
    ref = ((m1 - m2).pow(2).sum().item() + np.trace(s1.numpy() + s2.numpy())
           - 2 * np.trace(scipy_linalg.sqrtm(s1.numpy() @ s2.numpy())).real)
    assert abs(frechet_distance_from_stats(m1, s1, m2, s2) - ref) < 1e-6


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_noise():
    torch.manual_seed(0)
    ev = Evaluator(EvaluatorConfig(image_shape=(1, 8, 8), classes=[str(i) for i in range(10)]))
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:600] / 16.0, dtype=torch.float32)[:, None]
    f = ev.embed(x)
    scale = f.var(0).sum().item()
    assert frechet_distance(f, f) < 1e-8 * scale
    fds = []
    for noise in (0.05, 0.1, 0.2, 0.4):
        noisy = (x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        fds.append(frechet_distance(f, ev.embed(noisy)))
    assert fds[0] > 1e-4 * scale
    assert all(a < b for a, b in zip(fds, fds[1:])), fds


def test_precision_and_recall_see_quality_and_variety():
    g = torch.Generator().manual_seed(0)
    two_modes = torch.cat([torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g) + 20])
    same = precision_recall(two_modes, two_modes)
    assert same.precision == 1.0 and same.recall == 1.0
    one_mode = torch.randn(300, 8, generator=g)  # good samples, half the variety
    pr = precision_recall(two_modes, one_mode)
    assert pr.precision > 0.85 and 0.35 < pr.recall < 0.6
    far = precision_recall(two_modes, torch.randn(300, 8, generator=g) + 100)
    assert far.precision == 0.0 and far.recall == 0.0


# -- the command line end to end -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_evaluator(tmp_path_factory):
    path = tmp_path_factory.mktemp("ev") / "digits.safetensors"
    assert main(["evaluator", "train", "--data", "digits", "--epochs", "4", "--out", str(path), "--no-progress"]) == 0
    return path


def test_evaluator_is_stored_as_safetensors_with_its_config(digits_evaluator):
    ev = load_evaluator(digits_evaluator)
    info = json.loads(digits_evaluator.with_suffix(".json").read_text())
    assert info["format"] == "cvae-evaluator" and info["config"]["classes"] == [str(i) for i in range(10)]
    assert info["accuracy"]["val"] > 0.7  # 4 epochs on 1617 digits; the full figures are in the README
    assert info["held_out"] == {"val": 180}  # what the accuracy was measured on, said beside it
    assert ev.config.image_shape == (1, 8, 8)
    from cvae.evaluator import accuracy_text

    assert accuracy_text({"val": 0.5}, {"val": 1}) == "val accuracy 0.5000 (1 labelled image)"
    assert accuracy_text({}, {}).startswith("no held-out labelled image")


def test_cli_evaluate_a_conditional_run(digits_runs, digits_evaluator, capsys):
    result, _ = digits_runs
    run = result.run_dir
    assert main(["evaluate", str(run), "--k", "200", "--evaluator", str(digits_evaluator), "--per-class", "50",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "NOT the Inception FID" in out and "importance-sampled" in out
    ev = json.loads((run / "eval.json").read_text())
    lik = ev["likelihood"]
    assert lik["protocol"]["split"] == "val" and lik["protocol"]["k"] == 200  # digits has no test split
    assert lik["importance_sampled_nll"]["value"] <= lik["negative_elbo"]["value"]
    assert all(lik[key]["stderr"] > 0 for key in ("negative_elbo", "importance_sampled_nll", "kl"))
    assert lik["negative_elbo"]["unit"] == "nats per example"
    assert "caution" in lik["protocol"]  # grey levels under a Bernoulli decoder are not a likelihood
    post = ev["posterior"]
    assert len(post["kl_per_dim"]["value"]) == result.model.config.latent_dim
    assert 0 <= post["active_units"]["value"] <= result.model.config.latent_dim
    assert post["mutual_information"]["value"] <= math.log(post["protocol"]["n_examples"]) + 1e-6
    samples = ev["samples"]
    cond = samples["conditional_accuracy"]
    assert cond["attribute"] == "label" and list(cond["per_class"]) == [str(i) for i in range(10)]
    assert 0 <= cond["mean"]["value"] <= 1 and cond["n_per_class"] == 50
    counts = cond["confusion"]["counts"]  # requested class x class read: rows hold every image once
    assert cond["confusion"]["classes"] == list(cond["per_class"]) and all(sum(row) == 50 for row in counts)
    assert all(row[i] / 50 == cond["per_class"][str(i)]["value"] for i, row in enumerate(counts))
    assert samples["frechet_distance"]["value"] >= 0 and "Inception" in samples["frechet_distance"]["note"]
    assert 0 <= samples["precision"]["value"] <= 1 and 0 <= samples["recall"]["value"] <= 1
    # a second call with other metrics keeps the first's sections (same weights)
    assert main(["evaluate", str(run), "--metrics", "posterior", "--no-progress", "--json"]) == 0
    again = json.loads((run / "eval.json").read_text())
    assert again["likelihood"] == lik and "samples" in again


def test_cli_evaluate_a_plain_vae(digits_runs, digits_evaluator):
    _, result = digits_runs
    assert main(["evaluate", str(result.run_dir), "--k", "50", "--n", "100", "--evaluator", str(digits_evaluator),
                 "--no-progress"]) == 0
    ev = json.loads((result.run_dir / "eval.json").read_text())
    assert ev["likelihood"]["importance_sampled_nll"]["name"] == "-log p(x), importance-sampled, k = 50"
    assert ev["likelihood"]["protocol"]["n_examples"] == 100
    assert ev["samples"]["conditional_accuracy"] is None
    assert any("plain VAE" in note for note in ev["samples"]["notes"])
    assert ev["samples"]["frechet_distance"]["value"] >= 0


def test_cli_evaluate_says_which_flags_shaped_what_it_measured(digits_runs, capsys):
    """--k with the ELBO alone, --n above the split's size, and a mutual information below 0 by Monte
    Carlo noise were printed without a word (a QA audit)."""
    from cvae.commands.evaluate import _row

    _, result = digits_runs
    assert main(["evaluate", str(result.run_dir), "--metrics", "elbo", "--k", "10", "--n", "100000",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "180 examples, k = 1 (one sample: the ELBO alone; --metrics nll adds" in out
    assert "(--n 100000: the split has 180 examples, all of them used)" in out
    assert main(["evaluate", str(result.run_dir), "--metrics", "elbo", "--n", "20", "--no-progress"]) == 0
    assert main(["evaluate", str(result.run_dir), "--metrics", "posterior", "--n", "100", "--no-progress"]) == 0
    assert "all of them used" not in capsys.readouterr().out  # the earlier call's 20 examples are not this one's
    row = _row("I(x; z)", {"value": -0.01, "stderr": 0.02, "unit": "nats", "name": "I(x; z) under"}, 10)
    assert row.endswith("(below 0 by Monte Carlo noise: the information itself is at least 0)")
    assert "noise" not in _row("I(x; z)", {"value": 0.5, "stderr": 0.02, "unit": "nats", "name": "I(x; z)"}, 10)


def test_cli_evaluate_errors_say_what_to_do(digits_runs, capsys):
    result, _ = digits_runs
    run = str(result.run_dir)
    assert main(["evaluate", run, "--split", "test", "--no-progress"]) == 2
    assert "no test split" in capsys.readouterr().err
    assert main(["evaluate", run, "--metrics", "samples", "--no-progress"]) == 2  # no evaluator in the (empty) cache
    assert "cvae evaluator train --data digits" in capsys.readouterr().err
    assert main(["evaluate", run, "--metrics", "likelihood", "--no-progress"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert main(["evaluate", run, "--k", "0", "--no-progress"]) == 2


def test_collapse_of_a_conditional_model_is_seen_within_each_condition():
    # codes that follow the label alone (q(z | x, c) = N(3 c, 0.1), x ignored): collapsed, yet Burda's active
    # units over all x counted every dimension and I(x, c; z) came out near log 2 (the label's entropy)
    from cvae.conditions import Attribute, ConditionSchema
    from cvae.distributions import DiagonalGaussian
    from cvae.evaluate import posterior_health

    schema = ConditionSchema([Attribute("label", "categorical", ["a", "b"])])

    class Prior:
        analytic_kl = True

        def kl_per_dim(self, q, z, c):
            return 0.5 * (q.logvar.exp() + q.mu ** 2 - 1 - q.logvar)

        def kl(self, q, z, c):
            return self.kl_per_dim(q, z, c).sum(1)

    class Collapsed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.schema, self.prior = schema, Prior()

        def q_z(self, x, c):
            mu = 3 * c[:, 1:2].repeat(1, 3)
            return DiagonalGaussian(mu, torch.full_like(mu, math.log(0.1)))

    y = (torch.arange(400) % 2).float()[:, None]
    report = posterior_health(Collapsed(), torch.zeros(400, 5), schema.encode(y))
    figures = report.figures
    assert figures["active_units"].value == 0 and "within a condition" in figures["active_units"].name
    assert "3 counting the variation across conditions" in figures["active_units"].note
    assert abs(figures["mutual_information"].value) < 0.05  # I(x; z | c) ~ 0, not log 2
