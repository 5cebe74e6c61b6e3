"""Shared fixtures. Tests never download: CVAE_OFFLINE=1 is set for the whole session.

``shared_data`` is ../shared/data (or $CVAE_SHARED_DATA). When it is missing the tests that need it
fail under CI (CI=true) and are skipped elsewhere, so a green CI run means they ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["CVAE_OFFLINE"] = "1"
# One intra-op thread: the tests' tensors are small, and spinning OpenMP threads on a loaded 2-core
# machine makes them many times slower. Speed is measured by benchmarks/, not by tests.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CVAE_SHARED_DATA", ROOT.parent / "shared" / "data"))


CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_module(name: str, install: str):
    """Import ``name``, or skip the calling test module (locally) / fail it (under CI, where .ci/run
    installs everything, so a green CI means the test ran), saying how to install it."""
    try:
        return __import__(name)
    except ImportError:
        message = f"{name} is not installed: {install}"
        if CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        message = f"the shared data sets are missing at {SHARED} (set CVAE_SHARED_DATA)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the user's cache and $CVAE_DATA out of the tests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("CVAE_DATA", raising=False)
