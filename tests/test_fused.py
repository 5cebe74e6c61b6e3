"""The fused MLP-VAE training step against the generic autograd path: the same loss and every
gradient on each configuration it covers, the same training curve, chosen automatically (and
recorded in config.json) only where it covers the model. Small models, a few steps."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch

from cvae.config import TrainConfig
from cvae.errors import CvaeError
from cvae.fused import FusedMLPStep, fused_step_for
from cvae.models import build_model
from cvae.models.config import ModelConfig
from cvae.objectives import build_objective
from cvae.objectives.evidence import ELBO
from cvae.train import fit

SCHEMA = {"attributes": [{"name": "label", "kind": "categorical", "classes": ["a", "b", "c"]},
                         {"name": "size", "kind": "continuous", "classes": [], "mean": 0.0, "std": 1.0}]}


def _model(act="relu", hidden=(12, 9), cond=True, cond_at=0, likelihood="bernoulli", prior="standard", seed=0,
           condition_dropout=0.0):
    torch.manual_seed(seed)
    config = ModelConfig(data_shape=(2, 7), schema=SCHEMA if cond else {}, arch="mlp", hidden=list(hidden),
                         latent_dim=3, activation=act, condition_at=cond_at, likelihood=likelihood, prior=prior,
                         sigma=0.7, condition_dropout=condition_dropout)
    model = build_model(config)
    with torch.no_grad():  # a trained-looking prior and sigma, not their zero starting points
        for name, p in model.named_parameters():
            if name.startswith("prior.") or name.endswith("log_sigma"):
                p.normal_(0, 0.3)
    return model


def _batch(model, b=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((b, *model.config.data_shape), generator=g)
    if model.config.likelihood == "bernoulli":
        x = (x > 0.5).float() * 0.8 + x * 0.2  # grey levels in [0, 1]
    c = None
    if model.schema:
        c = torch.cat([torch.nn.functional.one_hot(torch.randint(0, 3, (b,), generator=g), 3).float(),
                       torch.randn((b, 1), generator=g)], 1)
    return x, c


def _both(model, objective, x, c, progress=0.0):
    """(loss, rec, kl, grads) of the generic path and of the fused step, from the same noise."""
    generic = copy.deepcopy(model)
    torch.manual_seed(123)
    out = objective(generic, x, c, progress=progress)
    out.loss.backward()
    ref = (out.loss.detach(), out.reconstruction.detach(), out.kl.detach(),
           {n: p.grad.clone() for n, p in generic.named_parameters()})
    step, reasons = fused_step_for(model, objective, batch_size=8, device=torch.device("cpu"))
    assert step is not None, reasons
    torch.manual_seed(123)
    got = step(x, c, progress=progress)
    return ref, (got.loss, got.reconstruction, got.kl, {n: p.grad.clone() for n, p in model.named_parameters()})


CASES = [dict(act=a, cond=cond, cond_at=at, likelihood=lik, prior=prior, hidden=hidden)
         for a, (cond, at, prior), lik, hidden in itertools.product(
             ["relu", "elu", "tanh", "silu", "leaky_relu", "gelu", "softplus"],
             [(False, 0, "standard"), (True, 0, "standard"), (True, -1, "conditional"), (True, 1, "conditional")],
             ["bernoulli", "gaussian", "gaussian-learned"],
             [(12, 9), (10,)])]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_loss_and_every_gradient_equal_autograd(case):
    model = _model(**case)
    beta = 2.5 if case["act"] in ("elu", "silu") else 1.0
    objective = ELBO(beta=beta, kl_warmup=2.0 if case["act"] == "tanh" else 0.0)
    x, c = _batch(model)
    (loss, rec, kl, grads), (f_loss, f_rec, f_kl, f_grads) = _both(model, objective, x, c, progress=0.5)
    for want, got in ((loss, f_loss), (rec, f_rec), (kl, f_kl)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert set(grads) == set(f_grads)
    for name in grads:
        torch.testing.assert_close(f_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
        assert grads[name].abs().sum() > 0 or name.startswith("prior.net.weight")


@pytest.mark.parametrize("case", [dict(cond_at=0, prior="standard"), dict(cond_at=-1, prior="conditional"),
                                  dict(cond_at=1, prior="conditional", likelihood="gaussian-learned", act="silu")],
                         ids=["input", "every-layer", "layer-1"])
def test_condition_dropout_is_written_out_with_the_same_rows_blanked(case):
    """Classifier-free guidance's training: the decoder reads [c, present] with the same rows blanked
    (the mask drawn after the noise, as the generic path draws it), the same loss and gradients."""
    model = _model(condition_dropout=0.5, **case)
    x, c = _batch(model, b=8)
    (loss, rec, kl, grads), (f_loss, f_rec, f_kl, f_grads) = _both(model, ELBO(), x, c)
    for want, got in ((loss, f_loss), (rec, f_rec), (kl, f_kl)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(f_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # and the mask matters: with other noise the loss differs
    torch.manual_seed(7)
    step, _ = fused_step_for(model, ELBO(), batch_size=8, device=torch.device("cpu"))
    assert not torch.allclose(step(x, c).loss, f_loss)


def test_a_smaller_last_batch_uses_the_buffers_views():
    model = _model(cond=True, cond_at=-1, prior="conditional")
    x, c = _batch(model, b=3)
    (loss, _, _, grads), (f_loss, _, _, f_grads) = _both(model, ELBO(), x, c)
    torch.testing.assert_close(f_loss, loss, rtol=1e-5, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(f_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


LATENT_FORM = [("btcvae", dict(beta=6.0)), ("btcvae", dict(beta=3.0, tc_estimator="mws")),
               ("capacity", dict(capacity_max=5.0)), ("dip-vae-i", {}), ("dip-vae-ii", dict(dip_lambda_od=2.0)),
               ("factorvae", dict(gamma=10.0))]


@pytest.mark.parametrize("use_native", [False, True], ids=["python", "native"])
@pytest.mark.parametrize("name,settings", LATENT_FORM, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_objectives_of_the_codes_are_written_out_with_the_same_loss_terms_and_gradients(name, settings, use_native):
    """beta-TCVAE, annealed capacity, DIP-VAE and FactorVAE: the reconstruction written out, the
    objective's part from the codes by autograd on the codes; the loss, each logged term and every
    gradient equal to the generic path's (FactorVAE's discriminator, trained inside the step, too)."""
    from cvae import native

    if use_native and not native.load():
        pytest.skip(f"the native step is unavailable here: {native.unavailable()}")
    model = _model(cond=True)
    objective = build_objective(name, TrainConfig(objective=name, epochs=4, **settings))
    objective.attach(1000, 1000)
    x, c = _batch(model, b=8)
    generic, generic_objective = copy.deepcopy(model), copy.deepcopy(objective)
    torch.manual_seed(123)
    want = generic_objective(generic, x, c, progress=0.5)
    want.loss.backward()
    step, reasons = fused_step_for(model, objective, batch_size=8, device=torch.device("cpu"))
    assert step is not None, reasons
    assert step.native == use_native or (not use_native and step.native)
    step.native = use_native
    torch.manual_seed(123)
    got = step(x, c, progress=0.5)
    for a, b in ((got.loss, want.loss), (got.reconstruction, want.reconstruction), (got.kl, want.kl)):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
    assert set(got.terms) == set(want.terms) and got.terms
    for key in want.terms:
        torch.testing.assert_close(got.terms[key].float(), want.terms[key].float(), rtol=1e-4, atol=1e-5, msg=key)
    for (n, p), (_, q) in zip(model.named_parameters(), generic.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)
        assert q.grad.abs().sum() > 0, n
    if name == "factorvae":  # the discriminator took the same step
        for a, b in zip(objective.discriminator.parameters(), generic_objective.discriminator.parameters()):
            torch.testing.assert_close(a, b)


def test_objectives_of_the_codes_with_another_prior_take_the_generic_path():
    model = _model(cond=True, prior="conditional")
    objective = build_objective("btcvae", TrainConfig(objective="btcvae", beta=6.0))
    assert "standard prior only" in FusedMLPStep.why_not(model, objective)


@pytest.mark.parametrize("what", ["free_bits", "objective", "prior", "arch", "precision"])
def test_what_it_does_not_cover_goes_to_the_generic_path_with_a_reason(what):
    model = _model(prior="mog" if what == "prior" else "standard")
    objective = ELBO(free_bits=0.5 if what == "free_bits" else 0.0)
    if what == "objective":
        objective = build_objective("iwae", TrainConfig(objective="iwae"))
    if what == "arch":
        model = build_model(ModelConfig(data_shape=(1, 8, 8), arch="conv", channels=[4], hidden=[8], latent_dim=2))
    precision = "float16" if what == "precision" else "float32"
    step, reasons = fused_step_for(model, objective, batch_size=4, device=torch.device("cpu"), precision=precision)
    assert step is None and reasons["fused-mlp"]
    assert FusedMLPStep.why_not(model, objective, precision=precision) == reasons["fused-mlp"]


@pytest.mark.parametrize("case", [dict(), dict(act="silu", cond_at=-1, prior="conditional", likelihood="gaussian-learned"),
                                  dict(act="tanh", likelihood="gaussian", cond=False), dict(objective="btcvae"),
                                  dict(objective="factorvae")], ids=["relu", "silu", "tanh", "btcvae", "factorvae"])
def test_bfloat16_is_as_close_to_float32_as_autocast_is(case):
    """In bfloat16 the step's loss and gradients are within bfloat16 rounding of the float32 autograd
    ones, as close as the generic path under autocast gets (its own error, times 2, plus a margin)."""
    case = dict(case)
    name = case.pop("objective", "elbo")
    model = _model(hidden=(64, 32), **case)
    x, c = _batch(model, b=32)
    objective = ELBO() if name == "elbo" else build_objective(name, TrainConfig(objective=name))
    objective.attach(1000, 1000)
    start = copy.deepcopy(objective)  # FactorVAE's discriminator learns in each call: every side starts from it

    def generic(autocast):
        m = copy.deepcopy(model)
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = copy.deepcopy(start)(m, x, c)
        out.loss.backward()
        return out.loss.item(), {n: p.grad for n, p in m.named_parameters()}

    (loss, grads), (_, a_grads) = generic(False), generic(True)
    step, _ = fused_step_for(model, copy.deepcopy(start), batch_size=32, device=torch.device("cpu"), precision="bfloat16")
    torch.manual_seed(5)
    f_loss = step(x, c).loss.item()
    assert f_loss == pytest.approx(loss, rel=2e-3)
    for name, p in model.named_parameters():
        err = ((p.grad - grads[name]).norm() / grads[name].norm()).item()
        autocast_err = ((a_grads[name] - grads[name]).norm() / grads[name].norm()).item()
        assert err < 2 * autocast_err + 0.02, name


def _config(tmp_path, name, **settings):
    base = dict(data="digits", epochs=2, batch_size=64, limit=300, out=str(tmp_path / name), progress=False,
                tensorboard=False, precision="float32", lr=3e-3)
    base.update(settings)
    return TrainConfig(**base)


@pytest.mark.parametrize("settings", [{}, {"condition": "none", "likelihood": "gaussian", "activation": "elu"},
                                      {"condition_dropout": 0.3, "guidance": 2.0}])
def test_training_curves_match_the_generic_path(tmp_path, settings):
    fused = fit(_config(tmp_path, "fused", step="fused", **settings))
    generic = fit(_config(tmp_path, "generic", step="autograd", **settings))
    rows = [[json.loads(line) for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
            for r in (fused, generic)]
    for a, b in zip(*rows):
        for key in ("train_loss", "train_kl", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-3), key
    for (name, p), q in zip(fused.model.named_parameters(), generic.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)
    info = json.loads((fused.run_dir / "config.json").read_text())["execution"]
    assert info["step"] == "fused-mlp"
    info = json.loads((generic.run_dir / "config.json").read_text())["execution"]
    assert info["step"] == "autograd"


def test_auto_takes_the_fused_step_where_it_covers_and_says_why_not_elsewhere(tmp_path):
    result = fit(_config(tmp_path, "auto", epochs=1))
    assert json.loads((result.run_dir / "config.json").read_text())["execution"]["step"] == "fused-mlp"
    result = fit(_config(tmp_path, "free-bits", epochs=1, free_bits=0.1))
    execution = json.loads((result.run_dir / "config.json").read_text())["execution"]
    assert execution["step"] == "autograd" and "free bits" in execution["step_reason"]


def test_fused_step_refuses_a_model_it_does_not_cover_in_one_line(tmp_path):
    with pytest.raises(CvaeError, match="--step fused.*free bits.*--step auto"):
        fit(_config(tmp_path, "bad", step="fused", free_bits=0.1))
    with pytest.raises(CvaeError, match="--step must be"):
        TrainConfig(step="fast")


def test_resume_crosses_the_paths_exactly(tmp_path):
    """A run trained 1 epoch fused and resumed 1 epoch with autograd equals 2 epochs fused (to rounding):
    the optimizer state and the run folder are the same on both paths."""
    whole = fit(_config(tmp_path, "whole", step="fused", lr_schedule="constant"))
    fit(_config(tmp_path, "half", step="fused", epochs=1, lr_schedule="constant"))
    resumed = fit(_config(tmp_path, "half", step="autograd", lr_schedule="constant"), resume=True,
                  explicit={"epochs", "step"})
    for p, q in zip(whole.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


# -- the probe: precision, step and threads by measurement ------------------------------------------

def test_probe_measures_every_candidate_records_and_caches_its_choice(tmp_path, monkeypatch):
    from cvae import probe
    from cvae.train import native_bfloat16

    monkeypatch.setenv("CVAE_PROBE", "fresh")
    monkeypatch.setattr(probe, "BUSY", float("inf"))  # cache it even when other processes load the machine
    result = fit(_config(tmp_path, "probed", precision="auto", epochs=1))
    execution = json.loads((result.run_dir / "config.json").read_text())["execution"]
    answer = execution["probe"]
    labels = set(answer["rates"])
    assert {"fused float32 1t", "autograd float32 1t"} <= labels  # the tests run with one thread
    assert ("fused bfloat16 1t" in labels) == native_bfloat16(torch.device("cpu"))
    assert all(rate > 0 for rate in answer["rates"].values()) and answer["cached"] is False
    chosen = f"{answer['step']} {answer['precision']} {answer['threads']}t"
    assert answer["rates"][chosen] == max(answer["rates"].values()) or answer["precision"] == "float32"
    assert result.config.precision == answer["precision"]
    assert execution["step"] == ("fused-mlp" if answer["step"] == "fused" else "autograd")
    monkeypatch.delenv("CVAE_PROBE")
    again = fit(_config(tmp_path, "again", precision="auto", epochs=1))
    cached = json.loads((again.run_dir / "config.json").read_text())["execution"]["probe"]
    assert cached["cached"] is True and cached["rates"] == answer["rates"]
    assert (probe.cache_dir() / "probe.json").is_file()
    assert answer["other_processes_cores"] is None or answer["other_processes_cores"] >= 0


def test_a_probe_on_a_busy_machine_is_used_but_not_cached(tmp_path, monkeypatch):
    from cvae import probe

    monkeypatch.setattr(probe, "BUSY", -1.0)  # every machine counts as busy
    monkeypatch.setattr(probe, "cache_dir", lambda: tmp_path / "cache")
    model = _model()
    x, c = _batch(model, b=8)
    kw = dict(batch_size=8, device=torch.device("cpu"), steps=("fused", "autograd"), precisions=("float32",), threads=1)
    first = probe.choose(model, ELBO(), x, c, **kw)
    assert first["cached"] is False and first["step"] in ("fused", "autograd")
    assert probe.choose(model, ELBO(), x, c, **kw)["cached"] is False
    assert not (tmp_path / "cache" / "probe.json").exists()


def test_a_hand_edited_or_damaged_cache_entry_is_measured_again(tmp_path, monkeypatch):
    # an entry that was not a dict crashed the run (TypeError); one naming a step or precision that is not a
    # candidate here was used as it stood
    from cvae import probe

    monkeypatch.setattr(probe, "BUSY", float("inf"))
    monkeypatch.setattr(probe, "cache_dir", lambda: tmp_path / "cache")
    model = _model()
    x, c = _batch(model, b=8)
    kw = dict(batch_size=8, device=torch.device("cpu"), steps=("fused", "autograd"), precisions=("float32",), threads=1)
    first = probe.choose(model, ELBO(), x, c, **kw)
    path = tmp_path / "cache" / "probe.json"
    key = next(iter(json.loads(path.read_text())))
    for entry in ("fast", {**first, "precision": "float8"}, {**first, "threads": 64}, {"step": "fused"},
                  {**first, "threads": 1.0}, {**first, "threads": True}, {**first, "rates": "garbage"}):
        path.write_text(json.dumps({key: entry}))
        again = probe.choose(model, ELBO(), x, c, **kw)
        assert again["cached"] is False and again["precision"] == "float32" and again["threads"] == 1, entry
    assert probe.choose(model, ELBO(), x, c, **kw)["cached"] is True  # the fresh answer was written back


def test_a_run_held_to_other_instruction_sets_measures_its_own(tmp_path, monkeypatch):
    """A cached answer measured with every instruction set is not reused by a run whose libraries are
    held to AVX2 (oneDNN's or MKL's variable, or PyTorch's own kernels), and the other way round."""
    from cvae import probe
    model = _model()
    kw = dict(batch_size=8, device=torch.device("cpu"), candidates=[{"step": "autograd", "precision": "float32",
                                                                      "threads": 1}])
    plain = probe.probe_key(model, ELBO(), **kw)
    for variable in probe.ISA_VARIABLES:
        monkeypatch.setenv(variable, "AVX2")
        assert probe.probe_key(model, ELBO(), **kw) != plain, variable
        monkeypatch.delenv(variable)
    assert probe.probe_key(model, ELBO(), **kw) == plain
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert probe.probe_key(model, ELBO(), **kw) != plain


def test_probe_keeps_float32_unless_the_lower_precision_is_clearly_faster():
    from cvae.probe import MARGIN, decide

    cands = [{"step": "fused", "precision": p, "threads": 1} for p in ("float32", "bfloat16")]
    assert decide(cands, {"fused float32 1t": 100, "fused bfloat16 1t": 100 * MARGIN * 0.99})["precision"] == "float32"
    assert decide(cands, {"fused float32 1t": 100, "fused bfloat16 1t": 100 * MARGIN * 1.01})["precision"] == "bfloat16"
    assert decide(cands, {"fused float32 1t": 100, "fused bfloat16 1t": 50})["precision"] == "float32"


def test_probe_leaves_the_random_state_and_the_model_alone(tmp_path):
    from cvae.probe import choose

    model = _model()
    x, c = _batch(model, b=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    state = torch.get_rng_state()
    choose(model, ELBO(), x, c, batch_size=8, device=torch.device("cpu"), steps=("fused", "autograd"),
           precisions=("float32",), threads=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())


def test_adam_step_is_the_optimizers_step_exactly():
    """AdamStep (the fused Adam kernels called directly) gives bit for bit the weights and state of
    opt.step() over steps with a changing learning rate, two groups and weight decay, and carries on
    from a state loaded into a new optimizer (--resume)."""
    from cvae.fused import AdamStep

    def make():
        torch.manual_seed(0)
        a, b = torch.nn.Linear(5, 4), torch.nn.Linear(4, 3)
        opt = torch.optim.Adam([{"params": a.parameters()}, {"params": b.parameters(), "lr": 5e-3}],
                               lr=1e-3, weight_decay=0.01, fused=True)
        return (a, b), opt

    def grads(models, i):
        g = torch.Generator().manual_seed(i)
        for m in models:
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=g)

    (ref_models, ref_opt), (models, opt) = make(), make()
    direct = AdamStep(opt)
    assert direct.covered
    for i in range(6):
        for o in (ref_opt, opt):
            o.param_groups[0]["lr"] = 1e-3 * (1 + i)
        grads(ref_models, i)
        grads(models, i)
        ref_opt.step()
        direct()  # the first call makes the state through opt.step(), the rest go direct
        if i == 2:  # resume: a new optimizer from the saved state, stepped directly from then on
            state = opt.state_dict()
            opt = torch.optim.Adam([{"params": models[0].parameters()}, {"params": models[1].parameters(), "lr": 5e-3}],
                                   lr=1e-3, weight_decay=0.01, fused=True)
            opt.load_state_dict(state)
            assert direct.direct_calls == 2  # steps 1 and 2; step 0 made the state
            direct = AdamStep(opt)
    assert direct.direct_calls == 3  # steps 3 to 5, straight from the loaded state
    for m_ref, m in zip(ref_models, models):
        for p_ref, p in zip(m_ref.parameters(), m.parameters()):
            assert torch.equal(p_ref, p)
    for p_ref, p in zip([p for m in ref_models for p in m.parameters()], [p for m in models for p in m.parameters()]):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(ref_opt.state[p_ref][key], opt.state[p][key])


def test_adam_step_falls_back_where_it_is_not_exact():
    """Another optimizer, amsgrad, or a step hook: AdamStep calls opt.step() itself."""
    from cvae.fused import AdamStep
    p = torch.nn.Parameter(torch.ones(3))
    assert not AdamStep(torch.optim.Adam([p], fused=True, amsgrad=True)).covered
    assert not AdamStep(torch.optim.SGD([p], lr=0.1)).covered
    opt = torch.optim.Adam([p], lr=0.1, fused=True)
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    step = AdamStep(opt)
    for _ in range(3):
        p.grad = torch.ones(3)
        step()
    assert len(calls) == 3  # every step went through opt.step(), hooks and all


def test_adam_step_uses_opt_step_when_the_private_kernel_changed(monkeypatch):
    """torch._fused_adam_ is private: where it no longer takes AdamStep's arguments, every step is
    opt.step(), and the parameters move exactly as the optimizer moves them."""
    from cvae.fused import AdamStep

    def changed(*args, **kwargs):
        raise TypeError("_fused_adam_() got an unexpected keyword argument 'lr'")

    p = torch.nn.Parameter(torch.ones(3))
    q = torch.nn.Parameter(torch.ones(3))
    opt, ref = torch.optim.Adam([p], lr=0.1, fused=True), torch.optim.Adam([q], lr=0.1, fused=True)
    monkeypatch.setattr(torch, "_fused_adam_", changed)
    step = AdamStep(opt)
    assert not step.covered
    monkeypatch.undo()
    for i in range(3):
        p.grad = torch.full((3,), float(i + 1))
        q.grad = torch.full((3,), float(i + 1))
        step()
        ref.step()
    assert step.direct_calls == 0 and torch.equal(p, q)
