"""Spark session and logging set-up shared by the jobs. Master and memory come from spark-submit."""

from __future__ import annotations

import logging
import os
import sys


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
    return SparkSession.builder.appName(app_name).getOrCreate()
