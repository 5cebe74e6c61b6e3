"""Every reader, on the shared files and on tiny files the tests write; every bad input's message."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from cvae.data import load_data
from cvae.data.sources import read_amat, read_idx
from cvae.errors import CvaeError


def write_idx(path, array: np.ndarray, compress=True):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def fake_mnist(root, n_train=30, n_test=10, subdir="mnist"):
    d = root / subdir
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


# -- named data sets on the shared, verified files ------------------------------------------------

def test_mnist_from_shared(shared_data):
    d = load_data("mnist", data_dir=shared_data, val_fraction=0.1)
    assert d.data_shape == (1, 28, 28) and d.kind == "image"
    assert len(d.train) + len(d.val) == 60000 and len(d.test) == 10000
    assert d.schema.names == ["label"] and d.schema.attributes[0].classes == [str(i) for i in range(10)]
    counts = torch.bincount(d.test.y[:, 0].long(), minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert 0.0 <= float(d.train.x.min()) and float(d.train.x.max()) <= 1.0


def test_fashion_mnist_from_shared(shared_data):
    d = load_data("fashion-mnist", data_dir=shared_data, condition="none", val_fraction=0.0)
    assert len(d.train) == 60000 and len(d.test) == 10000 and d.val is None
    assert not d.schema
    d = load_data("fashion-mnist", data_dir=shared_data, limit=100)
    assert d.schema.attributes[0].classes[9] == "Ankle boot" and len(d.train) == 100


def test_binarized_mnist_from_shared(shared_data):
    x = read_amat(shared_data / "binarized-mnist" / "binarized_mnist_valid.amat.gz")
    assert x.shape == (10000, 784) and set(np.unique(x)) == {0.0, 1.0}
    d = load_data("binarized-mnist", data_dir=shared_data, limit=500)
    assert (len(d.train), len(d.val), len(d.test)) == (500, 10000, 10000) and d.binary
    with pytest.raises(CvaeError, match="no labels"):
        load_data("binarized-mnist", data_dir=shared_data, condition="label")


def test_digits_is_offline_and_labelled():
    d = load_data("digits")
    assert d.data_shape == (1, 8, 8) and len(d.train) + len(d.val) == 1797 and d.test is None
    plain = load_data("digits", condition="none")  # no condition, but the labels still colour the pictures
    assert not plain.schema and plain.label_classes == [str(i) for i in range(10)]
    assert np.array_equal(plain.val.labels, d.val.y[:, 0].numpy().astype(int))


# -- files the tests write -----------------------------------------------------------------------

def test_idx_gz_and_plain_and_env_lookup(tmp_path, monkeypatch):
    fake_mnist(tmp_path)
    d = load_data("mnist", data_dir=tmp_path, val_fraction=0.2)
    assert (len(d.train), len(d.val), len(d.test)) == (24, 6, 10)
    monkeypatch.setenv("CVAE_DATA", str(tmp_path))
    assert len(load_data("mnist").test) == 10
    plain = tmp_path / "plain"
    write_idx(plain / "x.idx", np.zeros((2, 3)), compress=False) if plain.mkdir() is None else None
    assert read_idx(plain / "x.idx").shape == (2, 3)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(CvaeError, match=r"missing file\(s\) .*train-images-idx3-ubyte.gz.*--data-dir"):
        load_data("fashion-mnist", data_dir=tmp_path)


def test_corrupt_and_truncated_idx(tmp_path):
    fake_mnist(tmp_path)
    f = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(CvaeError, match="damaged"):
        load_data("mnist", data_dir=tmp_path)
    write_idx(f, np.zeros((30, 28, 28)))
    raw = gzip.decompress(f.read_bytes())[:-100]
    f.write_bytes(gzip.compress(raw))
    with pytest.raises(CvaeError, match="truncated or corrupt"):
        load_data("mnist", data_dir=tmp_path)


def test_amat_plain_and_malformed(tmp_path):
    rows = np.random.default_rng(0).integers(0, 2, (3, 784))
    p = tmp_path / "a.amat"
    p.write_text("\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    assert np.array_equal(read_amat(p), rows)
    p.write_text("0 1 2\n")
    with pytest.raises(CvaeError, match="784"):
        read_amat(p)


def test_npz_with_labels_and_npy(tmp_path):
    x = np.random.default_rng(0).random((40, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 3, size=np.linspace(0, 1, 40))
    d = load_data(str(tmp_path / "d.npz"), val_fraction=0.25)
    assert d.data_shape == (1, 12, 12) and d.schema.attributes[0].classes == ["0", "1", "2"]
    d = load_data(str(tmp_path / "d.npz"), condition="label,size:continuous")
    assert [a.kind for a in d.schema.attributes] == ["categorical", "continuous"]
    np.save(tmp_path / "t.npy", np.random.default_rng(1).normal(size=(20, 5)))
    d = load_data(str(tmp_path / "t.npy"))
    assert d.kind == "table" and d.standardize and not d.schema
    assert abs(float(d.train.x.mean())) < 0.5


@pytest.mark.parametrize("labels, classes", [
    (np.arange(40) % 4 * 0.5, ["0", "0.5", "1", "1.5"]),  # fractional numbers: every split named alike
    (np.arange(40) % 2 == 1, ["False", "True"]),
    (np.array([str(v).encode() for v in np.arange(40) % 3]), ["0", "1", "2"]),  # bytes are decoded
    (np.arange(40) % 12, [str(k) for k in range(12)]),  # numbers in numeric order (2 before 10)
])
def test_categorical_labels_of_any_type_are_named_alike_in_every_split(tmp_path, labels, classes):
    x = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=labels)
    d = load_data(str(tmp_path / "d.npz"), condition="label:categorical", val_fraction=0.25)
    assert d.schema.attributes[0].classes == classes
    assert not torch.isnan(d.val.y).any() and len(d.val) == 10


def test_square_grey_images_of_a_npy_file_are_images_as_in_a_npz_file(tmp_path):
    # np.save("digits.npy", images) of shape (N, 28, 28) was read as 28-channel signals (standardised
    # Gaussian data, sampled as line plots), where the same array in a .npz was grey images.
    from cvae.data.stream import load_npy_stream

    x = (np.random.default_rng(0).random((30, 9, 9)) * 255).astype(np.uint8)
    np.save(tmp_path / "grey.npy", x)
    np.savez(tmp_path / "grey.npz", x=x)
    memory, stream = load_data(str(tmp_path / "grey.npy")), load_npy_stream(tmp_path / "grey.npy")
    for d in (memory, stream, load_data(str(tmp_path / "grey.npz"))):
        assert d.kind == "image" and d.data_shape == (1, 9, 9) and not d.standardize
    assert torch.equal(stream.train.x[0:len(stream.train)], memory.train.x)
    every = torch.cat([memory.train.x, memory.val.x])[:, 0]  # grey levels, the split's order aside
    assert sorted(every.sum((1, 2)).tolist()) == pytest.approx(sorted((x / 255.0).sum((1, 2)).tolist()), rel=1e-5)
    np.save(tmp_path / "signal.npy", np.random.default_rng(1).normal(size=(30, 2, 50)).astype(np.float32))
    assert load_data(str(tmp_path / "signal.npy")).kind == "signal"  # (N, C, L) with C != L stays a signal


def test_channel_last_images_of_a_npz_file_are_read_as_channels_first(tmp_path):
    # Shapes3D, PIL and TensorFlow keep images as (N, H, W, C); read as (N, C, H, W) a 64x64 RGB set
    # became 64 channels of 64x3 images, and its pictures noise.
    rng = np.random.default_rng(0)
    x = (rng.random((24, 10, 6, 3)) * 255).astype(np.uint8)
    x[:, :, :, 0] = 255  # red channel full: survives only if the channel axis is the last one
    np.savez(tmp_path / "rgb.npz", x=x, y=np.arange(24) % 2)
    d = load_data(str(tmp_path / "rgb.npz"), val_fraction=0.25)
    assert d.data_shape == (3, 10, 6) and d.kind == "image"
    every = torch.cat([d.train.x, d.val.x])
    assert torch.all(every[:, 0] == 1.0) and not torch.all(every[:, 1] == 1.0)
    np.save(tmp_path / "rgb.npy", x)
    from cvae.data.stream import load_npy_stream

    memory, stream = load_data(str(tmp_path / "rgb.npy")), load_npy_stream(tmp_path / "rgb.npy")
    assert stream.data_shape == memory.data_shape == (3, 10, 6)
    assert torch.equal(stream.train.x[0:len(stream.train)], memory.train.x)  # the same rows, the same layout
    np.save(tmp_path / "rgba.npy", np.zeros((5, 8, 8, 4), np.uint8))
    assert load_data(str(tmp_path / "rgba.npy")).data_shape == (4, 8, 8)
    np.save(tmp_path / "first.npy", np.zeros((5, 3, 8, 3), np.float32))  # channel-first stays as it is
    assert load_data(str(tmp_path / "first.npy")).data_shape == (3, 8, 3)
    # a NaN is named where the file holds it, (h, w, c), by both readers
    bad = np.zeros((5, 8, 6, 3), np.float32)
    bad[2, 1, 4, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    for read in (lambda: load_data(str(tmp_path / "nan.npy")), lambda: load_npy_stream(tmp_path / "nan.npy")):
        with pytest.raises(CvaeError, match=r"example 2, position \(1, 4, 2\)"):
            read()


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 4)), b=np.zeros((3, 4)))
    with pytest.raises(CvaeError, match="name the examples 'x'"):
        load_data(str(tmp_path / "two.npz"))
    x = np.zeros((10, 4))
    x[3, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    with pytest.raises(CvaeError, match="NaN or infinite values .*example 3"):
        load_data(str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "len.npz", x=np.zeros((10, 4)), y=np.zeros(9))
    with pytest.raises(CvaeError, match="9 entries"):
        load_data(str(tmp_path / "len.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CvaeError, match="cannot read"):
        load_data(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "ok.npz", x=np.zeros((10, 4)), y=np.arange(10) % 2)
    with pytest.raises(CvaeError, match="no condition column 'color'"):
        load_data(str(tmp_path / "ok.npz"), condition="color")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (10, 14), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    d = load_data(str(tmp_path / "imgs"), val_fraction=0.0)
    assert d.data_shape == (1, 10, 14) and d.schema.attributes[0].classes == ["cat", "dog"] and len(d.train) == 12
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "dog" / "big.png")
    with pytest.raises(CvaeError, match="--image-size"):
        load_data(str(tmp_path / "imgs"))
    d = load_data(str(tmp_path / "imgs"), image_size=(8, 8))
    assert d.data_shape == (3, 8, 8)
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(CvaeError, match="broken.png"):
        load_data(str(tmp_path / "imgs"), image_size=(8, 8))


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return str(path)


def test_csv_table_with_conditions(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[f"{rng.normal():.3f}", f"{rng.normal() * 10 + 50:.3f}", ["red", "blue"][i % 2], 8 + i % 5 + 0.5 * (i % 3)]
            for i in range(40)]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "color", "size"], rows)
    d = load_data(path, condition="color,size")
    assert d.kind == "table" and d.data_shape == (2,) and d.standardize
    assert [a.kind for a in d.schema.attributes] == ["categorical", "continuous"]
    assert d.schema.attributes[0].classes == ["blue", "red"] and d.meta["features"] == ["a", "b"]
    with pytest.raises(CvaeError, match="column 'color': text 'red'.*pass --condition color"):
        load_data(path, condition="none")  # 'color' holds text, so it cannot be a feature


def test_csv_errors(tmp_path):
    ok = write_csv(tmp_path / "ok.csv", ["a", "b", "label"], [[1, 2, "x"], [3, 4, "y"], [5, 6, "x"]])
    with pytest.raises(CvaeError, match="ok.csv has no condition column 'color'; available: a, b, label"):
        load_data(ok, condition="color")
    with pytest.raises(CvaeError, match=r"line 2, column 'label': text 'x' where a number was expected.*--condition label"):
        load_data(ok, condition="none")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,label\n1,2,x\n3,x\n")
    with pytest.raises(CvaeError, match="line 3: 2 values but the header has 3 columns"):
        load_data(str(ragged), condition="label")
    text = write_csv(tmp_path / "text.csv", ["a", "b", "label"], [[1, 2, "x"], ["oops", 4, "y"]])
    with pytest.raises(CvaeError, match="line 3, column 'a': text 'oops'"):
        load_data(text, condition="label")
    headerless = tmp_path / "headerless.csv"  # line numbers are the file's: no header, a blank line
    headerless.write_text("1,2,3\n4,5,6\n\n7,oops,9\n")
    with pytest.raises(CvaeError, match="line 4, column 'x1': text 'oops'"):
        load_data(str(headerless), condition="none")
    empty = write_csv(tmp_path / "empty.csv", ["a", "b", "label"], [[1, "", "x"], [3, 4, "y"]])
    with pytest.raises(CvaeError, match="empty cell"):
        load_data(empty, condition="label")
    nan = write_csv(tmp_path / "nan.csv", ["a", "label"], [["nan", "x"], [3, "y"]])
    with pytest.raises(CvaeError, match="NaN"):
        load_data(nan, condition="label")


def test_csv_signals(tmp_path):
    t = np.linspace(0, 1, 32)
    rows = [[*np.round(np.sin(6 * t + i), 4), i % 2] for i in range(20)]
    path = write_csv(tmp_path / "s.csv", [f"t{i}" for i in range(32)] + ["label"], rows)
    d = load_data(path, data_layout="signal")
    assert d.kind == "signal" and d.data_shape == (1, 32) and d.schema.names == ["label"]


def test_static_binarization_and_unknown_source(tmp_path):
    d = load_data("digits", binarize="static")
    assert set(torch.unique(d.train.x).tolist()) <= {0.0, 1.0} and d.binary
    with pytest.raises(CvaeError, match="no data set or file"):
        load_data("nope")
    with pytest.raises(CvaeError, match="--binarize"):
        load_data("digits", binarize="sometimes")


def test_an_infinity_in_a_float16_array_is_named(tmp_path, recwarn):
    x = np.random.default_rng(0).random((30, 8, 8)).astype(np.float16)
    np.savez(tmp_path / "ok.npz", x=x)
    assert load_data(str(tmp_path / "ok.npz")).data_shape == (1, 8, 8)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # no stray overflow warning
    x[5, 1, 1] = np.inf  # once compared with MAX_ABS cast to float16 (itself inf), and let through
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(CvaeError, match=r"infinite values \(first at example 5, position \(1, 1\)"):
        load_data(str(tmp_path / "bad.npz"))


def test_eight_bit_images_in_a_wider_integer_type_and_rounding_past_one_stay_grey_levels(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 8, 8))  # int64, as numpy makes integers: once a Gaussian, standardised
    np.savez(tmp_path / "i.npz", x=pixels)
    d = load_data(str(tmp_path / "i.npz"))
    assert not d.standardize and abs(float(d.train.x.max()) - pixels.max() / 255.0) < 1e-6
    grey = (pixels / 255.0).astype(np.float32)
    grey[0, 0, 0] = 1.0000001  # a rounding past 1: clipped, still an image in [0, 1]
    np.savez(tmp_path / "g.npz", x=grey)
    d = load_data(str(tmp_path / "g.npz"))
    assert not d.standardize and float(d.train.x.max()) <= 1.0
    grey[0, 0, 0] = 1.5  # beyond rounding: real values, modelled as such (and never clipped)
    grey[0, 0, 1] = -1e-7
    np.savez(tmp_path / "h.npz", x=grey)
    d = load_data(str(tmp_path / "h.npz"), val_fraction=0.0)
    raw = d.train.x * torch.as_tensor(d.scale) + torch.as_tensor(d.loc)
    assert d.standardize and abs(float(raw.max()) - 1.5) < 1e-4 and float(raw.min()) < 0


def test_a_class_left_without_training_examples_is_warned_of(tmp_path):
    import warnings

    from cvae.errors import CvaeWarning

    rng = np.random.default_rng(0)
    rows = ["a,b,label"] + [f"{rng.normal():.3f},{rng.normal():.3f},{['cat', 'dog'][i % 2]}" for i in range(40)]
    (tmp_path / "t.csv").write_text("\n".join(rows + ["0.1,0.2,fox"]) + "\n")  # one fox: sometimes validation's
    seen = set()
    for seed in range(8):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            d = load_data(str(tmp_path / "t.csv"), seed=seed)
        fox_trains = bool((d.train.y[:, 0] == d.schema.attributes[0].classes.index("fox")).any())
        warned = [str(w.message) for w in caught if issubclass(w.category, CvaeWarning)]
        assert bool(warned) != fox_trains and all("no training example (fox)" in m for m in warned)
        seen.add(fox_trains)
    assert seen == {True, False}  # both cases met


def test_a_class_given_as_a_number_written_another_way_is_found():
    from cvae.conditions import Attribute

    a = Attribute("label", "categorical", ["0", "0.5", "1", "3"])
    assert [a.code(v) for v in ("3.0", "0.50", np.str_("1"), 3)] == [3.0, 1.0, 2.0, 3.0]
    with pytest.raises(CvaeError, match="'abc' is not a number"):  # not np.str_('abc')
        Attribute("age", "continuous").code(np.str_("abc"))


def test_image_arrays_a_user_saves_are_read_in_their_own_scale_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    rgb = np.zeros((40, 4, 4, 3), np.uint8)
    rgb[y == 0, ..., 0] = 255
    rgb[y == 1, ..., 2] = 255  # square channel-last images were read as 4 channels of 4x3 pixels
    np.savez(tmp_path / "hwc.npz", x=rgb, y=y)
    d = load_data(str(tmp_path / "hwc.npz"), val_fraction=0.0)
    assert d.data_shape == (3, 4, 4) and set(torch.unique(d.train.x[:, 1]).tolist()) == {0.0}
    masks = (rng.random((40, 1, 6, 6)) < 0.5).astype(np.uint8)  # 0/1 masks were divided by 255
    np.savez(tmp_path / "mask.npz", x=masks, y=y)
    assert float(load_data(str(tmp_path / "mask.npz")).train.x.max()) == 1.0
    pixels = rng.random((40, 3, 6, 6)).astype(np.float32) * 255  # float 0..255 became standardised features
    np.savez(tmp_path / "f255.npz", x=pixels, y=y)
    d = load_data(str(tmp_path / "f255.npz"), val_fraction=0.0)
    assert not d.standardize and torch.allclose(d.train.x, torch.from_numpy(pixels / 255), atol=1e-6)
    deep = (rng.random((40, 1, 6, 6)) * 65535).astype(np.uint16)
    np.savez(tmp_path / "u16.npz", x=deep, y=y)
    d = load_data(str(tmp_path / "u16.npz"), val_fraction=0.0)
    assert not d.standardize and torch.allclose(d.train.x, torch.from_numpy(deep / np.float32(65535)), atol=1e-6)


def test_float_tiffs_in_0_1_and_the_size_message_of_an_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in "ab":
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.random((8, 8)).astype(np.float32) * 0.9 + 0.1, "F").save(tmp_path / "f" / c / f"{i}.tif")
    assert float(load_data(str(tmp_path / "f"), val_fraction=0.0).train.x.max()) > 0.5  # were divided by 255
    for c, size in (("a", (16, 16)), ("b", (23, 17))):  # PIL sizes are (width, height)
        (tmp_path / "m" / c).mkdir(parents=True)
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(tmp_path / "m" / c / "0.png")
    with pytest.raises(CvaeError, match=r"0.png is 17x23 \(height x width\) but .* is 16x16"):
        load_data(str(tmp_path / "m"))


def test_transparent_images_are_read_as_drawn_on_white(tmp_path):
    """An RGBA icon's transparent pixels hold whatever colour the program left there (here a saturated
    green): they are read as the white a viewer shows, half-transparent ones blended; grey + alpha stays
    one grey channel (it was read as three)."""
    from PIL import Image

    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., :3] = (0, 255, 0)  # hidden colour under alpha 0
    rgba[:3, :, :3], rgba[:3, :, 3] = (200, 40, 40), 255  # an opaque red top half
    rgba[3, 0] = (0, 0, 0, 128)  # one half-transparent black pixel

    def first_image(folder, array, mode):  # a two-class folder of copies of one picture, read back
        for c in "ab":
            (tmp_path / folder / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(array, mode).save(tmp_path / folder / c / f"{i}.png")
        return load_data(str(tmp_path / folder), val_fraction=0.0).train.x[0].numpy()

    x = first_image("icons", rgba, "RGBA")
    assert x.shape == (3, 6, 6)
    np.testing.assert_allclose(x[:, 4:, :], 1.0)  # transparent: white, not green
    np.testing.assert_allclose(x[:, 0, 0], np.array([200, 40, 40]) / 255, atol=1e-6)
    np.testing.assert_allclose(x[:, 3, 0], 127 / 255, atol=1 / 255)  # half of white
    la = np.stack([np.full((6, 6), 30, np.uint8), np.where(np.arange(6) < 3, 255, 0).astype(np.uint8)[None].repeat(6, 0)], -1)
    g = first_image("grey", la, "LA")
    assert g.shape == (1, 6, 6)
    np.testing.assert_allclose(g[0, :, :3], 30 / 255, atol=1e-6)
    np.testing.assert_allclose(g[0, :, 3:], 1.0)


def test_image_size_resizes_array_files_and_named_sets_too(tmp_path):
    x = np.random.default_rng(0).random((30, 1, 10, 10)).astype(np.float32)
    np.savez(tmp_path / "sq.npz", x=x, y=np.arange(30) % 3)
    d = load_data(str(tmp_path / "sq.npz"), image_size=(8, 8))  # it was silently ignored
    assert d.data_shape == (1, 8, 8) and float(d.train.x.min()) >= 0 and float(d.train.x.max()) <= 1
    assert load_data("digits", image_size=(16, 12)).data_shape == (1, 16, 12)
    np.save(tmp_path / "t.npy", np.random.default_rng(1).normal(size=(20, 5)))
    with pytest.raises(CvaeError, match="--image-size resizes images"):
        load_data(str(tmp_path / "t.npy"), image_size=(8, 8))


def test_four_channel_images_are_drawn_in_colour_over_white():
    from cvae.plots import to_display

    green = np.zeros((1, 4, 2, 2), np.float32)
    green[:, 1] = green[:, 3] = 1.0  # opaque green: drawn as channel 0, black
    assert to_display(green)[0, 0, 0].tolist() == [0.0, 1.0, 0.0]
    clear = np.zeros((1, 4, 2, 2), np.float32)  # fully transparent: the page shows
    assert to_display(clear)[0, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert to_display(np.ones((1, 2, 2, 2), np.float32)).shape == (1, 2, 2)  # grey + alpha: grey


@pytest.mark.parametrize("array", [
    (np.random.default_rng(0).random((40, 9, 9)) < 0.5).astype(np.uint8),  # 0/1 masks
    (np.random.default_rng(0).random((40, 9, 9)) * 255).astype(np.float32),  # floats in 0..255
    (np.random.default_rng(0).random((40, 9, 9)) * 65535).astype(np.uint16),  # 16-bit
])
def test_a_streamed_file_is_read_in_the_same_units_as_in_memory(tmp_path, array):
    import warnings

    from cvae.data.stream import load_npy_stream

    np.save(tmp_path / "a.npy", array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memory, stream = load_data(str(tmp_path / "a.npy")), load_npy_stream(tmp_path / "a.npy")
    assert not stream.standardize and not memory.standardize
    assert torch.allclose(stream.train.x[0:len(stream.train)], memory.train.x)


def test_small_square_arrays_are_matrices_not_pictures(tmp_path):
    np.save(tmp_path / "m.npy", np.random.default_rng(0).uniform(0, 100, (50, 3, 3)).astype(np.float32))
    d = load_data(str(tmp_path / "m.npy"))
    assert d.kind == "signal" and d.standardize  # (N, 3, 3) distances: not 3x3 pictures divided by 255


def test_a_signal_array_that_looks_channel_last_is_read_as_stored_with_a_warning(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.random.default_rng(0).normal(size=(30, 64, 3)).astype(np.float32))
    with pytest.warns(Warning, match=r"read as 64 channels of 3 steps.*x.transpose\(0, 2, 1\)"):
        d = load_data(str(tmp_path / "s.npz"))
    assert d.data_shape == (64, 3)


def test_seventeen_digit_class_codes_stay_apart(tmp_path):
    """Whole-number labels past float64's exact integers (barcodes, 17-digit ids) were read as floats,
    so ...567 and ...568 became one class named '1.2345678901234568e+16'."""
    from cvae.cli import main

    rng = np.random.default_rng(0)
    codes = [12345678901234567, 12345678901234568, 7]
    path = write_csv(tmp_path / "big.csv", ["a", "b", "label"],
                     [[f"{rng.normal():.3f}", f"{rng.normal():.3f}", codes[i % 3]] for i in range(30)])
    d = load_data(path, val_fraction=0.0)
    assert d.schema.attributes[0].classes == ["7", "12345678901234567", "12345678901234568"]
    assert np.bincount(d.train.y.numpy()[:, 0].astype(int)).tolist() == [10, 10, 10]
    run = tmp_path / "run"
    assert main(["train", "--data", path, "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--no-progress",
                 "--no-tensorboard", "--no-pictures", "--out", str(run)]) == 0
    assert main(["sample", str(run), "--condition", "label=12345678901234568", "--n", "3",
                 "-o", str(tmp_path / "s.csv")]) == 0
    assert "12345678901234568" in (tmp_path / "s.csv").read_text()
