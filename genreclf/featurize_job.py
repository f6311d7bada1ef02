"""The featurize job on Spark: catalogue -> petastorm windows dataset + one tracks row per file.

Files are spread over Spark tasks; each task decodes and transforms its files in a ``mapInPandas``
function, writes their window rows straight to one Parquet file of the windows dataset (named after
the run and the partition, written to a hidden temporary name and renamed, so a retried attempt
replaces it and never duplicates rows), and returns one status row per file to the driver. The
driver checks that every input file has exactly one row, writes ``tracks`` and lets petastorm
write the dataset's metadata.

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

from genreclf import __version__, storage
from genreclf.catalog import apply_labels, expand_inputs
from genreclf.config import Recipe, Settings, load_settings
from genreclf.errors import GenreclfError, OutputExistsError
from genreclf.featurize import window_tables
from genreclf.featureset import (drop_windows, read_recipe, read_tracks, window_files, write_dataset_metadata,
                                 write_empty, write_tracks, write_window_file)
from genreclf.progress import SparkProgress
from genreclf.schema import RECIPE_FILE, STATUS_OK, TRACKS_DIR, TRACKS_SCHEMA, WINDOWS_DIR, summarize, window_schema
from genreclf.spark import entries_frame, task_count

log = logging.getLogger(__name__)


def _rows_per_group(recipe: Recipe, row_group_size_mb: int) -> int:
    row_bytes = recipe.frames * recipe.bins * pa.from_numpy_dtype(recipe.dtype).bit_width // 8
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
    write_window_file(windows_url, f"part-{run_id}-{ctx.partitionId():05d}.parquet", ctx.attemptNumber(), tables)
    yield pd.DataFrame(rows, columns=TRACKS_SCHEMA.names).astype(
        {"n_windows": "int32", "sample_rate": "Int32", "channels": "Int32", "size_bytes": "Int64"})


def _prepare_output(out_url: str, recipe: Recipe, overwrite: bool, incremental: bool):
    """Decide what happens to an existing output; returns the prior tracks table for --incremental."""
    existing = [p for p in (WINDOWS_DIR, TRACKS_DIR, RECIPE_FILE) if storage.exists(storage.join(out_url, p))]
    if not existing:
        return None
    if incremental and storage.exists(storage.join(out_url, TRACKS_DIR)):
        prior_recipe = read_recipe(out_url)
        if prior_recipe != recipe:
            raise GenreclfError(f"{out_url} was featurized with a different recipe ({prior_recipe}); "
                                "--incremental cannot mix recipes: use --overwrite or a new output")
        return read_tracks(out_url)
    if overwrite or incremental:
        for p in existing:
            storage.delete(storage.join(out_url, p))
        return None
    raise OutputExistsError(f"{out_url} already holds a featurize output ({', '.join(existing)}); "
                            "pass --overwrite to replace it or --incremental to add new files")


def _unchanged_ok(catalog: pd.DataFrame, prior: pd.DataFrame) -> pd.Series:
    ok = prior[prior["status"] == STATUS_OK].set_index("path")
    same = catalog["path"].isin(ok.index)
    idx = catalog.loc[same, "path"]
    same.loc[same] = (ok.loc[idx, "size_bytes"].to_numpy() == catalog.loc[same, "size_bytes"].to_numpy()) & \
                     (ok.loc[idx, "mtime"].to_numpy() == catalog.loc[same, "mtime"].to_numpy())
    return same.astype(bool)


def run_featurize(spark, inputs: list, output: str, *, labels: str | None = None,
                  settings: Settings | None = None, overwrite: bool = False, incremental: bool = False) -> dict:
    """Featurize ``inputs`` into ``output``; returns the summary (also logged)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    settings = settings or load_settings()
    storage.configure(settings.storage.to_dict())
    recipe, fs_settings = settings.recipe, settings.featurize
    started = time.time()
    out_url = storage.to_url(output)
    windows_url = storage.join(out_url, WINDOWS_DIR)

    catalog = expand_inputs(inputs)
    table = catalog.entries
    if labels:
        table = apply_labels(table, labels)
    n_inputs = len(table)
    log.info("featurize: %d input files%s", n_inputs,
             f" ({len(catalog.skipped)} sidecar files passed over)" if catalog.skipped else "")

    prior = _prepare_output(out_url, recipe, overwrite, incremental)
    kept = pd.DataFrame(columns=TRACKS_SCHEMA.names)
    if prior is not None:
        unchanged = _unchanged_ok(table, prior)
        todo_paths = set(table.loc[~unchanged, "path"])
        kept = prior[~prior["path"].isin(todo_paths)]
        stale = prior.loc[prior["path"].isin(todo_paths) & (prior["status"] == STATUS_OK), "track_id"].tolist()
        table = table[~unchanged]
        log.info("featurize --incremental: %d files unchanged and ok, %d to process", int(unchanged.sum()), len(table))
        if stale:
            log.info("featurize --incremental: %d changed files: removed %d old windows", len(stale),
                     drop_windows(windows_url, stale))

    sc = spark.sparkContext
    n_parts = task_count(len(table), fs_settings.files_per_task, sc.defaultParallelism)
    run_id = time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:8]
    fn = functools.partial(_partition_fn, recipe_json=json.dumps(recipe.to_dict()), windows_url=windows_url,
                           run_id=run_id, row_group_size_mb=fs_settings.row_group_size_mb,
                           max_duration_s=fs_settings.max_duration_s, storage_options=settings.storage.to_dict())
    statuses = entries_frame(spark, table, n_parts).mapInPandas(fn, schema=from_arrow_schema(TRACKS_SCHEMA))

    sc.setJobDescription(f"genreclf featurize: {len(table)} files in {n_parts} tasks")
    with SparkProgress(sc, "featurize"):
        new_rows = statuses.toPandas() if len(table) else TRACKS_SCHEMA.empty_table().to_pandas()
    sc.setJobDescription(None)
    if not window_files(windows_url):  # no file had audio: an empty dataset still has a schema
        write_empty(windows_url, run_id)
    write_dataset_metadata(windows_url, recipe)

    missing = set(table["path"]) - set(new_rows["path"])
    if missing or len(new_rows) != len(table):
        raise GenreclfError(f"internal error: {len(table)} files sent to Spark but {len(new_rows)} status rows "
                            f"came back (missing e.g. {sorted(missing)[:3]}); the output is incomplete")
    tracks = pd.concat([kept, new_rows], ignore_index=True) if len(kept) else new_rows
    write_tracks(storage.join(out_url, TRACKS_DIR), tracks)
    storage.write_text(storage.join(out_url, RECIPE_FILE), json.dumps(
        {**recipe.to_dict(), "genreclf_version": __version__}, indent=2, sort_keys=True))

    summary = summarize(new_rows, time.time() - started, n_inputs=n_inputs, skipped=len(catalog.skipped),
                        unchanged=n_inputs - len(table))
    summary["output"] = out_url
    for line in format_summary(summary).splitlines():
        log.info(line)
    return summary


def format_summary(s: dict) -> str:
    buf = io.StringIO()
    buf.write(f"featurize summary: {s['files_in']} files in, {s['processed']} processed, {s['ok']} ok, "
              f"{s['errors']} errors, {s['windows_written']} windows written\n")
    if s["unchanged_skipped"]:
        buf.write(f"  {s['unchanged_skipped']} files unchanged since the last run (kept)\n")
    if s["sidecar_files_passed_over"]:
        buf.write(f"  {s['sidecar_files_passed_over']} sidecar files (csv, txt, images...) passed over\n")
    for reason, n in s["errors_by_reason"].items():
        buf.write(f"  error  {n:6d}  {reason}\n")
    if s["warnings"]:
        buf.write(f"  {s['warnings']} ok files needed repair (see the 'warning' column)\n")
    buf.write(f"  elapsed {s['elapsed_s']:.1f} s, {s['tracks_per_s']} tracks/s")
    return buf.getvalue()
