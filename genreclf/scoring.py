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
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa

from genreclf.calibration import track_probabilities
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


class TrackBatcher:
    """Predicts the windows of consecutive tracks together, ``batch_size`` windows a model call
    whatever the tracks' lengths, and hands back each track's window predictions once all are done.

    Holds fewer than ``batch_size`` unpredicted windows between calls (plus the track just added),
    so a task's memory stays bounded however many tracks it scores.
    """

    def __init__(self, model, batch_size: int):
        self.model, self.batch_size = model, batch_size
        self._queue: deque = deque()  # [key, windows, predictions so far, next window]
        self._waiting = 0  # windows added but not predicted

    def add(self, key, windows: np.ndarray) -> list:
        """Queue a track's windows; returns the (key, predictions) of every track now complete."""
        self._queue.append([key, windows, [], 0])
        self._waiting += len(windows)
        done = []
        while self._waiting >= self.batch_size:
            done += self._run(self.batch_size)
        return done + self._complete()

    def flush(self) -> list:
        """Predict what is left; returns the remaining tracks' (key, predictions)."""
        done = []
        while self._waiting:
            done += self._run(min(self._waiting, self.batch_size))
        return done + self._complete()

    def _run(self, size: int) -> list:
        parts, owners, room = [], [], size
        for item in self._queue:
            if not room:
                break
            take = min(room, len(item[1]) - item[3])
            if take:
                parts.append(item[1][item[3]:item[3] + take])
                owners.append((item, take))
                item[3] += take
                room -= take
        batch = np.concatenate(parts) if len(parts) > 1 else parts[0]
        probs = np.asarray(self.model.predict_on_batch(np.asarray(batch, np.float32)[..., None]), np.float32)
        at = 0
        for item, take in owners:
            item[2].append(probs[at:at + take])
            at += take
        self._waiting -= len(batch)
        return self._complete()

    def _complete(self) -> list:
        done = []
        while self._queue and self._queue[0][3] == len(self._queue[0][1]):
            key, windows, preds, _ = self._queue.popleft()
            classes = self.model.output_shape[-1]
            done.append((key, np.concatenate(preds) if preds else np.zeros((0, classes), np.float32)))
        return done


def prefetch(items, fn, threads: int):
    """``(item, fn(item))`` in order, with up to ``threads`` later items computed ahead in a thread
    pool (decoding overlaps the model: PyAV, soxr, the FFT and TensorFlow release the GIL); at most
    ``threads + 1`` results wait, which bounds memory. ``threads = 0``: computed inline."""
    if threads <= 0:
        for item in items:
            yield item, fn(item)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="genreclf-decode") as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > threads:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def mean_probabilities(probs: np.ndarray, *, temperature: float = 1.0, calibration: str = "none") -> np.ndarray:
    """The track's vector: the mean of its window probabilities (float64), calibrated as the bundle says."""
    codes = np.zeros(len(probs), np.int64)
    return track_probabilities(probs, codes, 1, temperature=temperature, mode=calibration)[0]


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


def _write_task_rows(rows: list, labels: list, staging: str, run: dict):
    """Write a task's score rows as its part of the staged output; the task's one returned row."""
    from pyspark import TaskContext

    from genreclf.scoreset import score_table, write_part

    ctx = TaskContext.get()
    n = write_part(staging, f"part-{ctx.partitionId():05d}.parquet", ctx.attemptNumber(),
                   score_table(rows, labels, run))
    return pd.DataFrame({"partition": [ctx.partitionId()], "rows": [n]})


def score_audio_partition(batches, *, bundle: str, recipe_json: str, max_duration_s: float, max_windows: int,
                          batch_size: int, precision: str, decode_threads: int, staging: str,
                          storage_options: dict, run: dict, temperature: float = 1.0, calibration: str = "none"):
    """mapInPandas: catalogue rows -> one score row per file (decode, windows and STFT as featurize),
    written by the task to its part of the staged output.

    Files are decoded ``decode_threads`` ahead while the model predicts, and windows of consecutive
    tracks share model calls (:class:`TrackBatcher`).
    """
    from genreclf import storage
    from genreclf.featurize import featurize_file
    from genreclf.model_cache import get_model
    from genreclf.scoreset import score_row

    _maybe_inject_fault()
    storage.configure(storage_options)
    recipe = Recipe.from_dict(json.loads(recipe_json))
    info, model, computed = get_model(_bundle_dir(bundle), precision)
    entries = (entry for batch in batches for entry in batch.itertuples(index=False))

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
    yield _write_task_rows(rows, info["labels"], staging, run)


def score_window_files_partition(batches, *, bundle: str, recipe_json: str, batch_size: int, max_windows: int,
                                 precision: str, staging: str, storage_options: dict, tracks, run: dict,
                                 temperature: float = 1.0, calibration: str = "none"):
    """mapInPandas: window files (``location``) -> one score row per track they hold.

    A featurize output keeps all of a track's windows in one file, so each track is averaged here,
    in the task that reads its file: no shuffle. Memory: one row group of windows at a time.
    ``tracks`` (a broadcast of track_id -> (path, size_bytes, mtime)) names the tracks to score:
    windows of any other track are not read into the model.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from genreclf import storage
    from genreclf.featureset import decode_npy_column
    from genreclf.model_cache import get_model
    from genreclf.scoreset import score_row

    _maybe_inject_fault()
    storage.configure(storage_options)
    recipe = Recipe.from_dict(json.loads(recipe_json))
    info, model, computed = get_model(_bundle_dir(bundle), precision)
    wanted = tracks.value
    wanted_ids = pa.array(list(wanted), pa.string())
    rows = []
    for batch in batches:
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
    yield _write_task_rows(rows, info["labels"], staging, run)
