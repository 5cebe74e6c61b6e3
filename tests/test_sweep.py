"""cvae sweep: K runs trained together (one batched fused step) give the run folders that K single
runs give: the same metrics, weights and trainer state to float rounding. Small data, two epochs."""

from __future__ import annotations

import json

import pytest
import torch

from cvae.cli import main
from cvae.config import TrainConfig
from cvae.errors import CvaeError
from cvae.runs import load_tensors
from cvae.sweep import expand, fit_sweep, parse_vary
from cvae.train import fit


def _base(**settings):
    base = dict(data="digits", epochs=2, batch_size=64, limit=300, progress=False, tensorboard=False,
                precision="float32", step="fused", lr=3e-3)
    base.update(settings)
    return TrainConfig(**base)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("settings", [{}, {"condition": "none", "likelihood": "gaussian-learned", "lr_schedule": "constant"},
                                      {"condition": "none", "objective": "btcvae"}], ids=["default", "gaussian", "btcvae"])
def test_a_sweep_writes_what_single_runs_write(tmp_path, settings):
    configs = expand(_base(**settings), {"seed": [0, 1], "beta": [1.0, 3.0], "latent_dim": [4, 6]}, tmp_path / "sweep")
    assert len(configs) == 8
    results = fit_sweep(configs)
    for config, result in zip(configs[::3], results[::3]):  # every third run against its single run
        single = fit(config.replace(out=str(tmp_path / "single" / result.run_dir.name)))
        a, b = _rows(result.run_dir), _rows(single.run_dir)
        assert [r["epoch"] for r in a] == [1, 2] and all(r["models_together"] == 4 for r in a)
        for ra, rb in zip(a, b):
            assert ra.keys() - {"models_together"} == rb.keys()  # the objective's own terms too (beta-TCVAE's TC, ...)
            for key in ("train_loss", "train_kl", "val_loss", "val_kl", *(k for k in ra if k.startswith("train_"))):
                assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-4), key
        wa, wb = load_tensors(result.run_dir / "model.safetensors"), load_tensors(single.run_dir / "model.safetensors")
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5, msg=k)
        ca, cb = (json.loads((r.run_dir / "config.json").read_text()) for r in (result, single))
        assert ca["train"] == {**cb["train"], "out": ca["train"]["out"]} and ca["model"] == cb["model"]
        sa = load_tensors(result.run_dir / "trainer_state.safetensors")
        sb = load_tensors(single.run_dir / "trainer_state.safetensors")
        assert sa.keys() == sb.keys()
        assert torch.equal(sa["rng.cpu"], sb["rng.cpu"])  # the run's own noise, drawn exactly as alone
        ya, yb = (json.loads((r.run_dir / "summary.json").read_text()) for r in (result, single))
        for split in ("train", "val"):  # the final figures too, their noise drawn as the single run draws it
            assert ya[split]["loss"] == pytest.approx(yb[split]["loss"], rel=1e-4), split


def test_a_sweep_run_resumes_as_a_single_run(tmp_path):
    configs = expand(_base(epochs=1, lr_schedule="constant"), {"seed": [0, 1]}, tmp_path / "sweep")
    fit_sweep(configs)
    resumed = fit(configs[1].replace(epochs=2), resume=True, explicit={"epochs"})
    whole = fit(configs[1].replace(epochs=2, out=str(tmp_path / "whole")))
    for p, q in zip(resumed.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)


def test_sweep_command_line(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "--data", "digits", "--epochs", "1", "--limit", "200", "--vary", "seed=0,1",
                 "--vary", "lr=1e-3,3e-3", "--out", str(out), "--no-pictures", "--no-progress", "--no-tensorboard",
                 "--precision", "float32"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs in" in printed and "models per hour" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["seed=0,lr=0.001", "seed=0,lr=0.003", "seed=1,lr=0.001", "seed=1,lr=0.003"]
    saved = json.loads((out / "seed=1,lr=0.003" / "config.json").read_text())
    assert saved["train"]["seed"] == 1 and saved["train"]["lr"] == 0.003 and saved["status"] == "finished"


@pytest.mark.parametrize("spec, message", [("size=1,2", "SETTING one of"), ("seed", "SETTING=V1"),
                                           ("seed=a,b", "takes int"), ("beta=", "SETTING=V1"),
                                           ("seed=0,0", "lists 0 more than once"),
                                           ("seed=0,1;seed=2", "--vary seed is given twice")])
def test_bad_vary_is_one_clear_line(spec, message):
    with pytest.raises(CvaeError, match=message):
        parse_vary(spec.split(";"))


def test_the_sweeps_out_folder_is_checked_before_anything_trains(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--epochs", "1", "--limit", "100", "--out", str(run), "--no-progress",
                 "--no-pictures", "--no-tensorboard"]) == 0
    flags = ["--data", "digits", "--epochs", "1", "--limit", "100", "--vary", "seed=0,1", "--no-progress",
             "--no-pictures", "--no-tensorboard"]
    for out, message in ((tmp_path / "afile", "is a file"), (run, "is a run folder")):
        capsys.readouterr()
        assert main(["sweep", *flags, "--out", str(out)]) == 2  # a traceback, and runs written inside a run, before
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (run / "seed=0").exists()
    assert main(["sweep", *flags, "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert main(["sweep", *flags, "--out", str(tmp_path / "s")]) == 2  # it said --resume, which a sweep has not
    err = capsys.readouterr().err
    assert "already holds a run; pass --overwrite" in err and "--resume" not in err
    assert main(["sweep", *flags, "--out", str(tmp_path / "s"), "--overwrite"]) == 0


def test_a_model_the_fused_step_does_not_cover_is_refused(tmp_path, capsys):
    with pytest.raises(CvaeError, match="a sweep trains only models the fused step covers, and this one is not: free bits"):
        fit_sweep(expand(_base(free_bits=0.1), {"seed": [0, 1]}, tmp_path / "s"))
    assert main(["sweep", "--data", "digits", "--vary", "seed=0", "--out", str(tmp_path / "x"),
                 "--objective", "iwae", "--no-progress"]) == 2
    assert "train it with cvae train (one run at a time)" in capsys.readouterr().err


def test_dynamic_binarization_is_refused_before_any_folder_is_made(tmp_path):
    with pytest.raises(CvaeError, match="--binarize dynamic is not supported in a sweep"):
        fit_sweep(expand(_base(binarize="dynamic"), {"seed": [0, 1]}, tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_a_varied_or_given_setting_is_kept_where_the_data_has_its_own_default(tmp_path):
    # data with factors train at 1e-3 unless told (CVAE.training_defaults); a sweep member at 3e-3, the
    # plain default, is told so by the sweep and must keep it, as `cvae train --lr 3e-3` does
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", x=rng.random((80, 6)).astype(np.float32), size=rng.integers(0, 3, 80))
    common = ["--data", str(tmp_path / "f.npz"), "--factors", "size", "--limit", "60", "--epochs", "1",
              "--batch-size", "32", "--no-pictures", "--no-progress", "--no-tensorboard", "--precision", "float32"]

    def lr(run):
        return json.loads((run / "config.json").read_text())["train"]["lr"]

    out = tmp_path / "vary"
    assert main(["sweep", *common, "--vary", "lr=1e-3,3e-3", "--out", str(out)]) == 0
    assert (lr(out / "lr=0.001"), lr(out / "lr=0.003")) == (1e-3, 3e-3)
    out = tmp_path / "given"
    assert main(["sweep", *common, "--lr", "3e-3", "--vary", "seed=0,1", "--out", str(out)]) == 0
    assert lr(out / "seed=0") == lr(out / "seed=1") == 3e-3
    out = tmp_path / "left"
    assert main(["sweep", *common, "--vary", "seed=0,1", "--out", str(out)]) == 0
    assert lr(out / "seed=0") == lr(out / "seed=1") == 1e-3  # the data's own default, as for cvae train
    # the Python API: a varied value counts as given without being told
    configs = expand(TrainConfig(data=str(tmp_path / "f.npz"), factors=["size"], limit=60, epochs=1, batch_size=32,
                                 progress=False, tensorboard=False, precision="float32"),
                     {"lr": [1e-3, 3e-3]}, tmp_path / "api")
    assert [r.config.lr for r in fit_sweep(configs)] == [1e-3, 3e-3]


def test_a_factorvae_sweep_run_is_its_single_run_whatever_runs_are_beside_it(tmp_path):
    """FactorVAE's permutations came from the process's generator, so a run's losses depended on the
    other runs of its sweep (a QA audit); they come from the run's own now."""
    base = _base(condition="none", objective="factorvae", latent_dim=4, hidden=[32], epochs=1)
    a = fit_sweep(expand(base, {"seed": [0, 1]}, tmp_path / "a"))[0]
    b = fit_sweep(expand(base, {"seed": [0, 2]}, tmp_path / "b"))[0]
    single = fit(base.replace(seed=0, out=str(tmp_path / "single")))
    ra, rb, rs = (_rows(r.run_dir)[0] for r in (a, b, single))
    assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-6)
    assert ra["train_loss"] == pytest.approx(rs["train_loss"], rel=1e-6)
    assert ra["train_discriminator_loss"] == pytest.approx(rs["train_discriminator_loss"], rel=1e-5)


def test_what_the_sweep_audit_found(tmp_path, capsys, monkeypatch):
    flags = ["--data", "digits", "--limit", "200", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
             "--no-progress", "--no-pictures", "--no-tensorboard"]
    # values that print alike get folders that tell them apart (one --out folder error, before)
    names = [c.out.rsplit("/", 1)[1] for c in expand(_base(), {"lr": [0.0010000001, 0.001]}, tmp_path)]
    assert names == ["lr=0.0010000001", "lr=0.001"]
    # one line that says what to do, nothing left behind; --step autograd is not silently dropped
    assert main(["sweep", *flags, "--vary", "seed=0,1", "--arch", "conv", "--out", str(tmp_path / "u1")]) == 2
    err = capsys.readouterr().err
    assert "a sweep trains only models the fused step covers, and this one is not" in err and "--step auto" not in err
    assert not (tmp_path / "u1").exists()
    assert main(["sweep", *flags, "--vary", "seed=0,1", "--step", "autograd", "--out", str(tmp_path / "u2")]) == 2
    assert "leave --step out" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["sweep", *flags, "--vary", "seed=0,1", "--out", str(tmp_path / "u3")]) == 2
    assert "run it without torchrun" in capsys.readouterr().err and not (tmp_path / "u3").exists()
    monkeypatch.delenv("WORLD_SIZE")
    # every run diverged: the exit says so, and the folders (no epoch saved) are reused without --overwrite
    div = ["sweep", *flags, "--vary", "lr=1e20,1e30", "--lr-schedule", "constant", "--out", str(tmp_path / "div")]
    assert main(div) == 2
    out, err = capsys.readouterr()
    assert "diverged in epoch 1" in out and "2 of the 2 runs did not finish" in err
    assert main(div) == 2 and "already holds a run" not in capsys.readouterr().err
    # a run whose end fails (its summary) leaves the others finished, and says so in its own folder
    from cvae.train import Trainer

    original = Trainer.finish

    def finish(self, stopped):
        if self.config.seed == 1:
            raise RuntimeError("linalg.cholesky: not positive-definite")
        return original(self, stopped)

    monkeypatch.setattr(Trainer, "finish", finish)
    assert main(["sweep", *flags, "--vary", "seed=0,1", "--out", str(tmp_path / "f")]) == 2
    status = [json.loads((tmp_path / "f" / f"seed={s}" / "config.json").read_text())["status"] for s in (0, 1)]
    assert status[0] == "finished" and status[1].startswith("trained 1 epochs, but its summary failed (RuntimeError")
    monkeypatch.setattr(Trainer, "finish", original)
    # Ctrl-C: each folder says it was interrupted, and the command names the per-run resume

    def interrupt(config, epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_sweep(expand(_base(epochs=3), {"seed": [0, 1]}, tmp_path / "ki"), on_epoch=interrupt)
    status = json.loads((tmp_path / "ki" / "seed=0" / "config.json").read_text())["status"]  # (seed 1: no epoch yet)
    assert status.startswith("interrupted after epoch 1 of 3")
