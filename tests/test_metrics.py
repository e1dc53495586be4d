import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from zoomorph.evaluation.metrics import (
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    kaggle_rmse,
    label_metrics,
    reliability_bins,
    rmse_per_question,
)

CLASSES = ["elliptical", "lenticular", "spiral"]
# Six galaxies, worked out by hand below: two mistakes (row 2 -> lenticular, row 5 -> elliptical),
# top-label confidences chosen so that each lands in its own 1/15-wide calibration bin.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
PROBS = np.array([
    [0.82, 0.10, 0.08],
    [0.62, 0.30, 0.08],
    [0.30, 0.58, 0.12],
    [0.20, 0.72, 0.08],
    [0.05, 0.92, 0.03],
    [0.52, 0.18, 0.30],
])


def test_hand_checked_case():
    m = classification_metrics(Y_TRUE, PROBS, CLASSES)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["per_class"]["elliptical"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3,
                                                          "f1": 2 / 3, "support": 3})
    assert m["per_class"]["lenticular"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["spiral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert np.allclose(m["confusion_normalised"], [[2 / 3, 1 / 3, 0], [0, 1, 0], [1, 0, 0]])
    assert m["roc_auc"] == pytest.approx({"elliptical": 8 / 9, "lenticular": 1.0, "spiral": 1.0})
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.82, 0.62, 0.30, 0.72, 0.92, 0.30])))
    gaps = [1 - 0.82, 1 - 0.62, 0.58, 1 - 0.72, 1 - 0.92, 0.52]  # |correct - confidence|, one per bin
    assert m["ece"] == pytest.approx(np.mean(gaps), abs=1e-6)


def test_reliability_bins_agree_with_ece():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4) * 0.5, size=500) * 0.999  # keep confidences below 1.0
    y = rng.integers(0, 4, size=500)
    bins = reliability_bins(y, probs)
    assert len(bins["count"]) == 15 and sum(bins["count"]) == 500
    filled = [(c, a, n) for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"]) if n]
    from_bins = sum(n / 500 * abs(a - c) for c, a, n in filled)
    assert expected_calibration_error(y, probs) == pytest.approx(from_bins, abs=1e-6)
    lows, highs = bins["edges"][:-1], bins["edges"][1:]
    assert all(lo <= c <= hi for c, lo, hi, n in zip(bins["confidence"], lows, highs, bins["count"]) if n)


def test_perfect_predictor():
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    m = classification_metrics(y, np.eye(3)[y], CLASSES)
    assert m["accuracy"] == m["balanced_accuracy"] == 1.0
    assert m["roc_auc_macro"] == 1.0
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-9)
    assert m["ece"] == pytest.approx(0.0, abs=1e-9)
    assert np.array_equal(m["confusion"], np.diag([2, 2, 3]))


def test_constant_predictor():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    probs = np.tile([0.5, 0.3, 0.2], (len(y), 1))
    m = classification_metrics(y, probs, CLASSES)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)
    assert all(v == pytest.approx(0.5) for v in m["roc_auc"].values())  # ties everywhere
    assert m["ece"] == pytest.approx(0.0, abs=1e-6)  # says 50 %, is right 50 %
    assert m["per_class"]["lenticular"]["recall"] == 0.0


def test_absent_class_skips_auc_only():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
    m = classification_metrics(y, probs, CLASSES)
    assert m["roc_auc"]["spiral"] is None
    assert m["roc_auc_macro"] == pytest.approx(1.0)
    assert m["per_class"]["spiral"]["support"] == 0
    assert m["confusion_normalised"][2] == [0.0, 0.0, 0.0]
    assert math.isfinite(m["log_loss"])


def test_label_metrics_count_an_unassigned_prediction_as_wrong():
    # index 3 = "(none)": a vote preset that assigned no class
    m = label_metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 3, 2]), CLASSES + ["(none)"])
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["confusion"][2] == [0, 0, 1, 1]


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    pred = np.where(rng.random(60) < 0.7, y, rng.integers(0, 3, size=60))
    for metric in ("accuracy", "balanced_accuracy"):
        small = bootstrap_ci(y, pred, metric, n=500)
        big = bootstrap_ci(np.tile(y, 9), np.tile(pred, 9), metric, n=500)
        assert small["low"] <= small["estimate"] <= small["high"]
        assert big["estimate"] == pytest.approx(small["estimate"])
        assert (big["high"] - big["low"]) < 0.5 * (small["high"] - small["low"])  # ~ 1/sqrt(9)
    assert bootstrap_ci(y, pred, seed=3) == bootstrap_ci(y, pred, seed=3)


def test_bootstrap_balanced_accuracy_matches_sklearn_per_resample():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, size=25)
    pred = np.where(rng.random(25) < 0.6, y, rng.integers(0, 4, size=25))
    ci = bootstrap_ci(y, pred, "balanced_accuracy", n=200, seed=11, level=0.9)
    # the same draws, scored one resample at a time by sklearn
    idx = np.random.default_rng(11).integers(0, 25, size=(200, 25))
    with pytest.warns(UserWarning):  # some resamples predict a class they lack: sklearn drops it, as we do
        scores = [balanced_accuracy_score(y[i], pred[i]) for i in idx]
    assert (ci["low"], ci["high"]) == pytest.approx(tuple(np.percentile(scores, [5, 95])))
    assert ci["estimate"] == pytest.approx(balanced_accuracy_score(y, pred))


def test_bootstrap_ci_of_a_perfect_predictor_is_a_point():
    y = np.array([0, 1, 1, 2, 2, 2])
    assert bootstrap_ci(y, y, "balanced_accuracy") == pytest.approx(
        {"estimate": 1.0, "low": 1.0, "high": 1.0, "level": 0.95, "n": 1000})
    with pytest.raises(ValueError, match="metric"):
        bootstrap_ci(y, y, "f1")


def test_kaggle_rmse_known_case():
    true = np.zeros((2, 37))
    pred = true.copy()
    pred[0, 0] = 1.0  # one answer of one galaxy entirely wrong
    assert kaggle_rmse(true, pred) == pytest.approx(math.sqrt(1 / 74))
    assert kaggle_rmse(true, true + 0.1) == pytest.approx(0.1)
    per_q = rmse_per_question(true, pred)
    assert list(per_q) == [f"Q{i}" for i in range(1, 12)]
    assert per_q["Q1"] == pytest.approx(math.sqrt(1 / 6))  # 2 galaxies x 3 answers
    assert all(v == 0 for k, v in per_q.items() if k != "Q1")
