"""How a worker runs the model for scoring: which device and precision, and TensorFlow set up for it.

``[score] precision``: "float32" (the reference's numbers), "bfloat16" (16-bit compute, float32
weights and softmax), "float16" (GPUs only), or "auto": bfloat16 where the hardware computes it
natively (a GPU of compute capability 8.0 or more, or a CPU with AMX / AVX-512 BF16), float16 on
older GPUs, float32 elsewhere. The bundle's weights stay
float32; the cast happens when a worker loads the model.

oneDNN is used for inference only where bfloat16 runs on the CPU (its AMX / AVX-512 BF16
kernels). For float32 it is off unless ``TF_ENABLE_ONEDNN_OPTS`` says otherwise: measured here
(2-core AMD EPYC, AVX2, TF 2.21, one thread) the reference CNN costs 300 ms per 19-window track with
oneDNN and 100 ms with TensorFlow's own kernels. Native bfloat16 on a CPU therefore means the CPU
flags *and* oneDNN on in the worker; without oneDNN, auto computes float32.

``GENRECLF_CPU_FLAGS`` replaces the CPU flags read from ``/proc/cpuinfo`` (words separated by
spaces or commas; empty or ``none``: no flags), so that each path can be forced on any host:
``GENRECLF_CPU_FLAGS=avx512_bf16`` (native bfloat16) or ``GENRECLF_CPU_FLAGS=none`` (no bfloat16).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: The precisions a score may be computed in ([score] precision).
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
#: Keras dtype policies of each computed precision.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
#: CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


#: Environment variable that replaces the detected CPU flags (tests; forcing a path).
CPU_FLAGS_ENV = "GENRECLF_CPU_FLAGS"


def cpu_flags() -> set:
    """This CPU's feature flags (``GENRECLF_CPU_FLAGS`` if set; empty where /proc/cpuinfo is not there)."""
    forced = os.environ.get(CPU_FLAGS_ENV)
    if forced is not None:
        return set(forced.replace(",", " ").split()) - {"none"}
    try:
        with open("/proc/cpuinfo") as f:  # not user data: the host's CPU description
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def task_gpus() -> list:
    """GPU addresses Spark gave the running task (``spark.task.resource.gpu.amount``); [] outside one."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None:
            gpu = ctx.resources().get("gpu")
            if gpu is not None:
                return list(gpu.addresses)
    except Exception:  # not in a Spark task
        pass
    return []


def prepare_process(precision: str) -> bool:
    """Before TensorFlow is imported in this process: pin it to the task's GPUs; whether oneDNN
    should run (bfloat16 on the CPU)."""
    gpus = task_gpus()
    if gpus and "CUDA_VISIBLE_DEVICES" not in os.environ:
        # A Python worker serves tasks of one executor, which owns these GPUs for its lifetime.
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    wants_bf16 = precision == "bfloat16" or (precision == "auto" and cpu_has_bf16())
    return wants_bf16 and not gpus


def resolve(precision: str, has_gpu: bool, gpu_capability: tuple | None = None,
            cpu_bf16: bool | None = None) -> str:
    """The precision actually computed for a requested one on this worker. On a GPU, auto is
    bfloat16 from compute capability 8.0 (A100, H100, L4...), float16 before (T4, V100: no bf16 units);
    on a CPU bfloat16 where ``cpu_bf16`` (native kernels; default: the CPU flags), else float32."""
    if precision == "auto":
        if has_gpu:
            return "float16" if gpu_capability and tuple(gpu_capability) < (8, 0) else "bfloat16"
        return "bfloat16" if (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16) else "float32"
    if precision == "float16" and not has_gpu:
        # The driver refuses float16 without GPU executors; an executor without one falls back.
        log.warning("[score] precision = 'float16' needs a GPU; this worker has none: computing float32")
        return "float32"
    return precision


def cast_model(model, precision: str):
    """``model`` computing in ``precision`` with the same (float32) weights; the softmax and the
    input layer keep their dtypes. float32 returns the model itself."""
    if precision == "float32":
        return model
    import keras

    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer" and layer["config"].get("name") not in model.output_names:
            layer["config"]["dtype"] = POLICIES[precision]
    cast = keras.Model.from_config(config)
    cast.set_weights(model.get_weights())
    return cast


def load(bundle_dir: str, precision: str, threads: int):
    """(bundle info, model ready to predict, the precision it computes) for one worker process."""
    onednn = prepare_process(precision)
    from genreclf.bundle import load_bundle_info, load_model
    from genreclf.tfsetup import configure_tensorflow, onednn_enabled

    tf = configure_tensorflow(training=False, threads=threads, onednn=onednn)
    gpus = tf.config.list_physical_devices("GPU")
    capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
    if task_gpus() and not gpus:
        log.warning("Spark gave this task GPU %s but TensorFlow sees none: computing on the CPU",
                    ",".join(task_gpus()))
    computed = resolve(precision, bool(gpus), capability, cpu_bf16=cpu_has_bf16() and onednn_enabled())
    model = cast_model(load_model(bundle_dir), computed)
    log.info("score model %s: %s, oneDNN %s", bundle_dir, computed, os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
    return load_bundle_info(bundle_dir), model, computed
