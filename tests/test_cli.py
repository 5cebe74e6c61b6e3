"""The command-line tool end to end on the bundled digits data set, as a user would run it."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cvae.cli import main

FAST = ["--data", "digits", "--batch-size", "64", "--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", *FAST, "--epochs", "3", "--tensorboard", "--out", str(out)]) == 0
    return out


def test_train_writes_the_run_folder(run, capsys):
    for name in ("config.json", "model.safetensors", "trainer_state.safetensors", "metrics.jsonl", "summary.json",
                 "samples.png", "reconstructions.png", "latent.png", "loss.png"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"train_loss", "train_reconstruction", "train_kl", "val_loss", "seconds"} <= set(rows[0])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["status"] == "finished" and cfg["model"]["schema"]["attributes"][0]["name"] == "label"
    assert cfg["train"]["precision"] in ("float32", "bfloat16")


def test_train_prints_the_results(tmp_path, capsys):
    assert main(["train", *FAST, "--epochs", "1", "--no-pictures", "--preset", "textbook", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "run folder:" in out and "val   negative ELBO" in out and "nats per example" in out
    assert re.search(r"\n  step: (fused-mlp \(.*\)|autograd \(.*\)); (float32|bfloat16)", out), out


def test_mnist_reports_the_test_loss(shared_data, tmp_path, capsys):
    out = tmp_path / "mnist"
    assert main(["train", "--data", "mnist", "--data-dir", str(shared_data), "--limit", "600", "--epochs", "1",
                 "--no-progress", "--no-tensorboard", "--no-pictures", "--out", str(out)]) == 0
    assert "test  negative ELBO" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["loss"] == pytest.approx(summary["test"]["reconstruction"] + summary["test"]["kl"], rel=1e-4)


def test_yaml_config_and_flag_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: digits\npreset: textbook\nlatent_dim: 3\nepochs: 5\nbeta: 2.0\nprogress: false\ntensorboard: false\n")
    out = tmp_path / "y"
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--no-pictures", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["latent_dim"] == 3 and saved["model"]["condition_at"] == 1
    assert saved["train"]["epochs"] == 1 and saved["train"]["beta"] == 2.0


def test_unknown_config_key_and_flag(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: digits\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "unknown setting(s) learning_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--learning-rate", "0.1"])
    assert e.value.code == 2
    assert "unrecognized arguments: --learning-rate" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--epochs", "0"]) == 2
    assert "--epochs must be a positive" in capsys.readouterr().err


def _same_run(straight, resumed, epochs):
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert all(json.loads(x)["train_loss"] == json.loads(y)["train_loss"]
               for x, y in zip(rows, (straight / "metrics.jsonl").read_text().splitlines(), strict=True))


def test_resume_after_an_interruption_is_exact(tmp_path):
    """A run stopped after epoch 2 of 3 (a crash, Ctrl-C) and resumed ends bit for bit where the
    uninterrupted run ends, cosine learning-rate schedule included."""
    from cvae.config import TrainConfig
    from cvae.train import fit

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*FAST, "--no-pictures", "--seed", "3", "--epochs", "3", "--precision", "float32"]  # not timed per run
    assert main(["train", *common, "--out", str(straight)]) == 0
    cfg = TrainConfig(data="digits", batch_size=64, progress=False, tensorboard=False, seed=3, epochs=3, out=str(resumed),
                      precision="float32")
    fit(cfg, on_epoch=lambda epoch, model, row: epoch == 2)  # stops after epoch 2
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", "--resume", "--out", str(resumed), "--no-progress"]) == 0
    _same_run(straight, resumed, 3)


def test_extending_a_constant_rate_run_is_exact(tmp_path):
    """With a constant learning rate, training 2 epochs and then resuming to 3 equals training 3."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*FAST, "--no-pictures", "--seed", "3", "--lr-schedule", "constant", "--precision", "float32"]
    assert main(["train", *common, "--epochs", "3", "--out", str(straight)]) == 0
    assert main(["train", *common, "--epochs", "2", "--out", str(resumed)]) == 0
    assert main(["train", "--resume", "--epochs", "3", "--out", str(resumed), "--no-progress"]) == 0
    _same_run(straight, resumed, 3)


def test_train_with_the_iwae_objective(tmp_path, capsys):
    run = tmp_path / "iwae"
    assert main(["train", *FAST, "--condition", "none", "--epochs", "3", "--objective", "iwae", "--iwae-k", "4",
                 "--no-pictures", "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["objective"] == "iwae" and saved["train"]["iwae_k"] == 4
    # the fall-back to the generic step is said, not only recorded in config.json
    assert "  step: autograd (not the fused step: the objective is iwae" in capsys.readouterr().out
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # the ELBO it reports improves too
    capsys.readouterr()
    assert main(["train", *FAST, "--objective", "iwae", "--beta", "4", "--out", str(tmp_path / "bad")]) == 2
    assert "--beta does not apply to --objective iwae" in capsys.readouterr().err
    assert main(["train", *FAST, "--objective", "vimco", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown objective 'vimco'" in capsys.readouterr().err


def test_cosine_schedule_runs_from_lr_to_zero():
    from cvae.train import burda_lr, cosine_lr

    assert cosine_lr(3e-3, 0.0) == 3e-3 and cosine_lr(3e-3, 0.5) == pytest.approx(1.5e-3)
    assert cosine_lr(3e-3, 1.0) == pytest.approx(0.0, abs=1e-18)
    # Burda et al. (2015): 3^i epochs at 1e-3 * 10^(-i/7), i = 0..7
    stages = [burda_lr(1e-3, e) for e in (0, 1, 3, 4, 12, 13, 39, 40, 120, 121, 363, 364, 1092, 1093, 3279, 4000)]
    want = [1e-3 * 10 ** (-i / 7) for i in (0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 7)]
    assert stages == pytest.approx(want)


def test_existing_run_is_not_overwritten(run, capsys, monkeypatch):
    before = (run / "model.safetensors").read_bytes()
    with monkeypatch.context() as m:  # refused before the data are read (8 s for a corpus, minutes for more)
        m.setattr(importlib.import_module("cvae.train"), "_load",
                  lambda config: pytest.fail("the data were read before the refusal"))
        assert main(["train", *FAST, "--epochs", "1", "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == before
    assert main(["train", "--resume", "--epochs", "2", "--out", str(run)]) == 2
    assert "already trained 3 epochs" in capsys.readouterr().err
    assert main(["train", "--resume", "--epochs", "4", "--lr", "0.1", "--out", str(run)]) == 2
    assert "cannot change 'lr'" in capsys.readouterr().err


def test_sample_png_and_npz(run, tmp_path):
    assert main(["sample", str(run), "--condition", "label=7", "--n", "16", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert main(["sample", str(run), "--n", "20", "--seed", "1", "-o", str(tmp_path / "s.npz")]) == 0
    z = np.load(tmp_path / "s.npz")
    assert z["x"].shape == (20, 1, 8, 8) and z["x"].dtype == np.float32
    assert 0.0 <= z["x"].min() and z["x"].max() <= 1.0
    assert sorted(set(z["label"].tolist())) == [str(i) for i in range(10)]
    assert main(["sample", str(run), "--condition", "label=3", "--n", "5", "--seed", "1", "-o", str(tmp_path / "a.npz")]) == 0
    assert main(["sample", str(run), "--condition", "label=3", "--n", "5", "--seed", "1", "-o", str(tmp_path / "b.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "a.npz")["x"], np.load(tmp_path / "b.npz")["x"])
    assert set(np.load(tmp_path / "a.npz")["label"].tolist()) == {"3"}


def test_reconstruct(run, tmp_path):
    assert main(["reconstruct", str(run), "--input", "digits", "-o", str(tmp_path / "r.png")]) == 0
    x = np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, y=np.arange(6) % 10)
    assert main(["reconstruct", str(run), "--input", str(tmp_path / "in.npz"), "-o", str(tmp_path / "r.npz")]) == 0
    r = np.load(tmp_path / "r.npz")
    assert r["x"].shape == x.shape and np.array_equal(r["input"], x)


def test_python_api(run):
    import cvae

    model = cvae.load(run)
    x = model.sample(10, "label=4")
    assert x.shape == (10, 1, 8, 8)
    qz = model.encode(x, "label=4")
    assert model.decode(qz.mean, "label=4").shape == x.shape
    assert model.reconstruct(x, {"label": [4] * 10}).shape == x.shape


def test_user_errors_are_one_line(run, tmp_path, capsys):
    cases = [
        (["sample", str(run), "--condition", "label=11", "-o", str(tmp_path / "x.png")], "unknown value '11' for condition 'label'"),
        (["sample", str(run), "--condition", "colour=red", "-o", str(tmp_path / "x.png")], "unknown condition 'colour'"),
        (["sample", str(tmp_path), "-o", str(tmp_path / "x.png")], "is not a cvae run"),
        (["sample", str(run), "-o", str(tmp_path / "x.gif")], "use a .png, .npz or .csv"),
        (["train", "--data", "mnist", "--data-dir", str(tmp_path)], "missing file(s)"),
        (["reconstruct", str(run), "--input", str(tmp_path / "none.npz"), "-o", str(tmp_path / "x.png")], "no data set or file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_corrupt_weights_are_reported(run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 50)
    assert main(["sample", str(broken), "-o", str(tmp_path / "x.png")]) == 2
    assert "damaged" in capsys.readouterr().err


def test_nan_in_data_is_reported_and_debug_shows_traceback(tmp_path, capsys):
    x = np.random.default_rng(0).random((30, 4))
    x[5, 1] = np.inf
    np.savez(tmp_path / "bad.npz", x=x)
    assert main(["train", "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "r")]) == 2
    assert "NaN or infinite" in capsys.readouterr().err
    assert main(["--debug", "train", "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "r")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_console_script_and_module(tmp_path):
    env = dict(os.environ, CVAE_OFFLINE="1")
    for cmd in (["cvae", "--version"], [sys.executable, "-m", "cvae", "--version"]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0 and res.stdout.startswith("cvae ")
    res = subprocess.run([sys.executable, "-m", "cvae", "train", "--data", "digits", "--batch-size", "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and res.stderr.strip() == "error: --batch-size must be a positive whole number, got 0"


def test_an_abbreviated_flag_is_not_taken_for_another(capsys):
    """`cvae evaluate RUN --data X` (evaluate has no --data) was read as --data-dir X (a regression hunt)."""
    from cvae.cli import main

    with pytest.raises(SystemExit) as e:
        main(["evaluate", "some-run", "--data", "digits"])
    assert e.value.code == 2 and "unrecognized arguments: --data digits" in capsys.readouterr().err
