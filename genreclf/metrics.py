"""Classification metrics in plain numpy: accuracy, log loss, macro-F1, per-class P/R, confusion.

Track-level predictions are the mean of a track's window probabilities, as the reference scored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Probabilities are clipped to [EPS, 1 - EPS] in log loss, as the challenge's scorer (sklearn) did.
EPS = 1e-15


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log probability of the true class (rows renormalised after clipping)."""
    p = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
    p /= p.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(y_true)), y_true])))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class(cm: np.ndarray) -> dict:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def classification_report(y_true, probs, labels: list) -> dict:
    """Accuracy, log loss, macro-F1 (over classes present in truth or predictions), per class, confusion."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    pc = per_class(cm)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)) if len(y_true) else float("nan"),
        "log_loss": log_loss(y_true, probs) if len(y_true) else float("nan"),
        "macro_f1": float(pc["f1"][present].mean()) if present.any() else float("nan"),
        "per_class": {lab: {k: (int(v[i]) if k == "support" else float(v[i])) for k, v in pc.items()}
                      for i, lab in enumerate(labels)},
        "confusion_matrix": cm.tolist(),
    }


def track_means(track_ids, probs: np.ndarray) -> pd.DataFrame:
    """Mean window probability per track: a DataFrame indexed by track_id, one column per class."""
    frame = pd.DataFrame(np.asarray(probs, np.float64))
    frame["track_id"] = np.asarray(track_ids)
    return frame.groupby("track_id", sort=True).mean()
