"""Scoring logic, pure of Spark where it can be: window predictions -> one probability vector per track.

A track's probability vector is the mean of its windows' softmax outputs (19 for a 30 s track), as
the reference scored, calibrated with the bundle's temperature (genreclf.calibration) unless
disabled; optionally only a centred excerpt of ``max_windows`` windows is used.
The partition functions below run inside Spark tasks and take the model from :mod:`model_cache`.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from genreclf.calibration import apply_temperature
from genreclf.config import Recipe
from genreclf.schema import STATUS_OK

#: Columns the scoring UDFs return (``probs`` in the bundle's label order; turned into a map later).
SCORE_FIELDS = ["track_id", "path", "status", "error", "n_windows", "probs"]


def excerpt(n_windows: int, max_windows: int | None) -> slice:
    """The windows to average: all, or the centred ``max_windows`` of a longer track."""
    if not max_windows or n_windows <= max_windows:
        return slice(0, n_windows)
    start = (n_windows - max_windows) // 2
    return slice(start, start + max_windows)


def predict(model, windows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax outputs (n, classes) float32 for windows (n, frames, bins), in bounded batches."""
    out = []
    for start in range(0, len(windows), batch_size):
        chunk = np.asarray(windows[start:start + batch_size], np.float32)[..., None]
        out.append(np.asarray(model.predict_on_batch(chunk), np.float32))
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def mean_probabilities(probs: np.ndarray, *, temperature: float = 1.0, calibration: str = "none") -> np.ndarray:
    """The track's vector: the mean of its window probabilities (float64), calibrated as the bundle says."""
    if calibration == "window" and temperature != 1.0:
        probs = apply_temperature(probs, temperature)
    mean = np.asarray(probs, np.float64).mean(axis=0)
    if calibration == "track" and temperature != 1.0:
        mean = apply_temperature(mean[None, :], temperature)[0]
    return mean


def _bundle_dir(bundle: str) -> str:
    """A shipped bundle's local directory: SparkFiles on executors, or the path itself."""
    if os.path.isdir(bundle):
        return bundle
    from pyspark import SparkFiles

    return SparkFiles.get(bundle)


def _maybe_inject_fault():
    """Test-only fault injection: ``GENRECLF_FAULT_ONCE=<marker file>`` kills this Python worker
    the first time any task gets here (the marker records it), so retries can be observed."""
    marker = os.environ.get("GENRECLF_FAULT_ONCE")
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(17)


def score_audio_partition(batches, *, bundle: str, recipe_json: str, max_duration_s: float, max_windows: int,
                          batch_size: int, temperature: float = 1.0, calibration: str = "none",
                          rows_per_batch: int = 16):
    """mapInPandas: catalogue rows -> one score row per file (decode, windows and STFT as featurize)."""
    from genreclf.featurize import featurize_file
    from genreclf.model_cache import get_model

    _maybe_inject_fault()
    recipe = Recipe.from_dict(json.loads(recipe_json))
    _, model = get_model(_bundle_dir(bundle))
    rows = []
    for batch in batches:
        for entry in batch.itertuples(index=False):
            result = featurize_file(entry.path, recipe, track_id=entry.track_id, max_duration_s=max_duration_s)
            row = result.row
            probs, n = None, 0
            if row["status"] == STATUS_OK:
                feats = result.features
                feats = feats[excerpt(len(feats), max_windows)]
                probs = mean_probabilities(predict(model, feats, batch_size), temperature=temperature,
                                           calibration=calibration).tolist()
                n = len(feats)
            rows.append((row["track_id"], row["path"], row["status"], row["error"], n, probs))
            if len(rows) >= rows_per_batch:
                yield pd.DataFrame(rows, columns=SCORE_FIELDS)
                rows = []
    if rows:
        yield pd.DataFrame(rows, columns=SCORE_FIELDS)


def predict_window_partition(batches, *, bundle: str, recipe_json: str, batch_size: int, window_temperature: float = 1.0):
    """mapInPandas: window rows (track_id, stft .npy bytes) -> (track_id, p0 .. p{k-1}) per window
    (tempered by ``window_temperature``: the bundle's temperature when it calibrates per window)."""
    from genreclf.featureset import decode_npy_column
    from genreclf.model_cache import get_model

    _maybe_inject_fault()
    recipe = Recipe.from_dict(json.loads(recipe_json))
    _, model = get_model(_bundle_dir(bundle))
    for batch in batches:
        if batch.empty:
            continue
        probs = predict(model, decode_npy_column(batch["stft"].to_numpy(), recipe), batch_size)
        if window_temperature != 1.0:
            probs = apply_temperature(probs, window_temperature)
        out = pd.DataFrame(probs.astype(np.float64), columns=[f"p{i}" for i in range(probs.shape[1])])
        out.insert(0, "track_id", batch["track_id"].to_numpy())
        yield out
