"""The featurize job on Spark: catalogue -> petastorm windows dataset + one tracks row per file.

Files are spread over Spark tasks (``featurize.files_per_task`` each); each task decodes and
transforms its files in a pandas ``mapInPandas`` function and returns the window rows to Spark's
writer in bounded batches. Each task also writes its files' status rows to a staging file named
after its partition (rewritten whole by a retried attempt, so retries cannot duplicate rows); the
driver then gathers them into ``tracks``, checking that every input file has exactly one row.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genreclf import __version__, storage
from genreclf.catalog import apply_labels, expand_inputs
from genreclf.config import Recipe, Settings, load_settings
from genreclf.errors import GenreclfError, OutputExistsError
from genreclf.featurize import window_batches
from genreclf.progress import SparkProgress
from genreclf.schema import RECIPE_FILE, STATUS_OK, TRACKS_DIR, TRACKS_SCHEMA, WINDOWS_DIR, window_schema

log = logging.getLogger(__name__)

STAGING_DIR = "_tracks_staging"


def _partition_fn(batches, *, recipe_json: str, rows_per_batch: int, max_duration_s: float, staging_url: str):
    """Runs in a Spark task: featurize this partition's files, stage their status rows."""
    from pyspark import TaskContext

    recipe = Recipe.from_dict(json.loads(recipe_json))
    rows = []
    yield from window_batches(batches, recipe, window_schema(recipe), rows_per_batch=rows_per_batch,
                              max_duration_s=max_duration_s, on_track=rows.append)
    ctx = TaskContext.get()
    write_staged_rows(staging_url, ctx.partitionId(), ctx.attemptNumber(), rows)


def write_staged_rows(staging_url: str, partition: int, attempt: int, rows: list) -> None:
    """Write one partition's status rows atomically: a temporary file, then a rename over the final name."""
    fs, base = storage.filesystem(staging_url)
    fs.create_dir(base, recursive=True)
    final = f"{base}/part-{partition:05d}.parquet"
    tmp = f"{base}/.part-{partition:05d}.attempt-{attempt}.tmp"
    table = pa.Table.from_pylist(rows, schema=TRACKS_SCHEMA)
    with fs.open_output_stream(tmp) as f:
        pq.write_table(table, f)
    fs.move(tmp, final)


def read_staged_rows(staging_url: str) -> pd.DataFrame:
    fs, base = storage.filesystem(staging_url)
    tables = []
    for info in fs.get_file_info(pa.fs.FileSelector(base)):
        if info.base_name.startswith("part-") and info.base_name.endswith(".parquet"):
            with fs.open_input_file(info.path) as f:
                tables.append(pq.read_table(f, schema=TRACKS_SCHEMA))
    if not tables:
        return TRACKS_SCHEMA.empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()


def write_tracks(tracks_url: str, tracks: pd.DataFrame) -> None:
    """The tracks table as one Parquet file in ``tracks/`` (sorted by track_id), replaced atomically."""
    fs, base = storage.filesystem(tracks_url)
    table = pa.Table.from_pandas(tracks.sort_values("track_id", kind="stable"), schema=TRACKS_SCHEMA,
                                 preserve_index=False)
    tmp = base + ".tmp"
    if fs.get_file_info(tmp).type != pa.fs.FileType.NotFound:
        fs.delete_dir(tmp)
    fs.create_dir(tmp, recursive=True)
    with fs.open_output_stream(f"{tmp}/part-00000.parquet") as f:
        pq.write_table(table, f)
    if fs.get_file_info(base).type != pa.fs.FileType.NotFound:
        fs.delete_dir(base)
    fs.move(tmp, base)


def read_tracks(output: str) -> pd.DataFrame:
    """The tracks table of a featurize output (local path or URL)."""
    url = storage.join(storage.to_url(output), TRACKS_DIR)
    fs, base = storage.filesystem(url)
    return pq.read_table(base, filesystem=fs, schema=TRACKS_SCHEMA).to_pandas()


def read_recipe(output: str) -> Recipe:
    """The recipe recorded with a featurize output."""
    recorded = json.loads(storage.read_text(storage.join(storage.to_url(output), RECIPE_FILE)))
    recorded.pop("genreclf_version", None)
    return Recipe.from_dict(recorded)


def _prepare_output(out_url: str, recipe: Recipe, overwrite: bool, incremental: bool):
    """Decide what happens to an existing output; returns the prior tracks table for --incremental."""
    tracks_url = storage.join(out_url, TRACKS_DIR)
    existing = [p for p in (WINDOWS_DIR, TRACKS_DIR, RECIPE_FILE) if storage.exists(storage.join(out_url, p))]
    if not existing:
        return None
    if incremental and storage.exists(tracks_url):
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
    from petastorm.etl.dataset_metadata import materialize_dataset
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    settings = settings or load_settings()
    recipe, fs_settings = settings.recipe, settings.featurize
    started = time.time()
    out_url = storage.to_url(output)
    windows_url = storage.join(out_url, WINDOWS_DIR)
    staging_url = storage.join(out_url, STAGING_DIR)

    catalog = expand_inputs(inputs)
    table = catalog.entries
    if labels:
        table = apply_labels(table, labels)
    n_inputs = len(table)
    log.info("featurize: %d input files%s", n_inputs,
             f" ({len(catalog.skipped)} sidecar files passed over)" if catalog.skipped else "")

    prior = _prepare_output(out_url, recipe, overwrite, incremental)
    kept = pd.DataFrame(columns=TRACKS_SCHEMA.names)
    stale_ids = []
    if prior is not None:
        unchanged = _unchanged_ok(table, prior)
        todo_paths = set(table.loc[~unchanged, "path"])
        kept = prior[~prior["path"].isin(todo_paths)]
        stale_ids = prior.loc[prior["path"].isin(todo_paths) & (prior["status"] == STATUS_OK), "track_id"].tolist()
        table = table[~unchanged]
        log.info("featurize --incremental: %d files unchanged and ok, %d to process (%d replace earlier windows)",
                 int(unchanged.sum()), len(table), len(stale_ids))
    if storage.exists(staging_url):
        storage.delete(staging_url)

    schema = window_schema(recipe)
    sc = spark.sparkContext
    n_parts = max(1, -(-len(table) // fs_settings.files_per_task))
    entry_schema = StructType([StructField("path", StringType()), StructField("track_id", StringType()),
                               StructField("label", StringType()), StructField("size_bytes", LongType()),
                               StructField("mtime", DoubleType())])
    records = [(r.path, r.track_id, None if pd.isna(r.label) else r.label,
                None if pd.isna(r.size_bytes) else int(r.size_bytes), None if pd.isna(r.mtime) else float(r.mtime))
               for r in table.itertuples(index=False)]
    entries = spark.createDataFrame(sc.parallelize(records, n_parts), entry_schema)
    fn = functools.partial(_partition_fn, recipe_json=json.dumps(recipe.to_dict()),
                           rows_per_batch=fs_settings.rows_per_batch,
                           max_duration_s=fs_settings.max_duration_s, staging_url=staging_url)
    windows = entries.mapInPandas(fn, schema=schema.as_spark_schema())

    sc.setJobDescription(f"genreclf featurize: {len(table)} files in {n_parts} tasks")
    append = prior is not None and storage.exists(windows_url)
    # Window features are noise-like: snappy saves ~1.5 % of the bytes for ~10 % of the job's CPU.
    with SparkProgress(sc, "featurize"):
        if append and stale_ids:
            # Files changed since their windows were written: rewrite the dataset without the stale windows.
            old = spark.read.parquet(windows_url).where(~F.col("track_id").isin(stale_ids))
            target = windows_url + ".rewrite"
            with materialize_dataset(spark, target, schema, fs_settings.row_group_size_mb):
                old.unionByName(windows).write.mode("overwrite").option("compression", "none").parquet(target)
            storage.delete(windows_url)
            fs, path = storage.filesystem(target)
            fs.move(path, storage.filesystem(windows_url)[1])
        else:
            with materialize_dataset(spark, windows_url, schema, fs_settings.row_group_size_mb):
                windows.write.mode("append" if append else "overwrite").option("compression", "none") \
                    .parquet(windows_url)
    sc.setJobDescription(None)

    new_rows = read_staged_rows(staging_url)
    missing = set(table["path"]) - set(new_rows["path"])
    if missing or len(new_rows) != len(table):
        raise GenreclfError(f"internal error: {len(table)} files sent to Spark but {len(new_rows)} status rows "
                            f"came back (missing e.g. {sorted(missing)[:3]}); the output is incomplete")
    tracks = pd.concat([kept, new_rows], ignore_index=True) if len(kept) else new_rows
    write_tracks(storage.join(out_url, TRACKS_DIR), tracks)
    storage.write_text(storage.join(out_url, RECIPE_FILE), json.dumps(
        {**recipe.to_dict(), "genreclf_version": __version__}, indent=2, sort_keys=True))
    storage.delete(staging_url)

    summary = summarize(new_rows, time.time() - started, n_inputs=n_inputs, skipped=len(catalog.skipped),
                        unchanged=n_inputs - len(table))
    summary["output"] = out_url
    for line in format_summary(summary).splitlines():
        log.info(line)
    return summary


def summarize(rows: pd.DataFrame, elapsed_s: float, *, n_inputs: int, skipped: int = 0, unchanged: int = 0) -> dict:
    """Counts for the closing summary: files, ok, errors by reason, windows, elapsed, tracks/s."""
    errors = rows.loc[rows["status"] != STATUS_OK, "error"].fillna("unknown")
    reasons = errors.str.split(":", n=1).str[0].value_counts().sort_index()
    return {
        "files_in": int(n_inputs),
        "processed": int(len(rows)),
        "unchanged_skipped": int(unchanged),
        "sidecar_files_passed_over": int(skipped),
        "ok": int((rows["status"] == STATUS_OK).sum()),
        "errors": int(len(errors)),
        "errors_by_reason": {k: int(v) for k, v in reasons.items()},
        "warnings": int(rows["warning"].notna().sum()),
        "windows_written": int(rows["n_windows"].fillna(0).sum()),
        "elapsed_s": round(elapsed_s, 2),
        "tracks_per_s": round(len(rows) / elapsed_s, 2) if elapsed_s > 0 else None,
    }


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
