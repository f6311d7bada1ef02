"""Classification metrics: scikit-learn's, so numbers match what users compute themselves, plus
what it lacks (expected calibration error, the challenge's clipping). Track-level predictions
(the mean of a track's window probabilities) come from genreclf.ml.calibration.track_probabilities.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

#: Probabilities are clipped to [EPS, 1 - EPS] in log loss, as the challenge's scorer (sklearn's
#: then-default eps) did; today's sklearn clips at float64's 2.2e-16 (36.0 instead of 34.5 per miss).
EPS = 1e-15
#: Equal-width confidence bins of the expected calibration error and the reliability diagram.
CALIBRATION_BINS = 10


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log probability of the true class (rows renormalised after clipping)."""
    p = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
    p /= p.sum(axis=1, keepdims=True)
    return float(skm.log_loss(np.asarray(y_true), p, labels=np.arange(p.shape[1])))


def reliability(y_true: np.ndarray, probs: np.ndarray, n_bins: int = CALIBRATION_BINS) -> dict:
    """Top-1 confidence against accuracy in equal-width bins, and the expected calibration error
    (ECE: the bins' |accuracy - confidence| weighted by their share of predictions; sklearn's
    ``calibration_curve`` gives the per-bin points but not the counts that weight them)."""
    probs = np.asarray(probs, np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    acc = np.bincount(which, correct, minlength=n_bins) / np.maximum(count, 1)
    conf = np.bincount(which, confidence, minlength=n_bins) / np.maximum(count, 1)
    ece = float(np.sum(count * np.abs(acc - conf)) / max(len(confidence), 1))
    used = count > 0
    return {"ece": ece, "bin_edges": edges.tolist(), "count": count.tolist(),
            "accuracy": acc[used].tolist(), "confidence": conf[used].tolist(),
            "bins_used": np.flatnonzero(used).tolist()}


def classification_report(y_true, probs, labels: list) -> dict:
    """Accuracy, log loss, macro-F1 (over classes present in truth or predictions, as sklearn's
    ``f1_score(average='macro')``), expected calibration error, per class, confusion."""
    y_true = np.asarray(y_true, np.int64)
    probs = np.asarray(probs)
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    every = np.arange(len(labels))
    cm = skm.confusion_matrix(y_true, y_pred, labels=every)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=every,
                                                                         zero_division=0)
    per_class = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    if not len(y_true):
        nan = float("nan")
        return {"n": 0, "accuracy": nan, "log_loss": nan, "macro_f1": nan, "ece": nan,
                "per_class": {}, "confusion_matrix": cm.tolist()}
    calib = reliability(y_true, probs)
    return {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "log_loss": log_loss(y_true, probs),
        "macro_f1": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "ece": calib["ece"],
        "reliability": calib,
        "per_class": {lab: {k: (int(v[i]) if k == "support" else float(v[i])) for k, v in per_class.items()}
                      for i, lab in enumerate(labels)},
        "confusion_matrix": cm.tolist(),
    }

