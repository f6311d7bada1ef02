"""The networks on an accelerator, in one command: the reference CNN's training step and both networks'
inference (the reference CNN, musicnn) per precision, on whatever device Keras's backend finds.

    KERAS_BACKEND=jax python -m benchmarks.gpu      # a GPU node with only numpy, keras and JAX
    python -m benchmarks.gpu --seconds 2            # genreclf's environment (TensorFlow), on its CPU

Needs numpy and Keras 3 with a backend, nothing else of genreclf's stack (no TensorFlow, Spark, audio
decoders): many shared GPU nodes have CUDA, PyTorch and JAX and no TensorFlow (../shared/REFERENCE.md).
The networks are genreclf's own code (genreclf.ml.network, genreclf.ml.musicnn) with random weights,
which cost what trained ones cost. Prints windows/s and tracks/s (a 30 s track is 19 reference windows,
10 musicnn patches); ``--json FILE`` keeps them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import numpy as np

#: Windows of one 30 s track: the reference's 3 s every 1.5 s; musicnn's 3 s patches end to end.
REFERENCE_WINDOWS, MUSICNN_PATCHES = 19, 10
#: The reference's training batch.
TRAIN_BATCH = 128


def device() -> tuple:
    """(backend, a description of the device it computes on, whether that is an accelerator)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        return backend, f"{d.platform}: {getattr(d, 'device_kind', d)} (x{jax.device_count()})", d.platform != "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
            return backend, f"gpu: {name} (x{len(gpus)})", True
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return backend, f"gpu: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})", True
    from benchmarks.host import cpu_name

    return backend, f"cpu: {cpu_name()}, {os.cpu_count()} cores", False


def _rate(step, batch: int, seconds: float) -> float:
    """Windows per second of ``step()`` (one batch), after two warm-up calls (compilation), timed for
    at least ``seconds`` and two calls."""
    step()
    step()
    calls, started = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - started < seconds:
        step()
        calls += 1
    return calls * batch / (time.perf_counter() - started)


@contextlib.contextmanager
def _policy(precision: str):
    """Networks built inside compute in ``precision`` (its Keras dtype policy); float32 again after."""
    import keras

    from genreclf.config import POLICIES

    keras.mixed_precision.set_global_policy(POLICIES[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def measure(*, seconds: float, batch: int, train_batch: int, precisions: tuple) -> list:
    """One row per (what, precision): windows/s and tracks/s."""
    from genreclf.config import Recipe
    from genreclf.ml.musicnn import build_musicnn
    from genreclf.ml.network import build_model, compile_model

    r = Recipe()
    rng = np.random.default_rng(0)
    rows = []
    for precision in precisions:
        with _policy(precision):
            reference, musicnn = build_model((r.frames, r.bands, 1), 16, r.dtype, training=False), build_musicnn()
            model = compile_model(build_model((r.frames, r.bands, 1), 16, r.dtype))  # to train
        x = rng.random((batch, *reference.input_shape[1:]), np.float32).astype(reference.inputs[0].dtype)
        rate = _rate(lambda: reference.predict_on_batch(x), batch, seconds)
        rows.append(("reference CNN inference", precision, rate, rate / REFERENCE_WINDOWS))
        x = rng.random((batch, *musicnn.input_shape[1:]), np.float32)
        rate = _rate(lambda: musicnn.predict_on_batch(x), batch, seconds)
        rows.append(("musicnn inference", precision, rate, rate / MUSICNN_PATCHES))

        x = rng.random((train_batch, *reference.input_shape[1:]), np.float32).astype(reference.inputs[0].dtype)
        y = np.eye(16, dtype=np.float32)[rng.integers(0, 16, train_batch)]
        rate = _rate(lambda: model.train_on_batch(x, y), train_batch, seconds)
        rows.append(("reference CNN training step", precision, rate, rate / REFERENCE_WINDOWS))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="time each measurement at least this long")
    p.add_argument("--batch", type=int, default=0, help="windows per inference call (default 512 on an accelerator, "
                                                        "64 on a CPU: score's default)")
    p.add_argument("--train-batch", type=int, default=TRAIN_BATCH, help="windows per training step")
    p.add_argument("--precision", nargs="+", choices=("float32", "bfloat16", "float16"),
                   help="default: float32 and bfloat16, and float16 on an accelerator")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = p.parse_args(argv)
    backend, where, accelerated = device()
    batch = args.batch or (512 if accelerated else 64)
    precisions = tuple(args.precision or (("float32", "bfloat16", "float16") if accelerated else ("float32", "bfloat16")))
    onednn = f", TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset (TF decides)')}" \
        if backend == "tensorflow" and not accelerated else ""
    print(f"benchmarks.gpu: Keras {backend} backend on {where}{onednn}; inference {batch} windows a call, "
          f"training {args.train_batch} a step; random weights")
    rows = measure(seconds=args.seconds, batch=batch, train_batch=args.train_batch, precisions=precisions)
    print(f"{'':32}{'precision':>10}{'windows/s':>12}{'tracks/s':>10}")
    for what, precision, rate, tracks in rows:
        print(f"{what:32}{precision:>10}{rate:12.1f}{tracks:10.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": backend, "device": where, "batch": batch, "train_batch": args.train_batch,
                       "rows": [dict(zip(("what", "precision", "windows_per_s", "tracks_per_s"), r)) for r in rows]},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
