"""The score job on Spark: a model bundle applied to raw audio or featurize output, one row per file.

The bundle (a local path or URL) is fetched once by the driver and shipped to executors with
``SparkContext.addArchive`` (no shared filesystem assumed), then loaded once per Python worker
(:mod:`genreclf.ml.model_cache`). From raw audio, each task decodes its files exactly as featurize does and averages
each track's window predictions itself. From features, each task reads whole window files (a featurize output keeps a
track's windows in one file) and averages their tracks itself: no shuffle (a ``groupBy(track_id)`` cost ~60 s for 10
tracks on the test cluster). Either way the tasks write their rows with pyarrow into the run's directory
(:mod:`genreclf.formats.scores`); under the output's lock, the driver checks one row per input, adds ``labels.json``
and ``submission.csv`` and commits the run by one atomic write of ``current.json``
(:mod:`genreclf.formats.scoreoutput`: the output, opened once).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import pandas as pd

from genreclf.config import Settings, load_settings
from genreclf.errors import ConfigError, GenreclfError, OutputExistsError, Reason
from genreclf.formats.bundle import BUNDLE_FILE, MODEL_FILE, Bundle
from genreclf.formats import taskrecords
from genreclf.formats.featureset import FeatureSet
from genreclf.formats.schema import STATUS_ERROR, STATUS_OK, summarize
from genreclf.formats.scoreoutput import ScoreOutput
from genreclf.formats.scores import (
    SCORES_DIR,
    SCORES_SCHEMA,
    SUBMISSION_FILE,
    CompactWriter,
    plan_incremental,
    read_dir,
    read_run,
    rows_of,
    score_row,
    score_table,
    write_labels,
    write_submission,
)
from genreclf.io import killpoints, storage, tracking
from genreclf.io.catalog import expand_inputs
from genreclf.io.lock import new_run_id
from genreclf.io.spark import (
    catalog_records,
    default_parallelism,
    entries_frame,
    group_by_work,
    peak_rss_mb,
    run_tasks,
    task_frame,
)
from genreclf.ml import pretrained
from genreclf.score.tasks import score_audio_partition, score_window_files_partition

log = logging.getLogger(__name__)

#: Window bytes per score-from-features task: ~400 30-s tracks of the reference recipe (2.5 MB each),
#: ~20 s of the model on one core; a window file is never split (a track's windows are in one file).
FEATURES_TASK_BYTES = 1 << 30
#: What each score task returns to the driver: its record's row count (the rows themselves are
#: written), or the error that stops the run (a full disk, a bucket gone: StorageError).
TASK_SCHEMA = "task string, rows long, error string"


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


def _task_options(recipe, settings, calibration, out_url, run) -> dict:
    """What every score task is given besides its inputs."""
    return dict(recipe_json=json.dumps(recipe.to_dict()), batch_size=settings.score.batch_size,
                max_windows=settings.score.max_windows, precision=settings.score.precision,
                calibration=calibration[0], temperature=calibration[1], out_url=out_url,
                storage_options=storage.options(), run=run)


@dataclass
class _Tasks:
    """The tasks a run plans: their keys, and how to run a subset of them (``todo``: indices)."""

    keys: list
    frame: object  # (spark, bundle name, options, todo) -> the Spark DataFrame of their task rows


def _plan_audio(entries, settings: Settings, base: str, run: dict, parallelism: int) -> _Tasks:
    """Audio files cut into tasks by bytes, as featurize cuts them; each task named by its inputs."""
    groups = group_by_work(entries["size_bytes"].tolist(), target_bytes=settings.featurize.task_mb << 20,
                           max_files=settings.featurize.files_per_task, parallelism=parallelism)
    records = catalog_records(entries)
    keys = [taskrecords.task_key(base, {"job": "score", "run": run}, records[a:b]) for a, b in groups]

    def frame(spark, bundle_name, options, todo):
        fn = functools.partial(score_audio_partition, bundle=bundle_name,
                               max_duration_s=settings.featurize.max_duration_s,
                               decode_threads=settings.score.decode_threads, **options)
        return entries_frame(spark, entries, [groups[i] for i in todo], [keys[i] for i in todo]).mapInPandas(
            fn, schema=TASK_SCHEMA)

    return _Tasks(keys, frame)


def _plan_features(features: FeatureSet, to_score, base: str, run: dict, parallelism: int) -> _Tasks:
    """Window files cut into tasks by bytes (FEATURES_TASK_BYTES); each averages the tracks of its
    files that are in ``to_score`` (ok tracks of the tracks table), no shuffle."""
    windows = features.windows()
    paths, sizes = windows.paths, windows.sizes()
    groups = group_by_work([sizes.get(p) for p in paths], target_bytes=FEATURES_TASK_BYTES,
                           max_files=len(paths) or 1, parallelism=parallelism)
    files = [windows.located(p) for p in paths]
    wanted = {t.track_id: (t.path, None if pd.isna(t.size_bytes) else int(t.size_bytes),
                           None if pd.isna(t.mtime) else float(t.mtime)) for t in to_score.itertuples(index=False)}
    scope = taskrecords.task_key("", {}, sorted((k, *v) for k, v in wanted.items()))  # the tracks asked for
    keys = [taskrecords.task_key(base, {"job": "score", "run": run, "tracks": scope}, [storage.basename(f)
                                                                                   for f in files[a:b]])
            for a, b in groups]

    def frame(spark, bundle_name, options, todo):
        from pyspark.sql.types import StringType, StructField, StructType

        shared = spark.sparkContext.broadcast(wanted)
        fn = functools.partial(score_window_files_partition, bundle=bundle_name, tracks=shared, **options)
        schema = StructType([StructField("location", StringType()), StructField("task", StringType())])
        return task_frame(spark, [[(f, keys[i]) for f in files[slice(*groups[i])]] for i in todo],
                          schema).mapInPandas(fn, schema=TASK_SCHEMA)

    return _Tasks(keys, frame)


def _rest_of_tracks(tracks) -> list:
    """Score rows for featurize's error rows (no model runs for them)."""
    return [score_row(t.track_id, t.path, t.status, t.error, size_bytes=t.size_bytes, mtime=t.mtime)
            for t in tracks.itertuples(index=False)]


def _unscored(tracks, scored_ids: set) -> list:
    """Rows for ok tracks of the features that no task scored: their windows are missing."""
    return [score_row(t.track_id, t.path, STATUS_ERROR, f"{Reason.NO_WINDOWS}: the features hold none for this track",
                      size_bytes=t.size_bytes, mtime=t.mtime)
            for t in tracks.itertuples(index=False) if t.track_id not in scored_ids]


def _check_model(bundle: Bundle, digest: str) -> None:
    """Load the model once on the driver before any task: a damaged or mismatched model.keras is one
    clear error here, not a traceback from every executor. A bundle content (``digest``) that loaded
    once is not loaded again: a rerun's driver needs no TensorFlow (~3.5 s and ~400 MB saved)."""
    marker = os.path.join(tempfile.gettempdir(), f"genreclf-checked-{os.getuid()}", f"{digest}-{len(bundle.labels)}")
    if os.path.exists(marker):
        return
    from genreclf.ml.tfsetup import configure_tensorflow

    configure_tensorflow(training=False)
    bundle.model()
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    open(marker, "w").close()


def _check_precision(spark, precision: str) -> None:
    """float16 runs only on GPUs: refuse it before any task unless the executors are given GPUs."""
    if precision != "float16":
        return
    conf = spark.sparkContext.getConf()
    if not conf.get("spark.task.resource.gpu.amount", None):
        raise ConfigError("[score] precision = 'float16' needs GPU executors (spark.task.resource.gpu.amount, see "
                          "conf/spark-gpu.conf); use 'auto', 'float32' or 'bfloat16' on CPUs")


@dataclass
class _Job:
    """What the driver knows of a score run before it takes the output's lock."""

    bundle: Bundle  # the model bundle, opened once (its local copy fetched once)
    calibration: tuple  # (mode, temperature)
    out: ScoreOutput  # the output, opened once
    digest: str
    run: dict  # what makes two runs' numbers comparable: --incremental keeps rows only of an equal record
    features: FeatureSet | None  # score --features: the featurize output, opened once


def run_score(spark, bundle: str, output: str, *, inputs: list | None = None, features: str | None = None,
              csv: bool = False, overwrite: bool = False, incremental: bool = False, settings: Settings | None = None,
              calibrate: bool = True, break_lock: bool = False) -> dict:
    """Score raw audio (``inputs``) or a featurize output (``features``) into ``output/scores``,
    with the bundle's calibration unless ``calibrate`` is false (the reference's plain mean).

    ``incremental``: keep the rows of an existing output whose file (path, size, mtime), bundle and
    settings are unchanged (but errors that may not recur), score the rest, drop rows of files no
    longer listed. ``scores/``, ``labels.json`` and (with ``csv``) ``submission.csv`` are committed
    together, as one run (:meth:`genreclf.formats.scoreoutput.ScoreOutput.commit`).
    """
    settings = settings or load_settings()
    job = _prepare(spark, bundle, output, inputs, features, overwrite, incremental, settings, calibrate)
    started = time.time()
    run_id = new_run_id()
    lock = job.out.lock(run_id, break_lock=break_lock, stale_after_s=settings.storage.lock_stale_after_s).acquire()
    try:
        rows, n_inputs, plan = _score_locked(spark, job, run_id, inputs, job.features, incremental, csv,
                                             settings)
    finally:
        lock.release()
    summary = summarize(rows.assign(warning=None), time.time() - started, n_inputs=n_inputs)
    summary.update(genres=rows["genre"].value_counts().to_dict(),
                   output=job.out.run_dir(run_id).location,
                   calibration={"mode": job.calibration[0], "temperature": job.calibration[1]},
                   precision=sorted(rows["precision"].dropna().unique().tolist()), kept=plan.n_kept, csv=csv,
                   scored=len(plan.to_score) - plan.answered, answered_at_listing=plan.answered,
                   retried=plan.retried, dropped=plan.dropped, tasks=plan.tasks, tasks_kept=plan.tasks_kept,
                   files=plan.files, driver_peak_rss_mb=round(peak_rss_mb()))
    for line in format_summary(summary, incremental).splitlines():
        log.info(line)
    return summary


def _prepare(spark, bundle, output, inputs, features, overwrite, incremental, settings, calibrate) -> _Job:
    """Every check that needs no lock, then the bundle fetched and its run record: refuses before work."""
    if bool(inputs) == bool(features):
        raise ConfigError("give either --input (raw audio) or --features (a featurize output), not both or neither")
    if overwrite and incremental:
        raise ConfigError("--overwrite and --incremental exclude each other: --incremental replaces the output too, "
                          "rescoring only new and changed files")
    storage.refuse_credentials(bundle, output, features, *(inputs or ()))  # before any fetch or listing
    storage.configure(settings.storage.to_dict())
    _check_precision(spark, settings.score.precision)
    named = bundle
    if pretrained.is_pretrained(bundle):  # a tagger of ours: its bundle made here, shipped as any other
        bundle = pretrained.tagger_bundle(bundle)
    elif tracking.is_model_uri(bundle):  # models:/NAME/VERSION, runs:/ID/model: the bundle inside, fetched once
        bundle = tracking.fetch_model(bundle, settings.mlflow)
    bundle = Bundle.open(bundle, named=named)
    calibration = bundle.calibration(calibrate)
    if calibration[0] != "none":
        log.info("score: calibrated with temperature %.3f per %s (--no-calibration: the plain mean)",
                 calibration[1], calibration[0])
    features = FeatureSet.open(features) if features else None
    if features:
        bundle.check_recipe(features.recipe, features.location)
    out = ScoreOutput.open(output)
    if out.url in {bundle.root.url, features.url if features else None}:
        raise ConfigError(f"--output {output} is the job's own input: write scores to another directory")
    foreign = out.foreign_entries()
    if foreign:
        raise OutputExistsError(f"{out.url} is not a score output (it holds {', '.join(foreign[:5])}): score writes "
                                "only into a new or empty directory or its own output; choose another --output")
    if out.committed() is not None and not (overwrite or incremental):
        raise OutputExistsError(f"{out.url} holds scores; pass --overwrite to replace them or --incremental to "
                                "score only new and changed files")
    digest = bundle.digest()
    run = {"bundle": digest, "precision": settings.score.precision, "calibration": list(calibration),
           "max_windows": settings.score.max_windows, "max_duration_s": settings.featurize.max_duration_s}
    return _Job(bundle, calibration, out, digest, run, features)


def _score_locked(spark, job: _Job, run_id, inputs, features, incremental, csv, settings) -> tuple:
    """The run, under the output's lock: plan the tasks, keep those an interrupted run of the same
    plan finished, score the rest (each task writes its record), compact every row (kept, the
    driver's, the records') into the run's directory, check one row per input, write labels (and
    the submission), commit. Returns (the committed rows' summary columns, the number of inputs,
    the plan)."""
    out = job.out
    directory, shipped, done = out.run_dir(run_id), None, False
    staging = directory.child(SCORES_DIR)
    writer = CompactWriter(staging, job.run)
    try:
        record = out.committed()
        out.remove_uncommitted(record)
        base = (record or {}).get("run_id", "")
        if features:
            tracks = features.tracks(check=True)
            candidates, listed = tracks[tracks["status"] == STATUS_OK], tracks["path"]
        else:
            candidates = expand_inputs(inputs, exclude=(out.location,)).entries
            listed = candidates["path"]
        n_inputs = len(listed)
        scores = out.committed_part(SCORES_DIR) if incremental else None
        existing = read_dir(scores) if scores else None
        same_run = existing is not None and read_run(scores) == job.run
        if existing is not None and not same_run:
            log.info("score --incremental: the existing scores were made with another bundle or settings "
                     "(%s now): every file is scored", job.run)
        plan = plan_incremental(existing, candidates, listed, same_run)
        to_score = plan.to_score
        driver_rows = rows_of(plan.kept) if plan.n_kept else []
        if features:  # featurize's error rows: no model runs for them
            driver_rows += _rest_of_tracks(tracks[tracks["status"] != STATUS_OK])
        else:  # files the listing showed cannot be used: their rows here, no task
            dead = to_score["problem"].notna()
            driver_rows += [score_row(t.track_id, t.path, STATUS_ERROR, t.problem, size_bytes=t.size_bytes,
                                      mtime=t.mtime) for t in to_score[dead].itertuples(index=False)]
            plan.answered = int(dead.sum())
            to_score = to_score[~dead]
        parallelism = default_parallelism(spark) if len(to_score) else 1
        tasks = (_plan_features(features, to_score, base, job.run, parallelism) if features
                 else _plan_audio(to_score, settings, base, job.run, parallelism)) if len(to_score) else _Tasks([], None)
        log.info("score: %d files to score in %d tasks", len(to_score), len(tasks.keys))
        finished = taskrecords.finished(out.root) & set(tasks.keys)
        taskrecords.remove_others(out.root, finished)
        if finished:
            log.info("score: resuming: %d of %d tasks' outputs kept (an interrupted run of the same plan)",
                     len(finished), len(tasks.keys))
        plan.tasks, plan.tasks_kept = len(tasks.keys), len(finished)
        killpoints.arm(out.root.path)  # the crash tests' kill points: this run's own steps
        todo = [i for i, k in enumerate(tasks.keys) if k not in finished]
        if todo:
            _check_model(job.bundle, job.digest)  # only when tasks run
            name, shipped = ship_bundle(spark.sparkContext, job.bundle.local(), job.digest)
            options = _task_options(job.bundle.recipe, settings, job.calibration, out.url, job.run)
            killpoints.note("tasks", out.root.path)  # they write task records
            run_tasks(tasks.frame(spark, name, options, todo),
                      f"score: {len(to_score)} of {n_inputs} files in {len(todo)} tasks (of {len(tasks.keys)})", "score")
        writer.add(score_table(driver_rows, job.bundle.labels, job.run, job.bundle.genre_labels))
        for _, table, _ in taskrecords.read_records(out.root, tasks.keys, SCORES_SCHEMA):
            writer.add(table)
        if features:  # ok tracks no task found windows for
            writer.add(score_table(_unscored(to_score, set(writer.rows()["track_id"])), job.bundle.labels, job.run,
                                   job.bundle.genre_labels))
        written = writer.close()
        if len(written) != n_inputs or written["track_id"].nunique() != n_inputs:
            raise GenreclfError(f"internal error: {n_inputs} inputs but {len(written)} score rows "
                                f"({written['track_id'].nunique()} distinct); nothing was replaced")
        write_labels(directory, job.bundle.labels)
        if csv:
            write_submission(read_dir(staging, columns=["track_id", "path", "status", "probability_vector"]),
                             job.bundle.labels, directory.child(SUBMISSION_FILE))
        out.commit(run_id, job.bundle.labels, len(written), csv)
        done = True
        taskrecords.remove_all(out.root)
        plan.files = writer.files
        return written, n_inputs, plan
    finally:
        if not done:
            writer.abort()
            directory.delete()  # a failed run: its directory was never committed (nothing when absent)
        if shipped:
            shutil.rmtree(shipped, ignore_errors=True)


def format_summary(s: dict, incremental: bool = False) -> str:
    """The run summary the job logs: counts, speed, precision, error reasons, top genres."""
    lines = [f"score summary: {s['files_in']} tracks, {s['ok']} ok, {s['errors']} errors, {s['elapsed_s']:.1f} s, "
             f"{s['tracks_per_s']} tracks/s; precision {', '.join(s['precision']) or '-'}"]
    if incremental:
        lines.append(f"  incremental: {s['kept']} kept unchanged, {s['scored']} scored (new or changed), "
                     f"{s['retried']} retried (an error that may not recur), {s['dropped']} dropped (no longer listed)")
    if s.get("answered_at_listing"):
        lines.append(f"  {s['answered_at_listing']} files answered at listing (missing, not a regular file, empty): "
                     "no task")
    if s.get("tasks_kept"):
        lines.append(f"  resumed: {s['tasks_kept']} of {s['tasks']} tasks' outputs kept from an interrupted run")
    lines += [f"  error  {n:6d}  {reason}" for reason, n in s["errors_by_reason"].items()]
    lines.append(f"  {s.get('tasks', 0)} tasks; driver peak RSS {s.get('driver_peak_rss_mb', 0)} MB")
    lines.append("  top genres: " + ", ".join(f"{g} {n}" for g, n in list(s["genres"].items())[:8]))
    lines.append(f"  committed {s['output']} (scores/ in {s.get('files', 0)} files, labels.json"
                 f"{', submission.csv' if s.get('csv') else ''}; current.json names it)")
    return "\n".join(lines)
