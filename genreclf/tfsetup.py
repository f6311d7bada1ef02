"""TensorFlow process set-up, done once before TensorFlow is imported.

oneDNN's Conv2DBackpropInput is pathological for the reference's (4 x 513) kernel on a 1-channel
input: measured 9.3 s vs 0.19 s per 32-window batch with oneDNN off (2-core CPU). Training therefore
turns oneDNN off unless ``TF_ENABLE_ONEDNN_OPTS`` is set; GPUs use cuDNN either way.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def configure_tensorflow(*, training: bool, threads: int | None = None, precision: str = "float32"):
    """Import and configure TensorFlow: oneDNN choice, thread pools, GPU memory growth, the Keras
    dtype policy (``precision``: float32, mixed_float16 or mixed_bfloat16). Returns ``tf``."""
    if training:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        except RuntimeError:  # already initialised in this process: keep its pools
            pass
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    import keras

    keras.mixed_precision.set_global_policy(precision)
    log.info("TensorFlow %s on %s, precision %s", tf.__version__, ", ".join(g.name for g in gpus) if gpus else "CPU",
             precision)
    return tf
