"""Evaluate a model on featurize output: window- and track-level accuracy, log loss, macro-F1."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd

from genreclf import storage
from genreclf.bundle import (METRICS_FILE, SPLIT_FILE, check_recipe, load_bundle_info, load_model, read_json,
                             write_json)
from genreclf.dataset import WindowSet
from genreclf.errors import ConfigError
from genreclf.featureset import read_recipe, read_tracks
from genreclf.metrics import classification_report, track_means
from genreclf.schema import STATUS_OK, WINDOWS_DIR
from genreclf.scoring import predict

log = logging.getLogger(__name__)


def predict_windows(model, windows: WindowSet, *, batch_size: int = 64, workers: int = 1):
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


def evaluate_predictions(track_ids, window_labels, probs, labels: list) -> dict:
    """Window-level and track-level (mean of window probabilities) reports."""
    index = {lab: i for i, lab in enumerate(labels)}
    y_windows = np.array([index[lab] for lab in window_labels], np.int64)
    means = track_means(track_ids, probs)
    track_label = pd.Series(window_labels, index=track_ids).groupby(level=0).first()
    y_tracks = np.array([index[track_label[t]] for t in means.index], np.int64)
    return {"windows": classification_report(y_windows, probs, labels),
            "tracks": classification_report(y_tracks, means.to_numpy(), labels)}


def usable_tracks(tracks: pd.DataFrame, labels: list) -> pd.DataFrame:
    """Tracks that are ok, labelled, and whose label the model knows."""
    ok = tracks[(tracks["status"] == STATUS_OK) & tracks["label"].notna()]
    unknown = ~ok["label"].isin(labels)
    if unknown.any():
        log.warning("%d tracks have labels the model does not know (%s): left out", int(unknown.sum()),
                    ", ".join(sorted(ok.loc[unknown, "label"].unique())[:5]))
    return ok[~unknown]


def write_reports(out_dir: str, report: dict, labels: list) -> None:
    from genreclf.plots import confusion

    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, METRICS_FILE), report)
    cm = np.asarray(report["tracks"]["confusion_matrix"])
    pd.DataFrame(cm, index=pd.Index(labels, name="true"), columns=labels).to_csv(
        os.path.join(out_dir, "confusion_matrix.csv"))
    confusion(cm, labels, os.path.join(out_dir, "confusion_matrix.png"))


def format_report(report: dict) -> str:
    w, t = report["windows"], report["tracks"]
    return (f"windows: n={w['n']} accuracy={w['accuracy']:.4f} log_loss={w['log_loss']:.4f} macro_f1={w['macro_f1']:.4f}\n"
            f"tracks:  n={t['n']} accuracy={t['accuracy']:.4f} log_loss={t['log_loss']:.4f} macro_f1={t['macro_f1']:.4f}")


def run_evaluate(bundle_dir: str, features: str, *, output: str | None = None, split: str = "val",
                 batch_size: int = 64, workers: int = 2) -> dict:
    """Evaluate a bundle on ``features`` (its validation tracks, or ``split='all'``); writes the reports."""
    from genreclf.tfsetup import configure_tensorflow

    info = load_bundle_info(bundle_dir)
    recipe = read_recipe(features)
    check_recipe(info, recipe, features)
    labels = info["labels"]
    tracks = usable_tracks(read_tracks(features), labels)
    if split == "val":
        split_path = os.path.join(bundle_dir, SPLIT_FILE)
        if not os.path.isfile(split_path):
            raise ConfigError(f"{bundle_dir} records no validation split; use --split all")
        tracks = tracks[tracks["track_id"].isin(read_json(split_path)["val"])]
    if tracks.empty:
        raise ConfigError(f"no labelled ok tracks to evaluate in {features} (split {split})")
    configure_tensorflow(training=False)
    model = load_model(bundle_dir)
    started = time.time()
    windows = WindowSet(storage.join(storage.to_url(features), WINDOWS_DIR), recipe, track_ids=tracks["track_id"],
                        labels=labels)
    ids, window_labels, probs = predict_windows(model, windows, batch_size=batch_size, workers=workers)
    report = evaluate_predictions(ids, window_labels, probs, labels)
    report.update(split=split, features=storage.to_url(features), elapsed_s=round(time.time() - started, 2))
    out = output or os.path.join(bundle_dir, "evaluation")
    write_reports(out, report, labels)
    for line in format_report(report).splitlines():
        log.info("evaluate %s", line)
    log.info("evaluate: reports in %s", out)
    return report
