"""Training options as a user sets them: early stopping, clipping, warm-up, binarization, priors, tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import cvae
from cvae.errors import CvaeError

QUIET = dict(progress=False, tensorboard=False, pictures=False, batch_size=64)


def rows(run_dir):
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_early_stopping_keeps_the_best_weights(tmp_path):
    # lr so high that the validation loss soon stops improving
    res = cvae.train(data="digits", epochs=40, lr=0.02, patience=2, out=str(tmp_path / "r"), **QUIET)
    history = rows(res.run_dir)
    assert res.summary["stopped_early"] and len(history) < 40
    best = min(r["val_loss"] for r in history)
    assert history[-1]["val_loss"] > best  # it stopped after epochs without improvement ...
    assert res.summary["val"]["loss"] == pytest.approx(best, abs=1.5)  # ... and kept the best weights
    assert json.loads((res.run_dir / "config.json").read_text())["status"] == "stopped early"


def test_kl_warmup_grad_clip_and_dynamic_binarization(tmp_path):
    res = cvae.train(data="digits", epochs=3, kl_warmup=2, grad_clip=1.0, binarize="dynamic",
                     out=str(tmp_path / "r"), **QUIET)
    history = rows(res.run_dir)
    assert [r["kl_weight"] for r in history] == [0.5, 1.0, 1.0]
    assert all(np.isfinite(r["train_loss"]) for r in history)


def test_conditional_prior_and_learned_sigma(tmp_path):
    res = cvae.train(data="digits", epochs=2, prior="conditional", likelihood="gaussian-learned",
                     out=str(tmp_path / "r"), **QUIET)
    model = cvae.load(res.run_dir)
    assert model.config.prior == "conditional" and model.likelihood.log_sigma.shape == (1, 8, 8)
    assert model.sample(4, "label=2").shape == (4, 1, 8, 8)


def test_plain_vae_and_beta_vae(tmp_path):
    res = cvae.train(data="digits", condition="none", beta=4.0, epochs=2, out=str(tmp_path / "r"), **QUIET)
    model = cvae.load(res.run_dir)
    assert not model.schema and model.sample(3).shape == (3, 1, 8, 8)


def test_conv_preset_on_images_of_another_size(tmp_path):
    x = np.random.default_rng(0).random((60, 3, 20, 12)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(60) % 3)
    res = cvae.train(data=str(tmp_path / "d.npz"), preset="conv", epochs=2, out=str(tmp_path / "r"), **QUIET)
    assert cvae.load(res.run_dir).sample(2, "label=1").shape == (2, 3, 20, 12)


def test_table_from_csv_trains_in_original_units(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    color = rng.integers(0, 2, n)
    size = rng.uniform(5, 15, n)
    a = 100 + 20 * color + rng.normal(0, 1, n)
    b = size * 3 + rng.normal(0, 0.5, n)
    lines = ["a,b,color,size"] + [f"{a[i]:.3f},{b[i]:.3f},{['red', 'blue'][color[i]]},{size[i]:.3f}" for i in range(n)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    res = cvae.train(data=str(tmp_path / "t.csv"), condition="color,size", hidden=[32], latent_dim=2, epochs=60,
                     out=str(tmp_path / "r"), **QUIET)
    model = cvae.load(res.run_dir)
    assert model.config.standardize and model.config.likelihood == "gaussian-learned"
    blue = model.sample(200, "color=blue,size=10", generator=torch.Generator().manual_seed(0))
    red = model.sample(200, "color=red,size=10", generator=torch.Generator().manual_seed(0))
    assert float(blue[:, 0].mean() - red[:, 0].mean()) == pytest.approx(20, abs=5)  # original units
    assert float(red[:, 1].mean()) == pytest.approx(30, abs=4)


def test_bad_training_settings(tmp_path):
    with pytest.raises(CvaeError, match="unknown preset"):
        cvae.train(data="digits", preset="huge", **QUIET)
    with pytest.raises(CvaeError, match="conv network needs images"):
        np.save(tmp_path / "t.npy", np.random.default_rng(0).normal(size=(20, 5)))
        cvae.train(data=str(tmp_path / "t.npy"), preset="conv", out=str(tmp_path / "r"), **QUIET)
    with pytest.raises(CvaeError, match="--resume needs --out"):
        cvae.train(data="digits", resume=True, **QUIET)
