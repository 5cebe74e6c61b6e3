"""The native (C++) form of the fused MLP-VAE step and its Adam (cvae.native, csrc/fused_step.cpp)
against the Python fused step (itself held to autograd in tests/test_fused.py) and torch's Adam:
the same loss and gradients, the same parameters and moments after Adam, the bfloat16 weight copies
refreshed whenever the weights changed elsewhere, deferred gradients materialised on request, the
trainer recording its choice, and the Python step running instead where the build is off or fails.
Under CI (which has a compiler and ninja) the native step must build: a skip would hide a failure."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import CI

from cvae import native
from cvae.config import TrainConfig
from cvae.fused import AdamStep, FusedMLPStep, fused_step_for
from cvae.models import build_model
from cvae.models.config import ModelConfig
from cvae.objectives.evidence import ELBO
from cvae.train import fit

SCHEMA = {"attributes": [{"name": "label", "kind": "categorical", "classes": ["a", "b", "c"]}]}


@pytest.fixture(autouse=True)
def _native_here():
    if not native.load():
        if CI:
            pytest.fail(f"the native step did not build under CI: {native.unavailable()}")
        pytest.skip(f"the native step is unavailable here: {native.unavailable()}")


def _model(act="relu", cond=False, shape=(1, 9, 11), hidden=(37, 21), latent=5, seed=0, prior="standard",
           dropout=0.0, cond_at=0, likelihood="bernoulli"):
    torch.manual_seed(seed)
    config = ModelConfig(data_shape=shape, schema=SCHEMA if cond else {}, arch="mlp", hidden=list(hidden),
                         latent_dim=latent, activation=act, likelihood=likelihood, prior=prior,
                         condition_dropout=dropout, condition_at=cond_at, sigma=0.6)
    model = build_model(config)
    with torch.no_grad():  # a trained-looking prior and sigma, not their zero starts
        for name, p in model.named_parameters():
            if name.startswith("prior.") or name.endswith("log_sigma"):
                p.normal_(0, 0.3)
    return model


def _batch(model, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((b, *model.config.data_shape), generator=g)
    x = (x > 0.6).float() * 0.9 + x * 0.1
    c = None
    if model.schema:
        c = torch.nn.functional.one_hot(torch.randint(0, 3, (b,), generator=g), 3).float()
    return x, c


def _step(model, precision, batch=48):
    step, reasons = fused_step_for(model, ELBO(beta=1.5), batch_size=batch, device=torch.device("cpu"),
                                   precision=precision)
    assert step is not None, reasons
    return step


def _run(model, precision, x, c, *, use_native: bool, batch=48):
    step = _step(model, precision, batch)
    assert step.native, step.native_why
    step.native = use_native
    torch.manual_seed(5)
    out = step(x, c, progress=0.3)
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


CONDITIONS = {"none": dict(), "input": dict(cond=True), "conditional-prior": dict(cond=True, prior="conditional"),
              "every-layer-dropout": dict(cond=True, prior="conditional", dropout=0.5, cond_at=-1),
              "input-dropout": dict(cond=True, dropout=0.3),
              "gaussian": dict(likelihood="gaussian"),
              "gaussian-learned-conditional": dict(cond=True, prior="conditional", likelihood="gaussian-learned")}


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("act", ["relu", "tanh", "elu", "silu", "leaky_relu"])
@pytest.mark.parametrize("cond", list(CONDITIONS))
def test_native_step_equals_the_python_step(precision, act, cond):
    """Loss, reconstruction, KL and every gradient (the conditional prior's too); 99 pixels (not a
    multiple of any vector width), a batch smaller than the buffers (the last batch of an epoch);
    with condition dropout the same rows are blanked (the noise drawn first, then the mask)."""
    model = _model(act=act, **CONDITIONS[cond])
    x, c = _batch(model, b=37)
    want, want_grads = _run(copy.deepcopy(model), precision, x, c, use_native=False)
    got, got_grads = _run(model, precision, x, c, use_native=True)
    tol = dict(rtol=1e-5, atol=1e-5) if precision == "float32" else dict(rtol=2e-3, atol=2e-3)
    for a, b in ((got.loss, want.loss), (got.reconstruction, want.reconstruction), (got.kl, want.kl)):
        torch.testing.assert_close(a, b, **tol)
    for name in want_grads:
        g, w = got_grads[name], want_grads[name]
        if precision == "float32":
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=name)
        else:  # a bfloat16 rounding of d loss / d logits may land on the other side: compare in norm
            assert (g - w).norm() <= 2e-2 * w.norm() + 1e-6, name
        assert w.abs().sum() > 0, name


def test_native_step_splits_rows_between_threads_with_the_same_result():
    model = _model()
    x, _ = _batch(model, b=48)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, one_grads = _run(copy.deepcopy(model), "float32", x, None, use_native=True)
        torch.set_num_threads(2)
        two, two_grads = _run(model, "float32", x, None, use_native=True)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(two.loss, one.loss, rtol=1e-6, atol=1e-6)
    for name in one_grads:
        torch.testing.assert_close(two_grads[name], one_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_extreme_logits_give_finite_terms_and_nan_stays_nan():
    """Logits of +-200 (far past float32's exp range): softplus and sigmoid saturate, nothing turns
    into inf or NaN; a NaN weight gives a NaN loss (which the trainer reports), never a finite one."""
    model = _model(hidden=(8,))
    with torch.no_grad():
        model.decoder.net.layers[-1].bias.copy_(torch.linspace(-200, 200, 99))
    x, _ = _batch(model, b=6)
    want, _ = _run(copy.deepcopy(model), "float32", x, None, use_native=False)
    got, grads = _run(model, "float32", x, None, use_native=True)
    assert torch.isfinite(got.loss) and all(torch.isfinite(g).all() for g in grads.values())
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-3)
    with torch.no_grad():
        model.decoder.net.layers[0].weight[0, 0] = float("nan")
    got, _ = _run(model, "float32", x, None, use_native=True)
    assert torch.isnan(got.loss)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("low_grads", [False, True])
def test_native_adam_equals_torch_adam_and_writes_the_bfloat16_copies(weight_decay, low_grads):
    torch.manual_seed(0)
    shapes = [(33, 17), (33,), (5, 33), (1000,)]
    params = [torch.randn(s) for s in shapes]
    ref = [p.clone() for p in params]
    opt = torch.optim.Adam(ref, lr=3e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=weight_decay, fused=True)
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    lows = [torch.empty_like(p, dtype=torch.bfloat16) for p in params]
    model = _model()
    step = _step(model, "bfloat16")
    step(*_batch(model, 4))  # builds a native step object, whose adam() is the kernel
    kernel = next(iter(step._native_steps.values()))
    for _ in range(4):
        grads = [torch.randn(s).bfloat16().float() for s in shapes]  # values a bfloat16 gradient holds
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        opt.step()
        given = [g.bfloat16() if low_grads and g.dim() == 2 else g for g in grads]
        kernel.adam(params, given, exp_avgs, exp_avg_sqs, steps, lows, 3e-3, 0.8, 0.95, 1e-7, weight_decay)
    for p, r, m, v, s, w in zip(params, ref, exp_avgs, exp_avg_sqs, steps, lows):
        state = opt.state[r]
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m, state["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(v, state["exp_avg_sq"], rtol=1e-5, atol=1e-8)
        assert float(s) == float(state["step"]) == 4.0
        assert torch.equal(w, p.bfloat16())  # the products' copy, rounded as .to(bfloat16) rounds


def _trained_pair(precision, steps=3, **kind):
    """The same model trained a few steps by the trainer's loop: native step + native Adam with
    deferred gradients, and the Python step + torch's Adam."""
    out = []
    for use_native in (True, False):
        model = _model(**kind)
        step = _step(model, precision)
        step.native = use_native
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
        adam = AdamStep(opt)
        if use_native:
            adam.native = step
        torch.manual_seed(11)
        for i in range(steps):
            x, c = _batch(model, 40, seed=i)
            step(x, c, defer_grads=use_native)
            adam()
        out.append((model, step, opt, adam))
    return out


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("cond", ["none", "every-layer-dropout", "gaussian-learned-conditional"])
def test_training_steps_native_and_python_stay_together(precision, cond):
    """Three steps of step + Adam (the prior's parameters have no bfloat16 copy: Adam steps them too)."""
    (m_native, step, _, adam), (m_python, _, _, _) = _trained_pair(precision, **CONDITIONS[cond])
    # after the first step (which makes Adam's state) the native Adam ran every group
    assert adam.direct_calls == 2 and step.native_adam_calls == 2
    tol = dict(rtol=1e-4, atol=1e-5) if precision == "float32" else dict(rtol=0, atol=5e-3)
    for (name, a), b in zip(m_native.named_parameters(), m_python.parameters()):
        torch.testing.assert_close(a, b, **tol, msg=name)
    if precision == "bfloat16":  # the native Adam wrote the copies the next step's products read
        for net in (step.encoder, step.decoder):
            for w, master in zip(net.weights, net.master):
                assert torch.equal(w, master.bfloat16())


def test_weights_changed_elsewhere_are_copied_again_before_the_next_step():
    """The bfloat16 copies come from the native Adam only while nothing else wrote the weights: a
    load_state_dict (resume, keeping the best epoch) between steps is seen through the version
    counters, and the next step computes with the new weights."""
    (model, step, _, _), _ = _trained_pair("bfloat16", steps=2)
    other = _model(seed=3)
    model.load_state_dict(other.state_dict())
    x, _ = _batch(model, 40, seed=9)
    torch.manual_seed(2)
    got = step(x, None).loss
    step.native = False
    torch.manual_seed(2)
    want = step(x, None).loss
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_deferred_gradients_reach_grad_on_request():
    model = _model()
    step = _step(model, "bfloat16")
    x, _ = _batch(model, 20)
    torch.manual_seed(4)
    step(x, None)
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad.zero_()
    torch.manual_seed(4)
    step(x, None, defer_grads=True)
    weight = model.encoder.net.layers[0].weight
    assert weight.grad.abs().sum() == 0  # deferred: still in the bfloat16 buffer
    assert model.encoder.net.layers[0].bias.grad.abs().sum() > 0  # biases are float32 anyway
    step.materialize_grads()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, full[n], rtol=0, atol=0, msg=n)


def test_adam_falls_back_with_the_gradients_in_grad(monkeypatch):
    """An optimizer hook makes AdamStep call opt.step(): the deferred gradients are copied to .grad
    first, so the fallback steps with them and not with stale ones."""
    (m_native, step, opt, adam), (m_python, _, _, _) = _trained_pair("bfloat16", steps=2)
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append(1))
    x, _ = _batch(m_native, 40, seed=7)
    before = m_native.encoder.net.layers[0].weight.detach().clone()
    step(x, None, defer_grads=True)
    adam()
    assert calls and not torch.equal(before, m_native.encoder.net.layers[0].weight)
    assert m_native.encoder.net.layers[0].weight.grad.abs().sum() > 0


def test_the_trainer_records_the_native_step_and_python_gives_the_same_run(tmp_path, monkeypatch):
    def train(name):
        config = TrainConfig(data="digits", condition="none", epochs=2, batch_size=64, limit=512, precision="float32",
                             out=str(tmp_path / name), progress=False, tensorboard=False, seed=3)
        result = fit(config)
        rows = [json.loads(r) for r in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        return json.loads((result.run_dir / "config.json").read_text())["execution"], rows

    execution, rows = train("native")
    assert execution["step"] == "fused-mlp" and execution["native"] is True
    monkeypatch.setenv("CVAE_NATIVE", "0")
    off, off_rows = train("python")
    assert off["step"] == "fused-mlp" and off["native"] == "CVAE_NATIVE=0"
    for a, b in zip(rows, off_rows):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_a_failed_build_leaves_the_python_step_with_the_reason(monkeypatch):
    from torch.utils import cpp_extension

    def broken(*args, **kwargs):
        raise RuntimeError("Error building extension 'cvae_native': g++: fatal error: killed")

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(native, "_machine_key", lambda: "test-broken")
    model = _model()
    step = FusedMLPStep([model], [ELBO()], batch_size=8, device=torch.device("cpu"))
    assert not step.native and step.native_why.startswith("its build failed (Error building extension")
    out = step(*_batch(model, 8))  # the Python step trains
    assert torch.isfinite(out.loss)


def test_an_unwritable_build_folder_leaves_the_python_step_with_the_reason(monkeypatch, tmp_path):
    # XDG_CACHE_HOME naming a file: the run ended in a NotADirectoryError traceback before its first step
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    model = _model()
    step = FusedMLPStep([model], [ELBO()], batch_size=8, device=torch.device("cpu"))
    assert not step.native and step.native_why.startswith("its build folder cannot be made (Not a directory")
    assert "set TORCH_EXTENSIONS_DIR to a writable folder" in step.native_why
    assert torch.isfinite(step(*_batch(model, 8)).loss)


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    """PyTorch waits forever for the lock of a build that was killed; cvae removes one older than
    10 minutes before building, and leaves a running build's alone."""
    lock = tmp_path / "lock"
    lock.write_text("")
    assert not native.clear_stale_lock(tmp_path)  # a build may be running
    assert lock.exists()
    assert native.clear_stale_lock(tmp_path, now=lock.stat().st_mtime + native.STALE_LOCK_SECONDS + 1)
    assert not lock.exists()
    assert not native.clear_stale_lock(tmp_path)  # nothing there


# -- the total correlation's kernels (beta-TCVAE) --------------------------------------------------

@pytest.mark.parametrize("b,d,estimator,spread", [(1, 3, "mss", 1.0), (2, 1, "mss", 1.0), (37, 5, "mss", 3.0),
                                                  (64, 10, "mws", 1.0), (130, 4, "mss", 6.0)])
def test_native_tc_matches_the_autograd_expressions(monkeypatch, b, d, estimator, spread):
    # log q(z), log prod_d q(z_d) and every gradient of a beta-TCVAE-like loss equal to autograd's, including
    # very sharp posteriors (log var down to -3 spread * 2: the softmax weights underflow, which the kernel skips)
    import cvae.objectives.disentangle as dis

    g = torch.Generator().manual_seed(b * 7 + d)
    mu0 = torch.randn((b, d), generator=g)
    lv0 = torch.randn((b, d), generator=g) * spread - 2.0
    z0 = mu0 + torch.randn((b, d), generator=g) * (0.5 * lv0).exp()
    weights = torch.rand(3, generator=g) + 0.5
    out = {}
    for mode in ("off", "auto"):
        monkeypatch.setattr(dis, "NATIVE_TC", mode)
        z, mu, lv = (t.clone().requires_grad_() for t in (z0, mu0, lv0))
        log_qz_x, log_qz, log_prod = dis.tc_decomposition(z, mu, lv, 5000, estimator)
        loss = (weights[0] * (log_qz_x - log_qz) + weights[1] * (log_qz - log_prod) - weights[2] * log_prod).mean()
        loss.backward()
        out[mode] = [log_qz.detach(), log_prod.detach(), z.grad, mu.grad, lv.grad]
    for ref, got in zip(out["off"], out["auto"]):
        assert torch.isfinite(got).all()
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()) + 1e-6)


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_tc_densities_stay_finite_for_posteriors_sharper_than_float32(monkeypatch, mode):
    # beta-TCVAE at lr 3e-3 on a Shapes3D-like set drove log variances to -100 in one epoch; exp(-log var) was
    # then infinite and the code's own term 0 x inf = NaN: the run stopped as diverged (both paths)
    import cvae.objectives.disentangle as dis

    monkeypatch.setattr(dis, "NATIVE_TC", mode)
    g = torch.Generator().manual_seed(0)
    mu = torch.randn((16, 4), generator=g).requires_grad_()
    lv = torch.tensor([-100.0, -2.0, -300.0, 0.5]).repeat(16, 1).requires_grad_()
    z = (mu + torch.randn((16, 4), generator=g) * (0.5 * lv).exp()).detach().requires_grad_()
    log_qz_x, log_qz, log_prod = dis.tc_decomposition(z, mu, lv, 1000, "mss")
    loss = (log_qz_x - log_qz + 5 * (log_qz - log_prod)).mean()
    loss.backward()
    for t in (log_qz_x, log_qz, log_prod, z.grad, mu.grad, lv.grad):
        assert torch.isfinite(t).all()
    assert (lv.grad[:, [0, 2]] == 0).all() and (lv.grad[:, 1] != 0).any()  # below the bound: no pull either way


def test_native_tc_refuses_what_it_does_not_compute():
    z = torch.zeros(4, 2)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        torch.ops.cvae_native.tc_forward(z.double(), z.double(), z.double(), torch.zeros(4, 4).double())
    with pytest.raises(RuntimeError, match=r"\(B, D\)"):
        torch.ops.cvae_native.tc_forward(z, z, z, torch.zeros(3, 3))
