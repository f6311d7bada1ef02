"""Spark session and logging set-up shared by the jobs. Master and memory come from spark-submit."""

from __future__ import annotations

import logging
import os
import sys

import pandas as pd


def setup_logging(level: str | None = None) -> None:
    """Python logging to stderr, one line per record; ``GENRECLF_LOG_LEVEL`` overrides the level."""
    level = (level or os.environ.get("GENRECLF_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)
    for noisy in ("py4j", "numba", "petastorm", "libav"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def worker_environment() -> None:
    """Defaults for the Python workers a SparkContext will start (set before creating it)."""
    # Workers run this interpreter unless told otherwise (spark.pyspark.python, PYSPARK_PYTHON).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "genreclf-numba-cache"))
    # petastorm's row-group scan runs in Python workers, which never import genreclf's filters.
    quiet = "ignore::FutureWarning:petastorm.fs_utils"
    if quiet not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))


def get_spark(app_name: str):
    """The SparkSession of this application (spark-submit decides master and resources)."""
    from pyspark.sql import SparkSession

    worker_environment()
    builder = SparkSession.builder.appName(app_name)
    if os.environ.get("GENRECLF_VERBOSE") == "1":  # --verbose: the workers' native start-up lines too
        builder = builder.config("spark.executorEnv.GENRECLF_VERBOSE", "1")
    return builder.getOrCreate()


def task_count(n_files: int, files_per_task: int, parallelism: int) -> int:
    """Spark tasks for ``n_files``: at most ``files_per_task`` each, and enough to use every core.

    Each Python task costs ~0.25 s of fixed overhead on our 2-core machines (measured: an empty
    mapInPandas over 16 partitions takes ~2 s, over 2 ~0.3 s), so tasks should hold many files;
    but never fewer tasks than cores, or small inputs would run on one core.
    """
    if n_files <= 0:
        return 1
    return max(min(n_files, parallelism), -(-n_files // files_per_task))


def entries_frame(spark, table: pd.DataFrame, n_parts: int):
    """The catalogue as a Spark DataFrame of ``n_parts`` partitions, one row per input file."""
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    schema = StructType([StructField("path", StringType()), StructField("track_id", StringType()),
                         StructField("label", StringType()), StructField("group", StringType()),
                         StructField("size_bytes", LongType()), StructField("mtime", DoubleType())])
    text = lambda v: None if pd.isna(v) else str(v)  # noqa: E731
    records = [(r.path, r.track_id, text(r.label), text(r.group),
                None if pd.isna(r.size_bytes) else int(r.size_bytes), None if pd.isna(r.mtime) else float(r.mtime))
               for r in table.itertuples(index=False)]
    # parallelize() slices the list deterministically: a retried task gets exactly the same files.
    return spark.createDataFrame(spark.sparkContext.parallelize(records, n_parts), schema)
