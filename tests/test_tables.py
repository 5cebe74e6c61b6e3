"""Tables with several conditions: a CSV with numeric feature columns, a categorical and a continuous
condition column (built from scikit-learn's bundled wine data), trained with standardised features and
a Gaussian likelihood; samples come back in original units with the column names. Bad input through
the command line gets a clear one-line error."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.datasets import load_wine

import cvae
from cvae.cli import main
from cvae.data import load_data

CULTIVARS = ["barolo", "grignolino", "barbera"]
QUIET = ["--no-progress", "--no-tensorboard"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_wine(path, *, drop=None, rows=None):
    """wine.csv: id, 12 chemistry features, alcohol (a continuous condition), cultivar (categorical)."""
    d = load_wine()
    names = list(d.feature_names)
    header = ["id", *[n for n in names if n != drop], "cultivar"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, (x, t) in enumerate(zip(d.data, d.target)):
            if rows is not None and i not in rows:
                continue
            w.writerow([f"w{i:03d}", *[f"{v:g}" for n, v in zip(names, x) if n != drop], CULTIVARS[t]])
    return d


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wine")
    d = write_wine(folder / "wine.csv")
    run = folder / "run"
    assert main(["train", "--data", str(folder / "wine.csv"), "--condition", "cultivar,alcohol:continuous",
                 "--epochs", "60", "--batch-size", "32", "--hidden", "64", "--latent-dim", "4", "--no-pictures",
                 *QUIET, "--out", str(run)]) == 0
    return folder, run, d


def test_the_table_trains_standardised_with_a_gaussian_likelihood(wine):
    _, run, d = wine
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["likelihood"] == "gaussian-learned" and cfg["model"]["standardize"] is True
    attrs = cfg["model"]["schema"]["attributes"]
    assert [(a["name"], a["kind"]) for a in attrs] == [("cultivar", "categorical"), ("alcohol", "continuous")]
    assert attrs[0]["classes"] == sorted(CULTIVARS)
    features = [n for n in d.feature_names if n != "alcohol"]
    assert cfg["data"]["features"] == features
    model = cvae.load(run)
    # the model keeps the features' training mean and spread, in original units
    proline = features.index("proline")
    assert 600 < float(model.x_loc[proline]) < 900 and 200 < float(model.x_scale[proline]) < 400


def test_sample_gives_rows_in_original_units_with_column_names(wine, tmp_path, capsys):
    _, run, d = wine
    features = [n for n in d.feature_names if n != "alcohol"]
    means = {}
    for cultivar in ("barolo", "grignolino"):
        out = tmp_path / f"{cultivar}.csv"
        assert main(["sample", str(run), "--condition", f"cultivar={cultivar},alcohol=13.5", "--n", "200",
                     "-o", str(out)]) == 0
        rows = _rows(out)
        assert len(rows) == 200
        assert list(rows[0]) == [*features, "cultivar", "alcohol"]
        assert {r["cultivar"] for r in rows} == {cultivar} and {float(r["alcohol"]) for r in rows} == {13.5}
        means[cultivar] = {k: np.mean([float(r[k]) for r in rows]) for k in features}
    real = {c: d.data[d.target == k].mean(0) for k, c in enumerate(CULTIVARS)}
    j = list(d.feature_names).index("proline")
    # proline: barolo about 1116, grignolino about 520 in the data; the samples follow, in those units
    assert abs(means["barolo"]["proline"] - real["barolo"][j]) < 200
    assert abs(means["grignolino"]["proline"] - real["grignolino"][j]) < 200
    assert means["barolo"]["proline"] - means["grignolino"]["proline"] > 300
    # draws from p(x | z, c) spread like the data; leaving a condition out uses its mean / every class
    assert main(["sample", str(run), "--n", "30", "--draw", "-o", str(tmp_path / "all.npz")]) == 0
    with np.load(tmp_path / "all.npz") as z:
        assert z["x"].shape == (30, 12) and sorted(set(z["cultivar"].tolist())) == sorted(CULTIVARS)
        assert np.allclose(z["alcohol"], d.data[:, 0].mean(), atol=0.2)


def test_table_applications(wine, tmp_path):
    folder, run, d = wine
    # transfer: a target names what changes, the continuous condition keeps each row's own value
    assert main(["transfer", str(run), "--input", str(folder / "wine.csv"), "--n", "3", "--to", "cultivar=all",
                 "-o", str(tmp_path / "t.csv")]) == 0
    rows = _rows(tmp_path / "t.csv")
    assert len(rows) == 9 and [r["cultivar"] for r in rows[:3]] == sorted(CULTIVARS)
    assert [float(r["alcohol"]) for r in rows[::3]] == pytest.approx(d.data[:3, 0].tolist())
    assert [r["input"] for r in rows[::3]] == ["w000", "w001", "w002"]
    # latent export with the ids and both conditions, and a map coloured by the continuous one
    assert main(["embed", str(run), "--data", str(folder / "wine.csv"), "-o", str(tmp_path / "z.csv"),
                 "--map", str(tmp_path / "map.png"), "--color-by", "alcohol"]) == 0
    rows = _rows(tmp_path / "z.csv")
    assert len(rows) == 178 and list(rows[0])[:3] == ["id", "cultivar", "alcohol"] and rows[5]["id"] == "w005"
    # a balanced synthetic table, merged with the real rows, that trains again
    assert main(["augment", str(run), "--balance", "--merge", "-o", str(tmp_path / "bal.csv")]) == 0
    rows = _rows(tmp_path / "bal.csv")
    counts = {c: sum(r["cultivar"] == c for r in rows) for c in CULTIVARS}
    assert set(counts.values()) == {max(np.bincount(d.target))}
    assert main(["train", "--data", str(tmp_path / "bal.csv"), "--condition", "cultivar,alcohol:continuous",
                 "--epochs", "1", "--no-pictures", *QUIET, "--out", str(tmp_path / "again")]) == 0
    # interpolation and traversal of a table are written as rows
    assert main(["interpolate", str(run), "--input", str(folder / "wine.csv"), "--from", "w000", "--to", "w100",
                 "--steps", "5", "-o", str(tmp_path / "i.csv")]) == 0
    rows = _rows(tmp_path / "i.csv")
    assert len(rows) == 5 and rows[0]["start"].startswith("#w000")
    assert main(["traverse", str(run), "--data", str(folder / "wine.csv"), "--top", "2", "--steps", "3",
                 "-o", str(tmp_path / "tr.csv")]) == 0
    assert len(_rows(tmp_path / "tr.csv")) == 6


# -- bad input: one clear line, exit status 2 ------------------------------------------------------

def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_missing_column(wine, tmp_path, capsys):
    folder, run, _ = wine
    err = _error(["train", "--data", str(folder / "wine.csv"), "--condition", "color", *QUIET,
                  "--out", str(tmp_path / "r")], capsys)
    assert "no condition column 'color'" in err and "cultivar" in err
    write_wine(tmp_path / "no_proline.csv", drop="proline")
    err = _error(["embed", str(run), "--data", str(tmp_path / "no_proline.csv"), "-o", str(tmp_path / "z.csv")], capsys)
    assert "lacks the feature column(s) proline" in err
    err = _error(["anomaly", "fit", "--data", str(folder / "wine.csv"), "--label-column", "quality", *QUIET,
                  "--out", str(tmp_path / "a")], capsys)
    assert "no column 'quality'" in err


def test_text_in_a_numeric_column(tmp_path, capsys):
    path = tmp_path / "text.csv"
    write_wine(path)
    lines = path.read_text().splitlines()
    cells = lines[3].split(",")
    cells[2] = "n/a"
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    err = _error(["train", "--data", str(path), "--condition", "cultivar", *QUIET, "--out", str(tmp_path / "r")], capsys)
    assert "line 4" in err and "'malic_acid'" in err and "'n/a'" in err and "number" in err


def test_ragged_rows(tmp_path, capsys):
    path = tmp_path / "ragged.csv"
    write_wine(path)
    lines = path.read_text().splitlines()
    lines[6] = lines[6] + ",0.5"
    path.write_text("\n".join(lines) + "\n")
    err = _error(["train", "--data", str(path), "--condition", "cultivar", *QUIET, "--out", str(tmp_path / "r")], capsys)
    assert "line 7" in err and "ragged" in err


def test_an_unknown_condition_value(wine, tmp_path, capsys):
    folder, run, _ = wine
    err = _error(["sample", str(run), "--condition", "cultivar=merlot", "-o", str(tmp_path / "s.csv")], capsys)
    assert "unknown value 'merlot' for condition 'cultivar'" in err and "barolo" in err
    err = _error(["sample", str(run), "--condition", "alcohol=strong", "-o", str(tmp_path / "s.csv")], capsys)
    assert "'alcohol' is continuous" in err
    err = _error(["sample", str(run), "--condition", "colour=red", "-o", str(tmp_path / "s.csv")], capsys)
    assert "unknown condition 'colour'" in err
    # an input file whose rows hold a value the model never saw
    path = tmp_path / "merlot.csv"
    write_wine(path, rows=range(5))
    path.write_text(path.read_text().replace("barolo", "merlot", 1))
    err = _error(["transfer", str(run), "--input", str(path), "--to", "cultivar=barbera", "-o", str(tmp_path / "t.csv")], capsys)
    assert "unknown value 'merlot'" in err
    err = _error(["transfer", str(run), "--input", str(folder / "wine.csv"), "--to", "cultivar=merlot",
                  "-o", str(tmp_path / "t.csv")], capsys)
    assert "unknown value 'merlot'" in err


def test_a_feature_of_tiny_spread_keeps_its_own_scale(tmp_path):
    # a concentration of 2e-6 +- 5e-7 mol/L had its scale floored to 1: generated values came back +-0.1
    from cvae.data.core import feature_scale

    scale = feature_scale(np.array([2e-6, 7.0, 1e6, 0.0, 1e6]), np.array([5e-7, 0.0, 1e-4, 0.0, 0.5]))
    assert scale[0] == np.float32(5e-7) and scale[1] == 1.0 and scale[2] == 1.0 and scale[3] == 1.0
    assert scale[4] == np.float32(0.5)  # 1e6 +- 0.5 is a spread float32 resolves (0.06 at 1e6)
    rng = np.random.default_rng(0)
    rows = ["x1,conc,grp"] + [f"{rng.normal(10, 1):.4f},{rng.normal(2e-6, 5e-7):.4e},{'ab'[i % 2]}" for i in range(200)]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    d = load_data(str(tmp_path / "c.csv"), condition="grp")
    assert abs(float(d.train.x[:, 1].std()) - 1.0) < 0.2  # standardised by its own spread


def test_tab_and_semicolon_files_with_long_lines_train_and_their_runs_are_usable(tmp_path):
    # the delimiter was guessed from the first 4,096 characters (a line of 800 samples is longer), and a run
    # trained on a .tsv could not be used by reconstruct, embed or transfer (they read .csv files only)
    rng = np.random.default_rng(0)
    header = ";".join([f"t{i}" for i in range(800)] + ["label"])
    lines = [";".join(f"{v:.3f}" for v in rng.normal(size=800)) + f";{i % 2}" for i in range(30)]
    (tmp_path / "sig.csv").write_text(header + "\n" + "\n".join(lines) + "\n")
    data = load_data(str(tmp_path / "sig.csv"), data_layout="signal")
    assert data.data_shape == (1, 800) and data.schema.names == ["label"]
    rows = ["a\tb\tgrp"] + [f"{rng.normal():.3f}\t{rng.normal():.3f}\t{'xy'[i % 2]}" for i in range(60)]
    (tmp_path / "tab.tsv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "tab.tsv"), "--condition", "grp", "--epochs", "1", "--out", str(run),
                 "--no-progress", "--no-tensorboard", "--no-pictures"]) == 0
    assert main(["reconstruct", str(run), "--input", str(tmp_path / "tab.tsv"), "-o", str(tmp_path / "r.csv")]) == 0
    assert main(["embed", str(run), "-o", str(tmp_path / "e.csv")]) == 0
    with open(tmp_path / "r.csv") as f:
        assert len(list(csv.reader(f))) == 61


def test_a_column_whose_name_holds_a_comma_is_a_condition_in_quotes(tmp_path):
    rng = np.random.default_rng(0)
    rows = ['a,b,"city, state"'] + [f"{rng.normal():.3f},{rng.normal():.3f},{['Austin, TX', 'Reno, NV'][i % 2]!r}"
                                    .replace("'", '"') for i in range(40)]
    (tmp_path / "q.csv").write_text("\n".join(rows) + "\n")
    data = load_data(str(tmp_path / "q.csv"), condition='"city, state"')
    assert data.schema.names == ["city, state"] and data.schema.attributes[0].classes == ["Austin, TX", "Reno, NV"]
    assert load_data(str(tmp_path / "q.csv"), condition="'city, state':categorical").schema.names == ["city, state"]


def test_a_comma_at_the_end_of_every_line_is_not_a_column():
    import tempfile
    from pathlib import Path

    from cvae.data.sources import read_csv_table

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.csv"
        p.write_text("a,b,grp,\n1,2,x,\n3,4,y,\n")
        header, rows = read_csv_table(p)
    assert header == ["a", "b", "grp"] and [list(r) for r in rows] == [["1", "2", "x"], ["3", "4", "y"]]


def test_reconstructions_keep_ids_and_signal_samples_get_a_panel_per_class(tmp_path, monkeypatch):
    import importlib

    generate = importlib.import_module("cvae.apps.generate")

    rng = np.random.default_rng(0)
    rows = ["id,a,b,grp"] + [f"S{i:04d},{rng.normal():.3f},{rng.normal():.3f},{'xy'[i % 2]}" for i in range(40)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    common = ["--epochs", "1", "--no-progress", "--no-tensorboard", "--no-pictures"]
    assert main(["train", "--data", str(tmp_path / "t.csv"), "--condition", "grp", "--out", str(run), *common]) == 0
    assert main(["reconstruct", str(run), "--input", str(tmp_path / "t.csv"), "-o", str(tmp_path / "r.csv")]) == 0
    with open(tmp_path / "r.csv") as f:
        table = list(csv.DictReader(f))
    assert table[0]["id"] == "S0000" and table[-1]["id"] == "S0039"  # the rows can be joined back
    noted = [rows[0] + ",notes"] + [r + ",seen twice" for r in rows[1:]]  # a text column the model never had
    (tmp_path / "n.csv").write_text("\n".join(noted) + "\n")
    assert main(["reconstruct", str(run), "--input", str(tmp_path / "n.csv"), "-o", str(tmp_path / "n-r.csv")]) == 0
    np.savez(tmp_path / "s.npz", x=rng.normal(size=(40, 1, 30)).astype(np.float32), label=np.arange(40) % 2)
    assert main(["train", "--data", str(tmp_path / "s.npz"), "--out", str(tmp_path / "sig"), *common]) == 0
    seen = {}
    monkeypatch.setattr(generate, "save_signals", lambda out, rows, **kw: seen.update(rows=rows, **kw) or out)
    assert main(["sample", str(tmp_path / "sig"), "--n", "6", "-o", str(tmp_path / "s.png")]) == 0
    assert seen["row_labels"] == ["label=0", "label=1"] and [len(r) for r in seen["rows"]] == [3, 3]


def test_an_id_column_is_known_by_its_name(tmp_path):
    # only a column named exactly 'id' was ids: 'Sample Id' was refused as text (whose advice made it a
    # 150-class condition) and a numeric patient_id silently became a feature
    import warnings

    rng = np.random.default_rng(0)
    for name, value in (("Sample Id", lambda i: f"S{i:03d}"), ("patient_id", lambda i: str(1000 + i))):
        rows = [f'"{name}",a,b,grp'] + [f"{value(i)},{rng.normal():.3f},{rng.normal():.3f},{'xy'[i % 2]}" for i in range(30)]
        (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = load_data(str(tmp_path / "t.csv"), condition="grp", val_fraction=0.0)
        assert data.data_shape == (2,) and data.meta["features"] == ["a", "b"]
        assert data.train.ids[0] == value(0) and any("read as the rows' ids" in str(w.message) for w in caught)


def test_a_class_or_target_column_is_the_default_condition(tmp_path):
    # a 'Class' text column was refused as text in a feature; a numeric 'target' silently became a feature
    import warnings

    rng = np.random.default_rng(0)
    for name, value in (("Class", lambda i: "ab"[i % 2]), ("target", lambda i: str(i % 3))):
        rows = [f"a,b,{name}"] + [f"{rng.normal():.3f},{rng.normal():.3f},{value(i)}" for i in range(30)]
        (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = load_data(str(tmp_path / "t.csv"))
        assert data.schema.names == [name] and data.data_shape == (2,)
        assert any("is the condition (its name says so)" in str(w.message) for w in caught)
        assert not load_data(str(tmp_path / "t.csv"), condition="none", data_layout="auto").schema if name == "target" else True


def test_whole_number_columns_are_written_back_as_whole_numbers(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["count,a,age,grp"] + [f"{rng.integers(0, 10)},{rng.normal():.3f},{rng.integers(20, 70)},{'xy'[i % 2]}"
                                  for i in range(60)]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "c.csv"), "--condition", "grp,age:continuous", "--epochs", "1",
                 "--out", str(run), "--no-progress", "--no-tensorboard", "--no-pictures"]) == 0
    assert main(["sample", str(run), "--condition", "grp=x,age=45", "--n", "5", "-o", str(tmp_path / "s.csv")]) == 0
    with open(tmp_path / "s.csv") as f:
        table = list(csv.DictReader(f))
    assert all(r["count"].lstrip("-").isdigit() and r["age"] == "45" for r in table)  # not 4.83271, not 45.0
    assert any("." in r["a"] for r in table)  # a real-valued column keeps its fractions


def test_a_headerless_file_whose_last_column_looks_like_labels_says_so(tmp_path):
    rng = np.random.default_rng(0)
    lines = [",".join(f"{v:.4f}" for v in rng.normal(size=20)) + f",{i % 3}" for i in range(30)]
    (tmp_path / "beats.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(Warning, match="last column holds whole numbers .* pass --condition x20"):
        data = load_data(str(tmp_path / "beats.csv"), data_layout="signal")
    assert data.data_shape == (1, 21)  # read as data, as stored
    assert load_data(str(tmp_path / "beats.csv"), data_layout="signal", condition="x20").data_shape == (1, 20)
