"""How a worker runs the model for scoring: which device and precision, TensorFlow set up for it, and
windows of several tracks per model call (:class:`TrackBatcher`), decoded ahead (:func:`prefetch`).

A track's probability vector is the mean of its windows' softmax outputs (19 for a 30 s track), as
the reference scored, calibrated with the bundle's temperature (genreclf.ml.calibration) unless
disabled; optionally only a centred excerpt of ``max_windows`` windows is used.

``[score] precision``: "float32" (the reference's numbers), "bfloat16" (16-bit compute, float32
weights and softmax), "float16" (GPUs only), or "auto": on a GPU bfloat16 from compute capability
8.0, float16 before; on a CPU the fastest of float32 (oneDNN off or on) and native bfloat16, timed
once per machine and network (genreclf.ml.autoprecision; with GENRECLF_AUTO_PRECISION=flags,
bfloat16 where the CPU has AMX / AVX-512 BF16, float32 elsewhere). The bundle's weights stay
float32; the cast happens when a worker loads the model.

oneDNN is used for inference where bfloat16 runs on the CPU (its AMX / AVX-512 BF16 kernels) and
for the pretrained backbones (genreclf.ml.tfsetup.ONEDNN_FLOAT32_NETWORKS: musicnn's float32 runs 2.5x
faster with it). For the reference's float32 it is off unless ``TF_ENABLE_ONEDNN_OPTS`` says otherwise: measured here
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
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from genreclf.config import POLICIES
from genreclf.ml.calibration import track_probabilities

log = logging.getLogger(__name__)

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


def cpu_key() -> str:
    """The CPU's model name and the flags inference speed depends on: what a timing is kept under."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return "; ".join([name, *sorted(cpu_flags() & {"avx2", "avx512f", "amx_tile", *BF16_CPU_FLAGS})])


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


def prepare_process(precision: str, network: str = "reference") -> bool:
    """Before TensorFlow is imported in this process: pin it to the task's GPUs; whether oneDNN
    should run (bfloat16 on the CPU, or a network whose float32 it speeds up: genreclf.ml.tfsetup)."""
    from genreclf.ml.tfsetup import ONEDNN_FLOAT32_NETWORKS

    gpus = task_gpus()
    if gpus and "CUDA_VISIBLE_DEVICES" not in os.environ:
        # A Python worker serves tasks of one executor, which owns these GPUs for its lifetime.
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    wants_bf16 = precision == "bfloat16" or (precision == "auto" and cpu_has_bf16())
    return (wants_bf16 or network in ONEDNN_FLOAT32_NETWORKS) and not gpus


def resolve(precision: str, has_gpu: bool, gpu_capability: tuple | None = None,
            cpu_bf16: bool | None = None, *, training: bool = False) -> str:
    """The precision actually computed for a requested one on this worker (scoring) or trainer
    (``training``). On a GPU, auto is bfloat16 from compute capability 8.0 (A100, H100, L4...),
    float16 before (T4, V100: no bf16 units). On a CPU, scoring's auto is bfloat16 where ``cpu_bf16``
    (native kernels; default: the CPU flags), else float32; training's is float32 on every CPU:
    a bf16 training step measured far slower even with AMX (2-core Xeon: float32 79.8 windows/s,
    mixed_bfloat16 3.9 with oneDNN off, 0.9 on), while bf16 scoring paid (38.8 vs 90.3 ms a track)."""
    if precision == "auto":
        if has_gpu:
            return "float16" if gpu_capability and tuple(gpu_capability) < (8, 0) else "bfloat16"
        if training:
            return "float32"
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
    _cast_layers(config["layers"], POLICIES[precision], set(model.output_names))
    cast = keras.Model.from_config(config)
    cast.set_weights(model.get_weights())
    return cast


def _cast_layers(layers: list, policy: str, keep: set) -> None:
    """Set ``policy`` on every layer config of ``layers`` but inputs and ``keep`` (the outputs), inside
    nested models too (a head's backbones: genreclf.ml.backbones)."""
    for layer in layers:
        if layer["class_name"] in ("Functional", "Model") and "layers" in layer["config"]:
            _cast_layers(layer["config"]["layers"], policy, set())
        elif layer["class_name"] != "InputLayer" and layer["config"].get("name") not in keep:
            layer["config"]["dtype"] = policy


def load(bundle_dir: str, precision: str, threads: int):
    """(bundle info, model ready to predict, the precision it computes) for one worker process."""
    from genreclf.formats.bundle import MODEL_FILE, Bundle
    from genreclf.ml import autoprecision
    from genreclf.ml.tfsetup import configure_tensorflow, onednn_enabled

    bundle = Bundle.open(bundle_dir)
    assigned, onednn = task_gpus(), prepare_process(precision, bundle.network)
    choice = None
    if precision == "auto" and not assigned and autoprecision.measuring():  # on a CPU: timed with this network
        choice = autoprecision.choose(bundle.local(), os.path.join(bundle.local(), MODEL_FILE), threads,
                                      cpu_bf16=cpu_has_bf16(), cpu=cpu_key())
        onednn = choice.onednn if choice is not None else onednn

    tf = configure_tensorflow(training=False, threads=threads, onednn=onednn)
    gpus = tf.config.list_physical_devices("GPU")
    capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
    if assigned and not gpus:
        log.warning("Spark gave this task GPU %s but TensorFlow sees none: computing on the CPU", ",".join(assigned))
    if choice is not None and not gpus:
        if choice.onednn != onednn_enabled():  # this worker's TensorFlow was imported with the other setting
            computed, _ = autoprecision.pick_with(choice.timings, onednn_enabled())
        else:
            computed = choice.precision
        log.info("precision auto on this CPU: %s -> %s", choice.describe(), computed)
    else:
        computed = resolve(precision, bool(gpus), capability, cpu_bf16=cpu_has_bf16() and onednn_enabled())
    model = cast_model(bundle.model(), computed)
    log.info("score model %s: %s, oneDNN %s", bundle_dir, computed, os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
    return bundle.info, model, computed


def excerpt(n_windows: int, max_windows: int | None) -> slice:
    """The windows to average: all, or the centred ``max_windows`` of a longer track."""
    if not max_windows or n_windows <= max_windows:
        return slice(0, n_windows)
    start = (n_windows - max_windows) // 2
    return slice(start, start + max_windows)


def predict(model, windows: np.ndarray, batch_size: int) -> np.ndarray:
    """Softmax outputs (n, classes) float32 for windows (n, frames, bins), in bounded batches."""
    out = []
    for start in range(0, len(windows), batch_size):
        chunk = np.asarray(windows[start:start + batch_size], np.float32)[..., None]
        out.append(np.asarray(model.predict_on_batch(chunk), np.float32))
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


class TrackBatcher:
    """Predicts the windows of consecutive tracks together, ``batch_size`` windows a model call
    whatever the tracks' lengths, and hands back each track's window predictions once all are done.

    Holds fewer than ``batch_size`` unpredicted windows between calls (plus the track just added),
    so a task's memory stays bounded however many tracks it scores.
    """

    def __init__(self, model, batch_size: int):
        self.model, self.batch_size = model, batch_size
        self._queue: deque = deque()  # [key, windows, predictions so far, next window]
        self._waiting = 0  # windows added but not predicted

    def add(self, key, windows: np.ndarray) -> list:
        """Queue a track's windows; returns the (key, predictions) of every track now complete."""
        self._queue.append([key, windows, [], 0])
        self._waiting += len(windows)
        done = []
        while self._waiting >= self.batch_size:
            done += self._run(self.batch_size)
        return done + self._complete()

    def flush(self) -> list:
        """Predict what is left; returns the remaining tracks' (key, predictions)."""
        done = []
        while self._waiting:
            done += self._run(min(self._waiting, self.batch_size))
        return done + self._complete()

    def _run(self, size: int) -> list:
        parts, owners, room = [], [], size
        for item in self._queue:
            if not room:
                break
            take = min(room, len(item[1]) - item[3])
            if take:
                parts.append(item[1][item[3]:item[3] + take])
                owners.append((item, take))
                item[3] += take
                room -= take
        batch = np.concatenate(parts) if len(parts) > 1 else parts[0]
        probs = np.asarray(self.model.predict_on_batch(np.asarray(batch, np.float32)[..., None]), np.float32)
        at = 0
        for item, take in owners:
            item[2].append(probs[at:at + take])
            at += take
        self._waiting -= len(batch)
        return self._complete()

    def _complete(self) -> list:
        done = []
        while self._queue and self._queue[0][3] == len(self._queue[0][1]):
            key, windows, preds, _ = self._queue.popleft()
            classes = self.model.output_shape[-1]
            done.append((key, np.concatenate(preds) if preds else np.zeros((0, classes), np.float32)))
        return done


def prefetch(items, fn, threads: int):
    """``(item, fn(item))`` in order, with up to ``threads`` later items computed ahead in a thread
    pool (decoding overlaps the model: PyAV, soxr, the FFT and TensorFlow release the GIL); at most
    ``threads + 1`` results wait, which bounds memory. ``threads = 0``: computed inline."""
    if threads <= 0:
        for item in items:
            yield item, fn(item)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="genreclf-decode") as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > threads:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def mean_probabilities(probs: np.ndarray, *, temperature: float = 1.0, calibration: str = "none") -> np.ndarray:
    """The track's vector: the mean of its window probabilities (float64), calibrated as the bundle says."""
    codes = np.zeros(len(probs), np.int64)
    return track_probabilities(probs, codes, 1, temperature=temperature, mode=calibration)[0]
