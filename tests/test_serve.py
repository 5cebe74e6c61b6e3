"""cvae serve: the JSON API (the same functions as the CLI, deterministic for a seed, clear 4xx answers
to bad requests), the command itself, a burst of concurrent requests against a live server, and the
page in a headless Chromium, used as a person uses it.

The browser test needs Debian's ``chromium`` (``apt-get install -y chromium``): it is skipped where no
browser exists, except under CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("fastapi") is None:  # the extra is part of cvae[test]: CI has it
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise ImportError('cvae serve\'s tests need its extra under CI: pip install -e ".[test]"')
    pytest.skip('cvae serve needs its extra: pip install "cvae[serve]"', allow_module_level=True)

from _cdp import Browser, find_chromium  # noqa: E402
from conftest import need_module  # noqa: E402
from test_apps import heartbeats, write_beats  # noqa: E402
from test_tables import write_wine  # noqa: E402

import cvae  # noqa: E402
from cvae.apps import fit_anomaly  # noqa: E402
from cvae.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"progress": False, "tensorboard": False}
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# CVAE_SERVE_SCREENSHOT=docs/images/serve.png saves the browser test's screenshot for the README, of a
# digits model trained long enough to show digits (150 epochs, about 10 s) instead of 3 epochs.
DIGITS_EPOCHS = 150 if os.environ.get("CVAE_SERVE_SCREENSHOT") else 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four small runs: a conditional model of the 8x8 digits (images), a table with a categorical and
    a continuous condition (wine), an anomaly detector of heartbeat signals, and molecules conditioned
    on logP (a sequence run, guided and steered: it needs RDKit, the chem extra)."""
    need_module("rdkit", "pip install 'cvae[chem]'")
    d = tmp_path_factory.mktemp("serve")
    cvae.train(data="digits", epochs=DIGITS_EPOCHS, batch_size=64, latent_dim=4, out=d / "digits", **QUIET)
    write_wine(d / "wine.csv")
    cvae.train(data=str(d / "wine.csv"), condition="cultivar,alcohol:continuous", epochs=20, batch_size=32,
               hidden=[64], latent_dim=4, out=d / "wine", pictures=False, **QUIET)
    x, y = heartbeats(300, 40, seed=0)
    write_beats(d / "beats.csv", x, y)
    x, y = heartbeats(6, 6, seed=1)
    write_beats(d / "beats-test.csv", x, y)
    fit_anomaly(str(d / "beats.csv"), out=d / "beats", normal="0", data_layout="signal", epochs=5, batch_size=32,
                hidden=[32], latent_dim=4, pictures=False, **QUIET)
    cvae.train(data=str(ROOT / "tests" / "data" / "qm9-150.csv"), sequence="smiles", condition="logp", epochs=2,
               batch_size=32, hidden=[32], latent_dim=4, condition_dropout=0.2, guidance=1, steer=2,
               out=d / "mols", pictures=False, **QUIET)
    return d


@pytest.fixture(scope="module")
def client(runs):
    from fastapi.testclient import TestClient

    from cvae.serve import create_app
    from cvae.serve.served import Limits

    app = create_app([runs / "digits", runs / "wine", runs / "beats", runs / "mols"],
                     limits=Limits(max_upload_bytes=200_000))
    with TestClient(app) as c:
        yield c


def digit_png(index: int = 3, size: int = 8) -> bytes:
    """One of scikit-learn's digits as a PNG (grey levels 0-255), optionally scaled up."""
    from PIL import Image
    from sklearn.datasets import load_digits

    img = Image.fromarray((load_digits().images[index] / 16 * 255).round().astype(np.uint8))
    if size != 8:
        img = img.resize((size, size), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_array(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- the API ----------------------------------------------------------------------------------------

def test_each_run_is_described(client):
    info = {r["name"]: r for r in client.get("/v1/runs").json()["runs"]}
    assert set(info) == {"digits", "wine", "beats", "mols"}
    assert [info[n]["kind"] for n in ("digits", "wine", "beats", "mols")] == ["image", "table", "signal", "sequence"]
    assert info["mols"]["steer"] == {"available": True, "default": 2.0}
    assert len(info["mols"]["kl_per_dimension"]) == 4 and "examples of qm9-150.csv" in info["mols"]["kl_note"]
    assert info["digits"]["steer"] == {"available": False, "default": 0.0}
    assert info["digits"]["conditions"] == [{"name": "label", "kind": "categorical", "classes": [str(i) for i in range(10)]}]
    alcohol = info["wine"]["conditions"][1]
    assert alcohol["kind"] == "continuous" and alcohol["min"] < alcohol["mean"] < alcohol["max"]
    assert info["beats"]["detector"]["score"] == "elbo" and info["digits"]["detector"] is None
    assert info["digits"]["guidance"] == {"available": True, "default": 2.0}  # guided by default
    assert info["wine"]["guidance"] == {"available": False, "default": 0.0}
    kl = info["digits"]["kl_per_dimension"]
    assert info["digits"]["sliders"] == sorted(range(4), key=lambda d: -kl[d])  # highest KL first
    assert "samples.png" in info["digits"]["pictures"]
    assert client.get("/v1/runs/digits/pictures/samples.png").content[:8] == b"\x89PNG\r\n\x1a\n"
    assert info["digits"]["metrics"]["summary"]["epochs"] == DIGITS_EPOCHS
    paths = client.get("/openapi.json").json()["paths"]
    for op in ("generate", "reconstruct", "transfer", "score", "encode", "traverse", "decode", "classify"):
        assert f"/v1/runs/{{run}}/{op}" in paths
    # one categorical condition alone: Bayes' rule; a categorical and a continuous one, or none: no
    assert [info[n]["classifies"] for n in ("digits", "wine", "beats", "mols")] == [["label"], [], [], []]


def test_generate_is_deterministic_and_is_what_cvae_sample_makes(client, runs, tmp_path):
    body = {"condition": {"label": "3"}, "n": 8, "seed": 5}
    a = client.post("/v1/runs/digits/generate", json=body)
    b = client.post("/v1/runs/digits/generate", json=body)
    assert a.status_code == 200 and a.content == b.content  # the same request, the same bytes
    other = client.post("/v1/runs/digits/generate", json={**body, "seed": 6})
    assert other.json()["png"] != a.json()["png"]
    raw = client.post("/v1/runs/digits/generate", json={**body, "format": "png"})
    assert raw.headers["content-type"] == "image/png" and raw.content == base64.b64decode(a.json()["png"])
    assert a.json()["conditions"] == ["label=3"] * 8
    # the CLI's samples for the same condition and seed are the pixels of the served grid
    assert main(["sample", str(runs / "digits"), "--condition", "label=3", "--n", "8", "--seed", "5",
                 "-o", str(tmp_path / "s.npz")]) == 0
    x = np.load(tmp_path / "s.npz")["x"]  # (8, 1, 8, 8)
    grid = png_array(raw.content)
    assert grid.shape == (10, 73)  # one row of 8 with 1-pixel borders
    tiles = np.stack([grid[1:9, 1 + 9 * i: 9 + 9 * i] for i in range(8)])
    np.testing.assert_array_equal(tiles, np.clip(np.round(x[:, 0] * 255), 0, 255).astype(np.uint8))


def test_a_table_comes_back_as_numbers_under_its_column_names(client, runs, tmp_path):
    out = client.post("/v1/runs/wine/generate", json={"condition": {"cultivar": "barolo", "alcohol": 14}, "n": 3,
                                                      "seed": 2}).json()
    assert out["kind"] == "table" and "png" not in out and "proline" in out["features"]
    assert main(["sample", str(runs / "wine"), "--condition", "cultivar=barolo,alcohol=14", "--n", "3", "--seed", "2",
                 "-o", str(tmp_path / "rows.csv")]) == 0
    rows = _rows(tmp_path / "rows.csv")
    cli = np.array([[float(r[f]) for f in out["features"]] for r in rows])
    np.testing.assert_allclose(np.array(out["values"]), cli, rtol=1e-5)
    t = client.post("/v1/runs/wine/traverse", json={"top": 2, "steps": 3}).json()
    assert t["kind"] == "table" and len(t["values"]) == 6 and t["values"][0] != t["values"][2]


def test_molecules_come_back_as_strings_with_their_properties_as_cvae_sample_makes(client, runs, tmp_path):
    body = {"condition": {"logp": 1.0}, "n": 6, "seed": 3}
    out = client.post("/v1/runs/mols/generate", json=body).json()
    assert out["kind"] == "sequence" and (out["guidance"], out["steer"]) == (1.0, 2.0)
    assert len(out["strings"]) == 6 and out["conditions"] == ["logp=1"] * 6
    assert main(["sample", str(runs / "mols"), "--condition", "logp=1", "--n", "6", "--seed", "3",
                 "-o", str(tmp_path / "m.csv")]) == 0
    rows = _rows(tmp_path / "m.csv")
    assert out["strings"] == [r["smiles"] for r in rows] and out["valid"] == [r["valid"] == "1" for r in rows]
    np.testing.assert_allclose([v for v in out["achieved"]["logp"] if v is not None],
                               [float(r["logp"]) for r in rows if r["logp"]], atol=1e-3)
    for flags in ({"steer": 0}, {"draw": True}, {"guidance": 0}):  # each a different decoding
        assert client.post("/v1/runs/mols/generate", json={**body, **flags}).json()["strings"] != out["strings"]
    d = client.post("/v1/runs/mols/decode", json={"condition": {"logp": 1.0}, "values": {"0": 2.0}}).json()
    assert d["kind"] == "sequence" and len(d["strings"]) == 1
    t = client.post("/v1/runs/mols/traverse", json={"top": 2, "steps": 3}).json()
    assert t["kind"] == "sequence" and len(t["strings"]) == 6


def test_uploaded_molecules_are_reconstructed_transferred_and_encoded_as_the_cli_does(client, runs, tmp_path):
    """A text file of SMILES (a name after each, as in .smi files), its logP computed by RDKit as the CLI
    does when --condition is left out: the same strings and codes as cvae reconstruct/transfer/embed."""
    smi = tmp_path / "two.smi"
    smi.write_text("CCO ethanol\n\nc1ccoc1 furan\n")
    files = {"file": ("two.smi", smi.read_bytes(), "text/plain")}
    rec = client.post("/v1/runs/mols/reconstruct", files=files).json()
    assert rec["ids"] == ["line 1", "line 3"] and rec["input"]["strings"] == ["CCO", "c1ccoc1"]
    assert main(["reconstruct", str(runs / "mols"), "--input", str(smi), "-o", str(tmp_path / "r.csv")]) == 0
    rows = _rows(tmp_path / "r.csv")
    assert rec["reconstruction"]["strings"] == [r["reconstruction"] for r in rows]
    assert rec["same"] == [r["same"] == "1" for r in rows] and rec["conditions"] == [f"logp={r['logp']}" for r in rows]
    t = client.post("/v1/runs/mols/transfer", files=files, data={"targets": "logp=0;logp=2"}).json()
    assert t["kind"] == "sequence" and t["targets"] == ["logp=0", "logp=2"] and t["inputs"] == 2
    assert main(["transfer", str(runs / "mols"), "--input", str(smi), "--to", "logp=0", "--to", "logp=2",
                 "-o", str(tmp_path / "t.csv")]) == 0
    moved = {(r["input"], r["target"]): r["output"] for r in _rows(tmp_path / "t.csv")}
    from cvae.chem import canonical

    by_cli = [moved[(t["input_strings"][k // 2], t["targets"][k % 2])] for k in range(4)]  # input by input
    assert t["strings"] == [canonical(s) or s for s in by_cli]
    e = client.post("/v1/runs/mols/encode", files=files).json()
    assert main(["embed", str(runs / "mols"), "--data", str(smi), "-o", str(tmp_path / "e.csv")]) == 0
    codes = _rows(tmp_path / "e.csv")
    np.testing.assert_allclose(e["mu"], [[float(r[f"mu_{d}"]) for d in range(len(e["mu"][0]))] for r in codes],
                               rtol=1e-5, atol=1e-6)
    assert e["conditions"]["logp"] == [float(r["logp"]) for r in codes]


def test_uploads_are_reconstructed_transferred_and_encoded_as_the_cli_does(client, runs, tmp_path):
    png = digit_png(3, size=32)  # resized to 8x8 as the CLI's image reader does
    files = {"file": ("mine.png", png, "image/png")}
    rec = client.post("/v1/runs/digits/reconstruct", files=files, data={"condition": "label=3"}).json()
    assert rec["input"]["kind"] == "image" and rec["conditions"] == ["label=3"]
    assert rec["ids"] == ["mine.png"]  # the name sent, as the CLI names the file (it was the server's upload.png)
    moved = client.post("/v1/runs/digits/transfer", files=files, data={"condition": "label=3"}).json()
    assert moved["targets"] == [f"label={i}" for i in range(10)] and moved["ncol"] == 11
    assert png_array(base64.b64decode(moved["png"])).shape == (10, 100)
    code = client.post("/v1/runs/digits/encode", files=files, data={"condition": "label=3"}).json()
    (tmp_path / "mine.png").write_bytes(png)
    assert main(["embed", str(runs / "digits"), "--data", str(tmp_path / "mine.png"), "--condition", "label=3",
                 "-o", str(tmp_path / "z.csv")]) == 0
    row = _rows(tmp_path / "z.csv")[0]
    np.testing.assert_allclose(code["mu"][0], [float(row[f"mu_{j}"]) for j in range(4)], rtol=1e-5, atol=1e-6)
    # a table upload carries its own conditions; the reconstruction is in the original units
    wine = (runs / "wine.csv").read_text().splitlines()
    up = {"file": ("w.csv", ("\n".join(wine[:4]) + "\n").encode(), "text/csv")}
    rec = client.post("/v1/runs/wine/reconstruct", files=up).json()
    assert rec["ids"] == ["w000", "w001", "w002"] and rec["conditions"][0].startswith("cultivar=barolo,alcohol=14.2")
    assert rec["reconstruction"]["kind"] == "table" and len(rec["reconstruction"]["values"]) == 3


def test_an_uploads_own_labels_win_over_the_condition_field_in_every_operation(client):
    # reconstruct used the field for every row while encode and transfer kept the file's own labels: the
    # page, which always sends its menu's value, showed panels of one upload under different conditions
    x = np.stack([png_array(digit_png(i)) for i in (3, 5)]).astype(np.float32) / 255
    buf = io.BytesIO()
    np.savez(buf, x=x, y=np.array([3, -1]))  # the second row has no label: the field stands in for it
    up = {"file": ("two.npz", buf.getvalue(), "application/octet-stream")}
    for op in ("reconstruct", "encode", "transfer"):
        r = client.post(f"/v1/runs/digits/{op}", files=up, data={"condition": "label=0"})
        said = r.json()["conditions"]
        assert r.status_code == 200 and said in (["label=3", "label=0"], {"label": ["3", "0"]}), (op, r.text)


def test_an_upload_is_classified_as_cvae_classify_does(client, runs, tmp_path):
    # a run conditioned on one categorical condition classifies by Bayes' rule (cvae classify)
    png = digit_png(3, size=32)
    out = client.post("/v1/runs/digits/classify", files={"file": ("mine.png", png, "image/png")}).json()
    (tmp_path / "mine.png").write_bytes(png)
    assert main(["classify", str(runs / "digits"), "--data", str(tmp_path / "mine.png"), "-o",
                 str(tmp_path / "p.csv")]) == 0
    row = _rows(tmp_path / "p.csv")[0]
    assert out["attribute"] == "label" and out["predicted"] == [row["label"]] and "error" not in out
    np.testing.assert_allclose(out["probs"][0], [float(row[f"p_{k}"]) for k in range(10)], atol=1e-6)
    assert out["probability"] == [max(out["probs"][0])]


def test_a_molecule_is_encoded_as_its_canonical_smiles_as_cvae_embed_does(client, runs, tmp_path):
    # 'OCC' is ethanol as 'CCO' is: the same code (it was encoded as another token string)
    out = client.post("/v1/runs/mols/encode", files={"file": ("m.smi", b"CCO\nOCC\n", "text/plain")}).json()
    assert out["strings"] == ["CCO", "CCO"] and out["mu"][0] == out["mu"][1]
    table = client.post("/v1/runs/mols/encode", files={"file": ("m.csv", b"smiles,name\nOCC,ethanol\n", "text/csv")})
    np.testing.assert_allclose(table.json()["mu"], out["mu"][:1], rtol=1e-5)  # a CSV: the run's sequence column


def test_anomaly_scores_are_the_cli_scores_against_the_run_threshold(client, runs, tmp_path):
    data = (runs / "beats-test.csv").read_bytes()
    out = client.post("/v1/runs/beats/score", files={"file": ("b.csv", data, "text/csv")}).json()
    assert main(["anomaly", "score", str(runs / "beats"), "--data", str(runs / "beats-test.csv"),
                 "-o", str(tmp_path / "s.csv")]) == 0
    rows = _rows(tmp_path / "s.csv")
    np.testing.assert_allclose(out["scores"], [float(r["score"]) for r in rows], rtol=1e-5)
    assert out["flags"] == [r["flag"] == "1" for r in rows]
    threshold = json.loads((runs / "beats" / "anomaly.json").read_text())["threshold"]
    assert out["threshold"] == pytest.approx(threshold) and out["auroc"] > 0.8
    rec = client.post("/v1/runs/beats/reconstruct", files={"file": ("b.csv", data, "text/csv")}).json()
    assert rec["input"]["kind"] == "signal" and np.array(rec["reconstruction"]["values"]).shape == (12, 1, 64)


def zeros_npz(rows: int) -> bytes:
    """A small compressed .npz whose array decompresses to rows x 8 x 8 float32 (zeros)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((rows, 8, 8), np.float32), y=np.zeros(rows, np.int64))
    return buf.getvalue()


def flat_png(side: int) -> bytes:
    """A PNG of one grey level, a few kilobytes for any size."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, format="PNG")
    return buf.getvalue()


BAD = [  # (path, request, status, what the answer says)
    # a small upload that decodes to gigabytes is refused before it is decoded (a 1 MB .npz took 2 GB)
    ("/v1/runs/digits/reconstruct", {"files": {"file": ("x.npz", zeros_npz(300_000), "application/octet-stream")}},
     422, "decompressed; the limit is"),
    ("/v1/runs/digits/reconstruct", {"files": {"file": ("x.png", flat_png(5000), "image/png")},
                                     "data": {"condition": "label=1"}}, 422, "5000x5000 pixels; the limit is"),
    # a long list of targets is counted before the work (50,000 took 35 s and 11 GB first)
    ("/v1/runs/digits/transfer", {"files": {"file": ("x.png", digit_png(), "image/png")},
                                  "data": {"condition": "label=3", "targets": ";".join(["label=1"] * 500)}}, 422,
     "targets must be from 1 to 32, got 500"),
    ("/v1/runs/digits/generate", {"json": {"condition": {"label": "11"}}}, 422, "unknown value '11' for condition 'label'"),
    ("/v1/runs/digits/generate", {"json": {"condition": "colour=red"}}, 422, "unknown condition 'colour'"),
    ("/v1/runs/digits/generate", {"json": {"n": 100}}, 422, "n must be from 1 to 64"),
    ("/v1/runs/digits/generate", {"json": {"n": 0}}, 422, "n: Input should be greater than or equal to 1"),
    ("/v1/runs/digits/generate", {"json": {"n": True}}, 422, "n: Input should be a valid integer"),  # was 1
    ("/v1/runs/digits/generate", {"json": {"n": "5"}}, 422, "n: Input should be a valid integer"),  # was 5
    ("/v1/runs/digits/reconstruct", {"data": {"file": "x"}, "files": {"other": ("x.png", b"a", "image/png")}}, 422,
     "file: send a file (curl -F file=@PATH), not text"),
    ("/v1/runs/digits/sharpen", {"json": {}}, 404, "nothing at /v1/runs/digits/sharpen; the API's operations are listed"),
    ("/v1/runs/digits/generate", {"json": {"temperature": True}}, 422, "temperature: Input should be a valid number"),
    ("/v1/runs/digits/generate", {"json": {"guidance": "2"}}, 422, "guidance: Input should be a valid number"),
    ("/v1/runs/digits/traverse", {"json": {"low": "-1", "high": 1}}, 422, "low: Input should be a valid number"),
    ("/v1/runs/digits/decode", {"json": {"values": {"0": True}}}, 422, "values.0: Input should be a valid number"),
    ("/v1/runs/digits/traverse", {"json": {"dims": []}}, 422, "dims: List should have at least 1 item"),  # blank PNG
    ("/v1/runs/digits/generate", {"json": {"temperature": -1}}, 422, "temperature"),
    ("/v1/runs/digits/generate", {"json": {"seed": 2**63}}, 422, "seed"),
    ("/v1/runs/digits/generate", {"json": {"nn": 3}}, 422, "nn: Extra inputs are not permitted"),
    ("/v1/runs/digits/generate", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422,
     "not valid JSON"),
    ("/v1/runs/digits/generate", {"content": b"n=3", "headers": {"content-type": "text/plain"}}, 415,
     "takes application/json"),
    ("/v1/runs/digits/generate", {"content": b"{" + b" " * 70_000 + b"}", "headers": {"content-type": "application/json"}},
     413, "the limit is 64 KB"),
    ("/v1/runs/wine/generate", {"json": {"format": "png"}}, 422, "format 'png' is for image runs"),
    ("/v1/runs/wine/generate", {"json": {"condition": {"alcohol": "strong"}}}, 422, "'strong' is not a number"),
    ("/v1/runs/digits/generate", {"json": {"condition": {"label": True}}}, 422,  # not class 1
     "condition 'label': give an object of condition names and values, each a string or a number"),
    ("/v1/runs/digits/generate", {"json": {"condition": ["7"]}}, 422, "or a string such as \"label=7\""),
    ("/v1/runs/wine/generate", {"json": {"condition": {"alcohol": 1e9}}}, 422, "more than 1,000 standard deviations"),
    ("/v1/runs/wine/generate", {"json": {"condition": {"alcohol": 1e39}}}, 422,  # was a 16-row tensor in the message
     "condition 'alcohol' = inf is not finite once standardised"),
    ("/v1/runs/nope/generate", {"json": {}}, 404, "no run named 'nope'"),
    ("/v1/runs/digits/decode", {"json": {"values": {"9": 1.0}}}, 422, "out of range: this model has 4"),
    ("/v1/runs/digits/traverse", {"json": {"low": 2, "high": 1}}, 422, "LOW < HIGH"),
    ("/v1/runs/digits/reconstruct", {"files": {"file": ("x.png", b"\xff\xfe\x00" * 50, "image/png")}}, 415,
     "neither a PNG or JPEG image"),
    ("/v1/runs/digits/reconstruct", {"files": {"file": ("x.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100, "image/png")},
                                     "data": {"condition": "label=1"}}, 422, "the upload (.png)"),
    ("/v1/runs/digits/reconstruct", {"files": {"file": ("x.png", b"\x89PNG" + b"0" * 300_000, "image/png")}}, 413,
     "the limit is 0.191 MB"),
    ("/v1/runs/digits/reconstruct", {"files": {"file": ("x.png", b"", "image/png")}}, 415, "empty"),
    ("/v1/runs/digits/reconstruct", {"files": {"other": ("x.png", b"abc", "image/png")}}, 422, "file: Field required"),
    ("/v1/runs/digits/reconstruct", {"json": {"file": "x"}}, 415, "takes multipart/form-data"),
    ("/v1/runs/digits/reconstruct", {"files": {"file": ("x.png", digit_png(), "image/png")}}, 422,
     "the upload has no condition column(s) label; pass 'condition'"),
    ("/v1/runs/wine/reconstruct", {"files": {"file": ("x.png", digit_png(), "image/png")}}, 415,
     "this run models table data: upload a CSV"),
    ("/v1/runs/wine/reconstruct", {"files": {"file": ("x.csv", b"a,b\n1,2\n", "text/csv")}}, 422, "the upload (.csv)"),
    ("/v1/runs/wine/score", {"files": {"file": ("x.csv", b"a,b\n1,2\n", "text/csv")}}, 422, "not an anomaly detector"),
    ("/v1/runs/beats/transfer", {"files": {"file": ("x.csv", b"a,b\n1,2\n", "text/csv")}}, 422, "plain VAE"),
    ("/v1/runs/mols/reconstruct", {"files": {"file": ("x.png", digit_png(), "image/png")}}, 415,
     "this run models sequences: upload a UTF-8 text file"),
    ("/v1/runs/mols/encode", {"files": {"file": ("x.smi", b"CCO\nC1CC(\n", "text/plain")}}, 422,
     "'C1CC(' is not a valid SMILES"),
    ("/v1/runs/mols/transfer", {"files": {"file": ("x.smi", b"\n\n", "text/plain")}}, 422,
     "the upload holds no sequences"),
    ("/v1/runs/digits/generate", {"json": {"steer": 1}}, 422, "steer is for sequence runs"),
    ("/v1/runs/wine/classify", {"files": {"file": ("x.csv", b"a,b\n1,2\n", "text/csv")}}, 422,
     "run 'wine' does not classify: it needs one categorical condition alone, or the semi-supervised model"),
    ("/v1/runs/digits/classify", {"files": {"file": ("x.csv", b"a,b\n1,2\n", "text/csv")}}, 422, "the upload (.csv)"),
    ("/v1/runs/digits/classify", {"json": {"file": "x"}}, 415, "takes multipart/form-data"),
    ("/v1/runs/mols/generate", {"json": {"steer": 21}}, 422, "less than or equal to 20"),
]


@pytest.mark.parametrize("path,request_,status,says", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_a_bad_request_gets_a_clear_4xx(client, path, request_, status, says):
    r = client.post(path, **request_)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert says in detail and "Traceback" not in detail and "/tmp" not in detail, detail


@pytest.mark.parametrize("target,says", [("alcohol=1e300", "= 1e+300 is not finite once standardised"),
                                          ("cultivar=barolo,alcohol=1e9", "= 1e+09 is more than 1,000 standard deviations")])
def test_a_transfer_target_far_outside_the_training_range_is_refused(client, runs, target, says):
    # was a 500 (float32 overflow) for 1e300 and, for 1e9, a 200 with features of -2.8e8
    wine = (runs / "wine.csv").read_text().splitlines()
    up = {"file": ("w.csv", ("\n".join(wine[:3]) + "\n").encode(), "text/csv")}
    r = client.post("/v1/runs/wine/transfer", files=up, data={"targets": target})
    assert r.status_code == 422 and says in r.json()["detail"], r.text


def test_a_condition_far_outside_the_training_range_is_answered_with_a_warning(client, runs):
    # the CLI warns past 10 standard deviations; the API said nothing up to 1,000 (features of -547)
    out = client.post("/v1/runs/wine/generate", json={"condition": {"cultivar": "barolo", "alcohol": 500}, "n": 2}).json()
    assert len(out["warnings"]) == 1 and out["warnings"][0].startswith("alcohol=500 is ")
    assert "standard deviations from the training mean" in out["warnings"][0]
    near = client.post("/v1/runs/wine/generate", json={"condition": {"cultivar": "barolo", "alcohol": 13.5}}).json()
    assert near["warnings"] == []
    wine = (runs / "wine.csv").read_text().splitlines()
    up = {"file": ("w.csv", ("\n".join(wine[:3]) + "\n").encode(), "text/csv")}
    moved = client.post("/v1/runs/wine/transfer", files=up, data={"targets": "alcohol=100"}).json()
    assert len(moved["warnings"]) == 1 and moved["warnings"][0].startswith("alcohol=100 is ")
    assert client.post("/v1/runs/wine/traverse", json={"condition": {"alcohol": 100}}).json()["warnings"]
    assert client.post("/v1/runs/digits/generate", json={"n": 2}).json()["warnings"] == []


def test_an_unbounded_body_is_cut_at_the_limit(client):
    def chunks():  # no content-length: the server counts what arrives
        for _ in range(40):
            yield b"x" * 8192

    r = client.post("/v1/runs/digits/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "64 KB" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/runs/digits/pictures/config.json", "/v1/runs/digits/pictures/..%2Fconfig.json",
                                  "/v1/runs/..%2F..%2Fetc/pictures/passwd", "/static/..%2F__init__.py",
                                  "/static/../served.py", "/v1/runs/digits/pictures/%2Fetc%2Fpasswd"])
def test_no_file_outside_the_named_runs_is_served(client, path):
    r = client.get(path)
    assert r.status_code == 404 and b"import" not in r.content and b"root:" not in r.content


def test_the_page_is_served_with_a_policy_that_forbids_other_origins(client):
    r = client.get("/")
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
    for name in ("index.html", "app.js", "style.css"):
        text = (ROOT / "src" / "cvae" / "serve" / "static" / name).read_text()
        names_only = text.replace('"http://www.w3.org/2000/svg"', "")  # SVG's namespace is a name, never fetched
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", names_only, re.I), f"{name} names another site"
        assert client.get("/" if name == "index.html" else f"/static/{name}").text == text


def test_a_request_that_holds_its_place_without_sending_its_body_is_cut_off():
    # sixteen connections that declared an upload and sent nothing held every upload place: 503 for all
    from cvae.serve.app import Guard

    async def never():
        await asyncio.sleep(3600)

    async def trickle():  # a byte a while: each arrives within the idle limit, the whole never does
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def call(guard, receive):
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/runs/r/reconstruct",
                 "headers": [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"100000")]}
        await guard(scope, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])["detail"]

    async def app(scope, receive, send):
        raise AssertionError("the app must not be reached")

    guard = Guard(app, upload_limit=2**20, max_waiting=4, max_uploads=1, idle_timeout=0.2, body_timeout=0.5)
    status, detail = asyncio.run(call(guard, never))
    assert status == 408 and "nothing for 0.2 s" in detail and guard.inside["upload"] == 0  # its place is free again
    status, detail = asyncio.run(call(guard, trickle))
    assert status == 408 and "within 0.5 s" in detail and guard.inside["upload"] == 0


def test_the_api_reference_page_is_written_here_and_needs_nothing_from_outside(client):
    # /docs was FastAPI's Swagger page, whose script and styles come from a CDN: the policy refused them
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script" not in page and "http" not in page.replace('href="/', "")  # nothing to load from elsewhere
    for path in client.get("/openapi.json").json()["paths"]:
        assert f"{path}</code>" in page, path
    generate = page[page.index("POST /v1/runs/{run}/generate"):page.index("POST /v1/runs/{run}/decode")]
    assert "<code>temperature</code></td><td>number or null</td><td></td><td>&gt;= 0, &lt;= 10</td>" in generate
    assert "object of (string or integer or number) or string or null" in generate
    assert "<code>format</code></td><td>one of json, png</td><td>&quot;json&quot;</td>" in generate
    transfer = page[page.index("POST /v1/runs/{run}/transfer"):]
    assert "multipart/form-data" in transfer and "<code>file</code></td><td>file</td><td>required</td>" in transfer


def test_cvae_serve_says_which_extra_to_install_when_the_web_stack_is_missing(runs, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", str(runs / "digits")]) == 2
    assert 'error: cvae serve needs uvicorn: pip install "cvae[serve]"' in capsys.readouterr().err


def test_cvae_serve_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    assert "is not a run folder (no config.json)" in capsys.readouterr().err


# -- a live server ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(runs):
    """`cvae serve` as a user starts it, on a free port of 127.0.0.1."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-m", "cvae", "serve", str(runs / "digits"), str(runs / "wine"),
                             str(runs / "beats"), str(runs / "mols"), "--port", "0", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
        assert m, f"cvae serve printed {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        base = m.group(1)
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/v1/runs", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not answer"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_burst_of_concurrent_requests_all_succeed_and_stay_deterministic(server):
    import httpx

    async def burst():
        async with httpx.AsyncClient(base_url=server, timeout=60,
                                     limits=httpx.Limits(max_connections=50)) as c:
            bodies = [{"condition": {"label": str(i % 10)}, "n": 16, "seed": i % 5} for i in range(50)]
            return bodies, await asyncio.gather(*(c.post("/v1/runs/digits/generate", json=b) for b in bodies))

    bodies, answers = asyncio.run(burst())
    assert [a.status_code for a in answers] == [200] * 50
    seen: dict[str, bytes] = {}
    for b, a in zip(bodies, answers):
        key = json.dumps(b, sort_keys=True)
        assert seen.setdefault(key, a.content) == a.content  # one answer per distinct request


# -- the page in a browser --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        message = "no chromium to drive (apt-get install -y chromium, or set CVAE_CHROMIUM)"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    b = Browser(binary, tmp_path_factory.mktemp("chromium") / "profile")
    yield b
    b.close()


def _settled(b: Browser) -> None:
    b.wait("document.body.dataset.ready === '1' && document.body.dataset.pending === '0'", what="the page to settle")


def _version(b: Browser, element: str) -> int:
    return int(b.evaluate(f"Number(document.getElementById('{element}').dataset.version || 0)"))


def _wait_newer(b: Browser, element: str, than: int) -> None:
    b.wait(f"Number(document.getElementById('{element}').dataset.version || 0) > {than} && "
           "document.body.dataset.pending === '0'", what=f"#{element} to change")


def _keys(b: Browser, control: str, key: str, times: int) -> str:
    """Press ``key`` ``times`` on a generate control, wait for the new samples, return its value."""
    v = _version(b, "samples")
    b.focus(f"#{control}")
    b.press(key, times)
    _wait_newer(b, "samples", v)
    return b.evaluate(f"document.getElementById('{control}').value")


def _api_png(server: str, **extra) -> str:
    """The digits run's 16 samples of label 3 (seed 0) as the API answers them (at the run's default
    temperature), as a data URL."""
    import httpx

    body = {"condition": {"label": "3"}, "n": 16, "seed": 0, "draw": False, **extra}
    return "data:image/png;base64," + httpx.post(f"{server}/v1/runs/digits/generate", json=body).json()["png"]


def test_the_page_in_a_headless_browser(server, browser, runs, tmp_path):
    b = browser
    b.goto(f"{server}/?run=digits")
    _settled(b)
    img = "document.querySelector('#samples img').src"
    first = b.evaluate(img)
    assert first.startswith("data:image/png;base64,")
    assert "label=0" in b.evaluate("document.getElementById('samples-caption').textContent")
    # a condition: the label menu, by keyboard, from 0 to 3
    assert _keys(b, "gen-label", "ArrowDown", 3) == "3"
    assert "label=3" in b.evaluate("document.getElementById('samples-caption').textContent")
    shown = b.evaluate(img)
    assert shown != first
    assert shown == _api_png(server)  # the page shows what the API answers
    # what an image run does not have is not shown: the steering slider, the box for typed sequences
    for hidden in ("steer-control", "strings-label", "strings-go"):
        assert b.evaluate(f"getComputedStyle(document.getElementById('{hidden}')).display") == "none", hidden
    # the digits run is guided by default (condition dropout at training): its weight, then none
    assert not b.evaluate("document.getElementById('guidance-control').hidden")
    assert b.evaluate("document.getElementById('guidance').value") == "2"
    # the run samples codes from its fitted aggregate posterior: the slider starts at that default, 1
    assert b.evaluate("document.getElementById('temperature').value") == "1"
    assert "guidance 2" in b.evaluate("document.getElementById('samples-caption').textContent")
    assert _keys(b, "guidance", "ArrowLeft", 4) == "0"
    assert b.evaluate(img) == _api_png(server, guidance=0) != shown
    assert "guidance" not in b.evaluate("document.getElementById('samples-caption').textContent")
    # a latent slider: the one with the most KL, four steps to the right
    b.wait("document.querySelector('#decoded img') !== null && document.body.dataset.pending === '0'",
           what="the sliders' example")
    v = _version(b, "decoded")
    before = b.evaluate("document.querySelector('#decoded img').src")
    b.focus("#sliders input")
    b.press("ArrowRight", 4)
    _wait_newer(b, "decoded", v)
    assert b.evaluate("document.querySelector('#sliders input').value") == "1"
    assert b.evaluate("document.querySelector('#decoded img').src") != before
    assert b.evaluate("document.querySelectorAll('#traversal img').length") == 1
    # an upload: a 3, drawn at 32x32, with its own condition set to 3
    (tmp_path / "three.png").write_bytes(digit_png(3, size=32))
    b.focus("#own-label")
    b.press("ArrowDown", 3)
    b.choose_files("#file", [tmp_path / "three.png"])
    b.wait("!document.getElementById('transfer-panel').hidden && !document.getElementById('encode-panel').hidden && "
           "!document.getElementById('reconstruction-panel').hidden && document.body.dataset.pending === '0'",
           what="the upload's results")
    assert "label=9" in b.evaluate("document.querySelector('#transfer .caption').textContent")
    assert b.evaluate("document.querySelectorAll('#reconstruction img').length") == 2
    assert b.evaluate("document.querySelectorAll('#encode th').length") == 1 + 4
    # the run classifies (one categorical condition): the three most probable classes of the upload
    b.wait("!document.getElementById('classify-panel').hidden", what="the upload's classes")
    assert b.evaluate("[...document.querySelectorAll('#classify th')].map(e => e.textContent)") == [
        "id", "label", "next", "then"]
    assert re.fullmatch(r"\d \(\d+\.\d%\)", b.evaluate("document.querySelectorAll('#classify td')[1].textContent"))
    assert b.evaluate("document.querySelectorAll('#pictures img').length") >= 4
    shot = b.screenshot(tmp_path / "serve.png")
    assert png_array(shot.read_bytes()).shape[1] >= 1000
    if os.environ.get("CVAE_SERVE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["CVAE_SERVE_SCREENSHOT"])
    # the table run: the run menu, then samples and the traversal are tables, not pictures
    b.focus("#run")
    b.press("ArrowDown")
    b.wait("document.getElementById('run').value === 'wine' && document.querySelector('#samples table') !== null && "
           "document.body.dataset.pending === '0'", what="the wine run's table")
    headers = b.evaluate("[...document.querySelectorAll('#samples th')].map(e => e.textContent)")
    assert headers[0] == "condition" and "proline" in headers
    assert b.evaluate("document.getElementById('guidance-control').hidden")  # trained without condition dropout
    assert b.evaluate("document.querySelectorAll('#samples img, #traversal img').length") == 0
    assert b.evaluate("document.querySelectorAll('#traversal table').length") == 1
    # the detector of signals: an upload is scored against the threshold and drawn as line plots
    b.focus("#run")
    b.press("ArrowDown")
    b.wait("document.getElementById('run').value === 'beats' && document.body.dataset.pending === '0' && "
           "document.querySelector('#samples svg') !== null", what="the beats run's plots")
    b.choose_files("#file", [runs / "beats-test.csv"])
    b.wait("!document.getElementById('score').hidden && document.body.dataset.pending === '0'", what="the score")
    text = b.evaluate("document.getElementById('score').textContent")
    assert "flagged" in text and "threshold" in text
    assert b.evaluate("document.querySelectorAll('#reconstruction svg polyline').length") == 2 * 12
    assert b.evaluate("document.getElementById('error').hidden")
    # the molecules: a table of SMILES with validity and RDKit's logP; steered by default, then not
    b.focus("#run")
    b.press("ArrowDown")
    b.wait("document.getElementById('run').value === 'mols' && document.body.dataset.pending === '0' && "
           "document.querySelector('#samples table') !== null", what="the molecules run's table")
    headers = b.evaluate("[...document.querySelectorAll('#samples th')].map(e => e.textContent)")
    assert headers == ["condition", "sequence", "valid", "logp (RDKit)"], headers
    assert not b.evaluate("document.getElementById('steer-control').hidden")
    assert "steered 2" in b.evaluate("document.getElementById('samples-caption').textContent")
    cells = "[...document.querySelectorAll('#samples td.text + td')].map(e => e.textContent).join(' ')"
    steered = b.evaluate(cells)
    assert _keys(b, "steer", "ArrowLeft", 4) == "0"
    assert "steered" not in b.evaluate("document.getElementById('samples-caption').textContent")
    assert b.evaluate(cells) != steered
    assert b.evaluate("document.querySelectorAll('#traversal table').length") == 1
    # strings typed one a line: reconstructed and encoded with their own logP, which RDKit computes
    assert b.evaluate("document.getElementById('file-label').hidden && document.getElementById('own-conditions').hidden")
    b.type_text("#strings", "CCO\nc1ccoc1")
    b.click("#strings-go")
    b.wait("!document.getElementById('encode-panel').hidden && document.body.dataset.pending === '0'",
           what="the typed molecules' codes")
    rec = b.evaluate("[...document.querySelectorAll('#reconstruction tr')].map(r => "
                     "[...r.children].map(c => c.textContent))")
    assert rec[0] == ["id", "input", "reconstruction", "the same"] and [r[1] for r in rec[1:]] == ["CCO", "c1ccoc1"]
    assert b.evaluate("document.querySelectorAll('#encode tr').length") == 3
    assert b.evaluate("document.getElementById('error').hidden")
    # offline: every request went to this server (or was a data: URL), and the console stayed clean
    outside = [u for u in b.requested_urls() if not (u.startswith(server) or u.startswith("data:"))]
    assert outside == [] and b.console_errors() == [], [e[:300] for e in b.console_errors()]


def test_the_page_keeps_a_failure_in_view_and_shows_nothing_stale(server, browser, tmp_path):
    # a failed generate's error was cleared by the slider and traversal requests that followed it, and the
    # old samples stayed under the new label; a failed upload left the last file's results on the page
    b = browser
    b.goto(f"{server}/?run=digits")
    _settled(b)
    error = "document.getElementById('error').textContent"
    (tmp_path / "three.png").write_bytes(digit_png(3, size=32))
    (tmp_path / "broken.png").write_bytes(digit_png(3, size=32)[:60])
    b.choose_files("#file", [tmp_path / "three.png"])
    b.wait("!document.getElementById('reconstruction-panel').hidden && document.body.dataset.pending === '0'",
           what="the upload's results")
    b.choose_files("#file", [tmp_path / "broken.png"])
    b.wait("!document.getElementById('error').hidden && document.body.dataset.pending === '0'", what="the upload's error")
    assert b.evaluate(error) == ("reconstruct, encode, transfer, classify: cannot read the upload (.png) (image file "
                                 "is truncated): the file is damaged; upload another")  # one line for four requests
    for panel in ("reconstruction-panel", "transfer-panel", "encode-panel", "classify-panel"):
        assert b.evaluate(f"document.getElementById('{panel}').hidden"), panel
    b.evaluate("(() => { const s = document.getElementById('seed'); s.value = '-1'; "
               "s.dispatchEvent(new Event('change')); })()")
    b.wait("document.body.dataset.pending === '0' && document.getElementById('error').textContent.includes('generate:')",
           what="the generate error")
    b.focus("#gen-label")
    b.press("ArrowDown", 2)  # the sliders' example and the traversal succeed for label 2; generate fails again
    b.wait("document.body.dataset.pending === '0' && document.getElementById('gen-label').value === '2'",
           what="the label change")
    b.wait("document.querySelector('#decoded img') !== null && document.body.dataset.pending === '0'",
           what="the sliders' example")
    assert b.evaluate(error).startswith("generate: seed") and "classify: cannot read" in b.evaluate(error)
    assert b.evaluate("document.querySelectorAll('#samples img').length") == 0
    assert b.evaluate("document.getElementById('samples-caption').textContent") == ""
    b.evaluate("(() => { const s = document.getElementById('seed'); s.value = '0'; "
               "s.dispatchEvent(new Event('change')); })()")
    b.wait("document.body.dataset.pending === '0' && document.querySelector('#samples img') !== null",
           what="the samples")
    assert "generate:" not in b.evaluate(error) and "label=2" in b.evaluate(
        "document.getElementById('samples-caption').textContent")
    b.choose_files("#file", [tmp_path / "three.png"])
    b.wait("!document.getElementById('reconstruction-panel').hidden && document.body.dataset.pending === '0'",
           what="the upload's results")
    assert b.evaluate("document.getElementById('error').hidden")
    # the page's API link: a reference the browser shows under the server's policy (Swagger's came up blank)
    b.goto(f"{server}/docs")
    b.wait("document.readyState === 'complete'", what="the API reference")
    assert "POST /v1/runs/{run}/generate" in b.evaluate("document.body.innerText")
    assert b.evaluate("getComputedStyle(document.querySelector('table')).borderCollapse") == "collapse"  # its styles
    assert not [e for e in b.console_errors() if "Content Security Policy" in e or "/docs" in e]


def test_a_detector_fitted_from_an_array_scores_a_labelled_csv_upload_as_the_cli_does(tmp_path):
    # the upload was read before the detector's label column was known: "(1, 17); this model expects (1, 16)"
    from fastapi.testclient import TestClient

    from cvae.apps import fit_anomaly
    from cvae.serve import create_app

    rng = np.random.default_rng(0)
    y = np.arange(120) % 2
    x = (np.sin(np.linspace(0, 6, 16))[None, None] * (1 + y[:, None, None]) + rng.normal(0, 0.1, (120, 1, 16)))
    np.savez(tmp_path / "sig.npz", x=x.astype(np.float32), y=y)
    fit_anomaly(str(tmp_path / "sig.npz"), out=tmp_path / "det", normal="0", epochs=2, batch_size=32, pictures=False)
    rows = "label," + ",".join(f"t{i}" for i in range(16)) + "\n" + "".join(
        f"{y[i]}," + ",".join(f"{v:.4f}" for v in x[i, 0]) + "\n" for i in range(8))
    with TestClient(create_app([tmp_path / "det"])) as client:
        r = client.post("/v1/runs/det/score", files={"file": ("rows.csv", rows.encode(), "text/csv")})
    assert r.status_code == 200, r.text
    assert len(r.json()["scores"]) == 8
