"""Disentanglement metrics against closed answers (cvae.disentangle)."""

import math

import numpy as np
import pytest

from cvae import disentangle as dis
from cvae.disentangle import disentanglement, factor_classes
from cvae.errors import CvaeError


def _factors(n=3000, sizes=(2, 2, 3), seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, k, n) for k in sizes], 1)


def test_mig_of_a_hand_made_discrete_case():
    # factor v: four 0s, four 1s; z0 agrees but for one example; z1 is independent of v.
    v = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    z0 = np.array([0, 0, 0, 1, 1, 1, 1, 1], float)
    z1 = np.array([0, 1, 0, 1, 0, 1, 0, 1], float)
    # I(z0; v) = 3/8 ln 2 + 1/8 ln(2/5) + 1/2 ln(8/5); I(z1; v) = 0; H(v) = ln 2
    mi = 3 / 8 * math.log(2) + 1 / 8 * math.log(2 / 5) + 1 / 2 * math.log(8 / 5)
    r = dis.mig(np.stack([z0, z1], 1), v[:, None])
    assert r["score"] == pytest.approx(mi / math.log(2), abs=1e-12)
    assert r["matrix"][1, 0] == pytest.approx(0.0, abs=1e-12)


def test_codes_equal_to_the_factors_up_to_permutation_and_monotone_maps_score_near_one():
    f = _factors()
    codes = np.stack([np.exp(f[:, 2]), 3.0 - 2.0 * f[:, 0], f[:, 1] ** 3], 1).astype(float)
    r = dis.disentanglement(codes, f, num_train=2000, num_test=1000, seed=1)
    for name in ("mig", "modularity", "dci_disentanglement", "dci_completeness", "dci_informativeness",
                 "beta_vae", "factor_vae"):
        assert r.scores[name] > 0.95, (name, r.scores[name])
    assert r.follows() == ["factor_2", "factor_0", "factor_1"]
    # SAP (discrete factors) is a gap between accuracies: for balanced binary factors and a perfect code the
    # best dimension is right always and the other at chance, 1/2, so the gap is 1/2 (not 1)
    binary = f[:, :2]
    sap = dis.sap(np.stack([-binary[:, 1], binary[:, 0]], 1), binary, num_train=2000, num_test=1000)
    assert sap["score"] == pytest.approx(0.5, abs=0.04)
    assert np.allclose(np.sort(sap["matrix"].max(0)), 1.0)


def test_random_codes_score_near_zero_or_chance():
    f = _factors()
    codes = np.random.default_rng(5).normal(size=(len(f), 4))
    r = dis.disentanglement(codes, f, num_train=2000, num_test=1000, seed=1)
    for name in ("mig", "sap", "dci_disentanglement", "dci_completeness"):
        assert r.scores[name] < 0.05, (name, r.scores[name])
    chance = 1 / 3
    for name in ("beta_vae", "factor_vae"):  # these are accuracies: chance is 1 / F
        assert abs(r.scores[name] - chance) < 0.1, (name, r.scores[name])
    assert r.scores["dci_informativeness"] < 0.7  # near the majority-class rate, not 1


def test_a_code_that_mixes_two_factors_scores_in_between():
    f = _factors(sizes=(4, 4))
    pure = f.astype(float)
    mixed = np.stack([f[:, 0] + f[:, 1], f[:, 1]], 1).astype(float)  # z0 mixes both factors
    a = dis.disentanglement(pure, f, metrics=("mig", "dci"), num_train=2000, num_test=1000)
    b = dis.disentanglement(mixed, f, metrics=("mig", "dci"), num_train=2000, num_test=1000)
    for name in ("mig", "dci_disentanglement", "dci_completeness"):
        assert 0.05 < b.scores[name] < a.scores[name] - 0.2, (name, a.scores[name], b.scores[name])


def test_constant_factors_are_left_out_and_bad_input_is_refused():
    f = _factors(n=500)
    f = np.concatenate([f, np.zeros((len(f), 1), int)], 1)
    r = dis.disentanglement(f[:, :3].astype(float), f, metrics=("mig",), factor_names=["a", "b", "c", "colour"])
    assert r.protocol["constant_factors_left_out"] == ["colour"] and r.factor_names == ["a", "b", "c"]
    with pytest.raises(CvaeError, match="same examples"):
        dis.mig(np.zeros((5, 2)), np.zeros((4, 1)))
    with pytest.raises(CvaeError, match="NaN"):
        dis.mig(np.full((5, 2), np.nan), np.arange(5)[:, None])


def test_collapsed_codes_are_named_in_the_report():
    f = _factors()
    rng = np.random.default_rng(2)
    # posterior means that vary a little (std 0.06: above the FactorVAE score's pruning at 0.05) but carry nothing
    collapsed = dis.disentanglement(rng.normal(scale=0.06, size=(len(f), 4)), f, num_train=2000, num_test=1000)
    assert collapsed.details["active_units"] == 0
    assert "collapsed" in collapsed.details["notes"][0]
    healthy = dis.disentanglement(rng.normal(size=(len(f), 4)), f, metrics=("mig",), num_train=2000)
    assert healthy.details["active_units"] == 4 and "notes" not in healthy.details


def test_a_continuous_factor_is_binned_not_one_class_per_example():
    # each float value was its own class: "examples sharing the factor" were the example itself, so the
    # BetaVAE score of random codes came out 1.0, and DCI's boosted trees ran for minutes
    rng = np.random.default_rng(0)
    n = 1500
    report = disentanglement(rng.normal(size=(n, 5)), np.c_[rng.integers(0, 3, n), rng.uniform(size=n)],
                             factor_names=["shape", "size"], num_train=1000, num_test=500)
    assert report.protocol["binned_factors"] == {"size": n}
    assert any("size (1,500 values)" in note and "20 equal-width bins" in note for note in report.details["notes"])
    assert report.scores["beta_vae"] < 0.8  # near chance (0.5) for random codes, not 1.0
    index, binned = factor_classes(np.linspace(0, 1, 200)[:, None])
    assert binned == [200] and index.max() == 19  # 20 bins
    assert factor_classes(np.arange(40)[:, None])[1] == [0]  # dSprites' 40 orientations stay classes


def test_per_factor_mig_keeps_each_factors_own_name_when_a_rare_value_is_not_drawn():
    # a factor that varies in the data but not in MIG's 10,000 examples was dropped inside mig() while the
    # names were zipped with the full list: 'rare' got the gap of 'a', and 'b' vanished
    rng = np.random.default_rng(0)
    n = 20000
    factors = np.c_[np.arange(n) == 7, rng.integers(0, 3, n), rng.integers(0, 4, n)]
    codes = rng.normal(size=(n, 3))
    codes[:, 0] += 3 * factors[:, 1]
    report = disentanglement(codes, factors, factor_names=["rare", "a", "b"], metrics=["mig", "modularity"])
    per = report.details["mig_per_factor"]
    assert set(per) <= {"rare", "a", "b"} and per["a"] > 0.5 and per["b"] < 0.05
    assert "rare" not in per or per["rare"] < 0.05
    assert "modularity" in report.scores


@pytest.mark.parametrize("factors", [
    lambda n, rng: rng.integers(0, 3, n),  # one factor
    lambda n, rng: np.c_[rng.integers(0, 3, n), np.zeros(n)],  # one varies, one constant
])
def test_metrics_that_compare_factors_say_why_they_are_left_out_with_one_factor(factors):
    rng = np.random.default_rng(0)
    report = disentanglement(rng.normal(size=(300, 4)), factors(300, rng), num_train=200, num_test=100)
    assert {"mig", "sap", "dci_completeness", "dci_informativeness"} <= set(report.scores)
    assert not {"beta_vae", "factor_vae", "modularity", "dci_disentanglement"} & set(report.scores)
    assert any("need at least two that vary" in note for note in report.details["notes"])


def test_degenerate_inputs_of_the_metric_function_are_scored_or_refused_in_one_line():
    rng = np.random.default_rng(0)
    rare = np.c_[rng.integers(0, 3, 600), np.eye(1, 600, 5)[0]]  # a factor with one differing row
    assert 0 <= disentanglement(rng.normal(size=(600, 4)), rare, num_train=400, num_test=200).scores["dci_completeness"] <= 1
    assert "dci_informativeness" in disentanglement(rng.normal(size=(2, 3)), [[0, 1], [1, 0]]).scores  # n = 2
    assert set(disentanglement(rng.normal(size=(300, 3)), rng.integers(0, 3, (300, 2)), metrics="mig,sap").scores) == {"mig", "sap"}
    for codes, factors, fragment in [
        (rng.normal(size=(5, 0)), rng.integers(0, 2, (5, 2)), "no dimension"),
        (np.array([["a", "b"]] * 5), rng.integers(0, 2, (5, 2)), "must be numbers"),
        (rng.normal(size=(4, 3)), np.array([[1, "x"], [None, "y"], [2, "x"], [3, "y"]], object), "missing values"),
    ]:
        with pytest.raises(CvaeError, match=fragment):
            disentanglement(codes, factors)
    with pytest.raises(CvaeError, match="named twice"):
        disentanglement(rng.normal(size=(10, 2)), rng.integers(0, 2, (10, 2)), factor_names=["a", "a"])
