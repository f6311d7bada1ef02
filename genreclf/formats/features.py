"""The featurize output format: ``tracks/`` (one row per input file), ``recipe.json`` and the window files.

Train, evaluate and score read a featurize output through this module; the featurize job writes
it. Window files are ``windows/part-*.parquet`` (petastorm dataset rows, ``stft`` as .npy bytes);
each is written under a hidden temporary name and renamed, so readers never see a partial file.
All of a track's windows are in one file (a featurize task writes a track's windows together).
The tracks file is the commit record: its Parquet metadata names the window files readers may
take (:func:`commit`, :func:`window_files`), so files of a run that never committed are ignored.
"""

from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genreclf.config import Recipe
from genreclf.errors import ConfigError, DamagedInputError
from genreclf.formats.schema import RECIPE_FILE, TRACKS_DIR, TRACKS_SCHEMA, window_arrow_schema, window_schema
from genreclf.io import storage

#: Keys of the tracks file's Parquet metadata that make it the commit record (see :func:`commit`).
FILES_KEY = b"genreclf.window_files"
RECIPE_KEY = b"genreclf.recipe"
RUN_KEY = b"genreclf.run_id"
#: Window files whose footers are read at once (object stores: a GET each, overlapped).
FOOTER_THREADS = 16

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


def tracks_file(output: str) -> str:
    """The one file of ``tracks/``: the commit record of a featurize output."""
    return storage.join(storage.to_url(output), TRACKS_DIR, "part-00000.parquet")


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


def committed(output: str) -> dict | None:
    """What the last commit recorded: {"files": [names], "recipe": dict, "run_id"}; None when the
    output has no tracks table; "files" None for outputs written before commits recorded files."""
    location = tracks_file(output)
    if not storage.exists(location):
        return None
    with storage.open_input(location) as f:
        meta = pq.read_metadata(f).metadata or {}
    files = json.loads(meta[FILES_KEY]) if FILES_KEY in meta else None
    recipe = json.loads(meta[RECIPE_KEY]) if RECIPE_KEY in meta else None
    return {"files": files, "recipe": recipe, "run_id": meta.get(RUN_KEY, b"").decode()}


def write_dataset_metadata(windows_url: str, recipe: Recipe, files: list, row_groups: dict | None = None) -> None:
    """petastorm's dataset metadata (``_common_metadata``: the pickled Unischema and the row groups
    per file), written with pyarrow so that any store works (petastorm's ``materialize_dataset``
    needs a legacy filesystem and a Spark job); ``make_reader``/``make_batch_reader`` read it.

    Row groups per file come from ``row_groups`` ({path: count}, what the run just read), then from
    the previous ``_common_metadata`` (files carried over), and only else from the files' footers,
    read ``FOOTER_THREADS`` at a time: a commit of tens of thousands of files reads only its new ones.
    """
    import pickle

    from petastorm.etl.dataset_metadata import ROW_GROUPS_PER_FILE_KEY, UNISCHEMA_KEY

    fs, base = storage.filesystem(windows_url)
    known = {f"{base}/{name}": n for name, n in _previous_row_groups(windows_url, ROW_GROUPS_PER_FILE_KEY).items()}
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
    with storage.atomic_output(storage.join(windows_url, "_common_metadata")) as out:
        pq.write_metadata(schema, out)


def _previous_row_groups(windows_url: str, key: bytes) -> dict:
    """{file name: row groups} of the last ``_common_metadata`` ({} when there is none or it is unreadable)."""
    try:
        with storage.open_input(storage.join(windows_url, "_common_metadata")) as f:
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


def read_tracks(output: str, *, check: bool = False) -> pd.DataFrame:
    """The tracks table of a featurize output (local path or URL). With ``check`` (what train,
    evaluate and score read), also against its window files: see :func:`check_output`."""
    url = storage.join(storage.to_url(output), TRACKS_DIR)
    fs, base = storage.filesystem(url)
    try:
        tracks = pq.read_table(base, filesystem=fs, schema=TRACKS_SCHEMA).to_pandas()
    except FileNotFoundError:
        raise ConfigError(f"{output} is not a featurize output (no {TRACKS_DIR}/); "
                          "run ./spark-submit.sh featurize first") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise _damaged(output, f"its tracks table {tracks_file(output)} cannot be read ({storage.describe(e)})") from None
    if check:
        check_output(output, tracks)
    return tracks


def _damaged(output: str, what: str) -> DamagedInputError:
    return DamagedInputError(f"featurize output {output} is damaged: {what}; featurize it again with --overwrite")


def check_output(output: str, tracks: pd.DataFrame) -> None:
    """Refuse a damaged featurize output before any work: a track id twice in the tracks table, a
    window file its commit names missing or unreadable (Parquet footers only: one small read per
    file), or window rows that are not as many as the ok tracks' ``n_windows``."""
    twice = tracks["track_id"][tracks["track_id"].duplicated()]
    if len(twice):
        raise _damaged(output, f"its tracks table names {twice.nunique()} track id(s) twice (e.g. {twice.iloc[0]!r})")
    windows_url = storage.join(storage.to_url(output), "windows")
    fs, _ = storage.filesystem(windows_url)

    def rows(path):
        try:
            with fs.open_input_file(path) as f:
                return pq.read_metadata(f).num_rows
        except FileNotFoundError:
            raise _damaged(output, f"window file {storage.located(windows_url, path)}, named by its commit, is "
                                   "missing") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise _damaged(output, f"window file {storage.located(windows_url, path)} is truncated or not Parquet "
                                   f"({storage.describe(e)[:80]})") from None

    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        found = sum(pool.map(rows, window_files(windows_url)))
    expected = int(tracks.loc[tracks["status"] == "ok", "n_windows"].sum())
    if found != expected:
        raise _damaged(output, f"its window files hold {found} windows but its tracks table counts {expected} "
                               "(n_windows of the ok tracks)")


def check_window_counts(output: str, tracks: pd.DataFrame, counts: pd.Series) -> None:
    """Refuse windows read (``counts``: rows per track id) that disagree with the tracks' ``n_windows``."""
    expected = tracks.set_index("track_id")["n_windows"].astype("int64")
    found = counts.reindex(expected.index).fillna(0).astype("int64")
    wrong = expected.index[expected.to_numpy() != found.to_numpy()]
    if len(wrong):
        t = wrong[0]
        raise _damaged(output, f"{len(wrong)} track(s) have other window counts than the tracks table says (e.g. "
                               f"{t!r}: {found[t]} windows, n_windows {expected[t]})")


def read_recipe(output: str) -> Recipe:
    """The recipe recorded with a featurize output (by its commit; ``recipe.json`` is a copy)."""
    state = committed(output)
    if state is not None and state["recipe"] is not None:
        return Recipe.from_dict(state["recipe"])
    try:
        recorded = json.loads(storage.read_text(storage.join(storage.to_url(output), RECIPE_FILE)))
    except FileNotFoundError:
        raise ConfigError(f"{output} is not a featurize output (no {RECIPE_FILE}); "
                          "run ./spark-submit.sh featurize first") from None
    recorded.pop("genreclf_version", None)
    return Recipe.from_dict(recorded)


def window_files(windows_url: str) -> list:
    """Paths (within their filesystem) of the committed window files, sorted: those the tracks
    table's commit names (a listing for outputs without one)."""
    state = committed(storage.parent(storage.to_location(windows_url)))
    if state is None or state["files"] is None:
        return listed_window_files(windows_url)
    fs, base = storage.filesystem(windows_url)
    return sorted(f"{base}/{name}" for name in state["files"])


def listed_window_files(windows_url: str) -> list:
    """Paths of every window file present, committed or not (a crashed run's included)."""
    fs, base = storage.filesystem(windows_url)
    if fs.get_file_info(base).type == pa.fs.FileType.NotFound:
        return []
    return sorted(i.path for i in fs.get_file_info(pa.fs.FileSelector(base))
                  if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))


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


def decode_npy_column(column, recipe: Recipe) -> np.ndarray:
    """Decode a sequence of NdarrayCodec (.npy) bytes into one (n, frames, bins) array of the recipe dtype."""
    n = len(column)
    out = np.empty((n, *recipe.shape), dtype=recipe.dtype)
    if n == 0:
        return out
    first = io.BytesIO(column[0])
    np.lib.format.read_magic(first)
    np.lib.format.read_array_header_1_0(first)
    offset = first.tell()
    count = recipe.frames * recipe.bands
    for i, raw in enumerate(column):
        out[i] = np.frombuffer(raw, dtype=recipe.dtype, count=count, offset=offset).reshape(recipe.shape)
    return out


def _payload_bytes(recipe: Recipe) -> int:
    return recipe.frames * recipe.bands * np.dtype(recipe.dtype).itemsize


def _check_rows(first_row: bytes, lengths: np.ndarray, recipe: Recipe) -> int:
    """The .npy header size, after checking every row is one array of the recipe's shape and dtype."""
    payload = _payload_bytes(recipe)
    row = int(lengths[0])
    if not (lengths == row).all() or row <= payload:
        raise ValueError(f"stft rows are not .npy arrays of {recipe.shape} {recipe.dtype}: features made with "
                         "another recipe? (check recipe.json)")
    header = io.BytesIO(first_row[: row - payload])
    np.lib.format.read_magic(header)
    shape, _, dtype = np.lib.format.read_array_header_1_0(header)
    if tuple(shape) != tuple(recipe.shape) or dtype != np.dtype(recipe.dtype):
        raise ValueError(f"stft rows hold {shape} {dtype} but the recipe says {recipe.shape} {recipe.dtype}: "
                         "features made with another recipe? (check recipe.json)")
    return row - payload


def stft_rows(column: pa.Array | pa.ChunkedArray, recipe: Recipe) -> tuple:
    """(buffer, starts): an ``stft`` column's data buffer as uint8 and where each row's array data begins.

    Every row of a recipe is one .npy array of the same size with the same header, so the payloads
    are found from the offsets alone, with no per-row decoding; each is ``recipe.frames x bins``
    values of ``recipe.dtype``.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.chunks[0] if column.num_chunks == 1 else column.combine_chunks()
    n = len(column)
    if n == 0:
        return np.empty(0, np.uint8), np.empty(0, np.int64)
    _, offsets, data = column.buffers()
    offsets = np.frombuffer(offsets, np.int32, n + 1, offset=column.offset * 4).astype(np.int64)
    buffer = np.frombuffer(data, np.uint8)
    header = _check_rows(buffer[offsets[0]:offsets[1]].tobytes(), np.diff(offsets), recipe)
    return buffer, offsets[:-1] + header


def mapped_stft_rows(buffer: np.ndarray, metadata, row_group: int, recipe: Recipe) -> np.ndarray | None:
    """Where each row's array data begins in a whole window file (``buffer``, e.g. memory-mapped),
    read from the Parquet page headers; None when the file's layout needs pyarrow to decode."""
    from genreclf.formats.pages import plain_binary_values

    index = metadata.schema.names.index("stft")
    found = plain_binary_values(buffer, metadata.row_group(row_group).column(index),
                                metadata.schema.column(index).max_definition_level)
    if found is None:
        return None
    starts, lengths = found
    if not len(starts):
        return starts
    first = buffer[starts[0]:starts[0] + lengths[0]].tobytes()
    return starts + _check_rows(first, lengths, recipe)


def cached_windows(windows_url: str, cache_dir: str) -> str:
    """``windows_url`` itself, or with ``cache_dir`` a local copy of its window files, made once.

    Remote features (s3://, gs://, hdfs://) are then downloaded on the first use only, not once
    per epoch. A file already in the cache with the same size is kept; each file is copied under a
    hidden name and renamed, so an interrupted copy is never taken for a complete one.
    """
    if not cache_dir:
        return windows_url
    import hashlib

    src_fs, _ = storage.filesystem(windows_url)
    local = os.path.join(os.path.abspath(cache_dir), hashlib.sha1(windows_url.encode()).hexdigest()[:16])
    os.makedirs(local, exist_ok=True)
    files = window_files(windows_url)
    sizes = {i.path: i.size for i in src_fs.get_file_info(files)}
    copied = 0
    for path in files:
        target = os.path.join(local, path.rsplit("/", 1)[-1])
        if os.path.exists(target) and os.path.getsize(target) == sizes[path]:
            continue
        storage.download(storage.located(windows_url, path), target)
        copied += 1
    wanted = {p.rsplit("/", 1)[-1] for p in files}
    for name in os.listdir(local):  # files the source no longer has (e.g. after --incremental)
        if name not in wanted:
            os.remove(os.path.join(local, name))
    log.info("features cache: %d of %d window files copied to %s", copied, len(files), local)
    return storage.to_url(local)
