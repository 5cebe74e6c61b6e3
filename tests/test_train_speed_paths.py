"""The trainer's execution paths: precision (auto / bfloat16), torch.compile, streamed .npy data,
flushed denormals, the per-epoch hook. Small data, a few steps; no timing thresholds."""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch

from cvae.config import TrainConfig
from cvae.data import load_data
from cvae.data.stream import ArrayRows, load_npy_stream
from cvae.errors import CvaeError
from cvae.train import _epoch_order, _too_big_for_memory, fit, native_bfloat16, resolve_precision

trainer = sys.modules["cvae.train"]  # the module (``cvae.train`` is also the API function)


def _config(tmp_path, name="run", **settings):
    base = dict(data="digits", epochs=1, batch_size=64, limit=256, out=str(tmp_path / name), progress=False,
                tensorboard=False)
    base.update(settings)
    return TrainConfig(**base)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_precision_auto_is_resolved_and_written_in_the_config(tmp_path):
    cpu = torch.device("cpu")
    assert TrainConfig().precision == "auto"
    expected = "bfloat16" if native_bfloat16(cpu) else "float32"
    assert resolve_precision("auto", cpu) == expected
    assert resolve_precision("float32", cpu) == "float32" and resolve_precision("bfloat16", cpu) == "bfloat16"
    # on a CPU, auto is the probe's measured choice (tests/test_fused.py holds the probe itself)
    result = fit(_config(tmp_path, device="cpu"))
    saved = json.loads((result.run_dir / "config.json").read_text())
    chosen = saved["execution"]["probe"]["precision"]
    assert saved["train"]["precision"] == chosen == result.summary["precision"]
    assert chosen in ("float32", "bfloat16") and (chosen == "float32" or native_bfloat16(cpu))
    assert saved["execution"]["native_bfloat16"] == native_bfloat16(cpu)
    assert saved["execution"]["processes"] == 1


def test_bfloat16_trains_with_finite_float32_losses(tmp_path):
    result = fit(_config(tmp_path, precision="bfloat16", epochs=2))
    rows = _rows(result.run_dir)
    assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert json.loads((result.run_dir / "config.json").read_text())["train"]["precision"] == "bfloat16"
    # the summary is evaluated in float32 whatever the training precision
    assert math.isfinite(result.summary["val"]["loss"])


@pytest.mark.skipif(not any(shutil.which(c) for c in ("cc", "gcc", "g++", "c++")),
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compile_trains_and_resumes(tmp_path):
    result = fit(_config(tmp_path, compile=True, limit=128))
    assert math.isfinite(_rows(result.run_dir)[0]["train_loss"])
    assert json.loads((result.run_dir / "config.json").read_text())["train"]["compile"] is True
    resumed = fit(_config(tmp_path, epochs=2, compile=False), resume=True, explicit={"epochs", "compile"})
    assert [r["epoch"] for r in _rows(resumed.run_dir)] == [1, 2]


def test_denormals_are_flushed_while_training_and_not_after(tmp_path):
    tiny = torch.tensor([1e-39])  # a float32 denormal
    seen = []
    fit(_config(tmp_path), on_epoch=lambda epoch, model, row: seen.append(float(tiny * 0.5)))
    assert seen == [0.0]  # flushed to zero inside the trainer
    assert float(tiny * 0.5) > 0.0  # and the process-wide setting is back to normal afterwards


def test_on_epoch_can_stop_training(tmp_path):
    calls = []

    def hook(epoch, model, row):
        calls.append((epoch, set(row) >= {"train_loss", "val_loss", "seconds"}, model.training))
        return epoch == 2

    result = fit(_config(tmp_path, epochs=5), on_epoch=hook)
    assert [c[0] for c in calls] == [1, 2] and all(c[1] for c in calls)
    assert result.summary["epochs"] == 2 and result.summary["stopped_early"]
    assert json.loads((result.run_dir / "config.json").read_text())["status"] == "stopped early"


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    a, b = _epoch_order(100, 0, 3), _epoch_order(100, 0, 3)
    assert torch.equal(a, b) and torch.equal(a.sort().values, torch.arange(100))
    assert not torch.equal(a, _epoch_order(100, 0, 4)) and not torch.equal(a, _epoch_order(100, 1, 3))


# -- streamed .npy files ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digit_images(tmp_path_factory):
    """The digits as a uint8 image file (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    x = (load_digits().images * (255 / 16)).round().astype(np.uint8)[:, None]
    path = tmp_path_factory.mktemp("npy") / "digits.npy"
    np.save(path, x)
    return path


def test_stream_gives_the_in_memory_splits_and_values(digit_images, tmp_path):
    streamed = load_npy_stream(digit_images, val_fraction=0.1, seed=3, limit=1000)
    loaded = load_data(str(digit_images), val_fraction=0.1, seed=3, limit=1000)
    assert isinstance(streamed.train.x, ArrayRows) and streamed.data_shape == loaded.data_shape == (1, 8, 8)
    assert streamed.kind == loaded.kind and streamed.standardize == loaded.standardize is False
    assert torch.equal(streamed.train.x[:], loaded.train.x) and torch.equal(streamed.val.x[:], loaded.val.x)
    positions = np.array([5, 0, 999, 17])
    assert torch.equal(streamed.train.x[positions], loaded.train.x[positions])
    assert torch.equal(streamed.train.x[7], loaded.train.x[7]) and len(streamed.train.x) == len(loaded.train.x)


def test_stream_of_a_table_standardises_like_the_loader(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.normal(3.0, 2.0, size=(500, 7))
    table[:, 2] = 1.5  # a constant feature
    path = tmp_path / "table.npy"
    np.save(path, table)
    streamed = load_npy_stream(path, val_fraction=0.2, seed=1, limit=None)
    loaded = load_data(str(path), val_fraction=0.2, seed=1)
    assert streamed.standardize and loaded.standardize and streamed.kind == "table"
    np.testing.assert_allclose(streamed.loc, loaded.loc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(streamed.scale, loaded.scale, rtol=1e-5)
    np.testing.assert_allclose(streamed.train.x[:].numpy(), loaded.train.x.numpy(), atol=1e-4)


def test_streamed_training_matches_in_memory_training(digit_images, tmp_path, monkeypatch):
    import cvae.data.stream as stream

    monkeypatch.setattr(stream, "CHUNK_BYTES", 64 * 64 * 4 * 3)  # a few batches per chunk: many chunk reads
    monkeypatch.setattr(trainer, "CHUNK_BYTES", stream.CHUNK_BYTES)
    settings = dict(data=str(digit_images), epochs=2, limit=None, condition="none")
    memory = fit(_config(tmp_path, "memory", **settings))
    streamed = fit(_config(tmp_path, "stream", stream=True, **settings))
    assert json.loads((streamed.run_dir / "config.json").read_text())["train"]["stream"] is True
    for a, b in zip(_rows(memory.run_dir), _rows(streamed.run_dir)):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    # resume a streamed run: one more epoch
    more = fit(_config(tmp_path, "stream", stream=True, **dict(settings, epochs=3)), resume=True, explicit={"epochs"})
    assert [r["epoch"] for r in _rows(more.run_dir)] == [1, 2, 3]


def test_stream_errors_say_what_to_do(digit_images, tmp_path):
    with pytest.raises(CvaeError, match="npy"):
        fit(_config(tmp_path, stream=True))  # digits is not a .npy file
    with pytest.raises(CvaeError, match="binarize .* or give --no-stream to load it whole"):
        fit(_config(tmp_path, data=str(digit_images), stream=True, binarize="dynamic", condition="none"))
    with pytest.raises(CvaeError, match="--data .*nothing.npy: no such file"):  # not "is not one (save ...)"
        fit(_config(tmp_path, data=str(tmp_path / "nothing.npy"), stream=True, condition="none"))
    with pytest.raises(CvaeError, match="condition"):
        load_npy_stream(digit_images, condition="label")


def test_a_npy_file_streams_by_itself_when_it_does_not_fit(digit_images, tmp_path, monkeypatch):
    assert not _too_big_for_memory(str(digit_images), torch.device("cpu"))
    assert not _too_big_for_memory("digits", torch.device("cpu"))
    monkeypatch.setattr(trainer, "_free_memory", lambda device: 1000)  # pretend there is almost no memory
    assert _too_big_for_memory(str(digit_images), torch.device("cpu"))
    result = fit(_config(tmp_path, data=str(digit_images), condition="none", limit=None))
    assert result.config.stream is True
    assert json.loads((result.run_dir / "config.json").read_text())["train"]["stream"] is True
    # --no-stream given keeps the data in memory, as asked (it was overridden)
    kept = fit(_config(tmp_path, "kept", data=str(digit_images), condition="none", limit=None, stream=False),
               explicit={"stream", "data", "condition", "limit"})
    assert kept.config.stream is False
