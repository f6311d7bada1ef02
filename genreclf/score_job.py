"""The score job on Spark: a model bundle applied to raw audio or featurize output, one row per file.

The bundle is shipped to executors with ``SparkContext.addFile`` (no shared filesystem assumed)
and loaded once per Python worker (:mod:`model_cache`). From raw audio, each task decodes its
files exactly as featurize does and averages each track's window predictions itself (a track's
windows are together in one task). From features, windows are predicted in a ``mapInPandas`` UDF
and averaged by a Spark ``groupBy(track_id)`` across the cluster. Either way: exactly the mean.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
import uuid

import pandas as pd

from genreclf import storage
from genreclf.bundle import MODEL_FILE, calibration_of, check_recipe, load_bundle_info
from genreclf.calibration import TINY
from genreclf.catalog import expand_inputs
from genreclf.config import Recipe, Settings, load_settings
from genreclf.errors import ConfigError, GenreclfError, OutputExistsError
from genreclf.featureset import read_recipe, read_tracks
from genreclf.featurize_job import entries_frame, summarize, task_count
from genreclf.progress import SparkProgress
from genreclf.schema import STATUS_ERROR, STATUS_OK, WINDOWS_DIR
from genreclf.scoring import predict_window_partition, score_audio_partition

log = logging.getLogger(__name__)

SCORES_DIR = "scores"
SUBMISSION_FILE = "submission.csv"


def ship_bundle(sc, bundle_dir: str) -> str:
    """Ship the bundle to every executor as a zip archive (``addArchive``: Spark unpacks it there),
    named after its content; returns the name under which ``SparkFiles.get`` finds the directory."""
    import zipfile

    digest = hashlib.sha256()
    for name in (MODEL_FILE, "bundle.json"):
        with open(os.path.join(bundle_dir, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    name = f"genreclf-bundle-{digest.hexdigest()[:16]}.zip"
    staged = os.path.join(tempfile.gettempdir(), name)
    if not os.path.isfile(staged):
        tmp = f"{staged}.{uuid.uuid4().hex[:6]}.tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for f in (MODEL_FILE, "bundle.json"):
                z.write(os.path.join(bundle_dir, f), f)
        os.replace(tmp, staged)
    try:
        sc.addArchive(staged)
    except Exception as e:  # already added in this application (same name means same content)
        if "already" not in str(e).lower():
            raise
    return name


def _score_schema():
    from pyspark.sql.types import ArrayType, DoubleType, IntegerType, StringType, StructField, StructType

    return StructType([StructField("track_id", StringType()), StructField("path", StringType()),
                       StructField("status", StringType()), StructField("error", StringType()),
                       StructField("n_windows", IntegerType()), StructField("probs", ArrayType(DoubleType()))])


def _finish(df, labels: list):
    """probs (bundle order) -> top-1 genre, its confidence and a genre -> probability map."""
    from pyspark.sql import functions as F

    names = F.array(*[F.lit(l) for l in labels])
    top = F.array_position(F.col("probs"), F.array_max(F.col("probs")))
    return df.select(
        "track_id", "path", "status", "error", F.col("n_windows").cast("int").alias("n_windows"),
        F.when(F.col("probs").isNotNull(), F.element_at(names, top.cast("int"))).alias("genre"),
        F.array_max("probs").alias("confidence"),
        F.when(F.col("probs").isNotNull(), F.map_from_arrays(names, F.col("probs"))).alias("probabilities"),
        F.col("probs").alias("probability_vector"),
    )


def _from_audio(spark, bundle_name, recipe, settings, inputs, calibration):
    catalog = expand_inputs(inputs)
    table = catalog.entries
    n_parts = task_count(len(table), settings.featurize.files_per_task, spark.sparkContext.defaultParallelism)
    fn = functools.partial(score_audio_partition, bundle=bundle_name, recipe_json=json.dumps(recipe.to_dict()),
                           max_duration_s=settings.featurize.max_duration_s, max_windows=settings.score.max_windows,
                           batch_size=settings.score.batch_size, calibration=calibration[0],
                           temperature=calibration[1])
    return entries_frame(spark, table, n_parts).mapInPandas(fn, schema=_score_schema()), len(table)


def _tempered_mean(columns: list, temperature: float) -> list:
    """softmax(log p / T) of averaged probability columns, in Spark: p^(1/T) / sum_j p_j^(1/T)."""
    from pyspark.sql import functions as F

    powered = [F.pow(F.greatest(c, F.lit(TINY)), F.lit(1.0 / temperature)) for c in columns]
    total = functools.reduce(lambda a, b: a + b, powered)
    return [p / total for p in powered]


def _from_features(spark, bundle_name, recipe, settings, features, n_classes, calibration):
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    tracks = read_tracks(features)
    columns = StructType([StructField("track_id", StringType()), StructField("path", StringType()),
                          StructField("status", StringType()), StructField("error", StringType()),
                          StructField("n_windows", LongType())])
    tracks_df = spark.createDataFrame(  # an explicit schema: a column of all-null errors has no type to infer
        tracks[["track_id", "path", "status", "error", "n_windows"]].astype({"n_windows": "int64"}), columns)
    windows = spark.read.parquet(storage.join(storage.to_url(features), WINDOWS_DIR)).select("track_id", "window", "stft")
    cap = settings.score.max_windows
    if cap:
        starts = tracks_df.select("track_id", F.greatest(F.lit(0), F.floor((F.col("n_windows") - cap) / 2))
                                  .alias("first"))
        windows = windows.join(F.broadcast(starts), "track_id") \
            .where((F.col("window") >= F.col("first")) & (F.col("window") < F.col("first") + cap)) \
            .select("track_id", "window", "stft")
    out = StructType([StructField("track_id", StringType())] +
                     [StructField(f"p{i}", DoubleType()) for i in range(n_classes)])
    fn = functools.partial(predict_window_partition, bundle=bundle_name, recipe_json=json.dumps(recipe.to_dict()),
                           batch_size=settings.score.batch_size,
                           window_temperature=calibration[1] if calibration[0] == "window" else 1.0)
    per_window = windows.mapInPandas(fn, schema=out)
    means = per_window.groupBy("track_id").agg(
        F.count("*").alias("scored_windows"), *[F.avg(f"p{i}").alias(f"p{i}") for i in range(n_classes)])
    joined = tracks_df.join(means, "track_id", "left")
    has = F.col("scored_windows").isNotNull()
    probs = [F.col(f"p{i}") for i in range(n_classes)]
    if calibration[0] == "track" and calibration[1] != 1.0:
        probs = _tempered_mean(probs, calibration[1])
    scored = joined.select(
        "track_id", "path",
        F.when((F.col("status") == STATUS_OK) & ~has, F.lit(STATUS_ERROR)).otherwise(F.col("status")).alias("status"),
        F.when((F.col("status") == STATUS_OK) & ~has, F.lit("no windows: the features hold none for this track"))
        .otherwise(F.col("error")).alias("error"),
        F.coalesce(F.col("scored_windows"), F.lit(0)).cast("int").alias("n_windows"),
        F.when(has, F.array(*probs)).alias("probs"))
    return scored, len(tracks)


def run_score(spark, bundle: str, output: str, *, inputs: list | None = None, features: str | None = None,
              csv: bool = False, overwrite: bool = False, settings: Settings | None = None,
              calibrate: bool = True) -> dict:
    """Score raw audio (``inputs``) or a featurize output (``features``) into ``output/scores``,
    with the bundle's calibration unless ``calibrate`` is false (the reference's plain mean)."""
    if bool(inputs) == bool(features):
        raise ConfigError("give either --input (raw audio) or --features (a featurize output), not both or neither")
    settings = settings or load_settings()
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
    if storage.exists(scores_url) and not overwrite:
        raise OutputExistsError(f"{scores_url} exists; pass --overwrite to replace it")
    started = time.time()
    sc = spark.sparkContext
    name = ship_bundle(sc, bundle)
    if features:
        scored, n_inputs = _from_features(spark, name, recipe, settings, features, len(labels), calibration)
    else:
        scored, n_inputs = _from_audio(spark, name, recipe, settings, inputs, calibration)
    result = _finish(scored, labels)

    tmp_url = storage.join(out_url, f"{SCORES_DIR}.tmp-{uuid.uuid4().hex[:8]}")  # Spark skips hidden names
    sc.setJobDescription(f"genreclf score: {n_inputs} files")
    with SparkProgress(sc, "score"):
        result.write.parquet(tmp_url)
    sc.setJobDescription(None)
    written = spark.read.parquet(tmp_url)
    counts = written.groupBy().agg({"track_id": "count"}).collect()[0][0]
    distinct = written.select("track_id").distinct().count()
    if counts != n_inputs or distinct != n_inputs:
        storage.delete(tmp_url)
        raise GenreclfError(f"internal error: {n_inputs} inputs but {counts} score rows ({distinct} distinct)")
    # Replace atomically: the new scores appear whole, or the old ones stay.
    if storage.exists(scores_url):
        storage.delete(scores_url)
    fs, tmp_path = storage.filesystem(tmp_url)
    fs.move(tmp_path, storage.filesystem(scores_url)[1])
    storage.write_text(storage.join(out_url, "labels.json"), json.dumps(labels, indent=2))

    rows = read_scores(output)
    if csv:
        write_submission(rows, labels, os.path.join(output, SUBMISSION_FILE) if "://" not in output
                         else storage.filesystem(storage.join(out_url, SUBMISSION_FILE))[1])
    summary = summarize(rows.assign(warning=None), time.time() - started, n_inputs=n_inputs)
    summary["genres"] = rows["genre"].value_counts().to_dict()
    summary["output"] = scores_url
    summary["calibration"] = {"mode": calibration[0], "temperature": calibration[1]}
    log.info("score summary: %d tracks, %d scored, %d errors, %.1f s, %s tracks/s", n_inputs, summary["ok"],
             summary["errors"], summary["elapsed_s"], summary["tracks_per_s"])
    for reason, n in summary["errors_by_reason"].items():
        log.info("  error  %6d  %s", n, reason)
    log.info("  top genres: %s", ", ".join(f"{g} {n}" for g, n in list(summary["genres"].items())[:8]))
    return summary


def read_scores(output: str) -> pd.DataFrame:
    """The scores of a score output as pandas (``probabilities`` as a dict per row)."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(storage.join(storage.to_url(output), SCORES_DIR))
    table = pq.read_table(path, filesystem=fs).to_pandas()
    table["probabilities"] = table["probabilities"].map(lambda m: dict(m) if m is not None else None)
    return table.sort_values("track_id", kind="stable").reset_index(drop=True)


def write_submission(scores: pd.DataFrame, labels: list, path: str) -> None:
    """The crowdAI submission layout: ``file_id`` (basename without extension), one column per genre."""
    ok = scores[scores["status"] == STATUS_OK]
    file_id = ok["path"].map(lambda p: os.path.splitext(os.path.basename(p))[0])
    probs = pd.DataFrame(ok["probability_vector"].tolist(), columns=labels, index=ok.index)
    probs.insert(0, "file_id", file_id)
    probs.to_csv(path, index=False, float_format="%.6f")
