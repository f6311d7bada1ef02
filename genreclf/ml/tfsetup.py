"""TensorFlow process set-up, done once before TensorFlow is imported.

oneDNN is chosen here, never left to TensorFlow's default: TensorFlow turns it on by itself on CPUs
with AVX-512 VNNI / BF16 or AMX and off on AVX2-only CPUs, so the same job would run other kernels
(and give other last digits) on another host. genreclf uses it only where it pays: bfloat16
inference on a CPU with native bfloat16 (its AMX / AVX-512 BF16 kernels), and the pretrained backbones'
float32 inference (:data:`ONEDNN_FLOAT32_NETWORKS`; a head on them is fitted outside TensorFlow). Elsewhere
it is off:
oneDNN's Conv2DBackpropInput is pathological for the reference's (4 x 513) kernel on a 1-channel
input (measured 9.3 s vs 0.19 s per 32-window batch, 2-core CPU), and float32 inference measured
300 vs 100 ms per track (2-core AMD EPYC, AVX2). ``TF_ENABLE_ONEDNN_OPTS`` set by the user wins;
GPUs use cuDNN either way.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


#: Set to 1 (``--verbose``) to let TensorFlow's native start-up lines through to the console.
VERBOSE_ENV = "GENRECLF_VERBOSE"


def _import_tensorflow():
    """``import tensorflow``, its native start-up lines (absl's "All log messages before
    absl::InitializeLog()", oneDNN's "custom operations are on", printed by every worker whatever
    TF_CPP_MIN_LOG_LEVEL says) logged at DEBUG instead of the console, unless ``--verbose``."""
    if os.environ.get(VERBOSE_ENV) == "1" or "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        for line in captured.read().decode(errors="replace").splitlines():
            log.debug("tensorflow: %s", line)
    return tf


#: Networks whose float32 inference runs faster on a CPU with oneDNN's kernels than with TensorFlow's
#: own: the pretrained backbones' wide convolutions (musicnn in float32 on the 2-core AMD EPYC Zen 4,
#: one thread: 520 ms per 30 s track with oneDNN off, ~210 ms on). Not the reference CNN: its one-channel
#: 4 x 513 kernel ran 300 ms per track with oneDNN and 100 ms without (2-core AMD EPYC, AVX2).
ONEDNN_FLOAT32_NETWORKS = ("musicnn",)


def onednn_enabled(value: str | None = None) -> bool:
    """Whether oneDNN is on for a TF_ENABLE_ONEDNN_OPTS ``value`` (default: this process's, as
    :func:`configure_tensorflow` set it up)."""
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0") if value is None else value
    return value.strip().lower() in ("1", "true", "on", "yes")


def configure_tensorflow(*, training: bool, threads: int | None = None, precision: str = "float32",
                         onednn: bool = False, cpu_devices: int = 1):
    """Import and configure TensorFlow: oneDNN (``onednn``, unless the environment says), thread
    pools, GPU memory growth, the Keras dtype policy (``precision``: float32, mixed_float16 or
    mixed_bfloat16). ``training`` is for the log line. On a machine without GPUs, ``cpu_devices`` > 1
    splits the CPU into that many logical devices (replicas of a distributed step: it runs the
    multi-device path for real, no faster). Returns ``tf``."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1" if onednn else "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = _import_tensorflow()

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
    if cpu_devices > 1 and not gpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
        except RuntimeError:  # initialised already in this process: as many as it has
            pass
    import keras

    keras.mixed_precision.set_global_policy(precision)
    log.info("TensorFlow %s for %s on %s, precision %s, oneDNN %s", tf.__version__,
             "training" if training else "inference", ", ".join(g.name for g in gpus) if gpus else "CPU", precision,
             "on" if onednn_enabled() else "off")
    return tf
