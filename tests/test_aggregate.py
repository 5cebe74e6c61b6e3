"""The aggregate posterior fitted after training (cvae.aggregate): written by training for image runs,
drawn from by `cvae sample` / `cvae evaluate` by default, fitted again by `cvae aggregate RUN`, checked
against the model when read, and the prior wherever it does not apply. Small data (scikit-learn's
digits), two epochs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import cvae
from cvae import aggregate
from cvae.aggregate import AggregatePosterior
from cvae.cli import main
from cvae.errors import CvaeError
from cvae.runs import load_tensors


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("agg") / "digits"
    assert main(["train", "--data", "digits", "--epochs", "2", "--no-progress", "--no-pictures", "--no-tensorboard",
                 "--out", str(out)]) == 0
    return out


def _codes_of_class(model, k: int):
    """The fit's own input for class k: one posterior draw per training example (all of digits' 1,617),
    the noise drawn as the fit draws it (the run's seed, 1,000 rows at a time)."""
    from cvae.evaluate import load_run_data

    data = load_run_data(model)
    x, y = data.train.x, data.train.y
    c = model.schema.encode(y)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        qs = [model.q_z(x[i:i + 1000], c[i:i + 1000]) for i in range(0, len(x), 1000)]
        z = torch.cat([q.mu + q.std * torch.randn(q.mu.shape, generator=g) for q in qs])
    return z[y[:, 0] == k]


def test_training_writes_the_fit_and_sampling_draws_from_it(run, tmp_path, capsys):
    summary = json.loads((run / "summary.json").read_text())["aggregate"]
    assert summary["file"] == aggregate.FILE and len(summary["components"]) == 10
    assert all(k >= 1 for k in summary["components"]) and sum(summary["examples"]) > 1000
    model = cvae.load(run)
    fit = model.aggregate
    assert isinstance(fit, AggregatePosterior) and model.sampling_codes() == "aggregate"
    # the mixture lies where the class's codes lie: EM keeps their mean and covariance (up to its 1e-4
    # regularisation of the diagonal), and its draws have them
    for k in (0, 7):
        want = _codes_of_class(model, k).double()
        w, mu = fit.weights[k].double(), fit.means[k].double()
        cov = fit.scale_tril[k].double() @ fit.scale_tril[k].double().transpose(1, 2)
        mean = (w[:, None] * mu).sum(0)
        second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0) - mean[:, None] * mean[None]
        assert torch.allclose(mean, want.mean(0), atol=1e-4)
        assert torch.allclose(second, torch.cov(want.T, correction=0), atol=2e-3)
        got = fit.sample(torch.full((20000,), k), torch.Generator().manual_seed(1)).double()
        assert torch.allclose(got.mean(0), mean, atol=0.05) and torch.allclose(torch.cov(got.T), second, atol=0.08)
    # temperature 0: every draw a component's mean
    zero = fit.sample(torch.full((50,), 3), torch.Generator().manual_seed(2), temperature=0.0)
    assert all(any(torch.allclose(z, m) for m in fit.means[3, :fit.components[3]]) for z in zero)
    # cvae sample: the fit by default, deterministic; --codes prior draws other images
    for name, extra in (("a1", []), ("a2", []), ("p", ["--codes", "prior"])):
        assert main(["sample", str(run), "--condition", "label=4", "--n", "8", "-o", str(tmp_path / f"{name}.npz"),
                     *extra]) == 0
    a1, a2, p = (np.load(tmp_path / f"{n}.npz")["x"] for n in ("a1", "a2", "p"))
    assert np.array_equal(a1, a2) and not np.allclose(a1, p)
    capsys.readouterr()


def test_a_class_without_a_fit_draws_from_the_prior(run):
    model = cvae.load(run)
    fit = model.aggregate
    weights = fit.weights.clone()
    weights[5] = 0.0  # as if no training example had been of class 5
    model.aggregate = AggregatePosterior(weights, fit.means, fit.scale_tril, fit.attribute, fit.classes, fit.counts)
    y = {"label": ["5"] * 4 + ["6"] * 4}
    mixed = model.sample(8, y, generator=torch.Generator().manual_seed(3))
    prior = model.sample(8, y, generator=torch.Generator().manual_seed(3), codes="prior")  # at its default 0.9
    assert torch.equal(mixed[:4], prior[:4]) and not torch.allclose(mixed[4:], prior[4:])
    exact = model.sample(8, y, generator=torch.Generator().manual_seed(3), temperature=1.0)  # told: for both
    assert torch.equal(exact[:4], model.sample(8, y, generator=torch.Generator().manual_seed(3), codes="prior",
                                               temperature=1.0)[:4])


def test_cvae_aggregate_fits_a_run_again_exactly(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / aggregate.FILE).unlink()
    assert cvae.load(copy).aggregate is None
    # deleted by hand: the default samples fell back to the prior without a word; now they are refused, as
    # for a damaged file, and the prior is one flag away
    for codes in ([], ["--codes", "aggregate"]):
        assert main(["sample", str(copy), *codes, "--n", "4", "-o", str(tmp_path / "s.png")]) == 2
        err = capsys.readouterr().err
        assert "which training wrote (summary.json names it), is gone; `cvae aggregate" in err, err
        assert len(err.strip().splitlines()) == 1
    assert main(["sample", str(copy), "--codes", "prior", "--n", "4", "-o", str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    assert main(["aggregate", str(copy)]) == 0
    assert "components per class" in capsys.readouterr().out
    a, b = load_tensors(run / aggregate.FILE), load_tensors(copy / aggregate.FILE)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # training's fit, again


@pytest.mark.parametrize("damage, message", [
    ("garbage", "cannot read"),
    ("classes", "was fitted for label"),
    ("nan", "NaN, infinite or negative"),
    ("other weights", "was fitted to other weights"),  # another run's file of the same shapes
])
def test_a_damaged_or_foreign_fit_is_one_clear_line(run, tmp_path, capsys, damage, message):
    import shutil

    from cvae.runs import save_tensors

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    path = copy / aggregate.FILE
    fit = cvae.load(run).aggregate
    tensors, meta = fit.to_tensors()
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    elif damage == "classes":
        save_tensors(path, tensors, {**meta, "classes": json.dumps([str(i) for i in range(9)] + ["ten"])})
    elif damage == "other weights":
        assert meta["model"] == aggregate.weights_fingerprint(cvae.load(run))
        save_tensors(path, tensors, {**meta, "model": "0" * 32})
    else:
        tensors["means"] = tensors["means"].clone()
        tensors["means"][2, 0, 0] = float("nan")
        save_tensors(path, tensors, meta)
    model = cvae.load(copy)  # what does not draw codes from the fit goes on
    with pytest.raises(CvaeError, match=message):
        model.sample(4)
    assert main(["sample", str(copy), "--n", "4", "-o", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert message.split()[0] in err and "cvae aggregate RUN" in err and len(err.strip().splitlines()) == 1
    from cvae.serve.served import ServedRun

    with pytest.raises(CvaeError, match=message):  # the page samples from the fit: refused at start
        ServedRun("copy", copy)
    assert main(["sample", str(copy), "--n", "4", "--codes", "prior", "-o", str(tmp_path / "p.png")]) == 0
    assert main(["embed", str(copy), "--n", "20", "-o", str(tmp_path / "e.csv")]) == 0
    assert main(["aggregate", str(copy)]) == 0  # refits, over the damaged file
    assert main(["sample", str(copy), "--n", "4", "-o", str(tmp_path / "s.png")]) == 0


def test_runs_it_does_not_apply_to_keep_the_prior(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, y=rng.integers(0, 2, 120))
    out = tmp_path / "table"
    assert main(["train", "--data", str(tmp_path / "t.npz"), "--epochs", "1", "--no-progress", "--no-pictures",
                 "--no-tensorboard", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["aggregate"]
    assert summary == {"file": None, "why_not": "fitted for images only"}
    assert not (out / aggregate.FILE).exists() and cvae.load(out).sampling_codes() == "prior"
    with pytest.raises(CvaeError, match="fitted for images only"):
        cvae.api.fit_aggregate(out)
    with pytest.raises(CvaeError, match="no fitted aggregate posterior"):
        cvae.load(out).sample(2, codes="aggregate")


def test_the_semi_supervised_model_fits_unlabelled_examples_by_their_inferred_class(tmp_path):
    out = tmp_path / "semi"
    assert main(["train", "--data", "digits", "--labelled", "200", "--epochs", "1", "--no-progress", "--no-pictures",
                 "--no-tensorboard", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["aggregate"]
    model = cvae.load(out)
    assert model.aggregate is not None and sum(summary["examples"]) == sum(model.aggregate.counts)
    assert model.sample(10, generator=torch.Generator().manual_seed(0)).shape == (10, 1, 8, 8)
    # the labelled examples always count; an unlabelled one where q(y | x) is sure of its class
    from cvae.evaluate import load_run_data

    data = load_run_data(model)
    x, c = data.train.x, model.schema.encode(data.train.y)
    labelled = int((~torch.isnan(data.train.y[:, 0])).sum())
    every = aggregate.fit(model, x, c, confidence=0.0)
    sure = torch.softmax(model.class_logits(x)[0], 1).max(1).values >= aggregate.CONFIDENCE
    unlabelled_sure = int((sure & torch.isnan(data.train.y[:, 0])).sum())
    assert sum(every.counts) == len(x) and sum(aggregate.fit(model, x, c).counts) == labelled + unlabelled_sure


def test_a_dynamically_binarized_run_is_fitted_on_binary_images(tmp_path, capsys):
    # training saw 0/1 draws of the grey levels: its codes are fitted on one fixed draw, as its held-out
    # splits are scored, and `cvae aggregate` fits the same again
    out = tmp_path / "dyn"
    assert main(["train", "--data", "digits", "--binarize", "dynamic", "--epochs", "1", "--no-progress",
                 "--no-pictures", "--no-tensorboard", "--out", str(out)]) == 0
    trained = load_tensors(out / aggregate.FILE)
    assert main(["aggregate", str(out)]) == 0
    again = load_tensors(out / aggregate.FILE)
    assert all(torch.allclose(trained[k], again[k], atol=1e-5) for k in trained)
    capsys.readouterr()


def test_too_few_codes_of_every_class_leave_the_prior(run, tmp_path, monkeypatch):
    from cvae.evaluate import load_run_data

    model = cvae.load(run)
    data = load_run_data(model)
    rows = torch.cat([torch.nonzero(data.train.y[:, 0] == k)[:5, 0] for k in range(10)])  # 5 < latent_dim + 2
    assert aggregate.fit(model, data.train.x[rows], model.schema.encode(data.train.y[rows])) is None
    # a run whose fit found too few codes: no file, the prior at its temperature, and the reason on record
    monkeypatch.setattr(aggregate, "fit", lambda *a, **k: None)
    out = tmp_path / "few"
    assert main(["train", "--data", "digits", "--epochs", "1", "--no-progress", "--no-pictures", "--no-tensorboard",
                 "--out", str(out)]) == 0
    why = json.loads((out / "summary.json").read_text())["aggregate"]["why_not"]
    assert why.startswith("no class had the 10 codes") and not (out / aggregate.FILE).exists()
    few = cvae.load(out)
    assert few.sampling_codes() == "prior" and few.sampling_temperature() == 0.9
    with pytest.raises(CvaeError, match="no class had the 10 codes"):
        cvae.api.fit_aggregate(out)


def test_the_hierarchical_model_samples_its_prior(tmp_path, capsys):
    out = tmp_path / "hvae"
    assert main(["train", "--data", "digits", "--preset", "hvae", "--width", "8", "--epochs", "1", "--no-progress",
                 "--no-pictures", "--no-tensorboard", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["aggregate"] == {
        "file": None, "why_not": "the hvae model draws from its prior"}
    assert main(["sample", str(out), "--n", "4", "--codes", "aggregate", "-o", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "the hvae model samples its prior" in err and len(err.strip().splitlines()) == 1


def test_evaluate_and_the_served_page_say_which_codes(run, tmp_path):
    from cvae.evaluate import evaluate_run
    from cvae.evaluator import train_evaluator
    from cvae.serve.served import ServedRun

    ev = tmp_path / "ev.safetensors"
    train_evaluator("digits", epochs=1, out=ev, progress=False)
    fitted = evaluate_run(run, metrics=["samples"], evaluator=ev, n=200, per_class=20, write=False).results["samples"]
    prior = evaluate_run(run, metrics=["samples"], evaluator=ev, n=200, per_class=20, write=False,
                         codes="prior").results["samples"]
    assert fitted["codes"] == "aggregate" and prior["codes"] == "prior"
    assert "(at temperature 1.0)" in fitted["conditional_accuracy"]["name"]
    assert "(at temperature 0.9)" in prior["conditional_accuracy"]["name"]
    assert any("aggregate posterior fitted after training" in n for n in fitted["notes"])
    assert fitted["frechet_distance"]["value"] != prior["frechet_distance"]["value"]
    described = ServedRun("digits", run).info()
    assert described["codes"] == {"default": "aggregate", "temperature": 1.0}


def test_fuzzed_fit_files_load_or_give_one_line(run, tmp_path):
    """Random damage to aggregate.safetensors (flipped, cut, inserted, repeated bytes): the run loads with a
    finite fit, or sampling from it is refused in one line naming the file, never another exception."""
    import shutil

    from test_fuzz_inputs import mutate, one_line

    rng = np.random.default_rng(7)
    good = (run / aggregate.FILE).read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    failures = []
    for k in range(40):
        (copy / aggregate.FILE).write_bytes(mutate(good, rng))
        try:
            model = cvae.load(copy)
            fit = model.aggregate
            if fit is None:
                model.sampling_codes()  # the damage is kept for the commands that draw codes from the fit
            assert fit is not None and all(torch.isfinite(t).all() for t in (fit.weights, fit.means, fit.scale_tril))
        except CvaeError as e:
            if not (one_line(str(e)) and aggregate.FILE in str(e)):
                failures.append(f"#{k}: {e!r}")
        except Exception as e:  # anything else is a bug
            failures.append(f"#{k}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


def test_bad_input_to_the_new_command_and_flag_is_one_line(run, tmp_path, capsys):
    for argv, message in (
        (["aggregate", str(tmp_path / "nowhere")], "nowhere"),
        (["sample", str(run), "--codes", "posterior", "--n", "2", "-o", str(tmp_path / "s.png")], "--codes"),
        (["evaluate", str(run), "--metrics", "samples", "--codes", "fit"], "--codes"),
    ):
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert message in err, (argv, err)
