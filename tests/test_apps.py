"""What people use a CVAE for: interpolation, traversal, transfer, anomaly detection, augmentation and
latent export, through the Python functions and the command line, on images and 1-D signals."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch

import cvae
from cvae.apps import (
    anomaly_metrics,
    augment,
    embed,
    interpolate_conditions,
    interpolate_inputs,
    kl_per_dimension,
    lerp,
    read_inputs,
    slerp,
    transfer,
    traverse,
)
from cvae.cli import main
from cvae.data import load_data
from cvae.errors import CvaeWarning

QUIET = ["--no-progress", "--no-tensorboard"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A small conditional model of the 8x8 digits (a few seconds)."""
    out = tmp_path_factory.mktemp("apps") / "digits"
    assert main(["train", "--data", "digits", "--epochs", "4", "--batch-size", "64", "--latent-dim", "4",
                 "--no-pictures", *QUIET, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def model(digits_run):
    return cvae.load(digits_run)


@pytest.fixture(scope="module")
def digits(model):
    return read_inputs(model, "digits", n=40)


# -- latent paths ---------------------------------------------------------------------------------

def test_lerp_and_slerp_hit_the_ends_and_slerp_keeps_the_norm():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    z1 = z1 / z1.norm(dim=1, keepdim=True) * z0.norm(dim=1, keepdim=True)  # equal norms
    t = torch.linspace(0, 1, 7)
    for path in (lerp(z0, z1, t), slerp(z0, z1, t)):
        assert path.shape == (3, 7, 5)
        torch.testing.assert_close(path[:, 0], z0)
        torch.testing.assert_close(path[:, -1], z1)
    torch.testing.assert_close(lerp(z0, z1, t)[:, 3], (z0 + z1) / 2)
    norms = slerp(z0, z1, t).norm(dim=-1)
    torch.testing.assert_close(norms, z0.norm(dim=1, keepdim=True).expand(-1, 7))
    assert (lerp(z0, z1, t).norm(dim=-1)[:, 3] < norms[:, 3] - 1e-3).all()  # the chord cuts inside the sphere
    same = slerp(z0, z0.clone(), t)  # zero angle: no division by zero
    assert torch.isfinite(same).all()


def test_interpolation_between_inputs_starts_and_ends_at_their_reconstructions(model, digits):
    x, y = digits.x, digits.y
    for method in ("linear", "spherical"):
        res = interpolate_inputs(model, x[:3], x[3:6], y_from=y[:3], y_to=y[3:6], steps=5, method=method)
        assert res.x.shape == (3, 5, 1, 8, 8)
        torch.testing.assert_close(res.x[:, 0], model.reconstruct(x[:3], y[:3]), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(res.x[:, -1], model.reconstruct(x[3:6], y[3:6]), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(res.x[:, 2], res.x[:, 0])
    both = interpolate_inputs(model, x[:2], x[2:4], y_from=y[:2], y_to=y[2:4], steps=4, method="both")
    assert both.x.shape[0] == 4 and both.row_labels[0].endswith("lin.") and both.row_labels[1].endswith("sph.")


def test_interpolation_between_conditions_holds_the_code(model):
    res = interpolate_conditions(model, "label=3", "label=8", steps=6, n=2, seed=1)
    assert res.x.shape == (2, 6, 1, 8, 8)
    # with the learned prior p(z | c) the standard-normal draw is held: z = mu(c) + sigma(c) * eps
    torch.testing.assert_close(res.x[:, 0], model.decode(res.z[:, 0], "label=3").cpu(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(res.x[:, -1], model.decode(res.z[:, -1], "label=8").cpu(), atol=1e-5, rtol=1e-4)
    (m3, s3), (m8, s8) = (model.prior.spread(model.condition_vector(f"label={d}", 1), 1) for d in (3, 8))
    eps = (res.z[:, 0] - m3.cpu()) / s3.cpu()
    torch.testing.assert_close(res.z[:, -1], m8.cpu() + s8.cpu() * eps, atol=1e-5, rtol=1e-4)
    with pytest.raises(cvae.CvaeError, match="unknown value"):
        interpolate_conditions(model, "label=3", "label=eleven")


def test_kl_per_dimension_sums_to_the_kl_and_orders_the_traversal(model, digits):
    kl = kl_per_dimension(model, digits.x, digits.y)
    qz = model.encode(digits.x, digits.y)
    assert kl.shape == (4,)
    with torch.no_grad():
        analytic = model.prior.kl(qz, qz.mu, model.condition_vector(digits.y, len(digits.y)))
    assert float(kl.sum()) == pytest.approx(float(analytic.mean()), rel=1e-4)
    res = traverse(model, kl=kl, top=3, low=-2, high=2, steps=5, x=digits.x[:2], y=digits.y[:2])
    assert res.x.shape == (3, 2, 5, 1, 8, 8)
    assert [float(kl[d]) for d in res.dims] == sorted((float(kl[d]) for d in res.dims), reverse=True)
    assert res.dims == torch.argsort(kl, descending=True)[:3].tolist()
    # one dimension moves, the others stay at the input's posterior mean
    d = res.dims[0]
    z = qz.mu[:2].clone()
    mean, std = model.prior.spread(model.condition_vector(digits.y[:2], 2), 2)
    z[:, d] = mean[:, d] + std[:, d] * 2.0  # +2 prior standard deviations, in p(z | c)'s own units
    torch.testing.assert_close(res.x[0, :, -1], model.decode(z, digits.y[:2]).cpu(), atol=1e-5, rtol=1e-4)
    with pytest.raises(cvae.CvaeError, match="out of range"):
        traverse(model, kl=kl, dims=[7])


def test_transfer_to_its_own_class_is_the_reconstruction(model, digits):
    x, y = digits.x[:4], digits.y[:4]
    res = transfer(model, x, y, ["label=all"])
    assert res.x.shape == (4, 10, 1, 8, 8) and res.target_labels[3] == "label=3"
    own = torch.stack([res.x[i, int(y[i, 0])] for i in range(4)])
    torch.testing.assert_close(own, model.reconstruct(x, y), atol=1e-5, rtol=1e-4)
    res = transfer(model, x, y, ["label=1", "label=7"])
    assert res.target_labels == ["label=1", "label=7"] and res.y_target[:, 1, 0].tolist() == [7.0] * 4
    with pytest.raises(cvae.CvaeError, match="unknown value '12'"):
        transfer(model, x, y, ["label=12"])


def test_latent_commands_write_pictures_and_tables(digits_run, tmp_path, capsys):
    out = tmp_path
    assert main(["interpolate", str(digits_run), "--method", "both", "--n", "2", "-o", str(out / "i.png")]) == 0
    assert main(["interpolate", str(digits_run), "--from", "label=3", "--to", "label=8", "-o", str(out / "c.png")]) == 0
    assert main(["interpolate", str(digits_run), "--input", "digits", "--from", "0,2", "--to", "1,3", "--steps", "4",
                 "-o", str(out / "i.csv")]) == 0
    rows = _rows(out / "i.csv")
    assert len(rows) == 2 * 4 and list(rows[0])[:5] == ["row", "step", "t", "start", "end"]
    assert rows[0]["start"].startswith("#0") and rows[4]["start"].startswith("#2")
    assert main(["traverse", str(digits_run), "--top", "3", "-o", str(out / "t.png")]) == 0
    assert "KL per dimension" in capsys.readouterr().out
    assert main(["traverse", str(digits_run), "--input", "digits", "--index", "5", "--dims", "0,1", "--steps", "3",
                 "-o", str(out / "t.npz")]) == 0
    with np.load(out / "t.npz") as z:
        assert z["x"].shape == (2 * 3, 1, 8, 8) and sorted(set(z["dim"].tolist())) == [0, 1]
    assert main(["transfer", str(digits_run), "--n", "3", "-o", str(out / "tr.png")]) == 0
    assert main(["transfer", str(digits_run), "--n", "2", "--to", "label=4", "--to", "label=9", "-o", str(out / "tr.csv")]) == 0
    rows = _rows(out / "tr.csv")
    assert [r["target"] for r in rows] == ["label=4", "label=9"] * 2 and [r["label"] for r in rows] == ["4", "9"] * 2
    for name in ("i.png", "c.png", "t.png", "tr.png"):
        assert (out / name).stat().st_size > 1000
    # a single image file as an end point, with the condition it lacks
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(out / "one.png")
    assert main(["interpolate", str(digits_run), "--input", "digits", "--from", str(out / "one.png"), "--to", "3",
                 "--condition", "label=2", "-o", str(out / "f.png")]) == 0
    assert main(["interpolate", str(digits_run), "--from", "label=3", "--to", "7", "-o", str(out / "x.png")]) == 2
    assert "both be conditions" in capsys.readouterr().err


# -- latent export --------------------------------------------------------------------------------

def test_embed_exports_means_variances_ids_and_conditions(model, digits_run, digits, tmp_path):
    emb = embed(model, "digits", n=40)
    qz = model.encode(digits.x, digits.y)
    np.testing.assert_allclose(emb.mu, qz.mu.cpu().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb.var, qz.variance.cpu().numpy(), rtol=1e-5, atol=1e-7)
    assert emb.conditions["label"][:5].tolist() == [str(int(v)) for v in digits.y[:5, 0]]
    assert main(["embed", str(digits_run), "--data", "digits", "--n", "50", "-o", str(tmp_path / "z.csv"),
                 "--map", str(tmp_path / "map.png")]) == 0
    rows = _rows(tmp_path / "z.csv")
    assert len(rows) == 50
    assert list(rows[0]) == ["id", "label", "mu_0", "mu_1", "mu_2", "mu_3", "var_0", "var_1", "var_2", "var_3"]
    assert [r["id"] for r in rows[:3]] == ["0", "1", "2"] and float(rows[0]["var_0"]) > 0
    assert (tmp_path / "map.png").stat().st_size > 1000
    assert main(["embed", str(digits_run), "--data", "digits", "--n", "30", "-o", str(tmp_path / "z.npz")]) == 0
    with np.load(tmp_path / "z.npz") as z:
        assert z["mu"].shape == (30, 4) and z["var"].shape == (30, 4) and z["ids"].shape == (30,)
        assert z["label"].shape == (30,)
    assert main(["embed", str(digits_run), "--data", "digits", "--n", "30", "--color-by", "size",
                 "-o", str(tmp_path / "m.png")]) == 2


# -- augmentation -----------------------------------------------------------------------------------

def test_augment_per_class_and_balanced_merge(model, digits_run, tmp_path):
    aug = augment(model, per_class=3, seed=0)
    assert len(aug.x) == 30 and aug.synthetic.all()
    assert np.bincount(aug.y[:, 0].long().numpy(), minlength=10).tolist() == [3] * 10
    real = read_inputs(model, "digits")
    keep = np.r_[np.flatnonzero(real.y[:, 0] != 2), np.flatnonzero(real.y[:, 0] == 2)[:20]]
    real.x, real.y, real.ids = real.x[keep], real.y[keep], [real.ids[i] for i in keep]
    aug = augment(model, balance=True, real=real, merge=True)
    counts = np.bincount(aug.y[:, 0].long().numpy(), minlength=10)
    assert len(set(counts.tolist())) == 1  # every class as large as the largest
    assert aug.generated["2"] == counts[0] - 20 and int(aug.synthetic.sum()) == sum(aug.generated.values())
    assert torch.equal(aug.x[: len(real.x)], real.x)
    # codes from the posterior of real examples: variations of them, closer to the class than prior draws
    few = read_inputs(model, "digits", n=200)
    near = {}
    for codes in ("prior", "posterior"):
        aug = augment(model, per_class=20, real=few, codes=codes, seed=0)
        gap = torch.cdist(aug.x.flatten(1), few.x.flatten(1))  # (synthetic, real)
        same = aug.y[:, 0][:, None] == few.y[:, 0][None, :]
        near[codes] = float(gap.masked_fill(~same, float("inf")).min(1).values.mean())
    assert near["posterior"] < near["prior"]
    with pytest.raises(cvae.CvaeError, match="need the real data"):
        augment(model, per_class=2, codes="posterior")
    # the three output formats, each readable as training data again
    assert main(["augment", str(digits_run), "--per-class", "4", "-o", str(tmp_path / "a.npz")]) == 0
    d = load_data(str(tmp_path / "a.npz"), val_fraction=0)
    assert len(d.train) == 40 and d.kind == "image" and d.schema.names == ["label"]
    assert main(["augment", str(digits_run), "--per-class", "2", "-o", str(tmp_path / "folder")]) == 0
    d = load_data(str(tmp_path / "folder"), val_fraction=0)
    assert len(d.train) == 20 and d.schema.attributes[0].classes == [str(i) for i in range(10)]
    assert main(["augment", str(digits_run), "--per-class", "2", "--merge", "-o", str(tmp_path / "m.csv")]) == 0
    rows = _rows(tmp_path / "m.csv")
    assert len(rows) == 1797 + 20 and rows[0]["id"].startswith("real-") and rows[-1]["id"].startswith("synthetic-")
    d = load_data(str(tmp_path / "m.csv"), condition="label", val_fraction=0)
    assert d.data_shape == (64,) and len(d.train) == 1817


# -- anomaly detection --------------------------------------------------------------------------------

def heartbeats(n_normal: int, n_abnormal: int, *, length: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Heartbeat-like signals: P wave, QRS complex and T wave with jitter and noise; the abnormal ones
    have an inverted T wave, a wide QRS complex, or no P wave and an elevated ST segment."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length)

    def beat(kind):
        shift, amp = 0.01 * rng.standard_normal(), 1 + 0.08 * rng.standard_normal()

        def g(mu, sd, a):
            return a * np.exp(-0.5 * ((t - mu - shift) / sd) ** 2)

        p, q, r, s, tw = g(0.2, 0.03, 0.15), g(0.33, 0.012, -0.12), g(0.36, 0.014, amp), g(0.39, 0.012, -0.2), g(0.65, 0.05, 0.3)
        if kind == 1:
            tw = -tw
        elif kind == 2:
            q, r, s = 0 * q, g(0.37, 0.04, 0.8 * amp), g(0.44, 0.02, -0.3)
        elif kind == 3:
            p, tw = 0 * p, tw + 0.2 * ((t > 0.4) & (t < 0.6))
        x = p + q + r + s + tw + 0.02 * rng.standard_normal(length)
        return (x - x.min()) / (x.max() - x.min())

    kinds = np.r_[np.zeros(n_normal, int), rng.integers(1, 4, n_abnormal)]
    rng.shuffle(kinds)
    return np.stack([beat(k) for k in kinds]), (kinds > 0).astype(int)


def write_beats(path, x, label, *, header=True):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow([f"t{i}" for i in range(x.shape[1])] + ["label"])
        for row, lab in zip(x, label):
            w.writerow([f"{v:.5f}" for v in row] + [lab])


@pytest.fixture(scope="module")
def beats(tmp_path_factory):
    d = tmp_path_factory.mktemp("beats")
    x, y = heartbeats(500, 60, seed=0)
    write_beats(d / "train.csv", x, y)
    x, y = heartbeats(200, 100, seed=1)
    write_beats(d / "test.csv", x, y)
    return d


@pytest.mark.parametrize("backbone", [["--hidden", "64", "--latent-dim", "8"], ["--preset", "conv", "--latent-dim", "8"]],
                         ids=["mlp", "conv1d"])
def test_anomaly_on_heartbeat_signals(beats, tmp_path, capsys, backbone):
    run = tmp_path / "detector"
    argv = ["anomaly", "fit", "--data", str(beats / "train.csv"), "--data-layout", "signal", "--out", str(run),
            "--epochs", "25", "--batch-size", "32", "--lr", "2e-3", "--fpr", "0.05", *backbone, *QUIET]
    assert main(argv) == 2
    assert "--normal" in capsys.readouterr().err  # two label values: say which is normal
    assert main([*argv, "--normal", "0", "--no-pictures"]) == 0
    det = json.loads((run / "anomaly.json").read_text())
    assert det["label_column"] == "label" and det["normal"] == ["0"] and set(det["thresholds"]) == {"elbo", "iwae", "recon"}
    assert det["n_train"] + det["n_val"] == 500
    assert (f"(trained on {det['n_train']} normal examples, {det['n_val']} more held out for the threshold: label in "
            "{0})") in capsys.readouterr().out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["kind"] == "signal" and cfg["model"]["data_shape"] == [1, 64]
    assert cfg["model"]["arch"] == ("conv" if "conv" in backbone else "mlp")
    assert main(["anomaly", "score", str(run), "--data", str(beats / "test.csv"), "-o", str(tmp_path / "s.csv"),
                 "--plot", str(tmp_path / "s.png")]) == 0
    printed = capsys.readouterr().out
    rows = _rows(tmp_path / "s.csv")
    assert list(rows[0]) == ["id", "score", "flag"] and [r["id"] for r in rows] == [str(i) for i in range(300)]
    metrics = json.loads((tmp_path / "s.metrics.json").read_text())
    assert metrics["auroc"] > 0.95, metrics
    assert metrics["n_anomaly"] == 100 and np.sum(metrics["confusion_matrix"]) == 300
    assert "AUROC" in printed and "confusion matrix" in printed
    truth = np.array([int(r["label"]) for r in _rows(beats / "test.csv")])
    flags = np.array([int(r["flag"]) for r in rows])
    assert flags[truth == 0].mean() < 0.2 and flags[truth == 1].mean() > 0.8
    scores = np.array([float(r["score"]) for r in rows])
    assert metrics["auroc"] == pytest.approx(anomaly_metrics(truth == 1, scores, flags == 1)["auroc"], abs=1e-3)


def test_anomaly_threshold_matches_the_false_positive_rate_and_the_scores_are_right(beats, tmp_path):
    from cvae.apps import anomaly_scores, fit_anomaly, score_anomalies
    from cvae.objectives import iwae_bound

    fit = fit_anomaly(str(beats / "train.csv"), out=tmp_path / "d", normal="0", fpr=0.1, data_layout="signal",
                      epochs=5, batch_size=32, hidden=[32], latent_dim=4, progress=False, tensorboard=False,
                      pictures=False, score="iwae", k=50)
    for name, v in fit.val_scores.items():
        assert (v > fit.detector.thresholds[name]).mean() <= 0.1 + 1e-9
        assert (v >= fit.detector.thresholds[name]).mean() >= 0.1 - 1e-9
    res = score_anomalies(tmp_path / "d", str(beats / "test.csv"), n=20)
    assert len(res.scores) == 20 and res.score == "iwae" and res.flags.dtype == bool
    # the scores are what they say: the negative ELBO is above the importance-sampled NLL, which
    # matches the objective's own estimate
    model = fit.model
    x = read_inputs(model, str(beats / "test.csv"), n=20).x
    elbo = anomaly_scores(model, x, method="elbo", samples=200)
    iwae = anomaly_scores(model, x, method="iwae", k=500)
    assert (elbo > iwae - 0.05).all()
    xm = (x - model.x_loc) / model.x_scale  # model units: standardised time points
    torch.manual_seed(0)
    with torch.no_grad():
        direct = -iwae_bound(model, xm, None, k=500, chunk=100).numpy()  # the objective's own draws
        mean = model.p_x(model.q_z(xm).mu).mean
    np.testing.assert_allclose(iwae, direct, rtol=0.01)  # two estimates of 500 draws each
    with torch.no_grad():  # the same estimate by hand, from the same draws: seed 0's (500, 1, D) normals
        qz = model.q_z(xm)
        z = qz.mu + qz.std * torch.randn((500, 1, qz.mu.shape[-1]), generator=torch.Generator().manual_seed(0))
        lw = model.p_x(z).log_prob(xm).double() + model.prior.log_prob(z, None).double() - qz.log_prob(z).double()
    np.testing.assert_allclose(iwae, -(torch.logsumexp(lw, 0) - math.log(500)).numpy(), rtol=1e-5)
    # a row's score does not depend on the other rows beside it (one set of draws for every row)
    for method in ("elbo", "iwae"):
        whole = anomaly_scores(model, x, method=method, k=50)
        np.testing.assert_allclose(anomaly_scores(model, x[3:4], method=method, k=50), whole[3:4], rtol=1e-5)
        np.testing.assert_allclose(anomaly_scores(model, x, method=method, k=50, batch_size=7), whole, rtol=1e-5)
        assert not np.allclose(anomaly_scores(model, x, method=method, k=50, seed=1), whole, rtol=1e-5)
    recon = anomaly_scores(model, x, method="recon")
    np.testing.assert_allclose(recon, ((mean - xm) ** 2).flatten(1).sum(1).numpy(), rtol=1e-5)


def test_rows_without_a_label_are_left_out_of_the_anomaly_figures(beats, tmp_path, capsys):
    """An empty label cell is neither normal nor anomalous: it was counted as an anomaly (not among the
    normal values), which moved the AUROC and the confusion matrix (found by a QA audit)."""
    from cvae.apps import fit_anomaly, score_anomalies

    fit_anomaly(str(beats / "train.csv"), out=tmp_path / "d", normal="0", data_layout="signal", epochs=2,
                batch_size=32, hidden=[16], latent_dim=2, progress=False, tensorboard=False, pictures=False)
    rows = list(csv.reader(open(beats / "test.csv")))
    for r in rows[1:41]:
        r[-1] = ""  # 40 rows lose their label
    with open(tmp_path / "part.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    whole = score_anomalies(tmp_path / "d", str(beats / "test.csv"))
    part = score_anomalies(tmp_path / "d", str(tmp_path / "part.csv"))
    np.testing.assert_allclose(part.scores, whole.scores)
    keep = np.arange(300) >= 40
    want = anomaly_metrics(whole.is_anomaly[keep], whole.scores[keep], whole.flags[keep])
    assert part.metrics["auroc"] == pytest.approx(want["auroc"]) and part.metrics["unlabelled"] == 40
    assert part.metrics["n_normal"] + part.metrics["n_anomaly"] == 260
    assert main(["anomaly", "score", str(tmp_path / "d"), "--data", str(tmp_path / "part.csv"), "-o",
                 str(tmp_path / "s.csv"), "--plot", str(tmp_path / "s.png")]) == 0
    assert "(40 without a label, left out of the figures below)" in capsys.readouterr().out
    assert len(_rows(tmp_path / "s.csv")) == 300  # every row is still scored


def test_normal_label_values_keep_seventeen_digit_codes_exact():
    from cvae.apps.anomaly import _normal_values

    assert _normal_values("12345678901234567, 1.0,x") == ["12345678901234567", "1", "x"]  # ...567 was ...568


def test_anomaly_metrics_by_hand():
    truth = np.array([0, 0, 0, 1, 1], bool)
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.3])
    flags = scores > 0.32
    m = anomaly_metrics(truth, scores, flags)
    assert m["auroc"] == pytest.approx(4 / 6)  # pairs (anomaly > normal): 0.8 beats 3, 0.3 beats 1
    assert m["confusion_matrix"] == [[1, 2], [1, 1]]
    assert m["true_positive_rate"] == 0.5 and m["false_positive_rate"] == pytest.approx(2 / 3)
    assert "note" in anomaly_metrics(np.zeros(3, bool), scores[:3], flags[:3])


def test_anomaly_on_images_one_class_digits(tmp_path, capsys):
    run = tmp_path / "zero"
    assert main(["anomaly", "fit", "--data", "digits", "--normal", "0", "--out", str(run), "--epochs", "15",
                 "--batch-size", "32", "--latent-dim", "4", "--hidden", "64", *QUIET]) == 0
    assert (run / "anomaly_val_scores.png").is_file() and (run / "normal_data.npz").is_file()
    assert main(["anomaly", "score", str(run), "--data", "digits", "-o", str(tmp_path / "s.csv")]) == 0
    metrics = json.loads((tmp_path / "s.metrics.json").read_text())
    assert metrics["n"] == 1797 and metrics["n_normal"] == 178
    assert metrics["auroc"] > 0.9


def test_headerless_heartbeats_with_the_label_last(tmp_path, capsys):
    x, y = heartbeats(150, 20, seed=3)
    write_beats(tmp_path / "b.csv", x, y, header=False)
    argv = ["anomaly", "fit", "--data", str(tmp_path / "b.csv"), "--data-layout", "signal", "--out", str(tmp_path / "r"),
            "--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--no-pictures", *QUIET]
    assert main(argv) == 2
    assert "--label-column last" in capsys.readouterr().err
    assert main([*argv, "--label-column", "last", "--normal", "0"]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model"]["data_shape"] == [1, 64] and cfg["data"]["n_train"] + cfg["data"]["n_val"] == 150
    assert main(["anomaly", "score", str(tmp_path / "r"), "--data", str(tmp_path / "b.csv"), "-o", str(tmp_path / "s.csv")]) == 0
    assert len(_rows(tmp_path / "s.csv")) == 170
    assert json.loads((tmp_path / "s.metrics.json").read_text())["n_anomaly"] == 20


def test_read_inputs_and_embed_find_a_named_data_set_where_the_run_found_it(tmp_path, shared_data):
    """The README's "From Python" snippet as written: no data_dir, the run's own data folder is used."""
    import cvae
    from cvae.apps import embed, read_inputs

    run = tmp_path / "mnist"
    cvae.train(data="mnist", data_dir=str(shared_data), limit=300, epochs=1, out=str(run), progress=False,
               tensorboard=False, pictures=False)
    model = cvae.load(run)
    test = read_inputs(model, "mnist", n=5)
    assert test.x.shape == (5, 1, 28, 28) and test.y.shape[0] == 5
    assert embed(model, "mnist", n=5).mu.shape == (5, model.config.latent_dim)


def test_inputs_outside_the_runs_grey_levels_are_refused(digits_run, tmp_path, capsys):
    np.save(tmp_path / "big.npy", np.full((2, 1, 8, 8), 1e6, np.float32))  # encoded to codes of 9e5 before
    assert main(["embed", str(digits_run), "--data", str(tmp_path / "big.npy"), "--condition", "label=3",
                 "-o", str(tmp_path / "e.csv")]) == 2
    err = capsys.readouterr().err
    assert "grey levels in [0, 1]" in err and "divide 8-bit pixel values by 255" in err and err.count("\n") == 1
    assert not (tmp_path / "e.csv").exists()
    grey = np.full((2, 1, 8, 8), 0.5, np.float32)
    grey[0, 0, 0, 0] = 1.0000001  # a rounding past 1 is clipped, not refused
    np.save(tmp_path / "ok.npy", grey)
    assert main(["embed", str(digits_run), "--data", str(tmp_path / "ok.npy"), "--condition", "label=3",
                 "-o", str(tmp_path / "e.csv")]) == 0


def test_scores_of_an_image_folder_name_its_files_at_any_size_and_channels(tmp_path):
    """An image folder's scores carry each file's name (they carried row numbers, in the folder's
    lexical order: 0, 1, 10, ...), and a folder of mixed sizes and channels is read at the run's (the
    message asked for --image-size, which the command does not have)."""
    from PIL import Image

    from cvae.apps import fit_anomaly, score_anomalies

    rng = np.random.default_rng(0)
    for cls in "ab":
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    fit_anomaly(str(tmp_path / "imgs"), out=tmp_path / "det", normal="a", epochs=1, batch_size=8, hidden=[16],
                latent_dim=2, progress=False, tensorboard=False, pictures=False)
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "b" / "rgb.png")
    res = score_anomalies(tmp_path / "det", str(tmp_path / "imgs"), score="recon")
    assert res.ids[:3] == ["a/0.png", "a/1.png", "a/10.png"] and "b/rgb.png" in res.ids and len(res.ids) == 25
    alone = score_anomalies(tmp_path / "det", str(tmp_path / "imgs" / "a" / "10.png"), score="recon")
    np.testing.assert_allclose(alone.scores, res.scores[2:3], rtol=1e-5)
    # an unlabelled/ folder's images are scored too, their label left empty (a traceback before)
    (tmp_path / "imgs" / "unlabelled").mkdir()
    Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / "imgs" / "unlabelled" / "u.png")
    res = score_anomalies(tmp_path / "det", str(tmp_path / "imgs"), score="recon")
    assert "unlabelled/u.png" in res.ids and len(res.ids) == 26
    # a named set without the split asked for says whose rows it reads
    from cvae.errors import CvaeWarning
    from cvae.models import build_model
    from cvae.models.config import ModelConfig

    digits = build_model(ModelConfig(data_shape=(1, 8, 8), hidden=[8], latent_dim=2))
    with pytest.warns(CvaeWarning, match="digits has no test split; its training split is read"):
        read_inputs(digits, "digits", split="test", n=5, scored=True)
    # a folder of the built-in set's name beside it does not replace the built-in set
    (tmp_path / "cwd" / "digits" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "cwd" / "digits" / "a" / "0.png")
    import os

    here = os.getcwd()
    os.chdir(tmp_path / "cwd")
    try:
        assert len(read_inputs(digits, "digits", split="train").x) == 1797
        assert len(read_inputs(digits, "./digits").x) == 1
    finally:
        os.chdir(here)


@pytest.mark.parametrize("edit,says", [
    (lambda d: d["thresholds"].update(elbo=None), "the threshold of 'elbo' is None, not a number"),
    (lambda d: d.update(k="100"), "k is '100', not a whole number"),
    (lambda d: d.update(normal="10"), "normal is '10', not a list of label values"),  # was a substring test
    (lambda d: d.update(fpr=5), "fpr is 5, not a rate between 0 and 1"),
    (lambda d: d.update(score="magic"), "score 'magic' has no threshold"),
    (None, "it holds a list, not an object"),
])
def test_a_hand_edited_detector_file_is_named_damaged_in_one_line(tmp_path, edit, says):
    from cvae.apps import load_detector
    from cvae.apps.anomaly import Detector

    d = Detector(score="elbo", fpr=0.05, thresholds={"elbo": 8.8, "recon": 2.0}, k=100, samples=10, source="x.csv",
                 label_column="label", normal=["0"], n_train=10, n_val=5).to_dict()
    if edit is None:
        d = [1, 2]
    else:
        edit(d)
    (tmp_path / "anomaly.json").write_text(json.dumps(d))
    with pytest.raises(cvae.CvaeError, match=r"anomaly.json is damaged \(" + re.escape(says) + r"\); fit the detector again"):
        load_detector(tmp_path)


def test_augment_merged_into_a_csv_writes_the_real_rows_as_read(tmp_path):
    """Real rows merged into a CSV come back as the float32 values training read (6 significant digits
    had turned 4481245.819 into 4.48125e+06 and -132104.863 into -132105)."""
    rng = np.random.default_rng(0)
    rows = [[f"{rng.normal() * 1e6 + 4e6:.3f}", f"{rng.normal() * 1e5:.3f}", "xy"[i % 2]] for i in range(40)]
    src = tmp_path / "big.csv"
    src.write_text("a,b,kind\n" + "\n".join(",".join(r) for r in rows) + "\n")
    run = tmp_path / "run"
    cvae.train(data=str(src), condition="kind", epochs=1, hidden=[8], latent_dim=2, out=run, progress=False,
               tensorboard=False, pictures=False)
    assert main(["augment", str(run), "--per-class", "2", "--merge", "--data", str(src), "-o", str(tmp_path / "m.csv")]) == 0
    with open(tmp_path / "m.csv") as f:
        out = {r["id"]: r for r in csv.DictReader(f)}
    for i, r in enumerate(rows):
        got = out[f"real-{i}"]
        assert np.float32(got["a"]) == np.float32(r[0]) and np.float32(got["b"]) == np.float32(r[1]), (got, r)


def test_a_supervised_runs_inputs_without_a_label_take_the_condition_given_for_them(tmp_path, capsys):
    """An image folder with an unlabelled/ subfolder, given to a run trained on labelled images, was
    refused even with --condition: its own labels were read (and the missing one refused) before the
    override applied. Now the missing rows take --condition (the labelled keep their own where the
    command prefers them: transfer, interpolate, traverse), and without it the line says to pass it."""
    from PIL import Image

    from cvae.apps.io import conditions_of

    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    for cls in "ab":
        (imgs / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(imgs / cls / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--data", str(imgs), "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                 "--out", str(run), "--no-progress", "--no-pictures"]) == 0
    (imgs / "unlabelled").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(imgs / "unlabelled" / f"u{i}.png")
    capsys.readouterr()
    rec = tmp_path / "rec.csv"
    assert main(["reconstruct", str(run), "--input", str(imgs), "-o", str(rec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 of the 23 examples" in err and "pass --condition label=..." in err, err
    assert not rec.exists()
    assert main(["reconstruct", str(run), "--input", str(imgs), "--condition", "label=b", "-o", str(rec)]) == 0
    with open(rec) as f:
        assert [r["label"] for r in csv.DictReader(f)] == ["b"] * 23  # reconstruct's --condition is for all
    assert main(["embed", str(run), "--data", str(imgs), "--condition", "label=b", "-o", str(tmp_path / "e.csv")]) == 0
    with open(tmp_path / "e.csv") as f:  # the labelled keep theirs: --condition is for those without one
        got = {r["id"]: r["label"] for r in csv.DictReader(f)}
    assert got["a/0.png"] == "a" and got["unlabelled/u0.png"] == "b" and list(got.values()).count("b") == 13
    model = cvae.load(run)
    inputs = read_inputs(model, str(imgs))
    y = conditions_of(model, inputs, "label=b", own_first=True)
    own = ~torch.isnan(inputs.y[:, 0])
    assert int((~own).sum()) == 3 and torch.equal(y[own], inputs.y[own]) and bool((y[~own] == 1).all())
    assert main(["transfer", str(run), "--input", str(imgs), "--condition", "label=a", "-o",
                 str(tmp_path / "t.npz")]) == 0
    assert main(["traverse", str(run), "--input", str(imgs), "--index", "unlabelled/u0.png", "-o",
                 str(tmp_path / "tr.png")]) == 2
    assert "pass --condition label=..." in capsys.readouterr().err
    assert main(["traverse", str(run), "--input", str(imgs), "--index", "a/0.png", "-o", str(tmp_path / "tr.png")]) == 0
    # an augmented copy keeps the unlabelled images (never encoded: nothing to start them from)
    out = tmp_path / "aug"
    assert main(["augment", str(run), "--data", str(imgs), "--per-class", "2", "--merge", "--codes", "posterior",
                 "-o", str(out)]) == 0
    assert len(list((out / "unlabelled").glob("*.png"))) == 3
    assert len(list((out / "a").glob("*.png"))) == 12 and len(list((out / "b").glob("*.png"))) == 12


def test_resuming_on_a_data_file_changed_since_says_so(tmp_path):
    # the same rows with other values were trained on without a word (an audit of streamed .npy files)
    x = np.random.default_rng(0).random((300, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = tmp_path / "run"
    cvae.train(data=str(tmp_path / "x.npy"), condition="none", epochs=1, out=str(run), progress=False, pictures=False)
    assert set(json.loads((run / "config.json").read_text())["data"]["stamp"]) == {"bytes", "modified_ns"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unchanged: no warning
        cvae.train(out=str(run), resume=True, epochs=2, progress=False, pictures=False)
    x[:10] = 1 - x[:10]
    np.save(tmp_path / "x.npy", x)
    os.utime(tmp_path / "x.npy", ns=(1, 1))  # a copy kept its time, or the clock moved: the size or time differs
    with pytest.warns(CvaeWarning, match="x.npy was changed since the run last trained"):
        cvae.train(out=str(run), resume=True, epochs=3, progress=False, pictures=False)


def test_a_run_trained_on_a_relative_path_finds_its_data_from_elsewhere(tmp_path, monkeypatch):
    """--data folder (relative) worked only from the folder training ran in: evaluate, embed and the
    other commands that read the run's own data said there was no data set 'folder' (a QA audit)."""
    import shutil

    from PIL import Image

    from cvae.data.core import recorded_source

    rng = np.random.default_rng(0)
    for cls in "ab":
        (tmp_path / "work" / "imgs" / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "work" / "imgs" / cls / f"{i}.png")
    monkeypatch.chdir(tmp_path / "work")
    assert main(["train", "--data", "imgs", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--out", "run",
                 "--no-progress", "--no-pictures"]) == 0
    cfg = json.loads((tmp_path / "work" / "run" / "config.json").read_text())
    assert cfg["train"]["data"] == "imgs" and cfg["data"]["path"] == str((tmp_path / "work" / "imgs").resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["embed", "work/run", "-o", "e.csv"]) == 0
    assert len(_rows(tmp_path / "e.csv")) == 16
    assert main(["evaluate", "work/run", "--metrics", "elbo", "--k", "5"]) == 0
    # another folder's file of the same name is another file: the recorded one is read (a regression hunt)
    for cls in "ab":
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / cls / "0.png")
    assert main(["embed", "work/run", "-o", "e2.csv"]) == 0
    assert len(_rows(tmp_path / "e2.csv")) == 16
    # resume reads it too, and refuses data that changed under the same name
    assert main(["train", "--resume", "--out", "work/run", "--epochs", "2", "--no-progress", "--no-pictures"]) == 0
    shutil.rmtree(tmp_path / "work" / "imgs" / "a")
    (tmp_path / "work" / "imgs" / "a").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "work" / "imgs" / "a" / "0.png")
    with pytest.raises(cvae.CvaeError, match="now gives .* training examples, but the run in .* trained on"):
        cvae.train(out="work/run", resume=True, epochs=3, progress=False)
    # gone from where it was, and not here either: one line that says so
    shutil.rmtree(tmp_path / "work" / "imgs")
    shutil.rmtree(tmp_path / "imgs")
    with pytest.raises(cvae.CvaeError, match="the run's data is no longer at .*work/imgs: put it back"):
        read_inputs(cvae.load(tmp_path / "work" / "run"), recorded_source(cvae.load(tmp_path / "work" / "run").run_config))


def test_picture_grids_label_each_row_with_its_one_condition_and_show_every_input(digits_run, model, tmp_path):
    """Found by a QA audit: `sample --n 25` (classes in runs of 3 and 2) labelled mixed rows with their
    first cell's class; `reconstruct --n 15` drew 8 of the 15; `-o REC.PNG` drew every input of the set."""
    from PIL import Image

    from cvae.apps.generate import _rows_by_condition
    from cvae.plots import input_and_output_rows

    cells, rows, ncol = _rows_by_condition(["a", "a", "b", "b", "b"], most=2)
    assert cells.tolist() == [0, 1, 2, 3, 4, -1] and rows == ["a", "b", ""] and ncol == 2
    cells, rows, ncol = _rows_by_condition(["a", "b", "a", "b"])
    assert cells.tolist() == [0, 2, 1, 3] and rows == ["a", "b"]  # each row one condition, whatever the order
    from cvae.apps.generate import generate

    _, y = generate(model, n=25)
    labels = [model.schema.describe(r) for r in y]
    cells, rows, ncol = _rows_by_condition(labels)
    assert ncol == 3 and len(rows) == 10 and all(len({labels[c] for c in cells[r * 3:(r + 1) * 3] if c >= 0}) == 1
                                                  for r in range(10))
    assert main(["sample", str(digits_run), "--n", "25", "-o", str(tmp_path / "s.png")]) == 0
    x = torch.rand(15, 1, 8, 8)
    pairs, k = input_and_output_rows(x, x)
    assert k == 8 and len(pairs) == 32 and torch.equal(pairs[16:23], x[8:15]) and bool((pairs[23] == 1).all())
    for name in ("rec.png", "REC.PNG"):
        assert main(["reconstruct", str(digits_run), "--input", "digits", "-o", str(tmp_path / name)]) == 0
    small, upper = (Image.open(tmp_path / name).size for name in ("rec.png", "REC.PNG"))
    assert small == upper  # 16 inputs either way (the upper-case suffix read all 1,797)


def test_the_threshold_says_how_many_held_out_scores_lie_above_it(beats, tmp_path, capsys):
    """With 15 held-out rows the 95% quantile is the largest score, so none lie above it; the title of
    the picture said 5% (a QA audit). The line and the title now say what was measured."""
    assert main(["anomaly", "fit", "--data", str(beats / "train.csv"), "--data-layout", "signal", "--normal", "0",
                 "--val-fraction", "0.03", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--out",
                 str(tmp_path / "d"), *QUIET]) == 0
    out = capsys.readouterr().out
    assert "15 held-out normal examples, taken at one of them: 0.0% lie above it; more held-out examples" in out, out


def test_a_latent_map_of_thirty_classes_draws_each_apart_with_its_legend_beside(tmp_path, monkeypatch):
    """tab20 repeated its colours past 20 classes (class 0 and class 20 alike), and the legend of many or
    long names covered the points (a QA audit)."""
    import matplotlib.axes

    from cvae.plots import save_latent_map

    drawn = []
    original = matplotlib.axes.Axes.scatter

    def scatter(self, *args, **kwargs):
        drawn.append((tuple(np.round(kwargs["color"], 4)), kwargs["marker"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    rng = np.random.default_rng(0)
    save_latent_map(tmp_path / "m.png", rng.normal(size=(600, 2)), np.arange(600) % 30, [f"c{i}" for i in range(30)])
    assert len(drawn) == 30 and len(set(drawn)) == 30  # thirty looks for thirty classes
    from PIL import Image

    w, h = Image.open(tmp_path / "m.png").size
    assert w > 1.3 * h  # the legend beside the map, which keeps its own width


def test_a_grid_of_images_one_pixel_high_has_rows_its_labels_fit(tmp_path):
    """1 x 40 strips made rows about 3 pixels high, their labels stacked on each other (a QA audit)."""
    from PIL import Image

    from cvae.plots import ROW_INCHES, save_image_grid

    save_image_grid(tmp_path / "g.png", torch.rand(16, 1, 1, 40), 4, row_labels=[f"label=c{i}" for i in range(4)])
    assert Image.open(tmp_path / "g.png").size[1] >= 4 * ROW_INCHES * 110 * 0.9  # dpi 110, less the margins cut


def test_a_character_no_font_has_is_one_warning_that_says_what_to_install(tmp_path):
    """Class names in scripts the installed fonts lack were drawn as boxes, and the command line hid
    matplotlib's warnings, one per character (a QA audit): one line now says which, and what to install."""
    from cvae.errors import CvaeWarning
    from cvae.plots import save_image_grid

    odd = "\U0010fffd"  # a private-use character of the last plane: in no font
    with pytest.warns(CvaeWarning, match=f"no installed font has the character\\(s\\) {odd}, drawn as boxes; install"):
        save_image_grid(tmp_path / "g.png", torch.rand(4, 1, 8, 8), 2, row_labels=[f"a{odd}", "b"])
    assert (tmp_path / "g.png").is_file()


def test_a_table_runs_sample_picture_says_its_condition_and_how_many_features_it_shows(tmp_path, monkeypatch):
    """The histogram picture had no title naming the condition, drew 12 of 200 features without saying so,
    and drew one row's values as density bars (a QA audit)."""
    import matplotlib.figure

    from cvae.plots import save_feature_histograms

    titles = []
    original = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda self, t, **kw: titles.append(t) or original(self, t, **kw))
    save_feature_histograms(tmp_path / "h.png", np.random.rand(1, 200), None, [], title="1 generated row: color=red")
    assert titles == ["1 generated row: color=red; the first 12 of 200 features (all in the .csv/.npz output)"]


def test_an_image_run_reads_its_own_augmented_csv_of_flat_rows(digits_run, tmp_path):
    """augment writes an image run's .csv as one column per pixel; the same run's commands refused it
    (shape (64,), expected (1, 8, 8); a QA audit of the README), which the Python API accepts."""
    assert main(["augment", str(digits_run), "--per-class", "2", "-o", str(tmp_path / "aug.csv")]) == 0
    assert main(["reconstruct", str(digits_run), "--input", str(tmp_path / "aug.csv"), "-o", str(tmp_path / "r.npz")]) == 0
    assert np.load(tmp_path / "r.npz")["x"].shape == (20, 1, 8, 8)
    np.save(tmp_path / "flat.npy", np.random.default_rng(0).random((3, 64), dtype=np.float32))
    assert main(["embed", str(digits_run), "--data", str(tmp_path / "flat.npy"), "--condition", "label=3",
                 "-o", str(tmp_path / "e.csv")]) == 0
    np.save(tmp_path / "odd.npy", np.zeros((3, 63), np.float32))
    with pytest.raises(cvae.CvaeError, match="this model expects \\(1, 8, 8\\) \\(or flat rows of 64 values\\)"):
        read_inputs(cvae.load(digits_run), str(tmp_path / "odd.npy"))


def test_a_feature_of_one_value_in_32_bits_draws_without_numeric_warnings(tmp_path):
    """17-digit values that are one float32 value made zero-width histogram bins: divide-by-zero warnings
    from numpy and matplotlib (a README audit)."""
    import warnings

    from cvae.plots import save_feature_histograms

    x = np.array([[12345678901234567.0, 0.1], [12345678901234568.0, 0.2]] * 5, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        save_feature_histograms(tmp_path / "h.png", x, x, ["code", "a"])


def test_augment_keeps_class_names_as_folder_names_where_it_can(tmp_path):
    """A class 'a,b' was written to the folder 'a-b', so a run trained on the augmented folder learnt another
    class (a QA audit); only what a file system refuses is changed now, and a warning says so."""
    from cvae.apps.augment import _folder_name
    from cvae.errors import CvaeWarning

    assert [_folder_name(n) for n in ("a,b", "café crème", "猫", "x/y", ".h", "")] == \
        ["a,b", "café crème", "猫", "x-y", "_h", "class"]
    rng = np.random.default_rng(0)
    labels = np.array(["a,b", "x/y"] * 20)
    np.savez(tmp_path / "d.npz", x=rng.random((40, 1, 8, 8), dtype=np.float32), label=labels)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--epochs", "1", "--hidden", "8", "--latent-dim", "2",
                 "--out", str(run), "--no-progress", "--no-pictures"]) == 0
    with pytest.warns(CvaeWarning, match="1 class name\\(s\\) cannot be folder names as they are: 'x/y' -> 'x-y'"):
        from cvae.apps.augment import augment, write_augmented

        model = cvae.load(run)
        write_augmented(tmp_path / "aug", model, augment(model, per_class=2))
    assert sorted(p.name for p in (tmp_path / "aug").iterdir()) == ["a,b", "x-y"]


def test_a_table_with_text_given_to_an_image_run_says_what_its_csv_holds(digits_run, tmp_path, capsys):
    """The reader's advice was training's (--condition, --factors), which classify and the other commands
    do not have (a QA audit)."""
    (tmp_path / "t.csv").write_text("a,b,color\n1,2,red\n3,4,blue\n")
    assert main(["embed", str(digits_run), "--data", str(tmp_path / "t.csv"), "-o", str(tmp_path / "e.csv")]) == 2
    err = capsys.readouterr().err
    assert "text 'red' where a number was expected; this run's examples are images, so a .csv for it holds one " \
           "column per pixel (64) and the run's condition columns (label)" in err and "--factors" not in err
