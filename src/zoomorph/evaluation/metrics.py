"""Metrics on plain numpy arrays: classes (labels + probabilities) and Galaxy Zoo vote fractions.

Every function returns JSON-ready Python values (floats, lists, dicts) so the
results go straight into RUN/metrics.json.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)
from torchmetrics.functional.classification import multiclass_calibration_error

from zoomorph.schema import QUESTIONS, question_slices

CALIBRATION_BINS = 15
BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy")


def label_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict:
    """What hard predictions alone allow: accuracy, balanced accuracy, per-class scores, confusion.

    Labels are class indices into `classes`. Balanced accuracy is the mean recall over
    the classes present in `y_true` (a predicted-only class has no recall to average).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "confusion_normalised": confusion_matrix(y_true, y_pred, labels=labels, normalize="true").tolist(),
    }


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Label metrics of the argmax plus what the probabilities add: ROC-AUC, log loss, calibration."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # a float32 softmax sums to 1 only within ~1e-7
    out = label_metrics(y_true, probs.argmax(axis=1), classes)
    auc = {name: _one_vs_rest_auc(y_true == c, probs[:, c]) for c, name in enumerate(classes)}
    scored = [v for v in auc.values() if v is not None]
    out["roc_auc"] = auc
    out["roc_auc_macro"] = float(np.mean(scored)) if scored else None
    out["log_loss"] = float(log_loss(y_true, probs, labels=np.arange(len(classes))))
    out["ece"] = expected_calibration_error(y_true, probs)
    out["reliability"] = reliability_bins(y_true, probs)
    return out


def _one_vs_rest_auc(is_class: np.ndarray, score: np.ndarray) -> float | None:
    # AUC needs both positives and negatives; a class absent from the split (or alone in it) has none.
    if is_class.all() or not is_class.any():
        return None
    return float(roc_auc_score(is_class, score))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = CALIBRATION_BINS) -> float:
    """Top-label ECE with equal-width confidence bins (torchmetrics' definition)."""
    probs = torch.tensor(np.asarray(probs, dtype=np.float64))
    target = torch.tensor(np.asarray(y_true, dtype=np.int64))
    return float(multiclass_calibration_error(probs, target, num_classes=probs.shape[1], n_bins=n_bins, norm="l1"))


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = CALIBRATION_BINS) -> dict:
    """Per equal-width bin of top-label confidence: mean confidence, accuracy and count (empty bins: None)."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    count, _ = np.histogram(confidence, bins=edges)
    conf_sum, _ = np.histogram(confidence, bins=edges, weights=confidence)
    hit_sum, _ = np.histogram(confidence, bins=edges, weights=correct)
    filled = count > 0
    mean = lambda total: [float(t / c) if f else None for t, c, f in zip(total, count, filled)]  # noqa: E731
    return {"edges": edges.tolist(), "confidence": mean(conf_sum), "accuracy": mean(hit_sum),
            "count": count.tolist()}


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, metric: str = "accuracy", n: int = 1000,
                 seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of accuracy or balanced accuracy.

    All `n` resamples are drawn at once as an (n, N) index matrix; per-class recalls
    come from one bincount over (resample, class) pairs, so nothing loops over images.
    """
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"bootstrap_ci: metric {metric!r} is not one of {', '.join(BOOTSTRAP_METRICS)}")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        raise ValueError("bootstrap_ci: no samples")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n, len(y_true)), dtype=np.int32)
    correct = (y_true == y_pred)[idx]
    if metric == "accuracy":
        estimate = accuracy_score(y_true, y_pred)
        scores = correct.mean(axis=1)
    else:
        estimate = _balanced_accuracy(y_true, y_pred)
        classes, dense = np.unique(y_true, return_inverse=True)
        cells = (np.arange(n)[:, None] * len(classes) + dense[idx]).ravel()  # (resample, class) pair
        support = np.bincount(cells, minlength=n * len(classes)).reshape(n, -1)
        hits = np.bincount(cells, weights=correct.ravel(), minlength=n * len(classes)).reshape(n, -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.nanmean(np.where(support > 0, hits / support, np.nan), axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return {"estimate": float(estimate), "low": float(low), "high": float(high), "level": level, "n": n}


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # Mean recall over the true classes: sklearn's balanced accuracy, except that a prediction
    # outside them (e.g. "no class" from a vote preset) is simply wrong, not a class of its own.
    return float(recall_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))


def kaggle_rmse(true37: np.ndarray, pred37: np.ndarray) -> float:
    """The Galaxy Challenge score: RMSE over every galaxy and all 37 answers together."""
    return float(root_mean_squared_error(np.ravel(true37), np.ravel(pred37)))


def rmse_per_question(true37: np.ndarray, pred37: np.ndarray) -> dict[str, float]:
    """The same RMSE restricted to each question's answers, keyed "Q1".."Q11"."""
    true37, pred37 = np.asarray(true37), np.asarray(pred37)
    return {f"Q{q.number}": kaggle_rmse(true37[:, start:stop], pred37[:, start:stop])
            for q, (start, stop, _) in zip(QUESTIONS, question_slices())}
