"""Per-file featurization: one audio file -> its window features and exactly one status row.

Pure of Spark: :func:`featurize_file` is what a Spark task runs for each file, and
:func:`window_tables` turns catalogue rows into bounded Arrow tables of encoded window rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from genreclf.audio.decode import AudioReader
from genreclf.audio.stft import window_features
from genreclf.audio.windows import iter_windows
from genreclf.config import Recipe
from genreclf.errors import Reason, TrackError
from genreclf.formats.schema import STATUS_ERROR, STATUS_OK, TRACKS_SCHEMA, window_arrow_schema

log = logging.getLogger(__name__)

#: Windows transformed per FFT call: measured fastest, and keeps the transient buffers near 4 MB.
STFT_BATCH = 4


@dataclass
class TrackResult:
    """A file's status row (keys of TRACKS_SCHEMA) and, when ok, its features in batches.

    Batches are kept as computed (never concatenated) so a long file costs its features once.
    """

    row: dict
    batches: list | None

    @property
    def features(self) -> np.ndarray | None:
        """All windows' features, (k, frames, bins); a copy, for tests and small tools."""
        return None if self.batches is None else np.concatenate(self.batches)

    def iter_features(self):
        for batch in self.batches or ():
            yield from batch


def _features(reader: AudioReader, recipe: Recipe) -> list:
    batches, batch = [], []
    for window in iter_windows(reader.chunks(), recipe):
        batch.append(window)
        if len(batch) == STFT_BATCH:
            batches.append(window_features(np.stack(batch), recipe))
            batch = []
    if batch:
        batches.append(window_features(np.stack(batch), recipe))
    if not batches:
        raise TrackError(Reason.too_short(recipe.window / recipe.sample_rate),
                         f"decoded {reader.duration_s:.2f} s; a window needs "
                         f"{recipe.min_window_samples / recipe.sample_rate:.2f} s")
    return batches


def featurize_file(path: str, recipe: Recipe, *, track_id: str | None = None, label: str | None = None,
                   group: str | None = None, size_bytes: int | None = None, mtime: float | None = None,
                   max_duration_s: float | None = None) -> TrackResult:
    """Decode, window and transform one file. Never raises for bad input: the row says what went wrong.

    A file is ok only if it decoded to the end (a truncated file is an error, not a shorter track);
    corrupt packets in the middle are skipped and noted in ``warning``. Memory is one file's features
    (about 131 KB a window in float16) plus one window of audio, whatever the file's length.
    """
    row = {name: None for name in TRACKS_SCHEMA.names}
    row.update(track_id=track_id if track_id is not None else path, path=path, label=label, group=group,
               size_bytes=size_bytes, mtime=mtime, n_windows=0)
    max_samples = int(max_duration_s * recipe.sample_rate) if max_duration_s else None
    reader = AudioReader(path, recipe.sample_rate, max_samples)
    features = None
    try:
        with reader:
            features = _features(reader, recipe)
        row.update(status=STATUS_OK, n_windows=sum(len(b) for b in features))
    except TrackError as e:
        features = None
        row.update(status=STATUS_ERROR, error=str(e))
    except Exception as e:  # a decoder bug must cost one file, never the job
        log.exception("unexpected failure on %s", path)
        features = None
        row.update(status=STATUS_ERROR, error=f"{Reason.DECODE_FAILED}: {type(e).__name__}: {e}")
    if reader.info is not None:
        row.update(sample_rate=reader.info.sample_rate, channels=reader.info.channels, codec=reader.info.codec)
    if reader.n_samples:
        row["duration_s"] = reader.duration_s
    if row["status"] == STATUS_OK:
        row["warning"] = reader.warning()
    return TrackResult(row, features)


#: Bytes of window data per buffer of a table's ``stft`` column. A row group's (~33 MB at 32 MB) in one
#: buffer is above glibc's largest mmap threshold (32 MB), so each was fresh pages, faulted in and
#: unmapped again: +6 ms per track over the floor (2-core AMD EPYC Zen 4, gVisor) against +1.5 ms in
#: 4 MB chunks, which malloc reuses. The file's row groups are the same either way.
CHUNK_BYTES = 4 << 20


class WindowTableBuilder:
    """Accumulates window rows into one Arrow table whose ``stft`` column is petastorm's NdarrayCodec
    encoding (.npy bytes), built in preallocated buffers of :data:`CHUNK_BYTES`: the .npy header is
    identical for every window of a recipe, so it is encoded once by the codec and each window's data
    is copied once."""

    def __init__(self, codec_field, recipe: Recipe, capacity: int):
        sample = np.zeros(recipe.shape, dtype=recipe.dtype)
        encoded = bytes(codec_field.codec.encode(codec_field, sample))
        self._header = np.frombuffer(encoded[: len(encoded) - sample.nbytes], np.uint8)
        self._row = len(encoded)
        self.capacity = max(1, capacity)
        self._chunk_rows = max(1, min(CHUNK_BYTES, 2**31 - 1) // self._row)  # int32 offsets of pa.binary()
        self._new()

    def _new(self):
        self._chunks, self._buf, self._used = [], None, 0
        self._ids, self._windows, self._labels = [], [], []

    def __len__(self):
        return len(self._ids)

    def add(self, track_id: str, window: int, label, features: np.ndarray) -> None:
        if self._buf is None or self._used == len(self._buf):
            self._seal()
            self._buf = np.empty((min(self._chunk_rows, self.capacity - len(self._ids)), self._row), np.uint8)
            self._buf[:, : self._header.size] = self._header
            self._used = 0
        self._buf[self._used, self._header.size:] = np.ascontiguousarray(features).view(np.uint8).reshape(-1)
        self._used += 1
        self._ids.append(track_id)
        self._windows.append(window)
        self._labels.append(label)

    def _seal(self):
        """The current buffer's rows as one binary array, without a copy."""
        if self._used:
            n = self._used
            offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * self._row).tobytes())
            self._chunks.append(pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(self._buf[:n])]))
        self._buf, self._used = None, 0

    def full(self) -> bool:
        return len(self._ids) >= self.capacity

    def table(self) -> pa.Table:
        """The rows added so far as a table (then starts afresh)."""
        self._seal()
        schema = window_arrow_schema()
        table = pa.Table.from_arrays([pa.array(self._ids, pa.string()), pa.array(self._windows, pa.int32()),
                                      pa.array(self._labels, pa.string()), pa.chunked_array(self._chunks, pa.binary())],
                                     schema=schema)
        self._new()
        return table


def window_tables(catalog_batches: Iterable[pd.DataFrame], recipe: Recipe, schema, *,
                  rows_per_table: int, max_duration_s: float | None, on_track=None) -> Iterator[pa.Table]:
    """Featurize every catalogue row, yielding encoded window rows as Arrow tables of ``rows_per_table``.

    ``on_track(row)`` receives each file's status row. Only one file's features and one pending
    table are held at a time, so a task's memory does not grow with its number of files.
    """
    builder = WindowTableBuilder(schema.fields["stft"], recipe, rows_per_table)
    for batch in catalog_batches:
        for entry in batch.itertuples(index=False):
            result = featurize_file(
                entry.path, recipe, track_id=entry.track_id, label=entry.label, group=getattr(entry, "group", None),
                size_bytes=entry.size_bytes, mtime=entry.mtime, max_duration_s=max_duration_s)
            if on_track is not None:
                on_track(result.row)
            if result.batches is None:
                continue
            for i, feat in enumerate(result.iter_features()):
                builder.add(result.row["track_id"], i, result.row["label"], feat)
                if builder.full():
                    yield builder.table()
    if len(builder):
        yield builder.table()
