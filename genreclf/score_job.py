"""The score job on Spark: a model bundle applied to raw audio or featurize output, one row per file.

The bundle (a local path or URL) is fetched once by the driver and shipped to executors with
``SparkContext.addArchive`` (no shared filesystem assumed), then loaded once per Python worker
(:mod:`model_cache`). From raw audio, each task decodes its files exactly as featurize does and
averages each track's window predictions itself. From features, each task reads whole window
files (a featurize output keeps a track's windows in one file) and averages their tracks itself:
no shuffle (a ``groupBy(track_id)`` cost ~60 s for 10 tracks on the test cluster). Either way the
tasks write their rows with pyarrow (:mod:`scoreset`) and the driver commits after checking one
row per input.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid

import pandas as pd

from genreclf import storage
from genreclf.bundle import BUNDLE_FILE, MODEL_FILE, calibration_of, check_recipe, load_bundle_info
from genreclf.catalog import expand_inputs
from genreclf.config import Recipe, Settings, load_settings
from genreclf.errors import ConfigError, GenreclfError, OutputExistsError
from genreclf.featureset import read_recipe, read_tracks, window_files
from genreclf.lock import LOCK_FILE, OutputLock
from genreclf.progress import SparkProgress
from genreclf.schema import STATUS_ERROR, STATUS_OK, WINDOWS_DIR, summarize
from genreclf.scoreset import (SCORES_DIR, SUBMISSION_FILE, commit, read_dir, read_run, rows_of, score_row,
                               score_table, staging_dir, write_part, write_submission)
from genreclf.scoring import score_audio_partition, score_window_files_partition
from genreclf.spark import entries_frame, task_count

log = logging.getLogger(__name__)

#: Window files per score-from-features task (each ~250 windows a row group, often one per file).
FILES_PER_SCORE_TASK = 8
#: What each score task returns to the driver: its part's row count (the rows themselves are written).
TASK_SCHEMA = "partition int, rows long"


def bundle_digest(bundle_dir: str) -> str:
    """A local bundle's content digest (model.keras and bundle.json): names the shipped archive and
    identifies the model in the score output's run record."""
    digest = hashlib.sha256()
    for name in (MODEL_FILE, BUNDLE_FILE):
        with open(os.path.join(bundle_dir, name), "rb") as f:  # a local copy (storage.fetch_dir)
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def ship_bundle(sc, bundle_dir: str, digest: str) -> tuple:
    """Ship a local bundle directory to every executor as a zip archive (``addArchive``: Spark unpacks
    it there), named after its content digest; returns (the name ``SparkFiles.get`` finds it under,
    the staged zip's directory, for the caller to remove when the job ends)."""
    import zipfile

    name = f"genreclf-bundle-{digest}.zip"
    staged_dir = tempfile.mkdtemp(prefix="genreclf-ship-")
    staged = os.path.join(staged_dir, name)
    with zipfile.ZipFile(staged, "w", zipfile.ZIP_STORED) as z:
        for f in (MODEL_FILE, BUNDLE_FILE):
            z.write(os.path.join(bundle_dir, f), f)
    try:
        sc.addArchive(staged)
    except Exception as e:  # already added in this application (same name means same content)
        if "already" not in str(e).lower():
            raise
    return name, staged_dir


def _task_options(recipe, settings, calibration, staging, run) -> dict:
    """What every score task is given besides its inputs."""
    return dict(recipe_json=json.dumps(recipe.to_dict()), batch_size=settings.score.batch_size,
                max_windows=settings.score.max_windows, precision=settings.score.precision,
                calibration=calibration[0], temperature=calibration[1], staging=staging,
                storage_options=settings.storage.to_dict(), run=run)


def _from_audio(spark, bundle_name, settings, entries, options):
    """One task per group of audio files (the catalogue entries to score)."""
    n_parts = task_count(len(entries), settings.featurize.files_per_task, spark.sparkContext.defaultParallelism)
    fn = functools.partial(score_audio_partition, bundle=bundle_name, max_duration_s=settings.featurize.max_duration_s,
                           decode_threads=settings.score.decode_threads, **options)
    return entries_frame(spark, entries, n_parts).mapInPandas(fn, schema=TASK_SCHEMA)


def _from_features(spark, bundle_name, features, to_score, options):
    """One task per group of window files; each averages the tracks of its files that are in
    ``to_score`` (ok tracks of the tracks table), no shuffle."""
    from pyspark.sql.types import StringType, StructField, StructType

    windows_url = storage.join(storage.to_url(features), WINDOWS_DIR)
    files = [storage.located(windows_url, p) for p in window_files(windows_url)]
    wanted = spark.sparkContext.broadcast({t.track_id: (t.path, t.size_bytes, t.mtime)
                                           for t in to_score.itertuples(index=False)})
    n_parts = max(1, min(len(files), max(spark.sparkContext.defaultParallelism,
                                         -(-len(files) // FILES_PER_SCORE_TASK))))
    fn = functools.partial(score_window_files_partition, bundle=bundle_name, tracks=wanted, **options)
    frame = spark.createDataFrame(spark.sparkContext.parallelize([(f,) for f in files], n_parts),
                                  StructType([StructField("location", StringType())]))
    return frame.mapInPandas(fn, schema=TASK_SCHEMA)


def _rest_of_tracks(tracks) -> list:
    """Score rows for featurize's error rows (no model runs for them)."""
    return [score_row(t.track_id, t.path, t.status, t.error, size_bytes=t.size_bytes, mtime=t.mtime)
            for t in tracks.itertuples(index=False)]


def _unscored(tracks, scored_ids: set) -> list:
    """Rows for ok tracks of the features that no task scored: their windows are missing."""
    return [score_row(t.track_id, t.path, STATUS_ERROR, "no windows: the features hold none for this track",
                      size_bytes=t.size_bytes, mtime=t.mtime)
            for t in tracks.itertuples(index=False) if t.track_id not in scored_ids]


#: Error reasons that may not recur for an unchanged file (a store's failure, a decoder crash):
#: ``--incremental`` scores those files again. Any other error of an unchanged file would recur.
RETRIED_REASONS = ("unreadable file", "unreadable directory", "decode failed")


def _retried(rows: pd.DataFrame) -> pd.Series:
    return (rows["status"] != STATUS_OK) & rows["error"].fillna("").str.startswith(RETRIED_REASONS)


def _keep_unchanged(existing, inputs, same_run: bool) -> tuple:
    """(rows of ``existing`` to keep, the inputs still to score) for ``--incremental``.

    Kept: the rows of a run with the same bundle and settings whose file has the same path, size
    and mtime (under this run's track_id), but for errors that may not recur (RETRIED_REASONS).
    """
    if existing is None or not same_run or existing.empty:
        return None, inputs
    keepable = existing[~_retried(existing)]
    key = inputs[["path", "size_bytes", "mtime"]].merge(
        keepable[["path", "size_bytes", "mtime"]].assign(_kept=True), how="left", on=["path", "size_bytes", "mtime"])
    unchanged = key["_kept"].eq(True).to_numpy()
    ids = dict(zip(inputs["path"][unchanged], inputs["track_id"][unchanged]))
    kept = keepable[keepable["path"].isin(ids)].copy()
    kept["track_id"] = kept["path"].map(ids)
    return kept, inputs[~unchanged]


def _count_failed_before(existing, to_score) -> int:
    """Inputs to score whose unchanged file failed before for a reason that may not recur: retried."""
    failed = existing[_retried(existing)][["path", "size_bytes", "mtime"]]
    return len(to_score[["path", "size_bytes", "mtime"]].merge(failed, on=["path", "size_bytes", "mtime"]))


def _check_model(local_bundle: str, bundle: str, n_labels: int) -> None:
    """Load the model once on the driver before any task: a corrupt or mismatched model.keras is one
    clear error here, not a traceback from every executor."""
    from genreclf.bundle import load_model
    from genreclf.tfsetup import configure_tensorflow

    configure_tensorflow(training=False)
    try:
        model = load_model(local_bundle)
    except Exception as e:  # Keras raises many types for a damaged archive
        raise ConfigError(f"model bundle {bundle}: {MODEL_FILE} cannot be loaded ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); restore the bundle or train a new one") from None
    if model.output_shape[-1] != n_labels:
        raise ConfigError(f"model bundle {bundle}: {MODEL_FILE} predicts {model.output_shape[-1]} classes but "
                          f"{BUNDLE_FILE} lists {n_labels} labels; the bundle is inconsistent: train a new one")


def _remove_stale_staging(out_url: str) -> None:
    """Staging directories of killed score runs (hidden; this run holds the lock, so none is live)."""
    for entry in storage.list_dir(out_url):
        if entry.base_name.startswith(f".{SCORES_DIR}-") and entry.base_name.endswith(".staging"):
            storage.delete(storage.located(out_url, entry.path))
            log.info("score: removed %s of an interrupted run", entry.base_name)


def _check_precision(spark, precision: str) -> None:
    """float16 runs only on GPUs: refuse it before any task unless the executors are given GPUs."""
    if precision != "float16":
        return
    conf = spark.sparkContext.getConf()
    if not conf.get("spark.task.resource.gpu.amount", None):
        raise ConfigError("[score] precision = 'float16' needs GPU executors (spark.task.resource.gpu.amount, see "
                          "conf/spark-gpu.conf); use 'auto', 'float32' or 'bfloat16' on CPUs")


def run_score(spark, bundle: str, output: str, *, inputs: list | None = None, features: str | None = None,
              csv: bool = False, overwrite: bool = False, incremental: bool = False, settings: Settings | None = None,
              calibrate: bool = True, break_lock: bool = False) -> dict:
    """Score raw audio (``inputs``) or a featurize output (``features``) into ``output/scores``,
    with the bundle's calibration unless ``calibrate`` is false (the reference's plain mean).

    ``incremental``: keep the rows of an existing output whose file (path, size, mtime), bundle and
    settings are unchanged (but errors that may not recur), score the rest, drop rows of files no
    longer listed; replace atomically.
    """
    if bool(inputs) == bool(features):
        raise ConfigError("give either --input (raw audio) or --features (a featurize output), not both or neither")
    if overwrite and incremental:
        raise ConfigError("--overwrite and --incremental exclude each other: --incremental replaces the output too, "
                          "rescoring only new and changed files")
    settings = settings or load_settings()
    storage.configure(settings.storage.to_dict())
    _check_precision(spark, settings.score.precision)
    info = load_bundle_info(bundle)
    labels = info["labels"]
    recipe = Recipe.from_dict(info["recipe"])
    calibration = calibration_of(info, calibrate)
    if calibration[0] != "none":
        log.info("score: calibrated with temperature %.3f per %s (--no-calibration: the plain mean)",
                 calibration[1], calibration[0])
    if features:
        check_recipe(info, read_recipe(features), features)
    out_url = storage.to_url(output)
    scores_url = storage.join(out_url, SCORES_DIR)
    if out_url in {storage.to_url(bundle), storage.to_url(features or bundle)}:
        raise ConfigError(f"--output {output} is the job's own input: write scores to another directory")
    if storage.exists(scores_url) and not (overwrite or incremental):
        raise OutputExistsError(f"{scores_url} exists; pass --overwrite to replace it or --incremental to score "
                                "only new and changed files")
    local_bundle = storage.fetch_dir(bundle, names={MODEL_FILE, BUNDLE_FILE})
    started = time.time()
    sc = spark.sparkContext
    digest = bundle_digest(local_bundle)
    # What makes two runs' numbers comparable: --incremental keeps rows only of an equal record.
    run = {"bundle": digest, "precision": settings.score.precision, "calibration": list(calibration),
           "max_windows": settings.score.max_windows, "max_duration_s": settings.featurize.max_duration_s}
    run_id = time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:8]
    lock = OutputLock(storage.join(out_url, LOCK_FILE), run_id, break_lock=break_lock, job="score",
                      stale_after_s=settings.storage.lock_stale_after_s).acquire()
    staging, shipped = staging_dir(output, run_id), None
    try:
        _remove_stale_staging(out_url)
        if features:
            tracks = read_tracks(features)
            n_inputs = len(tracks)
            candidates = tracks[tracks["status"] == STATUS_OK]
        else:
            candidates = expand_inputs(inputs).entries
            n_inputs = len(candidates)
        existing = read_dir(scores_url) if incremental and storage.exists(scores_url) else None
        same_run = existing is not None and read_run(scores_url) == run
        if existing is not None and not same_run:
            log.info("score --incremental: the existing scores were made with another bundle or settings "
                     "(%s now): every file is scored", run)
        kept, to_score = _keep_unchanged(existing, candidates, same_run)
        retried = 0 if kept is None else _count_failed_before(existing, to_score)
        # Rows of files no longer listed are dropped: the output mirrors the current listing.
        listed = tracks["path"] if features else candidates["path"]
        dropped = 0 if existing is None else int((~existing["path"].isin(set(listed))).sum())
        n_kept = 0 if kept is None else len(kept)
        if n_kept:
            write_part(staging, "part-kept.parquet", 0, score_table(rows_of(kept), labels, run))
        if len(to_score):
            _check_model(local_bundle, bundle, len(labels))  # ~5 s of TensorFlow import: only when tasks will run
            name, shipped = ship_bundle(sc, local_bundle, digest)
            options = _task_options(recipe, settings, calibration, staging, run)
            if features:
                tasks = _from_features(spark, name, features, to_score, options)
            else:
                tasks = _from_audio(spark, name, settings, to_score, options)
            sc.setJobDescription(f"genreclf score: {len(to_score)} of {n_inputs} files")
            with SparkProgress(sc, "score"):
                tasks.collect()
            sc.setJobDescription(None)
        written = read_dir(staging)
        if features:  # featurize's error rows, and ok tracks no task found windows for, written by the driver
            rest = _rest_of_tracks(tracks[tracks["status"] != STATUS_OK]) + _unscored(
                to_score, set(written["track_id"]))
            if rest:
                write_part(staging, "part-driver.parquet", 0, score_table(rest, labels, run))
                written = read_dir(staging)
        if len(written) != n_inputs or written["track_id"].nunique() != n_inputs:
            raise GenreclfError(f"internal error: {n_inputs} inputs but {len(written)} score rows "
                                f"({written['track_id'].nunique()} distinct); nothing was replaced")
        # Committed whole (local disks, HDFS) or object by object (object stores): see storage.replace_dir.
        commit(output, staging, labels)
    finally:
        if storage.exists(staging):
            storage.delete(staging)
        if shipped:
            shutil.rmtree(shipped, ignore_errors=True)
        lock.release()

    rows = written
    submission = storage.join(out_url, SUBMISSION_FILE)
    if csv:
        write_submission(rows, labels, submission)
    elif storage.exists(submission):  # an earlier run's: it would no longer match the scores
        storage.delete(submission)
        log.info("score: removed %s of an earlier run (it would not match these scores; --csv writes one)",
                 submission)
    summary = summarize(rows.assign(warning=None), time.time() - started, n_inputs=n_inputs)
    summary["genres"] = rows["genre"].value_counts().to_dict()
    summary["output"] = scores_url
    summary["calibration"] = {"mode": calibration[0], "temperature": calibration[1]}
    summary["precision"] = sorted(rows["precision"].dropna().unique().tolist())
    summary.update(kept=n_kept, scored=len(to_score) - retried, retried=retried, dropped=dropped)
    log.info("score summary: %d tracks, %d ok, %d errors, %.1f s, %s tracks/s; precision %s", n_inputs,
             summary["ok"], summary["errors"], summary["elapsed_s"], summary["tracks_per_s"],
             ", ".join(summary["precision"]) or "-")
    if incremental:
        log.info("  incremental: %d kept unchanged, %d scored (new or changed), %d retried (an error that may not recur), "
                 "%d dropped (no longer listed)", n_kept, summary["scored"], retried, dropped)
    for reason, n in summary["errors_by_reason"].items():
        log.info("  error  %6d  %s", n, reason)
    log.info("  top genres: %s", ", ".join(f"{g} {n}" for g, n in list(summary["genres"].items())[:8]))
    return summary
