"""The featurize job on Spark: catalogue -> petastorm windows dataset + one tracks row per file.

Files are spread over Spark tasks; each task decodes and transforms its files in a ``mapInPandas``
function, writes their window rows straight to one Parquet file of the windows dataset (named after
the run and the partition, written to a hidden temporary name and renamed, so a retried attempt
replaces it and never duplicates rows), and returns one status row per file to the driver. Under
the output's lock, the driver checks that every input file has exactly one row and that the window
rows match the ok tracks, writes petastorm's dataset metadata and commits (featureset.commit: one
atomic replace of the tracks file, which names the window files). A killed run leaves the previous
commit whole; its files are removed by the next run.

Writing windows from the Python worker with pyarrow rather than handing ~130 KB rows to the JVM's
Parquet writer removes a copy per row: measured 2.85 s -> 2.25 s for 44 tracks on local[2].
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
import uuid

import pandas as pd
import pyarrow as pa

from genreclf import __version__
from genreclf.audio.extract import window_tables
from genreclf.config import Recipe, Settings, load_settings
from genreclf.errors import GenreclfError, OutputExistsError, StorageError
from genreclf.formats.features import (
    commit,
    committed,
    count_windows,
    listed_window_files,
    read_recipe,
    read_tracks,
    window_files,
    without_tracks,
    write_dataset_metadata,
    write_empty,
    write_window_file,
)
from genreclf.formats.schema import (
    RECIPE_FILE,
    STATUS_FATAL,
    STATUS_OK,
    TRACKS_DIR,
    TRACKS_SCHEMA,
    WINDOWS_DIR,
    summarize,
    window_schema,
)
from genreclf.io import killpoints, storage
from genreclf.io.catalog import apply_labels, expand_inputs
from genreclf.io.lock import LOCK_FILE, OutputLock
from genreclf.io.progress import SparkProgress
from genreclf.io.spark import entries_frame, task_count

log = logging.getLogger(__name__)


def _rows_per_group(recipe: Recipe, row_group_size_mb: int) -> int:
    row_bytes = recipe.frames * recipe.bands * pa.from_numpy_dtype(recipe.dtype).bit_width // 8
    return max(1, row_group_size_mb * 2**20 // row_bytes)


def _partition_fn(batches, *, recipe_json: str, windows_url: str, run_id: str, row_group_size_mb: int,
                  max_duration_s: float, storage_options: dict):
    """Runs in a Spark task: featurize this partition's files into one Parquet file; yield status rows."""
    from pyspark import TaskContext

    storage.configure(storage_options)
    recipe = Recipe.from_dict(json.loads(recipe_json))
    ctx = TaskContext.get()
    rows = []
    tables = window_tables(batches, recipe, window_schema(recipe), rows_per_table=_rows_per_group(recipe, row_group_size_mb),
                           max_duration_s=max_duration_s, on_track=rows.append)
    try:
        write_window_file(windows_url, f"part-{run_id}-{ctx.partitionId():05d}.parquet", ctx.attemptNumber(), tables)
    except StorageError as e:  # the run cannot go on: said once by the driver, not as a task traceback
        rows = [{"path": "", "track_id": "", "status": STATUS_FATAL, "error": str(e), "n_windows": 0}]
    yield pd.DataFrame(rows, columns=TRACKS_SCHEMA.names).astype(
        {"n_windows": "int32", "sample_rate": "Int32", "channels": "Int32", "size_bytes": "Int64"})


def _prepare_output(out_url: str, recipe: Recipe, overwrite: bool, incremental: bool):
    """What the last commit of an existing output holds, and whether this run may change it:
    returns (state or None, prior tracks for --incremental or None)."""
    state = committed(out_url)
    ours = {WINDOWS_DIR, TRACKS_DIR, RECIPE_FILE, LOCK_FILE}
    foreign = [e.base_name for e in storage.list_dir(out_url) if e.base_name not in ours and not e.base_name.startswith(".")]
    if state is None and foreign:
        raise OutputExistsError(f"{out_url} is a non-empty directory that is not a featurize output (it holds "
                                f"{', '.join(sorted(foreign)[:5])}); featurize writes only into a new or empty "
                                "directory or its own output: choose another --output")
    if state is None:
        if storage.exists(storage.join(out_url, RECIPE_FILE)) and not overwrite:
            raise OutputExistsError(f"{out_url} has a recipe.json but no tracks table: not a featurize output "
                                    "of this version; pass --overwrite to replace it")
        return None, None  # nothing committed: window files there are a crashed run's, removed below
    if incremental:
        prior_recipe = read_recipe(out_url)
        if prior_recipe != recipe:
            raise GenreclfError(f"{out_url} was featurized with a different recipe ({prior_recipe}); "
                                "--incremental cannot mix recipes: use --overwrite or a new output")
        return state, read_tracks(out_url)
    if overwrite:
        return state, None
    raise OutputExistsError(f"{out_url} already holds a featurize output; "
                            "pass --overwrite to replace it or --incremental to add new files")


def _remove_orphans(windows_url: str, keep: set) -> int:
    """Delete window files no commit references and hidden partial files (a crashed or killed run's);
    returns how many."""
    orphans = [p for p in listed_window_files(windows_url) if p not in keep]
    out_url = storage.parent(storage.to_location(windows_url))
    for where in (windows_url, storage.join(out_url, TRACKS_DIR), out_url):  # a killed writer's hidden partial files
        orphans += storage.partial_files(where)
    storage.delete_files(windows_url, orphans)
    if orphans:
        log.info("featurize: removed %d window files of an interrupted run (never committed)", len(orphans))
    return len(orphans)


def _check_invariant(windows_url: str, new_files: list, new_rows: pd.DataFrame) -> None:
    """Before the commit: every new ok track has exactly ``n_windows`` window rows in this run's
    files, and no window row belongs to anything else."""
    counts = count_windows(windows_url, new_files)
    ok = new_rows[new_rows["status"] == STATUS_OK].set_index("track_id")["n_windows"].astype("int64")
    wrong = ok.index[ok.to_numpy() != counts.reindex(ok.index).fillna(0).to_numpy()]
    stray = counts.index.difference(ok.index)
    if len(wrong) or len(stray):
        raise GenreclfError(f"internal error: window rows do not match the tracks table (wrong counts for "
                            f"{list(wrong[:3])}, rows of no ok track: {list(stray[:3])}); nothing was committed")


def _unchanged_ok(catalog: pd.DataFrame, prior: pd.DataFrame) -> pd.Series:
    ok = prior[prior["status"] == STATUS_OK].set_index("path")
    same = catalog["path"].isin(ok.index)
    idx = catalog.loc[same, "path"]
    same.loc[same] = (ok.loc[idx, "size_bytes"].to_numpy() == catalog.loc[same, "size_bytes"].to_numpy()) & \
                     (ok.loc[idx, "mtime"].to_numpy() == catalog.loc[same, "mtime"].to_numpy())
    return same.astype(bool)


def run_featurize(spark, inputs: list, output: str, *, labels: str | None = None,
                  settings: Settings | None = None, overwrite: bool = False, incremental: bool = False,
                  break_lock: bool = False) -> dict:
    """Featurize ``inputs`` into ``output``; returns the summary (also logged)."""
    settings = settings or load_settings()
    storage.configure(settings.storage.to_dict())
    started = time.time()
    out_url = storage.to_url(output)

    catalog = expand_inputs(inputs)
    table = catalog.entries
    unlabelled = 0
    if labels:
        table = apply_labels(table, labels)
        unlabelled = int(table["label"].isna().sum())
        if unlabelled:
            log.warning("featurize: %d of %d inputs have no label in %s (their windows are unlabelled: train "
                        "leaves them out)", unlabelled, len(table), labels)
    n_inputs = len(table)
    log.info("featurize: %d input files%s", n_inputs,
             f" ({len(catalog.skipped)} sidecar files passed over)" if catalog.skipped else "")

    run_id = time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:8]
    lock = OutputLock(storage.join(out_url, LOCK_FILE), run_id, break_lock=break_lock, job="featurize",
                      stale_after_s=settings.storage.lock_stale_after_s).acquire()
    try:
        summary = _featurize_locked(spark, table, out_url, run_id, settings, overwrite, incremental)
    finally:
        lock.release()
    summary = {**summarize(summary.pop("new_rows"), time.time() - started, n_inputs=n_inputs,
                           skipped=len(catalog.skipped), unchanged=n_inputs - summary["to_process"]),
               "output": out_url, "unlabelled": unlabelled}
    for line in format_summary(summary).splitlines():
        log.info(line)
    return summary


def _featurize_locked(spark, table, out_url, run_id, settings, overwrite, incremental) -> dict:
    """The run, under the output's lock: clean up, process, check, commit, then drop what the commit
    superseded. A kill before the commit leaves the previous commit whole (its files untouched)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    recipe, fs_settings = settings.recipe, settings.featurize
    windows_url = storage.join(out_url, WINDOWS_DIR)
    state, prior = _prepare_output(out_url, recipe, overwrite, incremental)
    old_files = window_files(windows_url) if state is not None else []
    _remove_orphans(windows_url, set(old_files))
    killpoints.arm(storage.filesystem(out_url)[1])  # the crash tests' kill points: this run's own steps
    kept = pd.DataFrame(columns=TRACKS_SCHEMA.names)
    files = list(old_files) if prior is not None else []  # --overwrite: the old files go after the commit
    superseded = []
    if prior is not None:
        unchanged = _unchanged_ok(table, prior)
        todo_paths = set(table.loc[~unchanged, "path"])
        kept = prior[~prior["path"].isin(todo_paths)]
        stale = prior.loc[prior["path"].isin(todo_paths) & (prior["status"] == STATUS_OK), "track_id"].tolist()
        table = _unique_against(table[~unchanged], kept)
        log.info("featurize --incremental: %d files unchanged and ok, %d to process", int(unchanged.sum()), len(table))
        if stale:
            files, superseded, removed = without_tracks(windows_url, files, stale, run_id)
            log.info("featurize --incremental: %d changed files: %d old windows left out", len(stale), removed)

    sc = spark.sparkContext
    n_parts = task_count(len(table), fs_settings.files_per_task, sc.defaultParallelism)
    fn = functools.partial(_partition_fn, recipe_json=json.dumps(recipe.to_dict()), windows_url=windows_url,
                           run_id=run_id, row_group_size_mb=fs_settings.row_group_size_mb,
                           max_duration_s=fs_settings.max_duration_s, storage_options=storage.options())
    statuses = entries_frame(spark, table, n_parts).mapInPandas(fn, schema=from_arrow_schema(TRACKS_SCHEMA))

    killpoints.note("tasks", storage.filesystem(windows_url)[1])  # they write window files
    sc.setJobDescription(f"genreclf featurize: {len(table)} files in {n_parts} tasks")
    with SparkProgress(sc, "featurize"):
        new_rows = statuses.toPandas() if len(table) else TRACKS_SCHEMA.empty_table().to_pandas()
    sc.setJobDescription(None)

    fatal = new_rows.loc[new_rows["status"] == STATUS_FATAL, "error"]
    if len(fatal):
        raise StorageError(f"{fatal.iloc[0]} (nothing was committed)")
    missing = set(table["path"]) - set(new_rows["path"])
    if missing or len(new_rows) != len(table):
        raise GenreclfError(f"internal error: {len(table)} files sent to Spark but {len(new_rows)} status rows "
                            f"came back (missing e.g. {sorted(missing)[:3]}); nothing was committed")
    prefix = f"part-{run_id}-"
    new_files = [p for p in listed_window_files(windows_url)
                 if storage.basename(p).startswith(prefix) and "-rewrite-" not in storage.basename(p)]
    _check_invariant(windows_url, new_files, new_rows)
    files = sorted(set(files) | set(new_files))
    if not files:  # no file had audio: an empty dataset still has a schema
        files = [write_empty(windows_url, run_id)]
    tracks = pd.concat([kept, new_rows], ignore_index=True) if len(kept) else new_rows
    write_dataset_metadata(windows_url, recipe, files)
    log.info("featurize: committing %d tracks and %d window files", len(tracks), len(files))
    commit(out_url, tracks, [storage.basename(p) for p in files], recipe, run_id)
    # After the commit: what it no longer references (--overwrite's old files, rewritten files).
    storage.delete_files(windows_url, sorted((set(old_files) | set(superseded)) - set(files)))
    _write_recipe_copy(out_url, recipe)
    return {"new_rows": new_rows, "to_process": len(table)}


def _write_recipe_copy(out_url: str, recipe: Recipe) -> None:
    """``recipe.json``, a readable copy of the recipe the commit records (rewritten only when it changes)."""
    text = json.dumps({**recipe.to_dict(), "genreclf_version": __version__}, indent=2, sort_keys=True)
    location = storage.join(out_url, RECIPE_FILE)
    try:
        if storage.read_text(location) == text:
            return
    except FileNotFoundError:
        pass
    storage.write_text(location, text)


def _unique_against(table: pd.DataFrame, kept: pd.DataFrame) -> pd.DataFrame:
    """New files whose relative track_id is taken by another file of the committed output (a second
    input root) are qualified with their full path, as clashes within one run are."""
    taken = dict(zip(kept["track_id"], kept["path"]))
    clash = table["track_id"].map(taken).notna() & (table["track_id"].map(taken) != table["path"])
    if clash.any():
        table = table.copy()
        table.loc[clash, "track_id"] = table.loc[clash, "path"]
    return table


def format_summary(s: dict) -> str:
    buf = io.StringIO()
    buf.write(f"featurize summary: {s['files_in']} files in, {s['processed']} processed, {s['ok']} ok, "
              f"{s['errors']} errors, {s['windows_written']} windows written\n")
    if s["unchanged_skipped"]:
        buf.write(f"  {s['unchanged_skipped']} files unchanged since the last run (kept)\n")
    if s.get("unlabelled"):
        buf.write(f"  {s['unlabelled']} files have no label in the labels CSV\n")
    if s["sidecar_files_passed_over"]:
        buf.write(f"  {s['sidecar_files_passed_over']} sidecar files (csv, txt, images...) passed over\n")
    for reason, n in s["errors_by_reason"].items():
        buf.write(f"  error  {n:6d}  {reason}\n")
    if s["warnings"]:
        buf.write(f"  {s['warnings']} ok files needed repair (see the 'warning' column)\n")
    buf.write(f"  elapsed {s['elapsed_s']:.1f} s, {s['tracks_per_s']} tracks/s")
    return buf.getvalue()
