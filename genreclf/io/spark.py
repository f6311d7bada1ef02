"""Spark session and logging set-up shared by the jobs. Master and memory come from spark-submit."""

from __future__ import annotations

import logging
import os
import sys

import pandas as pd


def setup_logging(level: str | None = None) -> None:
    """Python logging to stderr, one line per record; ``GENRECLF_LOG_LEVEL`` overrides the level."""
    from genreclf.io.storage import redact

    class Redacting(logging.Formatter):
        """Every line, traceback included, without the credentials of URLs in it."""

        def format(self, record):
            return redact(super().format(record))

    level = (level or os.environ.get("GENRECLF_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr, force=True)
    logging.getLogger().handlers[0].setFormatter(
        Redacting("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
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
            from genreclf.io import interrupts

            with interrupts.deferred():  # cut mid-start, the JVM logs Java tracebacks or outlives the driver
                self._session = get_spark(self._app)
            interrupts.reinstall()  # SparkContext installs its own SIGINT handler
        return getattr(self._session, name)

    def stop(self, interrupted: bool = False) -> None:
        """Stop the session; ``interrupted``: cancel its jobs first (running tasks end within
        ``spark.python.task.killTimeout``, not when done), from a thread of its own (the signal cut
        the main thread's py4j call short, so that connection is unusable), and never raise."""
        if self._session is None:
            return
        session, self._session = self._session, None
        if not interrupted:
            session.stop()
            return
        import threading

        def cancel_and_stop():
            try:
                session.sparkContext.cancelAllJobs()
                _wait_for_killed_tasks(session.sparkContext)
                session.stop()
            except Exception as e:  # the JVM already gone: nothing left to stop
                logging.getLogger(__name__).debug("stopping Spark after an interrupt: %s", e)

        worker = threading.Thread(target=cancel_and_stop, name="genreclf-stop", daemon=True)
        worker.start()
        worker.join(60)


def _wait_for_killed_tasks(sc, timeout_s: float = 10.0) -> None:
    """Until no executor runs a task (cancelled ones end within ``spark.python.task.killTimeout``):
    stopped sooner, the scheduler logs a Java stack trace for each late status update
    ("Exception in statusUpdate ... RejectedExecutionException"), seen on Ctrl-C here."""
    import time

    deadline = time.monotonic() + timeout_s
    tracker = sc._jsc.sc().statusTracker()
    while time.monotonic() < deadline and any(e.numRunningTasks() for e in tracker.getExecutorInfos()):
        time.sleep(0.05)


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


def _launch_jvm() -> None:
    """Start Spark's JVM (spark-submit.sh's PYSPARK_SUBMIT_ARGS) in a session of its own, so that a
    terminal's Ctrl-C and a SIGTERM to the job's process group reach the driver alone, which stops
    Spark in order (PySpark's JVM ignores SIGINT, but its Python workers would die of it mid-task,
    each with a traceback). The JVM still ends with the driver: it exits when its stdin closes."""
    from pyspark import SparkContext
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is None and "PYSPARK_GATEWAY_PORT" not in os.environ:
        SparkContext._ensure_initialized(gateway=launch_gateway(popen_kwargs={"start_new_session": True}))


def get_spark(app_name: str):
    """The SparkSession of this application (spark-submit decides master and resources)."""
    from pyspark.sql import SparkSession

    worker_environment()
    _launch_jvm()
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
    with SparkProgress(sc, label):
        returned = _collect(frame, "genreclf " + description)
    failed = [r.error for r in returned if r.error]
    if failed:
        raise StorageError(f"{failed[0]} (nothing was committed)")


def _collect(frame, description: str) -> list:
    """``frame.collect()`` in a thread of its own while the main thread waits in short steps. A
    signal lands on any thread of the process, and Python runs its handler only when the main
    thread next runs Python code: blocked in the collect's socket read, a Ctrl-C would wait for
    the whole job. Waiting so, it stops the job within a quarter second."""
    import threading

    out: dict = {}

    def work():
        try:
            frame.sparkSession.sparkContext.setJobDescription(description)  # a thread's own property
            out["rows"] = frame.collect()
        except BaseException as e:  # re-raised in the caller's thread
            out["error"] = e

    worker = threading.Thread(target=work, name="genreclf-tasks", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.25)
    if "error" in out:
        raise out["error"]
    return out["rows"]


def catalog_records(table: pd.DataFrame) -> list:
    """Catalogue rows as plain tuples (path, track_id, label, group, size_bytes, mtime), nulls as None:
    what tasks are given, and what their keys are made of."""
    text = lambda v: None if pd.isna(v) else str(v)  # noqa: E731
    return [(r.path, r.track_id, text(r.label), text(r.group),
             None if pd.isna(r.size_bytes) else int(r.size_bytes), None if pd.isna(r.mtime) else float(r.mtime))
            for r in table[["path", "track_id", "label", "group", "size_bytes", "mtime"]].itertuples(index=False)]
