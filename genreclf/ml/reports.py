"""What a model's predictions on featurize output say: window- and track-level metrics, calibrated or
not, and the reports and plots written for them (train, evaluate and cross-validation share these)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from genreclf.formats.bundle import METRICS_FILE, write_json
from genreclf.ml.calibration import apply_temperature, track_probabilities
from genreclf.ml.inference import predict
from genreclf.ml.metrics import classification_report
from genreclf.ml.pipeline import WindowSet

log = logging.getLogger(__name__)


def predict_windows(model, windows: WindowSet, *, batch_size: int, workers: int = 1):
    """Softmax outputs for every window of ``windows``: (track_id array, label array, probs (n, classes))."""
    ids, labels, probs = [], [], []
    names = np.array([*windows.labels, None], dtype=object)  # index -1 (no label) -> None
    for b in windows.batches(batch_size, shuffle=False, workers=workers):
        probs.append(predict(model, b.x, batch_size))
        ids.append(b.track_ids)
        labels.append(names[b.y])
    if not probs:
        return np.array([], object), np.array([], object), np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate(ids), np.concatenate(labels), np.concatenate(probs)


def track_codes(track_ids, window_labels, labels: list):
    """(codes, track ids, track label indices): each window's track index, sorted by track id."""
    codes, uniques = pd.factorize(np.asarray(track_ids, dtype=object), sort=True)
    index = {lab: i for i, lab in enumerate(labels)}
    first = pd.Series(np.asarray(window_labels, dtype=object)).groupby(codes).first()
    return codes, np.asarray(uniques, dtype=object), np.array([index[first[i]] for i in range(len(uniques))], np.int64)


def evaluate_predictions(track_ids, window_labels, probs, labels: list, *, temperature: float = 1.0,
                         calibration: str = "none") -> dict:
    """Window-level and track-level reports; tracks are the mean of their windows, calibrated as given."""
    index = {lab: i for i, lab in enumerate(labels)}
    y_windows = np.array([index[lab] for lab in window_labels], np.int64)
    codes, _, y_tracks = track_codes(track_ids, window_labels, labels)
    tracks = track_probabilities(probs, codes, len(y_tracks), temperature=temperature, mode=calibration)
    windows = apply_temperature(probs, temperature) if calibration != "none" and temperature != 1.0 else probs
    return {"windows": classification_report(y_windows, windows, labels),
            "tracks": classification_report(y_tracks, tracks, labels),
            "calibration": calibration, "temperature": temperature}


def calibrated_report(track_ids, window_labels, probs, labels: list, mode: str, temperature: float) -> dict:
    """The report with calibration applied, plus the uncalibrated track-level one beside it."""
    report = evaluate_predictions(track_ids, window_labels, probs, labels, temperature=temperature, calibration=mode)
    if mode != "none":
        report["uncalibrated"] = evaluate_predictions(track_ids, window_labels, probs, labels)["tracks"]
    return report


def write_reports(out_dir: str, report: dict, labels: list) -> None:
    """metrics.json, the track-level confusion matrix (CSV, PNG) and reliability diagram (PNG), into
    a local directory (see :func:`storage.local_output` for other locations)."""
    from genreclf.ml.plots import confusion, reliability_diagram

    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, METRICS_FILE), report)
    cm = np.asarray(report["tracks"]["confusion_matrix"])
    pd.DataFrame(cm, index=pd.Index(labels, name="true"), columns=labels).to_csv(
        os.path.join(out_dir, "confusion_matrix.csv"))
    confusion(cm, labels, os.path.join(out_dir, "confusion_matrix.png"))
    if report["tracks"].get("reliability"):
        curves = {f"calibrated (T={report['temperature']:.2f}, {report['calibration']})"
                  if report.get("calibration", "none") != "none" else "as predicted": report["tracks"]["reliability"]}
        if report.get("uncalibrated", {}).get("reliability"):
            curves["uncalibrated"] = report["uncalibrated"]["reliability"]
        reliability_diagram(curves, os.path.join(out_dir, "reliability.png"))


def format_report(report: dict) -> str:
    lines = [f"{name + ':':8s} n={r['n']} accuracy={r['accuracy']:.4f} log_loss={r['log_loss']:.4f} "
             f"macro_f1={r['macro_f1']:.4f} ece={r['ece']:.4f}"
             for name, r in (("windows", report["windows"]), ("tracks", report["tracks"]),
                             ("uncalibrated tracks", report.get("uncalibrated"))) if r]
    if report.get("calibration", "none") != "none":
        lines.append(f"calibration: temperature {report['temperature']:.3f} applied per {report['calibration']}")
    return "\n".join(lines)
