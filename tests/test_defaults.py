"""The defaults generate what is asked: a conditional model's default network, and the sampling
temperature (benchmarks/defaults.py measured both on MNIST; see the README)."""

from __future__ import annotations

import json

import pytest
import torch

import cvae
from cvae.cli import main
from cvae.models.base import SAMPLING_TEMPERATURE

QUIET = dict(epochs=1, batch_size=64, progress=False, tensorboard=False, pictures=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    return {name: cvae.train(data="digits", out=str(root / name), **settings, **QUIET).run_dir
            for name, settings in {"conditional": {}, "plain": {"condition": "none"},
                                   "explicit": {"latent_dim": 5, "condition_at": 0}}.items()}


def test_a_conditional_model_defaults_to_8_latents_and_the_condition_at_every_layer(runs):
    model = {name: json.loads((run / "config.json").read_text())["model"] for name, run in runs.items()}
    assert (model["conditional"]["latent_dim"], model["conditional"]["condition_at"]) == (8, -1)
    assert (model["plain"]["latent_dim"], model["plain"]["condition_at"]) == (20, 0)  # the plain VAE is unchanged
    assert (model["explicit"]["latent_dim"], model["explicit"]["condition_at"]) == (5, 0)  # flags win


def test_temperature_scales_the_prior_draws(runs):
    model = cvae.load(runs["conditional"])
    c = model.condition_vector("label=3", 6)
    exact = model.prior.distribution(c).draw(6, torch.Generator().manual_seed(1))
    assert torch.equal(model.sample_z(6, c, torch.Generator().manual_seed(1), temperature=1.0), exact)
    mean = model.prior.distribution(c).moments()[0]
    cooled = model.sample_z(6, c, torch.Generator().manual_seed(1), temperature=0.5)
    torch.testing.assert_close(cooled - mean, 0.5 * (exact - mean))
    g = torch.Generator().manual_seed(1)
    assert torch.equal(model.sample(6, "label=3", generator=g, codes="prior"),
                       model.sample(6, "label=3", generator=torch.Generator().manual_seed(1),
                                    temperature=SAMPLING_TEMPERATURE, codes="prior"))
    # this image run has a fitted aggregate posterior (cvae.aggregate): by default its codes, drawn exactly
    assert model.aggregate is not None and model.sampling_temperature() == 1.0
    assert torch.equal(model.sample(6, "label=3", generator=torch.Generator().manual_seed(1)),
                       model.sample(6, "label=3", generator=torch.Generator().manual_seed(1), temperature=1.0,
                                    codes="aggregate"))
    at_zero = [model.sample(2, "label=3", generator=torch.Generator().manual_seed(s), temperature=0.0, codes="prior")
               for s in (1, 2)]
    assert torch.equal(at_zero[0], at_zero[1])  # temperature 0: the prior's mean, whatever the noise


def test_cli_temperature(runs, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", str(runs["conditional"]), "--condition", "label=2", "--n", "4", "--temperature", "1",
                 "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["sample", str(runs["conditional"]), "--n", "4", "--temperature", "-1", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "temperature must be a number from 0 to 10" in err and len(err.strip().splitlines()) == 1


def test_evaluate_takes_the_temperature_of_its_sample_figures(runs, tmp_path, capsys):
    from cvae.evaluator import conditional_accuracy, train_evaluator

    evaluator = train_evaluator("digits", epochs=1, out=tmp_path / "ev.safetensors", progress=False).evaluator
    model = cvae.load(runs["conditional"])
    exact = conditional_accuracy(model, evaluator, 0, per_class=20, temperature=1.0)
    assert exact.temperature == 1.0 and "(at temperature 1.0)" in exact.to_dict()["name"]
    assert "(at temperature 0.9)" in conditional_accuracy(model, evaluator, 0, per_class=20,
                                                          codes="prior").to_dict()["name"]
    assert "(at temperature 1.0)" in conditional_accuracy(model, evaluator, 0, per_class=20).to_dict()["name"]
    assert main(["evaluate", str(runs["conditional"]), "--metrics", "samples", "--temperature", "-2"]) == 2
    assert "--temperature must be a number from 0 to 10" in capsys.readouterr().err
