"""What each score task runs in its Python worker (mapInPandas): decode or read windows, predict with
the model of :mod:`genreclf.ml.model_cache`, average each track, and write the task's rows itself
as its record (:mod:`genreclf.formats.taskrecords`, named by the task's key): a rerun after a crash
keeps it. The driver compacts the records into the committed run."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa

from genreclf.config import Recipe
from genreclf.errors import StorageError
from genreclf.formats import taskrecords
from genreclf.formats.schema import STATUS_OK
from genreclf.formats.scores import score_row, score_table
from genreclf.ml.inference import TrackBatcher, excerpt, mean_probabilities, predict, prefetch


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


def _write_task_rows(rows: list, info: dict, out_url: str, key: str, run: dict):
    """Write a task's score rows as its record; the task's one returned row."""
    from pyspark import TaskContext

    try:
        taskrecords.write_record(out_url, key, score_table(rows, info["labels"], run, info.get("genre_labels")),
                                 TaskContext.get().attemptNumber())
        n, error = len(rows), None
    except StorageError as e:  # the run cannot go on: said once by the driver, not as a task traceback
        n, error = -1, str(e)
    return pd.DataFrame({"task": [key], "rows": [n], "error": [error]})


def score_audio_partition(batches, *, bundle: str, recipe_json: str, max_duration_s: float, max_windows: int,
                          batch_size: int, precision: str, decode_threads: int, out_url: str,
                          storage_options: dict, run: dict, temperature: float = 1.0, calibration: str = "none"):
    """mapInPandas: catalogue rows -> one score row per file (decode, windows and STFT as featurize),
    written by the task as its record.

    Files are decoded ``decode_threads`` ahead while the model predicts, and windows of consecutive
    tracks share model calls (:class:`TrackBatcher`).
    """
    from genreclf.audio.extract import featurize_file
    from genreclf.io import storage
    from genreclf.ml.model_cache import get_model

    _maybe_inject_fault()
    storage.configure(storage_options)
    recipe = Recipe.from_dict(json.loads(recipe_json))
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        return
    key = str(first["task"].iloc[0])
    info, model, computed = get_model(_bundle_dir(bundle), precision)
    entries = (entry for batch in itertools.chain([first], batches) for entry in batch.itertuples(index=False))

    def decode(entry):
        return featurize_file(entry.path, recipe, track_id=entry.track_id, max_duration_s=max_duration_s)

    def finish(done):
        for (entry, row), probs in done:
            mean = mean_probabilities(probs, temperature=temperature, calibration=calibration)
            rows.append(score_row(row["track_id"], row["path"], STATUS_OK, None, len(probs), mean.tolist(),
                                  size_bytes=entry.size_bytes, mtime=entry.mtime, precision=computed))

    rows: list = []
    batcher = TrackBatcher(model, batch_size)
    for entry, result in prefetch(entries, decode, decode_threads):
        row = result.row
        if row["status"] == STATUS_OK:
            feats = result.features
            finish(batcher.add((entry, row), feats[excerpt(len(feats), max_windows)]))
        else:
            rows.append(score_row(row["track_id"], row["path"], row["status"], row["error"],
                                  size_bytes=entry.size_bytes, mtime=entry.mtime))
    finish(batcher.flush())
    yield _write_task_rows(rows, info, out_url, key, run)


def score_window_files_partition(batches, *, bundle: str, recipe_json: str, batch_size: int, max_windows: int,
                                 precision: str, out_url: str, storage_options: dict, tracks, run: dict,
                                 temperature: float = 1.0, calibration: str = "none"):
    """mapInPandas: window files (``location``) -> one score row per track they hold.

    A featurize output keeps all of a track's windows in one file, so each track is averaged here,
    in the task that reads its file: no shuffle. Memory: one row group of windows at a time.
    ``tracks`` (a broadcast of track_id -> (path, size_bytes, mtime)) names the tracks to score:
    windows of any other track are not read into the model.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from genreclf.formats.payload import decode_npy_column
    from genreclf.io import storage
    from genreclf.ml.model_cache import get_model

    _maybe_inject_fault()
    storage.configure(storage_options)
    recipe = Recipe.from_dict(json.loads(recipe_json))
    info, model, computed = get_model(_bundle_dir(bundle), precision)
    wanted = tracks.value
    wanted_ids = pa.array(list(wanted), pa.string())
    rows, key = [], None
    for batch in batches:
        key = key or str(batch["task"].iloc[0])
        for location in batch["location"]:
            per_track: dict = {}
            fs, path = storage.filesystem(location)
            with fs.open_input_file(path) as f:
                parquet = pq.ParquetFile(f)
                for group in range(parquet.num_row_groups):
                    ids = parquet.read_row_group(group, columns=["track_id"])["track_id"]
                    keep = pc.is_in(ids, value_set=wanted_ids)
                    if not pc.any(keep).as_py():
                        continue
                    table = parquet.read_row_group(group, columns=["track_id", "window", "stft"]).filter(keep)
                    probs = predict(model, decode_npy_column(table["stft"].to_numpy(zero_copy_only=False), recipe),
                                    batch_size)
                    for tid, w, p in zip(table["track_id"].to_pylist(), table["window"].to_pylist(), probs):
                        per_track.setdefault(tid, []).append((w, p))
            for tid, windows in per_track.items():
                windows.sort(key=lambda item: item[0])
                chosen = np.stack([p for _, p in windows])[excerpt(len(windows), max_windows)]
                mean = mean_probabilities(chosen, temperature=temperature, calibration=calibration)
                path_, size, mtime = wanted[tid]
                rows.append(score_row(tid, path_, STATUS_OK, None, len(chosen), mean.tolist(), size_bytes=size,
                                      mtime=mtime, precision=computed))
    if key is not None:
        yield _write_task_rows(rows, info, out_url, key, run)
