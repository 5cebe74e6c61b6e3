"""The run folder is never lost or mixed: one writer at a time, no diverged epoch saved, --overwrite
keeps the old run until the new one has a good epoch, and every interrupted state goes on with the
obvious command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from safetensors.torch import load_file

from cvae.cli import main

FAST = ["--data", "digits", "--batch-size", "64", "--no-progress", "--no-tensorboard", "--no-pictures"]


def _weights(run):
    return {k: v.clone() for k, v in load_file(run / "model.safetensors").items()}


def _same(a, b):
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_a_second_writer_is_refused_and_the_lock_dies_with_its_process(tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cvae.lock import hold; hold(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(120)", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", *FAST, "--epochs", "1", "--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert "is being written by another process" in err and f"pid {holder.pid}" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (run / "config.json").exists()  # nothing written by the refused writer
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["train", *FAST, "--epochs", "1", "--out", str(run)]) == 0  # the lock went with the process
    assert main(["train", *FAST, "--epochs", "2", "--resume", "--out", str(run)]) == 0  # and this one released it


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_good_epoch(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "2", "--out", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    # a new run that diverges in its first epoch: the old one stays whole
    assert main(["train", *FAST, "--epochs", "2", "--lr", "1e30", "--latent-dim", "3", "--overwrite",
                 "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "diverged in epoch 1" in err and "left as it was" in err
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before
    # a new run that trains replaces it entirely
    assert main(["train", *FAST, "--epochs", "1", "--latent-dim", "3", "--overwrite", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["latent_dim"] == 3 and config["status"] == "finished"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert _weights(run)["encoder.net.layers.1.weight"].shape[0] == 2 * 3  # mean and log-variance of 3 latents


def test_a_diverged_epoch_is_never_saved(tmp_path, capsys):
    import cvae

    run = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "1", "--lr-schedule", "constant", "--out", str(run)]) == 0
    good = _weights(run)
    capsys.readouterr()
    # the learning rate cannot change on --resume; make the next epoch diverge through the saved optimizer
    from safetensors.torch import save_file

    state = load_file(run / "trainer_state.safetensors")
    from safetensors import safe_open

    with safe_open(str(run / "trainer_state.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["state"])
    meta["param_groups"][0]["lr"] = 1e30
    save_file(state, run / "trainer_state.safetensors", metadata={"state": json.dumps(meta)})
    assert main(["train", "--resume", "--epochs", "3", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "diverged in epoch 2" in err and "keeps epoch 1" in err
    assert _same(_weights(run), good)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert "diverged in epoch 2" in json.loads((run / "config.json").read_text())["status"]
    model = cvae.load(run)
    assert all(bool(p.isfinite().all()) for p in model.parameters())
    # a new run diverging in its first epoch: its config.json says so (it said "running"), and it runs again
    fresh = tmp_path / "fresh"
    assert main(["train", *FAST, "--epochs", "2", "--lr", "1e30", "--out", str(fresh)]) == 2
    assert json.loads((fresh / "config.json").read_text())["status"].startswith("diverged in epoch 1; no epoch was saved")
    assert main(["train", *FAST, "--epochs", "1", "--out", str(fresh)]) == 0


def test_a_run_killed_before_its_first_epoch_goes_on_with_either_command(tmp_path):
    for command in (["--resume"], []):
        run = tmp_path / ("resume" if command else "again")
        # batches of 2: a first epoch long enough (about a second) to be killed in, however fast the step
        proc = subprocess.Popen([sys.executable, "-m", "cvae", "train", *FAST, "--batch-size", "2", "--epochs", "50",
                                 "--out", str(run)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (run / "config.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert (run / "config.json").exists() and not (run / "trainer_state.safetensors").exists()
        args = ["train", *command, "--out", str(run), "--no-progress"] if command else \
            ["train", *FAST, "--epochs", "1", "--out", str(run)]
        assert main(args + (["--epochs", "1"] if command else [])) == 0
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_drops_a_partial_metrics_line_and_orphaned_temporary_files(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "1", "--out", str(run)]) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # killed mid-write
    orphan = run / ".model.safetensors.k2j3h4.tmp"
    orphan.write_bytes(b"\0" * 100)
    assert main(["train", "--resume", "--epochs", "2", "--out", str(run), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert not orphan.exists()
    # a damaged row in the middle is not guessed at
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("garbage\n" + lines[1] + "\n")
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "3", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl line 1 is not a metrics row" in err and "Traceback" not in err


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(["train", *FAST, "--epochs", "1", "--out", str(target)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_a_refused_run_leaves_no_folder_and_a_foreign_trainer_state_is_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    run = tmp_path / "big"
    assert main(["train", *FAST, "--epochs", "1", "--hidden", "100000000", "--out", str(run)]) == 2
    assert "Traceback" not in capsys.readouterr().err and not run.exists()
    small, other = tmp_path / "small", tmp_path / "other"
    assert main(["train", *FAST, "--epochs", "1", "--out", str(small)]) == 0
    assert main(["train", *FAST, "--epochs", "1", "--latent-dim", "3", "--out", str(other)]) == 0
    save_file(load_file(other / "trainer_state.safetensors"), small / "trainer_state.safetensors",
              metadata={"state": __import__("safetensors").safe_open(str(other / "trainer_state.safetensors"),
                                                                     "pt").metadata()["state"]})
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "2", "--out", str(small), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "trainer_state.safetensors does not fit the model" in err and len(err.strip().splitlines()) == 1


def test_run_files_are_readable_by_others_as_the_umask_allows(tmp_path):
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main(["train", *FAST, "--epochs", "1", "--out", str(run)]) == 0
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors", "summary.json", "trainer_state.safetensors"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name


def test_a_hand_edited_train_setting_of_the_wrong_type_is_one_line_for_every_command(tmp_path, capsys):
    """evaluate and aggregate rebuild the run's data from config.json's train settings: a value of the
    wrong type is named as train --resume names it (they ended in tracebacks)."""
    run = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "1", "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["seed"] = "x"
    (run / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    for argv in (["evaluate", str(run), "--n", "20", "--k", "5", "--no-progress"], ["aggregate", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "config.json is damaged: its 'train' settings:" in err[0] and "'x'" in err[0], err


def test_an_interrupted_run_says_so_in_its_config(tmp_path):
    """Ctrl-C after an epoch: config.json's status names the epoch the folder keeps (it stayed "running",
    and every command used the run without a word); --resume finishes it."""
    import pytest

    from cvae.config import TrainConfig
    from cvae.train import fit

    run = tmp_path / "run"
    config = TrainConfig(data="digits", epochs=4, batch_size=64, out=str(run), progress=False, tensorboard=False)

    def stop(epoch, model, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, on_epoch=stop)
    status = json.loads((run / "config.json").read_text())["status"]
    assert status.startswith("interrupted after epoch 2 of 4"), status
    assert main(["train", *FAST, "--epochs", "4", "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "config.json").read_text())["status"] == "finished"


def test_a_loss_past_any_honest_one_is_divergence_though_finite(tmp_path, capsys):
    """lr 0.5 gave losses of 6e26 nats that stayed finite: the run 'finished', and the fit of its codes
    then failed with a traceback (a QA audit of sweeps). Past 1e15 nats it is a diverged run."""
    assert main(["train", "--data", "digits", "--hidden", "32", "--latent-dim", "4", "--epochs", "3", "--lr", "0.5",
                 "--lr-schedule", "constant", "--no-progress", "--no-pictures", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "training diverged in epoch" in err and "past 1e+15 nats" in err and err.count("\n") == 1
