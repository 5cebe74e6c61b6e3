"""The thread count follows the machine's load (benchmarks/busy.py measures the effect)."""

from __future__ import annotations

import pytest
import torch

import cvae.threads as threads


def _clock(monkeypatch, busy_cores_of_others: float):
    """A machine whose other processes keep ``busy_cores_of_others`` cores busy, this one idle."""
    state = {"t": 0.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: state["t"])
    monkeypatch.setattr(threads.time, "process_time", lambda: 0.0)
    monkeypatch.setattr(threads, "_busy_seconds", lambda: state["t"] * busy_cores_of_others)
    return state


def test_one_thread_per_free_core(monkeypatch):
    before = torch.get_num_threads()
    try:
        for others, expected in ((0.0, 4), (1.0, 3), (2.6, 1), (7.0, 1)):
            state = _clock(monkeypatch, others)
            governor = threads.ThreadGovernor(ceiling=4)
            governor.cores = 4
            state["t"] = 1.0
            assert governor.update() == expected and torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_no_measurement_leaves_the_count(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_busy_seconds", lambda: None)
    assert threads.ThreadGovernor().update() == before == torch.get_num_threads()


def test_training_gives_the_callers_thread_count_back(tmp_path):
    import cvae

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cvae.train(data="digits", epochs=1, out=str(tmp_path / "r"), progress=False, tensorboard=False, pictures=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_training_flushes_denormals_in_every_openmp_worker():
    """The workers of a thread pool made before training copy the old floating-point mode; training
    restarts them so all of them flush (a product whose result is denormal comes out 0 in every
    chunk, not in the main thread's only), and restarts them again on the way out."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode")
    torch.set_flush_denormal(False)
    from cvae.train import _flushed_denormals

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.full((1_000_000,), 1e-30)
        (x * 2).sum()  # the workers start here, before any flush

        def flushed():
            return int(((x * 1e-9) == 0).sum())  # 1e-39 is denormal in float32

        assert flushed() == 0
        with _flushed_denormals():
            assert flushed() == x.numel()
        assert flushed() == 0
    finally:
        torch.set_num_threads(before)
