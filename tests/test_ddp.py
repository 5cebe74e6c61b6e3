"""Two CPU processes through torchrun train one model (DDP over gloo) on the digits.

Checks: only rank 0 writes the run folder (one metrics row per epoch, one report); --resume under
torchrun continues exactly as an uninterrupted two-process run; and the result matches a
single-process run of the same global batch within the noise of the reparameterisation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# a constant learning rate, so that 2 epochs then --resume to 3 is the same run as 3 epochs straight
# (a cosine schedule spans --epochs, so extending a run stretches it)
ARGS = ["train", "--data", "digits", "--limit", "384", "--batch-size", "64", "--device", "cpu", "--no-progress",
        "--no-pictures", "--no-tensorboard", "--lr-schedule", "constant"]


def _torchrun(*args, processes=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", CVAE_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--standalone", "-m", "cvae", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    out = {"straight": _torchrun(*ARGS, "--epochs", "3", "--out", str(root / "straight")),
           "first": _torchrun(*ARGS, "--epochs", "2", "--out", str(root / "resumed")),
           "resume": _torchrun("train", "--epochs", "3", "--out", str(root / "resumed"), "--resume",
                               "--device", "cpu", "--no-progress", "--no-pictures")}
    from cvae.cli import main

    assert main([*ARGS, "--epochs", "3", "--out", str(root / "single")]) == 0
    return root, out


def test_two_processes_train_one_model_and_only_rank_0_writes(runs):
    root, out = runs
    run = root / "straight"
    assert out["straight"].count("run folder:") == 1  # one report, from rank 0
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3]
    config = json.loads((run / "config.json").read_text())
    assert config["execution"]["processes"] == 2 and config["status"] == "finished"
    assert config["train"]["batch_size"] == 64  # the global batch: 32 per process
    assert {p.name for p in run.iterdir()} >= {"config.json", "model.safetensors", "trainer_state.safetensors",
                                               "metrics.jsonl", "summary.json"}


def test_resume_under_torchrun_is_exact(runs):
    root, _ = runs
    straight, resumed = _rows(root / "straight"), _rows(root / "resumed")
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(straight, resumed):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]


def test_two_processes_match_one_process_of_the_same_global_batch(runs):
    root, _ = runs
    two, one = _rows(root / "straight"), _rows(root / "single")
    # the same epochs of the same global batches; only the sampled noise differs
    for a, b in zip(two, one):
        assert abs(a["train_loss"] - b["train_loss"]) < 0.05 * b["train_loss"]
    assert abs(two[-1]["val_loss"] - one[-1]["val_loss"]) < 0.05 * one[-1]["val_loss"]
    assert two[-1]["train_loss"] < two[0]["train_loss"]


def test_a_bad_flag_under_torchrun_is_said_once(tmp_path):
    """Each process printed the same error, the two lines run into one (a QA audit)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CVAE_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "cvae",
               *ARGS, "--batch-size", "63", "--out", str(tmp_path / "odd")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    said = [line for line in (done.stdout + done.stderr).splitlines() if "error: --batch-size 63" in line]
    assert len(said) == 1 and said[0].count("error:") == 1, done.stderr
