"""Semi-supervised training as a user meets it: labels missing in every input form, the M2 bound,
classifying from the shell and Python, every other command on the run, and bad input."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

import cvae
from cvae.cli import main
from cvae.data import load_data
from cvae.errors import CvaeError

QUIET = dict(progress=False, tensorboard=False, pictures=False, batch_size=64)


def _config(run):
    return json.loads((run / "config.json").read_text())


def _digits_npz(path, missing, *, seed=0):
    """scikit-learn's digits as an .npz whose label array marks unlabelled examples with ``missing``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.float64 if isinstance(missing, float) else np.int64)
    rng = np.random.default_rng(seed)
    hidden = np.ones(len(y), bool)
    for k in range(10):  # 8 labels per class stay
        hidden[rng.choice(np.flatnonzero(d.target == k), 8, replace=False)] = False
    y[hidden] = missing
    np.savez(path, x=x, y=y)
    return d.target, hidden


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A semi-supervised run on the digits with 50 labels (`cvae train --labelled 50`)."""
    out = tmp_path_factory.mktemp("semi") / "run"
    assert main(["train", "--data", "digits", "--labelled", "50", "--epochs", "30", "--batch-size", "64",
                 "--no-progress", "--no-tensorboard", "--out", str(out)]) == 0
    return out


def test_labelled_keeps_a_balanced_draw_of_labels_and_the_run_records_them(digits_run):
    cfg = _config(digits_run)
    assert cfg["model"]["model_class"] == "m2" and cfg["objective"]["name"] == "m2"
    assert cfg["data"]["labelled"] == {"label": {str(k): 5 for k in range(10)}}
    assert cfg["objective"]["alpha"] == 1.0  # the default variant's own
    state = cvae.runs.load_tensors(digits_run / "trainer_state.safetensors")
    assert "optimizer.0.exp_avg" in state  # two parameter groups: the generative part, then q(y | x)
    from safetensors import safe_open

    with safe_open(str(digits_run / "trainer_state.safetensors"), "pt") as f:
        groups = json.loads(f.metadata()["state"])["param_groups"]
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, pytest.approx(1 / 3)]
    from cvae.objectives.semi import SemiSupervised

    assert SemiSupervised(consistency=0.0).attach(1797, 50)["alpha"] == pytest.approx(5.0)  # M2: 0.1 x 50 labels
    data = load_data("digits", labelled=50, seed=0)
    assert int((~torch.isnan(data.train.y[:, 0])).sum()) == 50
    assert torch.isnan(data.val.y).all()  # the validation labels are hidden too
    other = load_data("digits", labelled=50, seed=1)
    assert not torch.equal(torch.isnan(data.train.y), torch.isnan(other.train.y))  # --seed draws other labels
    from cvae.errors import CvaeWarning

    with pytest.warns(CvaeWarning, match="--labelled 53 over the 10 classes of 'label' is not the same number for "
                                         "each: 3 classes .* keep 6 labels, the others 5"):
        odd = load_data("digits", labelled=53, seed=0)
    counts = np.bincount(odd.train.y[~torch.isnan(odd.train.y[:, 0]), 0].long().numpy(), minlength=10)
    assert sorted(counts.tolist()) == [5] * 7 + [6] * 3


def test_semi_supervised_classifier_beats_the_same_network_on_the_labels_alone(digits_run):
    """q(y | x) learns from the unlabelled examples: its error is well below that of the same
    classifier network trained on the same 50 labels only."""
    from sklearn.datasets import load_digits

    model = cvae.load(digits_run)
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    semi_error = (model.classify(x).argmax(1).numpy() != d.target).mean()

    data = load_data("digits", labelled=50, seed=0)
    known = ~torch.isnan(data.train.y[:, 0])
    xl, yl = data.train.x[known], data.train.y[known, 0].long()
    torch.manual_seed(0)
    net = type(model.classifier)(model.config.data_shape, 10, channels=model.config.classifier_channels,
                                 hidden=model.config.classifier_hidden, act=model.config.activation)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xl), yl).backward()
        opt.step()
    with torch.no_grad():
        supervised_error = (net(x).argmax(1).numpy() != d.target).mean()
    assert semi_error < 0.75 * supervised_error, (semi_error, supervised_error)


def test_classify_command_writes_probabilities_with_ids_and_reports_the_error(digits_run, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert main(["classify", str(digits_run), "--data", "digits", "--split", "train", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "error" in printed and "1797 examples" in printed
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1797 and rows[0]["id"] == "0"
    p = np.array([[float(r[f"p_{k}"]) for k in range(10)] for r in rows])
    assert np.allclose(p.sum(1), 1, atol=1e-4)
    pred = np.array([int(r["label"]) for r in rows])
    assert (pred == p.argmax(1)).all()
    truth = np.array([int(r["true_label"]) for r in rows])
    error = (pred != truth).mean()
    assert f"{100 * error:.2f}%" in printed


def test_every_command_works_on_a_semi_supervised_run(digits_run, tmp_path):
    run = str(digits_run)
    assert main(["sample", run, "--condition", "label=3", "--n", "8", "-o", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["label"].tolist() == ["3"] * 8
    assert main(["sample", run, "--n", "20", "-o", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", run, "--input", "digits", "--n", "16", "-o", str(tmp_path / "r.png")]) == 0
    assert main(["transfer", run, "--input", "digits", "--n", "4", "-o", str(tmp_path / "t.png")]) == 0
    assert main(["augment", run, "--per-class", "3", "-o", str(tmp_path / "a.npz")]) == 0
    assert main(["embed", run, "--data", "digits", "--n", "50", "-o", str(tmp_path / "e.csv")]) == 0
    assert main(["traverse", run, "--top", "2", "-o", str(tmp_path / "tr.png")]) == 0
    for name in ("s.png", "r.png", "t.png", "tr.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_augment_balance_on_a_file_whose_labelled_classes_are_balanced_names_the_unlabelled(digits_run, tmp_path,
                                                                                         capsys):
    _digits_npz(tmp_path / "u.npz", -1)  # 8 labels per class, the rest -1
    assert main(["augment", str(digits_run), "--balance", "--data", str(tmp_path / "u.npz"),
                 "-o", str(tmp_path / "a.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1717 examples without a label are not counted" in err[0] and "--per-class" in err[0]
    assert not (tmp_path / "a.npz").exists()


def test_augment_merged_into_an_image_folder_keeps_the_unlabelled_images_apart(digits_run, tmp_path):
    """Merged real images without a label go to OUT/unlabelled/, which cvae train reads as such (the
    writer indexed the classes with the missing label's code and stopped half-way, leaving the folder)."""
    target, hidden = _digits_npz(tmp_path / "u.npz", -1)
    out = tmp_path / "aug"
    assert main(["augment", str(digits_run), "--per-class", "2", "--merge", "--data", str(tmp_path / "u.npz"),
                 "-o", str(out)]) == 0
    assert len(list((out / "unlabelled").glob("real-*.png"))) == hidden.sum()
    assert sum(len(list((out / str(k)).glob("real-*.png"))) for k in range(10)) == (~hidden).sum() == 80
    assert all(len(list((out / str(k)).glob("synthetic-*.png"))) == 2 for k in range(10))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder left
    d = load_data(str(out), val_fraction=0.0)
    assert int(np.isnan(d.train.y.numpy()).sum()) == hidden.sum()


def test_inputs_without_labels_are_encoded_with_the_class_the_classifier_gives(digits_run, tmp_path):
    model = cvae.load(digits_run)
    target, hidden = _digits_npz(tmp_path / "u.npz", -1)
    x = torch.tensor(np.load(tmp_path / "u.npz")["x"][:20])
    guessed = model.classify(x).argmax(1)
    recon = model.reconstruct(x)  # no condition given: q(y | x) fills it
    by_hand = model.reconstruct(x, {"label": guessed.tolist()})
    assert torch.allclose(recon, by_hand)
    # the file's -1 labels are read as missing, not as a class
    assert main(["reconstruct", str(digits_run), "--input", str(tmp_path / "u.npz"), "--n", "8",
                 "-o", str(tmp_path / "r.npz")]) == 0


def test_evaluate_reports_error_per_class_accuracy_and_calibration(tmp_path):
    target, hidden = _digits_npz(tmp_path / "d.npz", -1)
    out = tmp_path / "run"
    cvae.train(data=str(tmp_path / "d.npz"), epochs=2, out=str(out), **QUIET)
    assert main(["evaluate", str(out), "--metrics", "classification", "--split", "train", "--json"]) == 0
    ev = json.loads((out / "eval.json").read_text())["classification"]["label"]
    assert 0 <= ev["error"]["value"] <= 1 and 0 <= ev["ece"]["value"] <= 1
    assert set(ev["per_class_accuracy"]) == {str(k) for k in range(10)}
    assert ev["n_examples"] < 1797  # scored on the examples whose label is known


@pytest.mark.parametrize("missing", [-1, -1.0, float("nan")])  # -1.0: a float array of class indices
def test_npz_labels_of_minus_one_or_nan_are_missing(tmp_path, missing):
    _digits_npz(tmp_path / "d.npz", missing)
    res = cvae.train(data=str(tmp_path / "d.npz"), epochs=1, out=str(tmp_path / "r"), **QUIET)
    cfg = _config(tmp_path / "r")
    assert cfg["model"]["model_class"] == "m2"
    assert res.model.schema.attributes[0].classes == [str(k) for k in range(10)]  # -1 is no class
    assert sum(cfg["data"]["labelled"]["label"].values()) < 80  # the validation split took some of the 80


@pytest.mark.parametrize("unlabelled", ["unlabelled", "Unlabeled"])  # either spelling, any case
def test_image_folder_with_an_unlabelled_subfolder(tmp_path, unlabelled):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in (("bright", 4), ("dark", 4), (unlabelled, 20)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(n):
            level = 200 if name == "bright" else 40 if name == "dark" else rng.choice([40, 200])
            pixels = np.clip(rng.normal(level, 20, (12, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / name / f"{i}.png")
    # what notebooks and macOS leave behind is not an image of the class
    (tmp_path / "imgs" / "dark" / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.full((12, 12), 255, np.uint8)).save(tmp_path / "imgs" / "dark" / ".ipynb_checkpoints" / "0.png")
    (tmp_path / "imgs" / "dark" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "imgs" / "__MACOSX" / "dark").mkdir(parents=True)
    (tmp_path / "imgs" / "__MACOSX" / "dark" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    res = cvae.train(data=str(tmp_path / "imgs"), epochs=2, val_fraction=0.0, out=str(tmp_path / "r"), **QUIET)
    assert res.model.schema.attributes[0].classes == ["bright", "dark"]
    assert _config(tmp_path / "r")["data"]["labelled"] == {"label": {"bright": 4, "dark": 4}}
    assert res.model.config.classifier_arch == "conv"
    (tmp_path / "imgs" / "grey").mkdir()  # a class folder left empty: a class the model could never generate
    with pytest.raises(CvaeError, match="imgs/grey hold no images"):
        cvae.train(data=str(tmp_path / "imgs"), epochs=1, out=str(tmp_path / "r2"), **QUIET)


def test_an_rgb_folder_with_unlabelled_images_through_the_evaluator_and_sample_metrics(tmp_path, capsys):
    """What a user with their own partly labelled colour images does: train, train an evaluator on the
    labelled images (the unlabelled ones are not a class), and score the samples."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in (("red", 12), ("blue", 12), ("unlabelled", 40)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(n):
            red = name == "red" or (name == "unlabelled" and i % 2 == 0)
            pixels = rng.normal(40, 15, (10, 10, 3))
            pixels[..., 0 if red else 2] += 170
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    run, ev = tmp_path / "r", tmp_path / "ev.safetensors"
    assert main(["train", "--data", str(tmp_path / "imgs"), "--epochs", "2", "--out", str(run), "--no-progress",
                 "--no-tensorboard", "--no-pictures"]) == 0
    model = cvae.load(run)
    assert model.config.model_class == "m2" and model.config.data_shape == (3, 10, 10)
    assert main(["evaluator", "train", "--data", str(tmp_path / "imgs"), "--epochs", "2", "--out", str(ev),
                 "--no-progress"]) == 0
    assert json.loads(ev.with_suffix(".json").read_text())["n_train"] < 24  # the labelled images only
    capsys.readouterr()
    assert main(["evaluate", str(run), "--metrics", "samples", "--evaluator", str(ev), "--per-class", "10",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "labelled)" in out  # the evaluator's accuracy on the real images counts the labelled ones
    section = json.loads((run / "eval.json").read_text())["samples"]
    assert 0 <= section["evaluator_accuracy_real"]["value"] <= 1
    assert math.isfinite(section["frechet_distance"]["value"])
    # generating needs every condition: nothing to infer a missing label from
    with pytest.raises(CvaeError, match="generating needs every condition.*label=blue"):
        model.sample(2, torch.tensor([[float("nan")], [0.0]]))
    with pytest.raises(CvaeError, match="two per class"):
        (tmp_path / "few" / "red").mkdir(parents=True)
        (tmp_path / "few" / "blue").mkdir(parents=True)
        for name in ("red", "blue"):
            Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "few" / name / "0.png")
        cvae.evaluator.train_evaluator(str(tmp_path / "few"), epochs=1, out=tmp_path / "few.safetensors",
                                       progress=False)


def _table(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerows(rows)


def test_csv_with_empty_cells_in_two_categorical_conditions_and_a_continuous_one(tmp_path):
    """Several categorical conditions, each missing in some rows, beside a continuous one always given:
    a table model (MLP classifier) that classifies each and generates any combination."""
    rng = np.random.default_rng(0)
    rows = [["a", "b", "shape", "color", "size"]]
    for i in range(240):
        shape, color = rng.integers(2), rng.integers(3)
        size = rng.uniform(1, 2)
        a = 3 * shape - 1.5 + rng.normal(0, 0.3)
        b = 2 * color - 2 + size + rng.normal(0, 0.3)
        # missing as pandas, R and spreadsheets write it: an empty cell, NA, N/A, null, None
        rows.append([f"{a:.4f}", f"{b:.4f}", ["round", "square"][shape] if i % 3 == 0 else ["", "NA", "null"][i % 3],
                     ["red", "green", "blue"][color] if i % 4 < 2 else ["N/A", "None"][i % 2], f"{size:.3f}"])
    _table(tmp_path / "t.csv", rows)
    res = cvae.train(data=str(tmp_path / "t.csv"), condition="shape,color,size:continuous", epochs=3,
                     out=str(tmp_path / "r"), **QUIET)
    model = res.model
    assert model.config.model_class == "m2" and model.config.classifier_arch == "mlp"
    assert [a.classes for a in model.schema.attributes[:2]] == [["round", "square"], ["blue", "green", "red"]]
    x = torch.tensor([[1.5, 0.0], [-1.5, 0.0]])
    assert model.classify(x, "shape").shape == (2, 2) and model.classify(x, "color").shape == (2, 3)
    s = model.sample(6, {"shape": "square", "color": ["red", "green", "blue"] * 2, "size": 1.5})
    assert s.shape == (6, 2) and torch.isfinite(s).all()
    out = tmp_path / "p.csv"
    assert main(["classify", str(tmp_path / "r"), "--data", str(tmp_path / "t.csv"), "--attribute", "color",
                 "-o", str(out)]) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header[:3] == ["id", "color", "probability"] and "p_blue" in header


def test_the_unlabelled_bound_sums_the_elbo_over_the_classes_under_q(digits_run):
    """U(x) = sum_y q(y|x) L(x, y) - H(q(y|x)), computed here term by term with one shared draw of eps."""
    from cvae.objectives.semi import SemiSupervised

    model = cvae.load(digits_run)
    x = load_data("digits").train.x[:5]
    c_missing = torch.zeros((5, 10))
    obj = SemiSupervised(alpha=0.0, consistency=0.0)
    torch.manual_seed(1)
    out = obj(model, x, c_missing)
    torch.manual_seed(1)
    q = model.class_logits(x)[0].float().softmax(1)  # (5, 10)
    xs = x.unsqueeze(0).expand(10, *x.shape).reshape(50, *x.shape[1:])
    cs = torch.eye(10).repeat_interleave(5, dim=0)
    o = model(xs, cs)
    L = (-o.px.log_prob(xs) + o.kl()).view(10, 5).T + math.log(10)  # (5, 10)
    U = (q * L).sum(1) + (q * q.log()).sum(1)
    assert out.neg_elbo.item() == pytest.approx(U.mean().item(), rel=1e-5)
    assert (U >= -math.log(1)).all()  # a bound on -log p(x): positive for these images


def test_resuming_a_semi_supervised_run_is_exact(tmp_path):
    from cvae.config import TrainConfig
    from cvae.train import fit

    # the precision pinned: with --precision auto each of the two runs times float32 against bfloat16 on its
    # own, and on a loaded machine (measurements not cached) the two can choose differently
    common = dict(data="digits", labelled=30, batch_size=64, progress=False, tensorboard=False, seed=2, epochs=3,
                  precision="float32")
    fit(TrainConfig(**common, out=str(tmp_path / "straight")))
    fit(TrainConfig(**common, out=str(tmp_path / "resumed")), on_epoch=lambda epoch, model, row: epoch == 2)
    assert main(["train", "--resume", "--out", str(tmp_path / "resumed"), "--no-progress"]) == 0
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("straight", "resumed"))
    assert sorted(a) == sorted(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]  # names, not a byte diff pytest takes minutes to print
    assert not differ, differ


def test_conv_networks_train_semi_supervised(tmp_path):
    res = cvae.train(data="digits", labelled=20, preset="conv", epochs=1, out=str(tmp_path / "r"), **QUIET)
    assert res.model.config.arch == "conv" and res.model.config.model_class == "m2"
    assert torch.isfinite(res.model.sample(10)).all()


# -- bad input: one clear line each -------------------------------------------------------------------

def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_a_label_column_that_is_entirely_missing(tmp_path, capsys):
    _table(tmp_path / "t.csv", [["a", "b", "label"]] + [[str(i), str(i * 2), ""] for i in range(20)])
    err = _error(capsys, ["train", "--data", str(tmp_path / "t.csv"), "--condition", "label:categorical",
                          "--out", str(tmp_path / "r")])
    assert "no values at all" in err and not (tmp_path / "r").exists()


def test_a_class_with_no_labelled_example(tmp_path, capsys):
    from PIL import Image

    for name, n in (("cat", 3), ("dog", 0), ("unlabelled", 5)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    err = _error(capsys, ["train", "--data", str(tmp_path / "imgs"), "--val-fraction", "0", "--out", str(tmp_path / "r")])
    assert "imgs/dog hold no images" in err and "cannot be generated" in err


def test_fewer_labels_than_classes_and_labels_for_a_plain_cvae(tmp_path, capsys):
    err = _error(capsys, ["train", "--data", "digits", "--labelled", "5", "--out", str(tmp_path / "r")])
    assert "--labelled 5" in err and "10 classes" in err
    err = _error(capsys, ["train", "--data", "digits", "--labelled", "50", "--model", "cvae", "--out", str(tmp_path / "r")])
    assert "lack a label" in err and "--model m2" in err
    err = _error(capsys, ["train", "--data", "digits", "--condition", "none", "--labelled", "50", "--out", str(tmp_path / "r")])
    assert "categorical condition" in err and "--condition none" in err
    rows = ["a,b,label"] + [f"{i % 7 / 7:.3f},{i % 5 / 5:.3f},{['cat', 'dog'][i % 2]}" for i in range(40)]
    (tmp_path / "t.csv").write_text("\n".join(rows + ["0.5,0.5,fox"]) + "\n")
    for seed in range(12):  # the fox's one row in the validation split: no --labelled can include it
        code = main(["train", "--data", str(tmp_path / "t.csv"), "--labelled", "3", "--seed", str(seed), "--epochs", "1",
                     "--out", str(tmp_path / f"f{seed}"), "--no-progress", "--no-tensorboard", "--no-pictures"])
        err = capsys.readouterr().err
        if code == 2 and "training split has 0" in err:
            assert "no training example at all" in err and "ask for fewer" not in err
            break
    else:
        pytest.fail("no seed put the fox in the validation split")
    err = _error(capsys, ["train", "--data", "digits", "--labelled", "50", "--objective", "iwae", "--out", str(tmp_path / "r")])
    assert "m2" in err
    err = _error(capsys, ["train", "--data", "digits", "--model", "multvae", "--out", str(tmp_path / "r")])
    assert "cvae recommend train" in err


def test_a_label_outside_the_known_classes(digits_run, tmp_path, capsys):
    err = _error(capsys, ["sample", str(digits_run), "--condition", "label=12", "-o", str(tmp_path / "s.png")])
    assert "unknown value '12'" in err
    err = _error(capsys, ["classify", str(digits_run), "--data", "digits", "--attribute", "colour", "-o", str(tmp_path / "p.csv")])
    assert "colour" in err
    # a validation/test value never seen among the labelled training examples
    x = np.random.default_rng(0).random((40, 3)).astype(np.float32)
    y = np.array([0, 1] * 20)
    y[:30:3] = -1
    np.savez(tmp_path / "d.npz", x=x, y=y)
    rows = [["a", "b", "label"]] + [[f"{v[0]:.3f}", f"{v[1]:.3f}", lab] for v, lab in
                                    zip(x, ["x", "y", ""] * 13 + ["x"])]
    _table(tmp_path / "t.csv", rows)
    model = cvae.train(data=str(tmp_path / "t.csv"), epochs=1, out=str(tmp_path / "r"), **QUIET).model
    with pytest.raises(CvaeError, match="unknown value 'z'"):
        model.sample(2, "label=z")


def test_a_missing_continuous_condition_is_refused(tmp_path, capsys):
    rows = [["a", "label", "size"]] + [[str(i), "x" if i % 2 else "", "" if i == 3 else str(i)] for i in range(30)]
    _table(tmp_path / "t.csv", rows)
    err = _error(capsys, ["train", "--data", str(tmp_path / "t.csv"), "--condition", "label,size:continuous",
                          "--out", str(tmp_path / "r")])
    assert "size" in err


def test_classify_bad_flags(digits_run, tmp_path, capsys):
    out = str(tmp_path / "p.csv")
    assert "--n must be a positive" in _error(capsys, ["classify", str(digits_run), "--data", "digits", "--n", "0", "-o", out])
    assert ".csv or .npz" in _error(capsys, ["classify", str(digits_run), "--data", "digits", "-o", str(tmp_path / "p.txt")])
    assert "no data set or file" in _error(capsys, ["classify", str(digits_run), "--data", str(tmp_path / "none.npz"),
                                                    "-o", out])
    assert not (tmp_path / "p.csv").exists()


def test_a_small_data_set_trains_as_many_steps_as_the_defaults_were_measured_with():
    """Consistency needs steps, not epochs: a data set smaller than MNIST gets more epochs by default
    (the digits: 540,000 examples seen, as 10 epochs of MNIST's 54,000), unless --epochs is given."""
    from cvae.config import TrainConfig
    from cvae.models.m2 import M2
    from cvae.train import with_class_defaults

    data = load_data("digits", labelled=100, seed=0)
    epochs = math.ceil(M2.EXAMPLES_SEEN / len(data.train.x))
    assert epochs == 334
    config = TrainConfig(data="digits", labelled=100)
    assert with_class_defaults(config, "m2", data).epochs == epochs
    assert with_class_defaults(config, "m2", data, explicit={"epochs"}).epochs == 10  # --epochs 10 given
    assert with_class_defaults(config.replace(epochs=4), "m2", data).epochs == 4
    assert with_class_defaults(config, "cvae", data).epochs == 10  # a supervised run: as before
    big = load_data("digits", seed=0)
    big.train.x = big.train.x.repeat(40, 1, 1, 1)  # 64,680 images: more than MNIST's, the default stays
    assert "epochs" not in M2.training_defaults(big)


def test_the_default_length_reaches_the_run_folder(tmp_path, monkeypatch):
    from cvae.models.m2 import M2

    monkeypatch.setattr(M2, "EXAMPLES_SEEN", 12 * 1617)  # the digits' training split: 12 epochs instead of 334
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--labelled", "100", "--batch-size", "256", "--no-progress",
                 "--no-tensorboard", "--out", str(out)]) == 0
    assert _config(out)["train"]["epochs"] == 12
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 12
    assert main(["train", "--data", "digits", "--labelled", "100", "--batch-size", "256", "--epochs", "2",
                 "--no-progress", "--no-tensorboard", "--out", str(tmp_path / "two")]) == 0
    assert _config(tmp_path / "two")["train"]["epochs"] == 2


def test_classify_with_a_supervised_run_scores_a_file_whose_labels_are_partly_missing(tmp_path, capsys):
    run = tmp_path / "sup"
    assert main(["train", "--data", "digits", "--epochs", "3", "--batch-size", "64", "--out", str(run),
                 "--no-progress", "--no-tensorboard", "--no-pictures"]) == 0
    target, hidden = _digits_npz(tmp_path / "d.npz", -1)  # most labels -1: once refused by a supervised run
    capsys.readouterr()
    assert main(["classify", str(run), "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "p.csv")]) == 0
    assert "on the 80 examples with a label" in capsys.readouterr().out
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 1 + len(target) and rows[0].split(",")[-1] == "true_label"


def test_the_web_api_classifies_an_upload_as_cvae_classify_does(digits_run, tmp_path):
    """POST /v1/runs/NAME/classify: q(y | x) of every row of an uploaded .npz, the same probabilities
    and error as `cvae classify` on that file; a single image has no error to report."""
    from fastapi.testclient import TestClient  # the serve extra is part of cvae[test]

    from cvae.serve import create_app

    truth, hidden = _digits_npz(tmp_path / "some.npz", -1)
    with np.load(tmp_path / "some.npz") as d:  # 40 rows, 5 of them labelled
        rows = np.r_[np.flatnonzero(~hidden)[:5], np.flatnonzero(hidden)[:35]]
        np.savez(tmp_path / "up.npz", x=d["x"][rows], y=d["y"][rows])
    assert main(["classify", str(digits_run), "--data", str(tmp_path / "up.npz"), "-o", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv") as f:
        cli = list(csv.DictReader(f))
    with TestClient(create_app([digits_run])) as client:
        info = client.get("/v1/runs/run").json()
        assert info["classifies"] == ["label"]
        out = client.post("/v1/runs/run/classify", files={"file": ("up.npz", (tmp_path / "up.npz").read_bytes(),
                                                                    "application/octet-stream")}).json()
        assert out["attribute"] == "label" and out["classes"] == [str(k) for k in range(10)]
        assert out["ids"] == [int(r["id"]) for r in cli] and out["predicted"] == [r["label"] for r in cli]
        np.testing.assert_allclose(out["probs"], [[float(r[f"p_{k}"]) for k in range(10)] for r in cli], atol=1e-6)
        assert out["labelled"] == 5
        assert out["error"] == np.mean([r["label"] != r["true_label"] for r in cli if r["true_label"]])
        # one image, as the page sends it: no labels, so no error
        from PIL import Image

        buf = tmp_path / "one.png"
        Image.fromarray((np.load(tmp_path / "up.npz")["x"][7, 0] * 255).round().astype(np.uint8)).save(buf)
        one = client.post("/v1/runs/run/classify", files={"file": ("one.png", buf.read_bytes(), "image/png")}).json()
        assert len(one["probs"]) == 1 and "error" not in one
        assert abs(sum(one["probs"][0]) - 1) < 1e-5 and one["predicted"][0] == out["predicted"][7]
        bad = client.post("/v1/runs/run/classify", data={"attribute": "colour"},
                          files={"file": ("one.png", buf.read_bytes(), "image/png")})
        assert bad.status_code == 422 and bad.json()["detail"] == ("'colour' is not a condition this run classifies; "
                                                                   "it classifies label")


def test_a_known_label_trains_its_classifier_where_another_condition_is_missing(tmp_path):
    """With two categorical conditions, q(shape | x) learnt only from rows where both were known: a row
    with its shape but not its colour taught the shape classifier nothing (found by a QA audit)."""
    import torch.nn.functional as F

    from cvae.objectives.semi import SemiSupervised

    rng = np.random.default_rng(0)
    rows = [["a", "b", "shape", "color"]]
    for i in range(60):
        shape, color = rng.integers(2), rng.integers(3)
        rows.append([f"{3 * shape + rng.normal(0, 0.3):.4f}", f"{color + rng.normal(0, 0.3):.4f}",
                     ["round", "square"][shape], ["red", "green", "blue"][color] if i % 2 else ""])
    _table(tmp_path / "t.csv", rows)
    model = cvae.train(data=str(tmp_path / "t.csv"), condition="shape,color", epochs=1, out=str(tmp_path / "r"),
                       **QUIET).model
    x = torch.tensor([[0.1, 0.0], [3.0, 1.0], [0.2, 2.0]])
    c = model.schema.encode(model.schema.parse({"shape": ["round", "square", "round"], "color": "red"}, 3))
    c[:, 2:] = 0.0  # every row's colour missing, every shape known
    out = SemiSupervised(alpha=1.0, consistency=0.0)(model, x, c)
    want = F.cross_entropy(model.class_logits(x)[0].float(), torch.tensor([0, 1, 0]))
    assert out.terms["classifier_ce"].item() == pytest.approx(want.item(), rel=1e-5)


def test_inputs_with_no_label_column_at_all_are_classified_by_the_run(digits_run, tmp_path, capsys):
    """A .npy of images, a folder of images without class subfolders and a single image have no label
    column: a semi-supervised run fills the class from q(y | x) for them too (it asked for --condition,
    and refused a flat folder; found by a QA audit). The README says every command works so."""
    from PIL import Image

    model = cvae.load(digits_run)
    x = load_data("digits").train.x[:6]
    np.save(tmp_path / "x.npy", x.numpy())
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(6):
        Image.fromarray((x[i, 0].numpy() * 255).round().astype(np.uint8)).save(flat / f"{i}.png")
    run = str(digits_run)
    for source in (str(tmp_path / "x.npy"), str(flat), str(flat / "0.png")):
        for argv in (["reconstruct", run, "--input", source, "-o", str(tmp_path / "r.npz")],
                     ["transfer", run, "--input", source, "-o", str(tmp_path / "t.npz")],
                     ["embed", run, "--data", source, "-o", str(tmp_path / "e.csv")],
                     ["classify", run, "--data", source, "-o", str(tmp_path / "c.csv")]):
            assert main(argv) == 0, (argv, capsys.readouterr().err)
    recon = np.load(tmp_path / "r.npz")
    from cvae.apps.io import read_inputs

    png = read_inputs(model, str(flat / "0.png")).x  # the 8-bit image, as the command read it
    by_hand = model.reconstruct(png, {"label": model.classify(png).argmax(1).tolist()})
    np.testing.assert_allclose(recon["x"], by_hand.numpy(), rtol=1e-5, atol=1e-6)  # the last source: one image
    with open(tmp_path / "c.csv") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ["0.png"]
    assert main(["classify", run, "--data", str(flat), "-o", str(tmp_path / "c.csv")]) == 0
    with open(tmp_path / "c.csv") as f:
        assert sorted(r["id"] for r in csv.DictReader(f)) == [f"{i}.png" for i in range(6)]


def test_augment_a_run_with_two_categorical_conditions_each_missing_in_some_rows(tmp_path):
    """A row missing the other condition was picked as a starting point, and generating refused with
    advice the command cannot follow (augment has no --condition; found by a QA audit)."""
    rng = np.random.default_rng(0)
    rows = [["a", "b", "color", "size", "temp"]]
    for i in range(120):
        color, size = rng.integers(3), rng.integers(2)
        rows.append([f"{color + rng.normal(0, 0.3):.4f}", f"{size + rng.normal(0, 0.3):.4f}",
                     ["red", "green", "blue"][color] if i % 3 else "", ["small", "big"][size] if i % 2 else "",
                     f"{rng.uniform(10, 20):.2f}"])
    _table(tmp_path / "t.csv", rows)
    run = tmp_path / "r"
    cvae.train(data=str(tmp_path / "t.csv"), condition="color,size,temp:continuous", epochs=1, out=str(run), **QUIET)
    for extra in (["--balance", "--merge"], ["--per-class", "5", "--codes", "posterior"], ["--per-class", "5", "--merge"]):
        out = tmp_path / f"aug{len(extra)}{extra[-1]}.csv"
        assert main(["augment", str(run), "--data", str(tmp_path / "t.csv"), *extra, "-o", str(out)]) == 0, extra
        with open(out) as f:
            got = [r for r in csv.DictReader(f) if r["id"].startswith("synthetic")]
        assert got and all(r["color"] and r["size"] for r in got)  # every synthetic row has each condition


def test_a_tiny_image_folder_trains_and_draws_its_pictures(tmp_path, monkeypatch):
    """Six labelled images and four unlabelled: one validation image, whose latent map had no principal
    components (a traceback after the weights were saved; found by a QA audit). And a picture that
    cannot be drawn is one warning: the run is saved."""
    from PIL import Image

    from cvae.errors import CvaeWarning

    rng = np.random.default_rng(0)
    for c, n in (("a", 2), ("b", 2), ("c", 2), ("unlabelled", 4)):
        (tmp_path / "tiny" / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "tiny" / c / f"{i}.png")
    assert main(["train", "--data", str(tmp_path / "tiny"), "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 0
    assert (tmp_path / "r" / "latent.png").stat().st_size > 1000

    def broken(*args, **kwargs):
        raise ValueError("no room to draw")

    monkeypatch.setattr("cvae.api.run_pictures", broken)
    with pytest.warns(CvaeWarning, match="pictures could not be drawn \\(ValueError: no room to draw\\)"):
        cvae.train(data=str(tmp_path / "tiny"), epochs=1, out=str(tmp_path / "r2"), progress=False)
    assert _config(tmp_path / "r2")["status"] == "finished"


def test_output_piped_to_a_reader_that_leaves_early_is_no_traceback(digits_run, tmp_path):
    """`cvae classify ... | head -0`: the print after the file is written met a closed pipe (a QA audit)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(cvae.__file__).resolve().parents[1]
    cmd = (f"{sys.executable} -m cvae classify {digits_run} --data digits --n 10 -o {tmp_path / 'c.csv'} | head -c 0; "
           "exit ${PIPESTATUS[0]}")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"})
    assert "Traceback" not in r.stderr and r.returncode in (0, 1), r.stderr
    assert (tmp_path / "c.csv").is_file()


def test_evaluate_sums_the_class_out_of_the_likelihood_of_unlabelled_rows(digits_run, capsys):
    """A semi-supervised run's rows without a class were scored as -log p(x | the class q guessed) and
    labelled -log p(x|c) (a QA audit). Now log p(x) = log sum_y p(y) p(x | y), held here to each class's
    importance-sampled log p(x | y) by brute force, and the bound is M2's U(x)."""
    from cvae.evaluate import class_summed, importance_sampled
    from cvae.objectives.semi import SemiSupervised

    model = cvae.load(digits_run)
    model.eval()
    x = load_data("digits").train.x[:3]
    c = torch.zeros(3, 10)
    c[0, 4] = 1.0  # one row labelled, two without
    res = class_summed(model, x, c, k=10000, generator=torch.Generator().manual_seed(0))  # 1,000 a class
    per_class = torch.stack([importance_sampled(model, x, torch.eye(10)[[y] * 3], k=1000,
                                                generator=torch.Generator().manual_seed(1 + y)).log_likelihood
                             for y in range(10)]) - math.log(10)
    brute = torch.logsumexp(per_class, 0)
    assert res.log_likelihood[1:].tolist() == pytest.approx(brute[1:].tolist(), abs=0.1)  # two estimates
    assert res.log_likelihood[0].item() == pytest.approx(per_class[4, 0].item() + math.log(10), abs=0.1)
    torch.manual_seed(0)
    with torch.no_grad():  # U(x) by the objective, one draw of z per class: averaged over 100 draws
        bound = sum(SemiSupervised(alpha=0.0, consistency=0.0)(model, x[1:], c[1:]).neg_elbo.item()
                    for _ in range(100)) / 100
    assert res.negative_elbo[1:].mean().item() == pytest.approx(bound, abs=0.2)
    assert (res.negative_elbo[1:] >= -res.log_likelihood[1:] - 0.05).all()  # the bound is above -log p(x)
    assert main(["evaluate", str(digits_run), "--metrics", "elbo,nll", "--k", "20", "--n", "30",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "30 of the 30 examples have no class" in out and "-log p(x), importance-sampled, k = 20" in out
    assert "of k = 20 samples" in out and "where the class is summed out" not in out  # 2 draws for each of 10
    assert main(["evaluate", str(digits_run), "--metrics", "nll", "--k", "5", "--n", "10", "--no-progress"]) == 0
    assert "of k = 5 samples (10 where the class is summed out)" in capsys.readouterr().out  # 1 for each class
