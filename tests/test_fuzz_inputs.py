"""Bad input files: each one is a single clear CvaeError (one line naming the file and what to do),
never a traceback and never silently wrong data. Then a seeded fuzz of every reader.

Every file here is written into tmp_path; nothing reads the shared data sets.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cvae.apps.sequences import read_strings
from cvae.cli import main
from cvae.data import load_data, read_image
from cvae.data.stream import load_npy_stream, npy_float32_bytes
from cvae.errors import CvaeError

# -- tiny valid files -----------------------------------------------------------------------------


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def huge_png_bytes(width=30000, height=30000) -> bytes:
    """A PNG whose header claims width x height grey pixels (far past Pillow's decompression-bomb limit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def image_folder(root, n=3, size=(6, 5)):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, size, dtype=np.uint8)))
    return root


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + \
        array.astype(np.uint8).tobytes()


def fake_mnist(root, n_train=12, n_test=4, images=None, labels=None):
    """root/mnist/*.gz: tiny IDX files (``images`` / ``labels`` replace the training ones)."""
    d = root / "mnist"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28)) if images is None or prefix == "t10k" else images
        y = np.arange(n) % 10 if labels is None or prefix == "t10k" else labels
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.asarray(x)), mtime=0))
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.asarray(y)), mtime=0))
    return root


def csv_text(n=8, big=None, layout="table") -> str:
    rng = np.random.default_rng(0)
    cols = 6 if layout == "signal" else 3
    header = [f"t{i}" for i in range(cols)] + ["label"]
    rows = [[f"{v:.3f}" for v in rng.normal(size=cols)] + [str(i % 2)] for i in range(n)]
    if big is not None:
        rows[big[0]][big[1]] = big[2]
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


def one_line(message: str) -> bool:
    return "\n" not in message.strip() and "Traceback" not in message


def raises(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(CvaeError, match=match) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert one_line(message), message
    return message


# -- images ---------------------------------------------------------------------------------------

def test_single_image_file_errors_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(np.full((4, 5), 255, np.uint8)))
    assert read_image(good, 1).shape == (1, 4, 5) and read_image(good, 3, (2, 3)).shape == (3, 2, 3)
    (tmp_path / "text.png").write_text("this is not a picture")
    raises(r"text\.png is not an image", read_image, tmp_path / "text.png", 1)
    (tmp_path / "cut.png").write_bytes(png_bytes(np.arange(400, dtype=np.uint8).reshape(20, 20))[:-30])
    raises(r"cannot read the image .*cut\.png.*remove or replace it", read_image, tmp_path / "cut.png", 1)
    (tmp_path / "bomb.png").write_bytes(huge_png_bytes())
    raises(r"bomb\.png is too large to decode \(900,000,000 pixels.*shrink", read_image, tmp_path / "bomb.png", 1)


def test_image_folder_errors_name_the_file(tmp_path):
    root = image_folder(tmp_path / "imgs")
    assert load_data(str(root), val_fraction=0).data_shape == (1, 6, 5)
    for name, data, match in (("bomb.png", huge_png_bytes(), "too large to decode"),
                              ("cut.png", png_bytes(np.zeros((9, 9), np.uint8))[:-25], "cannot read the image"),
                              ("text.png", b"GIF89a but not really", "is not an image")):
        (root / "b" / name).write_bytes(data)
        message = raises(name.replace(".", r"\."), load_data, str(root))
        assert match in message
        (root / "b" / name).unlink()


def test_a_flat_folder_given_to_a_run_names_its_damaged_file(tmp_path):
    """A folder of images without class subfolders, read as a trained run's inputs (this session's
    reader path): a damaged file is one line naming it, an empty folder says it holds no images."""
    from cvae.apps.io import read_inputs
    from cvae.models import build_model
    from cvae.models.config import ModelConfig

    model = build_model(ModelConfig(data_shape=(1, 6, 5), hidden=[8], latent_dim=2))
    flat = tmp_path / "flat"
    flat.mkdir()
    raises(r"no images .* in .*flat", read_inputs, model, str(flat))
    rng = np.random.default_rng(0)
    for i in range(3):
        (flat / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (6, 5), dtype=np.uint8)))
    assert len(read_inputs(model, str(flat)).x) == 3
    for name, data, match in (("bomb.png", huge_png_bytes(), "too large to decode"),
                              ("cut.png", png_bytes(np.zeros((9, 9), np.uint8))[:-25], "cannot read the image"),
                              ("text.png", b"GIF89a but not really", "is not an image")):
        (flat / name).write_bytes(data)
        assert match in raises(name.replace(".", r"\."), read_inputs, model, str(flat))
        (flat / name).unlink()


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    grey16 = (np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000)
    for i in range(2):
        Image.fromarray(grey16).save(root / "a" / f"{i}.png")
    d = load_data(str(root), val_fraction=0)
    np.testing.assert_allclose(d.train.x[0, 0].numpy(), grey16 / 65535.0, atol=1e-6)
    np.testing.assert_allclose(read_image(root / "a" / "0.png", 1)[0], grey16 / 65535.0, atol=1e-6)
    Image.fromarray(np.full((6, 5), 70000, np.int32)).save(root / "a" / "wide.tif")
    raises(r"wide\.tif has 32-bit \(I\) pixels outside 0\.\.255", load_data, str(root))


# -- .npy / .npz ---------------------------------------------------------------------------------

def test_corrupted_npy_headers(tmp_path):
    raw = npy_bytes(np.zeros((3, 4)))
    cases = {
        "token.npy": raw.replace(b"'descr'", b"'''des"),  # numpy: tokenize.TokenError
        "literal.npy": raw.replace(b"(3, 4)", b"(3, x)"),  # numpy: ValueError from ast
        "dtype.npy": raw.replace(b"<f8", b"<q9"),
        "short.npy": raw[:60],
        "cut.npy": raw[:-8],
        "longer.npy": raw + b"\x00" * 8,
        "foreign.npy": b"hello world, not numpy",
        "empty.npy": b"",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        message = raises(name.replace(".", r"\."), load_data, str(path))
        assert "numpy.save" in message and "pickle" not in message, message
        raises(name.replace(".", r"\."), load_npy_stream, path)


def test_empty_npy_on_the_stream_size_path(tmp_path):
    path = tmp_path / "empty.npy"
    path.write_bytes(b"")
    raises(r"empty\.npy is empty \(0 bytes\)", npy_float32_bytes, path)
    np.save(tmp_path / "ok.npy", np.zeros((5, 3), np.float32))
    assert npy_float32_bytes(tmp_path / "ok.npy") == 60 and npy_float32_bytes(tmp_path / "ok.csv") is None


def test_object_arrays_are_refused_without_pickle_advice(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([[1, "a"], [None, 2.0]], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "obj.npz", x=np.zeros((4, 3)), y=np.array([1, "a", None, 2], dtype=object))
    for name in ("obj.npy", "obj.npz"):
        message = raises(r"holds Python objects .*cvae reads only numeric arrays", load_data, str(tmp_path / name))
        assert "pickle" not in message and name in message
    raises(r"holds Python objects", load_npy_stream, tmp_path / "obj.npy")


def test_array_shapes_are_checked(tmp_path):
    np.savez(tmp_path / "scalar.npz", x=np.float64(3.0))
    raises(r"scalar\.npz \(array 'x'\) has shape \(\)", load_data, str(tmp_path / "scalar.npz"))
    np.save(tmp_path / "nofeatures.npy", np.zeros((50, 0)))
    raises(r"nofeatures\.npy has shape \(50, 0\).*at least 1", load_data, str(tmp_path / "nofeatures.npy"))
    raises(r"nofeatures\.npy has shape \(50, 0\)", load_npy_stream, tmp_path / "nofeatures.npy")
    np.save(tmp_path / "five.npy", np.zeros((2, 1, 1, 1, 1)))
    raises(r"five\.npy .*has shape \(2, 1, 1, 1, 1\)", load_data, str(tmp_path / "five.npy"))
    np.save(tmp_path / "emptylast.npy", np.zeros((5, 0, 8, 3), np.uint8))  # channel-last: the file's shape is named
    raises(r"emptylast\.npy has shape \(5, 0, 8, 3\)", load_data, str(tmp_path / "emptylast.npy"))
    raises(r"emptylast\.npy has shape \(5, 0, 8, 3\)", load_npy_stream, tmp_path / "emptylast.npy")
    np.savez(tmp_path / "complex.npz", x=np.zeros((4, 2), np.complex64))
    raises(r"complex\.npz .*complex64 values; expected real numbers", load_data, str(tmp_path / "complex.npz"))


def test_npz_column_labels_are_squeezed_and_other_shapes_refused(tmp_path):
    x = np.random.default_rng(0).random((20, 4))
    np.savez(tmp_path / "col.npz", x=x, y=(np.arange(20) % 3)[:, None])
    d = load_data(str(tmp_path / "col.npz"), val_fraction=0)
    assert d.schema.names == ["label"] and d.schema.attributes[0].classes == ["0", "1", "2"]
    assert d.train.y[:, 0].tolist() == [float(i % 3) for i in range(20)]
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(3)[np.arange(20) % 3])
    raises(r"onehot\.npz: array 'y' has shape \(20, 3\); expected one label per example.*argmax",
           load_data, str(tmp_path / "onehot.npz"))


# -- IDX ----------------------------------------------------------------------------------------------

def test_corrupted_gzip_idx(tmp_path):
    fake_mnist(tmp_path)
    f = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    good = f.read_bytes()
    middle = bytearray(good)
    for i in range(20, 60):
        middle[i] ^= 0x5A  # the deflate stream: zlib.error (invalid code) or a CRC mismatch
    for data in (bytes(middle), good[:-6], good[:12], good[:3] + b"\xff" + good[4:], good + b"garbage!"):
        f.write_bytes(data)
        raises(r"train-images-idx3-ubyte\.gz.*(damaged|corrupt).*fresh copy", load_data, "mnist", data_dir=tmp_path)


def test_idx_labels_and_shapes_are_validated(tmp_path):
    labels = np.arange(12) % 10
    labels[5] = 200
    fake_mnist(tmp_path / "labels", labels=labels)
    raises(r"train-labels-idx1-ubyte\.gz: label 200 of example 5 is not a mnist class \(0-9\)",
           load_data, "mnist", data_dir=tmp_path / "labels")
    fake_mnist(tmp_path / "flat", images=np.zeros((12, 784, 1)))
    raises(r"train-images-idx3-ubyte\.gz holds an array of shape \(12, 784, 1\); mnist images are \(N, 28, 28\)",
           load_data, "mnist", data_dir=tmp_path / "flat")
    fake_mnist(tmp_path / "count", labels=np.arange(11) % 10)
    raises(r"images \(12, 28, 28\) .* and labels \(11,\) .* do not match", load_data, "mnist", data_dir=tmp_path / "count")


# -- extreme values -----------------------------------------------------------------------------------

def test_huge_and_non_finite_csv_cells_name_line_and_column(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text(csv_text(big=(3, 1, "1e30")))
    raises(r"big\.csv, line 5, column 't1': '1e30' is too large to standardise", load_data, str(path))
    path.write_text(csv_text(big=(3, 4, "1e37"), layout="signal"))
    raises(r"big\.csv, line 5, column 't4': '1e37' is too large", load_data, str(path), data_layout="signal")
    for cell in ("nan", "inf", "-Infinity", "1e400"):
        path.write_text(csv_text(big=(6, 0, cell)))
        raises(rf"big\.csv, line 8, column 't0': '{cell}' is NaN or infinite", load_data, str(path))
    path.write_text(csv_text(big=(2, 3, "1e30")))  # the condition column
    raises(r"big\.csv.*condition 'label' has the value 1e\+30", load_data, str(path))
    path.write_text(csv_text(big=(3, 1, "1e17")))  # large but safe: standardised to finite values
    d = load_data(str(path), val_fraction=0)
    assert torch.isfinite(d.train.x).all() and np.isfinite(d.scale).all()


def test_huge_and_non_finite_array_values(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 1, 6))
    x[4, 0, 2] = 1e37
    np.save(tmp_path / "signal.npy", x)
    raises(r"signal\.npy holds a value too large to standardise \(1e\+37 at example 4, position \(0, 2\)",
           load_data, str(tmp_path / "signal.npy"))
    raises(r"signal\.npy holds a value too large .*example 4", load_npy_stream, tmp_path / "signal.npy")
    x[4, 0, 2] = 1e300  # float64: would be inf as float32
    np.save(tmp_path / "signal.npy", x)
    raises(r"too large to standardise \(1e\+300", load_data, str(tmp_path / "signal.npy"))
    x[4, 0, 2] = np.inf
    np.save(tmp_path / "signal.npy", x)
    raises(r"NaN or infinite values \(first at example 4", load_npy_stream, tmp_path / "signal.npy")
    ints = np.zeros((6, 3), np.int64)
    ints[2, 1] = np.iinfo(np.int64).min
    np.save(tmp_path / "ints.npy", ints)
    raises(r"ints\.npy .*too large .*example 2, feature 1", load_data, str(tmp_path / "ints.npy"))


# -- the command line: one line on stderr, exit status 2 -------------------------------------------

def bad_inputs(tmp_path) -> dict[str, list[str]]:
    folder = image_folder(tmp_path / "imgs")
    (folder / "a" / "bomb.png").write_bytes(huge_png_bytes())
    (tmp_path / "token.npy").write_bytes(npy_bytes(np.zeros((3, 4))).replace(b"'descr'", b"'''des"))
    (tmp_path / "big.csv").write_text(csv_text(big=(3, 1, "1e30")))
    fake_mnist(tmp_path / "idx")
    f = tmp_path / "idx" / "mnist" / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:30])
    return {"bomb.png": ["--data", str(folder)], "token.npy": ["--data", str(tmp_path / "token.npy")],
            "big.csv": ["--data", str(tmp_path / "big.csv")],
            "t10k-images": ["--data", "mnist", "--data-dir", str(tmp_path / "idx")]}


def test_cli_prints_one_line(tmp_path, capsys):
    for name, flags in bad_inputs(tmp_path).items():
        capsys.readouterr()
        assert main(["train", *flags, "--epochs", "1", "--no-progress", "--no-tensorboard",
                     "--out", str(tmp_path / "run")]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and name in err and one_line(err), err
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty.npy").write_bytes(b"")
    assert main(["train", "--data", str(tmp_path / "empty.npy"), "--stream", "--epochs", "1", "--no-progress",
                 "--no-tensorboard", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "empty.npy is empty" in err and one_line(err), err


def test_cli_subprocess_has_no_traceback(tmp_path):
    bad = tmp_path / "obj.npy"
    np.save(bad, np.array([None, 1], dtype=object), allow_pickle=True)
    res = subprocess.run([sys.executable, "-m", "cvae", "train", "--data", str(bad), "--epochs", "1", "--no-progress",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, CVAE_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert res.returncode == 2, res.stderr
    assert one_line(res.stderr) and res.stderr.startswith("error: ") and "obj.npy holds Python objects" in res.stderr


# -- the fuzz --------------------------------------------------------------------------------------------

MUTATIONS = 40


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random edits: flip bytes, truncate, insert bytes, duplicate or delete a chunk."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(6))
        n = len(b)
        at = int(rng.integers(n + 1))
        if op == 0 and n:  # flip a few bytes
            for i in rng.integers(0, n, int(rng.integers(1, 5))):
                b[i] ^= int(rng.integers(1, 256))
        elif op == 1:  # truncate
            del b[at:]
        elif op == 2:  # insert random bytes
            b[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        elif op == 3 and n:  # duplicate a chunk
            i = int(rng.integers(n))
            b[at:at] = b[i:i + int(rng.integers(1, 64))]
        elif op == 4:  # delete a chunk
            del b[at:at + int(rng.integers(1, 32))]
        elif n:  # a byte to an extreme: 0x00 or 0xff
            b[min(at, n - 1)] = (0x00, 0xFF)[int(rng.integers(2))]
    return bytes(b)


def sane_splits(d) -> None:
    assert d.kind in ("image", "table", "signal") and 1 <= len(d.data_shape) <= 3 and all(s > 0 for s in d.data_shape)
    for part in (d.train, d.val, d.test):
        if part is None:
            continue
        x = part.x[:]
        assert x.shape[1:] == d.data_shape and len(x) == len(part.y) and torch.isfinite(x).all()
        assert torch.isfinite(part.y).all()
    assert len(d.train) > 0


def rezip(data: bytes, member: str, rng) -> bytes:
    """The .npz with one member's bytes mutated (a valid zip around a damaged array)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[member] = mutate(members[member], rng)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, v in members.items():
            z.writestr(n, v)
    return buf.getvalue()


def test_fuzz_every_reader(tmp_path):
    rng = np.random.default_rng(20240607)
    grey = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    x_table = rng.normal(size=(12, 4)).astype(np.float32)
    formats = {
        "single.png": png_bytes(grey),
        "rgba.png": png_bytes(rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)),  # drawn on white
        "seq.csv": b"text,label\nthe film was great,pos\nthe film was dull,neg\n\"a, quoted\",pos\n",  # read by its column
        "folder.png": png_bytes(grey),
        "x.npy": npy_bytes(x_table),
        "stream.npy": npy_bytes(x_table),
        "x.npz": npz_bytes(x=x_table, y=np.arange(12) % 3),
        "member.npz": npz_bytes(x=x_table, y=np.arange(12) % 3),
        "t.csv": csv_text(12).encode(),
        "images.gz": None,
        "labels.gz": None,
        "images.idx": None,
    }
    failures = []
    for fmt, good in formats.items():
        for k in range(MUTATIONS):
            case = tmp_path / f"{fmt.replace('.', '_')}{k}"
            case.mkdir()
            try:
                if fmt in ("single.png", "rgba.png"):
                    path = case / "x.png"
                    path.write_bytes(mutate(good, rng))
                    a = read_image(path, 1 if fmt == "single.png" else 3, (6, 5))
                    assert a.shape[1:] == (6, 5) and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
                    continue
                if fmt == "seq.csv":  # a sequence run's --data/--input table
                    path = case / "x.csv"
                    path.write_bytes(mutate(good, rng))
                    names, texts = read_strings(str(path), "--data", "text")
                    assert len(names) == len(texts) and all(isinstance(t, str) and t for t in texts)
                    continue
                if fmt == "folder.png":
                    image_folder(case / "imgs")
                    (case / "imgs" / "a" / "1.png").write_bytes(mutate(good, rng))
                    source, kwargs = str(case / "imgs"), {}
                elif fmt in ("images.gz", "labels.gz", "images.idx"):
                    fake_mnist(case)
                    name = "train-labels-idx1-ubyte.gz" if fmt == "labels.gz" else "train-images-idx3-ubyte.gz"
                    f = case / "mnist" / name
                    if fmt == "images.idx":  # a valid gzip around damaged IDX bytes
                        f.write_bytes(gzip.compress(mutate(gzip.decompress(f.read_bytes()), rng), mtime=0))
                    else:
                        f.write_bytes(mutate(f.read_bytes(), rng))
                    source, kwargs = "mnist", {"data_dir": case}
                else:
                    path = case / ("x" + fmt[fmt.index("."):])
                    data = rezip(good, "x.npy", rng) if fmt == "member.npz" else mutate(good, rng)
                    path.write_bytes(data)
                    source, kwargs = str(path), {}
                if fmt == "stream.npy":
                    sane_splits(load_npy_stream(source))
                else:
                    sane_splits(load_data(source, **kwargs))
            except CvaeError as e:
                if not one_line(str(e)):
                    failures.append(f"{fmt} #{k}: a message of several lines: {e!r}")
            except Exception as e:  # anything else is a bug: collect them all, then fail
                failures.append(f"{fmt} #{k}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


def test_reconstructing_a_bad_image_file_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--epochs", "1", "--no-progress", "--no-tensorboard", "--no-pictures",
                 "--out", str(run)]) == 0
    cases = {"text.png": b"this is not a png", "cut.png": png_bytes(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))[:50]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        capsys.readouterr()
        assert main(["reconstruct", str(run), "--input", str(tmp_path / name), "--condition", "label=3",
                     "-o", str(tmp_path / "out.png")]) == 2
        err = capsys.readouterr().err
        assert name in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.png").exists()
