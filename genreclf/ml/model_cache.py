"""One model per Python worker process, loaded on first use and kept for every later batch and task.

This lives in an importable module on purpose: a cache defined in a job script is pickled with
each task and starts empty every time, reloading the model per task (the pattern of mlflow's
``spark_model_cache``). TensorFlow's thread pools are sized to the task's cores so concurrent
workers on one executor do not oversubscribe the CPU; the device and precision are chosen by
:mod:`genreclf.ml.inference`.
"""

from __future__ import annotations

import os

_MODELS: dict = {}


def tf_threads() -> int:
    """Cores a Spark task may use (``spark.task.cpus``), or ``GENRECLF_TF_THREADS``; 1 by default."""
    if os.environ.get("GENRECLF_TF_THREADS"):
        return max(1, int(os.environ["GENRECLF_TF_THREADS"]))
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None:
            cpus = ctx.cpus() if callable(getattr(ctx, "cpus", None)) else None
            if cpus:
                return int(cpus)
    except Exception:  # not in a task: a plain process
        pass
    return 1


def get_model(bundle_dir: str, precision: str = "float32"):
    """(bundle info, Keras model, the precision it computes) for ``bundle_dir`` in ``precision``
    ([score] precision, :mod:`genreclf.ml.inference`), loaded at most once in this process."""
    key = (os.path.realpath(bundle_dir), precision)
    if key not in _MODELS:
        from genreclf.ml.inference import load

        _MODELS[key] = load(bundle_dir, precision, tf_threads())
        stats_dir = os.environ.get("GENRECLF_MODEL_LOAD_LOG")
        if stats_dir:  # observability for tests and debugging: one line per load
            import sys

            import numpy
            import tensorflow

            with open(os.path.join(stats_dir, f"loads-{os.getpid()}.txt"), "a") as f:
                # bundle, the precision computed, the GPUs the task was given (genreclf.ml.inference), the
                # worker's interpreter and where its numpy and tensorflow come from (a packed environment's?)
                f.write("\t".join([key[0], _MODELS[key][2], os.environ.get("CUDA_VISIBLE_DEVICES", ""), sys.executable,
                                   numpy.__file__, tensorflow.__file__]) + "\n")
    return _MODELS[key]
