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


def peak_rss_mb() -> float:
    """This process's peak resident memory (the driver's Python, without its JVM), in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_environment() -> None:
    """Defaults for the Python workers a SparkContext will start (set before creating it)."""
    # Workers run this interpreter unless told otherwise (spark.pyspark.python, PYSPARK_PYTHON).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "genreclf-numba-cache"))
    # petastorm's row-group scan runs in Python workers, which never import genreclf's filters.
    quiet = "ignore::FutureWarning:petastorm.fs_utils"
    if quiet not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))


class LazySpark:
    """The application's SparkSession, started on first use. A run whose driver answers everything
    itself (dead paths, a rerun whose tasks all finished, an unchanged ``--incremental``) never
    starts a SparkContext: ~2.5-4 s of a job's ~5 s of fixed cost here (measured under spark-submit)."""

    def __init__(self, app_name: str):
        self._app, self._session = app_name, None

    @property
    def started(self) -> bool:
        return self._session is not None

    def __getattr__(self, name):  # anything of a SparkSession: start it
        if name.startswith("_"):
            raise AttributeError(name)
        if self._session is None:
            self._session = get_spark(self._app)
        return getattr(self._session, name)

    def stop(self) -> None:
        if self._session is not None:
            self._session.stop()


def default_parallelism(spark) -> int:
    """The cores tasks are planned for: a local master's (local[N]; local[*]: this process's CPUs),
    known without starting Spark (spark-submit.sh names the master in ``GENRECLF_SPARK_MASTER``:
    reading Spark's conf costs ~2 s of JVM start-up), so that a rerun plans the same tasks whether
    or not it starts Spark; any other master's from the started context."""
    import re

    if isinstance(spark, LazySpark) and not spark.started and os.environ.get("GENRECLF_SPARK_MASTER"):
        master = os.environ["GENRECLF_SPARK_MASTER"]
    else:
        master = spark.sparkContext.master
    local = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\s*\d+)?\])?", master.strip())
    if local:
        cores = local.group(1)
        return 1 if cores is None else len(os.sched_getaffinity(0)) if cores == "*" else int(cores)
    return spark.sparkContext.defaultParallelism


def get_spark(app_name: str):
    """The SparkSession of this application (spark-submit decides master and resources)."""
    from pyspark.sql import SparkSession

    worker_environment()
    builder = SparkSession.builder.appName(app_name)
    if os.environ.get("GENRECLF_VERBOSE") == "1":  # --verbose: the workers' native start-up lines too
        builder = builder.config("spark.executorEnv.GENRECLF_VERBOSE", "1")
    return builder.getOrCreate()


#: What a file of unknown size (a row the listing could not size) weighs when tasks are cut by bytes.
UNKNOWN_SIZE_BYTES = 1 << 20


def group_by_work(sizes, *, target_bytes: int, max_files: int, parallelism: int) -> list:
    """Cut files (``sizes``: bytes each, in catalogue order; null for unknown) into contiguous groups,
    one Spark task each: about ``target_bytes`` of input and at most ``max_files`` files per task,
    and never fewer tasks than ``parallelism`` (or files), so that small inputs use every core.

    Returns [(start, stop)] row ranges. Pure and deterministic: a rerun over the same catalogue
    plans the same tasks (what lets it keep the finished ones). A Spark Python task costs ~1 core-s
    before its first file on our 2-core machines (10,000 missing files: 157 tasks 85 s of stage
    time, 10 tasks 11 s), so tasks are sized by work, not by a count of files.
    """
    n = len(sizes)
    if n == 0:
        return []
    weights = [UNKNOWN_SIZE_BYTES if s is None or s != s else max(int(s), 1) for s in sizes]  # s != s: NaN
    total = sum(weights)
    n_groups = max(-(-total // max(1, target_bytes)), -(-n // max_files), min(n, max(1, parallelism)))
    per_group = total / n_groups
    groups, start, done = [], 0, 0
    for i, w in enumerate(weights):
        # a file belongs to the group its midpoint falls in: groups of about equal bytes
        g = min(n_groups - 1, int((done + w / 2) // per_group))
        if g > len(groups) and i > start:
            groups.append((start, i))
            start = i
        done += w
    groups.append((start, n))
    out = []
    for a, b in groups:  # a group of many small files is cut further, to at most max_files each
        out += [(s, min(s + max_files, b)) for s in range(a, b, max_files)]
    while len(out) < min(n, parallelism):  # fewer groups than cores (a few huge files): split the largest
        a, b = max(out, key=lambda r: (r[1] - r[0], -r[0]))
        if b - a < 2:
            break
        i = out.index((a, b))
        out[i:i + 1] = [(a, (a + b) // 2), ((a + b) // 2, b)]
    return out


def entries_frame(spark, table: pd.DataFrame, groups: list, keys: list):
    """The catalogue as a Spark DataFrame with one partition per group of rows (:func:`group_by_work`),
    each row carrying its task's key (``task``: what the task names its outputs by)."""
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    schema = StructType([StructField("path", StringType()), StructField("track_id", StringType()),
                         StructField("label", StringType()), StructField("group", StringType()),
                         StructField("size_bytes", LongType()), StructField("mtime", DoubleType()),
                         StructField("task", StringType())])
    records = catalog_records(table)
    return task_frame(spark, [[(*records[i], key) for i in range(a, b)] for (a, b), key in zip(groups, keys)],
                      schema)


def task_frame(spark, parts: list, schema):
    """A DataFrame of one partition per task: ``parts`` holds each task's rows (tuples of ``schema``).
    One element per slice: each task gets exactly its rows, the same on a retry or a rerun."""
    rdd = spark.sparkContext.parallelize(parts, max(1, len(parts))).flatMap(lambda part: part)
    return spark.createDataFrame(rdd, schema)


def run_tasks(frame, description: str, label: str) -> None:
    """Collect a frame of task rows (``task, rows, error``), logging progress; a task's error (a
    full disk, a bucket gone) stops the run as one StorageError."""
    from genreclf.errors import StorageError
    from genreclf.io.progress import SparkProgress

    sc = frame.sparkSession.sparkContext
    logging.getLogger(f"genreclf.{label}").info(description)
    sc.setJobDescription("genreclf " + description)
    with SparkProgress(sc, label):
        returned = frame.collect()
    sc.setJobDescription(None)
    failed = [r.error for r in returned if r.error]
    if failed:
        raise StorageError(f"{failed[0]} (nothing was committed)")


def catalog_records(table: pd.DataFrame) -> list:
    """Catalogue rows as plain tuples (path, track_id, label, group, size_bytes, mtime), nulls as None:
    what tasks are given, and what their keys are made of."""
    text = lambda v: None if pd.isna(v) else str(v)  # noqa: E731
    return [(r.path, r.track_id, text(r.label), text(r.group),
             None if pd.isna(r.size_bytes) else int(r.size_bytes), None if pd.isna(r.mtime) else float(r.mtime))
            for r in table[["path", "track_id", "label", "group", "size_bytes", "mtime"]].itertuples(index=False)]
