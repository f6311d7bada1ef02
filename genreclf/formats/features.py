"""Writing the featurize output format: ``tracks/`` (one row per input file), ``recipe.json`` and the window files.

The featurize job writes it through this module; the stages read it through
:class:`genreclf.formats.featureset.FeatureSet`. Window files are ``windows/part-*.parquet``
(petastorm dataset rows, ``stft`` as .npy bytes: :mod:`genreclf.formats.payload`); each is written
under a hidden temporary name and renamed, so readers never see a partial file. All of a track's
windows are in one file (a featurize task writes a track's windows together). The tracks file is
the commit record: its Parquet metadata names the window files readers may take (:func:`commit`),
so files of a run that never committed are ignored.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genreclf.config import Recipe
from genreclf.formats.featureset import FILES_KEY, FOOTER_THREADS, RECIPE_KEY, RUN_KEY, tracks_file
from genreclf.formats.schema import TRACKS_SCHEMA, window_arrow_schema, window_schema
from genreclf.io import storage

log = logging.getLogger(__name__)


def write_window_file(windows_url: str, name: str, attempt: int, tables) -> int:
    """Write ``tables`` (one row group each) to ``name`` atomically; no file when there are no rows.

    All windows of a track are in one file: a featurize task writes each of its tracks whole, and
    score-from-features averages tracks inside the task that reads their file (no shuffle).
    """
    rows = 0
    tables = iter(tables)
    first = next(tables, None)
    if first is None:
        return 0
    # hidden until complete: readers skip it, and a retried attempt writes its own and replaces the file
    with storage.atomic_output(storage.join(windows_url, name), tag=f"attempt-{attempt}") as out:
        with pq.ParquetWriter(out, window_arrow_schema(), compression="none", use_dictionary=False,
                              write_statistics=["track_id", "window"]) as writer:
            for table in _chain(first, tables):
                writer.write_table(table)
                rows += table.num_rows
    return rows


def _chain(first, rest):
    yield first
    yield from rest


def commit(output: str, tracks: pd.DataFrame, files: list, recipe: Recipe, run_id: str) -> None:
    """Make a run visible: the tracks table (sorted by track_id) with, in its Parquet metadata, the
    window files it references and the recipe, replaced in one atomic file move (a single PUT on
    object stores). Readers take the window files from here, never from a listing, so a crashed
    run's files stay invisible until the next run removes them (:func:`orphans`)."""
    table = pa.Table.from_pandas(tracks.sort_values("track_id", kind="stable"), schema=TRACKS_SCHEMA,
                                 preserve_index=False)
    table = table.replace_schema_metadata({
        FILES_KEY: json.dumps(sorted(files)).encode(), RECIPE_KEY: json.dumps(recipe.to_dict()).encode(),
        RUN_KEY: run_id.encode()})
    with storage.atomic_output(tracks_file(output)) as out:
        pq.write_table(table, out)


def write_dataset_metadata(windows_url, recipe: Recipe, files: list, row_groups: dict | None = None) -> None:
    """petastorm's dataset metadata (``_common_metadata``: the pickled Unischema and the row groups
    per file), written with pyarrow so that any store works (petastorm's ``materialize_dataset``
    needs a legacy filesystem and a Spark job); ``make_reader``/``make_batch_reader`` read it.

    Row groups per file come from ``row_groups`` ({path: count}, what the run just read), then from
    the previous ``_common_metadata`` (files carried over), and only else from the files' footers,
    read ``FOOTER_THREADS`` at a time: a commit of tens of thousands of files reads only its new ones.
    """
    import pickle

    from petastorm.etl.dataset_metadata import ROW_GROUPS_PER_FILE_KEY, UNISCHEMA_KEY

    windows = storage.Location.open(windows_url)  # the handle when given one: nothing resolved again
    fs, base = windows.fs, windows.path
    known = {f"{base}/{name}": n for name, n in _previous_row_groups(windows, ROW_GROUPS_PER_FILE_KEY).items()}
    known.update(row_groups or {})

    def count(path):
        if path in known:
            return path, known[path]
        with fs.open_input_file(path) as f:
            return path, pq.read_metadata(f).num_row_groups

    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        counts = {path[len(base):].lstrip("/"): n for path, n in pool.map(count, files)}
    schema = window_arrow_schema().with_metadata({
        UNISCHEMA_KEY: pickle.dumps(window_schema(recipe)),
        ROW_GROUPS_PER_FILE_KEY: json.dumps(counts).encode()})
    with storage.atomic_output(windows.child("_common_metadata")) as out:
        pq.write_metadata(schema, out)


def _previous_row_groups(windows: storage.Location, key: bytes) -> dict:
    """{file name: row groups} of the last ``_common_metadata`` ({} when there is none or it is unreadable)."""
    try:
        with storage.open_input(windows.child("_common_metadata")) as f:
            meta = pq.read_schema(f).metadata or {}
        return json.loads(meta.get(key, b"{}"))
    except (OSError, ValueError, pa.ArrowInvalid):
        return {}


def window_facts(windows_url: str, files: list) -> tuple:
    """(window rows per track_id, {path: row groups}) of window files, read ``FOOTER_THREADS`` at a
    time (the track_id column and the footer only): the commit's check and petastorm's metadata."""
    fs, _ = storage.filesystem(windows_url)

    def read(path):
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            return path, parquet.metadata.num_row_groups, parquet.read(columns=["track_id"])["track_id"]

    counts: dict = {}
    groups = {}
    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        for path, n_groups, ids in pool.map(read, files):
            groups[path] = n_groups
            for item in ids.value_counts().to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return pd.Series(counts, dtype="int64"), groups


def without_tracks(windows_url: str, files: list, track_ids, run_id: str) -> tuple:
    """Copy-on-write removal of ``track_ids``' windows from the window files ``files`` (paths).

    A file holding any of them is rewritten, without them, under a new name of this run; the old
    file stays untouched (the committed state may still name it) and is deleted after the commit.
    Returns (the files after, the files superseded, rows removed).
    """
    fs, _ = storage.filesystem(windows_url)
    drop = pa.array(sorted(track_ids), pa.string())
    after, superseded, removed = [], [], 0
    for i, path in enumerate(files):
        with fs.open_input_file(path) as f:
            ids = pq.read_table(f, columns=["track_id"])["track_id"]
        if not pc.any(pc.is_in(ids, value_set=drop)).as_py():
            after.append(path)
            continue
        with fs.open_input_file(path) as f:
            table = pq.read_table(f, schema=window_arrow_schema())
        keep = table.filter(pc.invert(pc.is_in(table["track_id"], value_set=drop)))
        removed += table.num_rows - keep.num_rows
        superseded.append(path)
        if keep.num_rows:
            name = f"part-{run_id}-rewrite-{i:05d}.parquet"
            with storage.atomic_output(storage.join(windows_url, name)) as out:
                pq.write_table(keep, out, compression="none", use_dictionary=False)
            after.append(storage.filesystem(storage.join(windows_url, name))[1])
    return sorted(after), superseded, removed


def count_windows(windows_url: str, files: list) -> pd.Series:
    """Window rows per track_id in ``files``."""
    return window_facts(windows_url, files)[0]


def write_empty(windows_url: str, run_id: str) -> str:
    """One empty window file, so that a dataset where no file had audio still has a schema; its path."""
    location = storage.join(windows_url, f"part-{run_id}-empty.parquet")
    with storage.atomic_output(location) as f:
        pq.write_table(window_arrow_schema().empty_table(), f)
    return storage.filesystem(location)[1]


