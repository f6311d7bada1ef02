"""Scoring logic, pure of Spark where it can be: window predictions -> one probability vector per track.

A track's probability vector is the mean of its windows' softmax outputs (19 for a 30 s track), as
the reference scored, calibrated with the bundle's temperature (genreclf.calibration) unless
disabled; optionally only a centred excerpt of ``max_windows`` windows is used.
The partition functions below run inside Spark tasks, take the model from :mod:`model_cache` and
write their rows themselves (:mod:`scoreset`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from genreclf.calibration import apply_temperature
from genreclf.config import Recipe
from genreclf.schema import STATUS_OK

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


def _write_task_rows(rows: list, labels: list, staging: str):
    """Write a task's score rows as its part of the staged output; the task's one returned row."""
    from pyspark import TaskContext

    from genreclf.scoreset import score_table, write_part

    ctx = TaskContext.get()
    n = write_part(staging, f"part-{ctx.partitionId():05d}.parquet", ctx.attemptNumber(), score_table(rows, labels))
    return pd.DataFrame({"partition": [ctx.partitionId()], "rows": [n]})


def score_audio_partition(batches, *, bundle: str, recipe_json: str, max_duration_s: float, max_windows: int,
                          batch_size: int, staging: str, storage_options: dict, temperature: float = 1.0,
                          calibration: str = "none"):
    """mapInPandas: catalogue rows -> one score row per file (decode, windows and STFT as featurize),
    written by the task to its part of the staged output."""
    from genreclf import storage
    from genreclf.featurize import featurize_file
    from genreclf.model_cache import get_model

    _maybe_inject_fault()
    storage.configure(storage_options)
    recipe = Recipe.from_dict(json.loads(recipe_json))
    info, model = get_model(_bundle_dir(bundle))
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
    yield _write_task_rows(rows, info["labels"], staging)


def score_window_files_partition(batches, *, bundle: str, recipe_json: str, batch_size: int, max_windows: int,
                                 staging: str, storage_options: dict, paths, temperature: float = 1.0,
                                 calibration: str = "none"):
    """mapInPandas: window files (``location``) -> one score row per track they hold.

    A featurize output keeps all of a track's windows in one file, so each track is averaged here,
    in the task that reads its file: no shuffle. Memory: one row group of windows at a time.
    ``paths`` (a broadcast of track_id -> path) gives each row its input's path.
    """
    import pyarrow.parquet as pq

    from genreclf import storage
    from genreclf.featureset import decode_npy_column
    from genreclf.model_cache import get_model

    _maybe_inject_fault()
    storage.configure(storage_options)
    recipe = Recipe.from_dict(json.loads(recipe_json))
    info, model = get_model(_bundle_dir(bundle))
    path_of = paths.value
    rows = []
    for batch in batches:
        for location in batch["location"]:
            per_track: dict = {}
            fs, path = storage.filesystem(location)
            with fs.open_input_file(path) as f:
                parquet = pq.ParquetFile(f)
                for group in range(parquet.num_row_groups):
                    table = parquet.read_row_group(group, columns=["track_id", "window", "stft"])
                    if not table.num_rows:
                        continue
                    probs = predict(model, decode_npy_column(table["stft"].to_numpy(zero_copy_only=False), recipe),
                                    batch_size)
                    for tid, w, p in zip(table["track_id"].to_pylist(), table["window"].to_pylist(), probs):
                        per_track.setdefault(tid, []).append((w, p))
            for tid, windows in per_track.items():
                if tid not in path_of:  # not an ok track of the committed tracks table
                    continue
                windows.sort(key=lambda item: item[0])
                chosen = np.stack([p for _, p in windows])[excerpt(len(windows), max_windows)]
                mean = mean_probabilities(chosen, temperature=temperature, calibration=calibration)
                rows.append((tid, path_of.get(tid), STATUS_OK, None, len(chosen), mean.tolist()))
    yield _write_task_rows(rows, info["labels"], staging)
