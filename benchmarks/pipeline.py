"""Training input benchmarks: windows/s from the page-cache ceilings to what model.fit receives.

    python -m benchmarks.pipeline [--out bench-output]     # this part alone (~3 min); make bench runs it too

Measured on one windows dataset of featurize's layout (float16 .npy rows in 32 MB row groups,
~10 k windows, 1.3 GB, read from the page cache), each figure best and median of 3 runs, for 1
and 2 workers:
(a) ceilings: pyarrow reading every row group's stft column (the "Parquet read"), and copying every
window once from the memory-mapped files into batch buffers (memory bandwidth: no pipeline that
hands the model contiguous batches can beat it); (b) petastorm's ``make_batch_reader`` with its
.npy decoding; (c) the whole pipeline (``genreclf.ml.tfdata.tf_dataset``: shuffled aligned batches -> tf.data
-> x, one-hot y), also through petastorm's reader, and the pipeline before this design
(petastorm -> from_generator -> unbatch -> shuffle -> batch -> cast); scaling with cores: the
whole pipeline with N workers in a process pinned to N cores. (d) One training step of the model
on this CPU (batch 32) in float32 and bfloat16, in a fresh process each (oneDNN is chosen at import).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

from genreclf.config import Recipe

log = logging.getLogger("genreclf.bench")
R = Recipe()
LABELS = ["ambient", "jazz", "rock"]
RUNS = 3


def make_windows(out: str, n_tracks: int = 500) -> str:
    """~19.5 windows per track, 8 files of 255-row (32 MB) row groups, as featurize writes them."""
    from genreclf.audio.synth import write_windows

    url = "file://" + os.path.join(os.path.abspath(out), "pipeline-windows", "windows")
    marker = url[len("file://"):] + f".{n_tracks}.done"
    if not os.path.exists(marker):
        import shutil

        shutil.rmtree(url[len("file://"):], ignore_errors=True)
        write_windows(url, n_tracks=n_tracks, windows_per_track=(19, 21), files=8, rows_per_group=255,
                      labels=tuple(LABELS))
        open(marker, "w").close()
    return url


def best_and_median(fn, runs: int = RUNS) -> tuple:
    rates = [fn() for _ in range(runs)]
    return max(rates), statistics.median(rates)


def _threads(ws, workers: int, work) -> float:
    """Windows/s of ``work(piece)`` (returning a window count) over every piece, in ``workers`` threads."""
    chunks = [ws.pieces[w::workers] for w in range(workers)]
    counts = [0] * workers

    def read(w):
        for piece in chunks[w]:
            counts[w] += work(piece)

    started = time.perf_counter()
    threads = [threading.Thread(target=read, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def parquet_read(ws, plain, workers: int) -> float:
    """Ceiling (a): every row group's stft column read by pyarrow (``plain`` never maps files)."""
    return _threads(plain, workers, lambda piece: len(plain.read(piece)[1]))


def copy_once(ws, workers: int) -> float:
    """Ceiling (a'): every window copied once from the mapped files into a batch-sized buffer."""
    from genreclf.ml.buffers import aligned_empty, gather_rows

    buffers = {}

    def copy(piece):
        buffer, starts = ws.read(piece)
        out = buffers.setdefault(threading.get_ident(), aligned_empty((len(starts), *R.shape), R.dtype))
        if len(out) < len(starts):
            out = buffers[threading.get_ident()] = aligned_empty((len(starts), *R.shape), R.dtype)
        gather_rows(buffer, starts, out, np.arange(len(starts)))
        return len(starts)

    return _threads(ws, workers, copy)


def petastorm_windows(url: str, workers: int):
    """Row groups of windows through petastorm's make_batch_reader, the .npy column decoded."""
    import warnings

    from petastorm import make_batch_reader

    from genreclf.formats.payload import decode_npy_column

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = make_batch_reader(url, schema_fields=["label", "stft"], num_epochs=1, shuffle_row_groups=True,
                                   reader_pool_type="thread" if workers > 1 else "dummy", workers_count=workers)
    with reader:
        for b in reader:
            yield decode_npy_column(b.stft, R)


def petastorm_reader(url: str, workers: int) -> float:
    """petastorm's make_batch_reader with the .npy column decoded, nothing else."""
    started = time.perf_counter()
    n = sum(len(x) for x in petastorm_windows(url, workers))
    return n / (time.perf_counter() - started)


def whole_pipeline(ds, n_windows: int) -> float:
    """One epoch of a tf.data pipeline, as model.fit takes it."""
    started, n = time.perf_counter(), 0
    for x, _ in ds:
        n += int(x.shape[0])
    assert n == n_windows, (n, n_windows)
    return n / (time.perf_counter() - started)


def previous_pipeline(url: str, ws, workers: int):
    """The pipeline this design replaced: petastorm rows -> from_generator -> unbatch -> shuffle -> batch -> cast."""
    import tensorflow as tf

    def gen():
        for x in petastorm_windows(url, workers):
            yield x, np.zeros(len(x), np.int32)

    def to_model(x, y):
        return tf.cast(x, tf.float32)[..., None], tf.one_hot(y, len(LABELS))

    spec = (tf.TensorSpec((None, *R.shape), tf.float16), tf.TensorSpec((None,), tf.int32))
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec).unbatch().shuffle(1024).batch(128)
    return ds.map(to_model, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


_PINNED = """
import os, sys, time
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:int(sys.argv[2])]))
from benchmarks.pipeline import LABELS, R, whole_pipeline
from genreclf.ml.pipeline import WindowSet
from genreclf.ml.tfdata import tf_dataset
from genreclf.ml.tfsetup import configure_tensorflow
configure_tensorflow(training=True)
ws = WindowSet(sys.argv[1], R, labels=LABELS)
ds = tf_dataset(ws, batch_size=128, shuffle=True, workers=int(sys.argv[2]))
whole_pipeline(ds, ws.n_windows)
print(" ".join(str(whole_pipeline(ds, ws.n_windows)) for _ in range(3)))
"""


def pinned_pipeline(url: str, cores: int) -> list:
    """Whole-pipeline windows/s (3 runs) with ``cores`` workers in a process pinned to ``cores`` cores."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run([sys.executable, "-c", _PINNED, url, str(cores)], capture_output=True, text=True, env=env,
                         timeout=900, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [float(v) for v in res.stdout.split()]


_STEP = """
import os, sys, time, numpy as np
import keras
keras.mixed_precision.set_global_policy(sys.argv[1])
from genreclf.ml.network import build_model, compile_model
keras.utils.set_random_seed(0)
m = compile_model(build_model((128, 513, 1), 16, "float16"))
rng = np.random.default_rng(0)
x = (rng.random((32, 128, 513, 1)) * 3).astype(np.float16)
y = np.eye(16, dtype=np.float32)[rng.integers(0, 16, 32)]
m.train_on_batch(x, y); m.train_on_batch(x, y)
best = 0
for _ in range(3):
    t = time.perf_counter(); m.train_on_batch(x, y); best = max(best, 32 / (time.perf_counter() - t))
print(best)
"""


def train_step(precision: str, onednn: bool) -> float:
    """Windows/s of one training step (batch 32, best of 3 after 2 warm-ups) in a fresh process."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1" if onednn else "0", TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run([sys.executable, "-c", _STEP, precision], capture_output=True, text=True, env=env,
                         timeout=900, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def run(out: str) -> dict:
    """Every training-input figure of ``make bench``, as a flat dict for results.json."""
    from genreclf.ml.pipeline import WindowSet
    from genreclf.ml.tfdata import tf_dataset
    from genreclf.ml.tfsetup import configure_tensorflow

    url = make_windows(out)
    ws = WindowSet(url, R, labels=LABELS)
    plain = WindowSet(url, R, labels=LABELS, mmap=False)
    res = {"pipeline_windows": ws.n_windows, "pipeline_gb": round(ws.n_windows * 131.5e3 / 1e9, 2),
           "pipeline_mapped_pieces": ws.n_mapped, "pipeline_pieces": len(ws.pieces)}
    copy_once(ws, 2)  # warm the page cache and numba
    configure_tensorflow(training=True)
    for w in (1, 2):
        res[f"parquet_read_w{w}_best"], res[f"parquet_read_w{w}_median"] = best_and_median(
            lambda: parquet_read(ws, plain, w))
        res[f"copy_once_w{w}_best"], res[f"copy_once_w{w}_median"] = best_and_median(lambda: copy_once(ws, w))
        res[f"petastorm_reader_w{w}_best"], res[f"petastorm_reader_w{w}_median"] = best_and_median(
            lambda: petastorm_reader(url, w))
        for reader in ("arrow", "petastorm"):
            ds = tf_dataset(ws, batch_size=128, shuffle=True, workers=w, reader=reader)
            whole_pipeline(ds, ws.n_windows)  # warm-up: tf.data tracing, numba compilation
            res[f"pipeline_{reader}_w{w}_best"], res[f"pipeline_{reader}_w{w}_median"] = best_and_median(
                lambda: whole_pipeline(ds, ws.n_windows))
        log.info("training input, %d worker(s): parquet read %.0f, copy-once %.0f, petastorm %.0f, pipeline %.0f "
                 "windows/s", w, res[f"parquet_read_w{w}_best"], res[f"copy_once_w{w}_best"],
                 res[f"petastorm_reader_w{w}_best"], res[f"pipeline_arrow_w{w}_best"])
    prev = previous_pipeline(url, ws, 2)
    res["previous_pipeline_w2_best"], res["previous_pipeline_w2_median"] = best_and_median(
        lambda: whole_pipeline(prev, ws.n_windows))
    for cores in (1, 2):
        runs = pinned_pipeline(url, cores)
        res[f"pinned_pipeline_c{cores}_best"], res[f"pinned_pipeline_c{cores}_median"] = max(runs), statistics.median(runs)
    res["input_pipeline_windows_per_s"] = res["pipeline_arrow_w2_best"]
    res["parquet_read_windows_per_s"] = max(res["parquet_read_w1_best"], res["parquet_read_w2_best"])
    res["copy_ceiling_windows_per_s"] = max(res["copy_once_w1_best"], res["copy_once_w2_best"])
    for prefix in ("pipeline_arrow", "copy_once", "pinned_pipeline"):
        one, two = ("c1", "c2") if prefix == "pinned_pipeline" else ("w1", "w2")
        res[f"{prefix}_2_over_1"] = res[f"{prefix}_{two}_best"] / res[f"{prefix}_{one}_best"]
        res[f"{prefix}_2_over_1_median"] = res[f"{prefix}_{two}_median"] / res[f"{prefix}_{one}_median"]
    res["windows_per_s_per_core"] = res["pinned_pipeline_c2_best"] / 2
    for precision, onednn, key in (("float32", False, "train_step_float32"),
                                   ("mixed_bfloat16", False, "train_step_bfloat16"),
                                   ("mixed_bfloat16", True, "train_step_bfloat16_onednn")):
        res[key] = train_step(precision, onednn)
        log.info("training step %s (oneDNN %s): %.1f windows/s", precision, "on" if onednn else "off", res[key])
    res["cpu_flags_bf16"] = _cpu_bf16()
    return res


def _cpu_bf16() -> str:
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return "unknown"
    have = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return ", ".join(have) or "none (no AVX-512 BF16, no AMX)"


def rows(res: dict) -> list:
    """Report rows (name, value, ratio, target) for benchmarks.run's table."""
    ceiling = res["copy_ceiling_windows_per_s"]

    def rate(key):
        return f"{res[key + '_best']:.0f} / {res[key + '_median']:.0f}"

    out = [(f"training input ({res['pipeline_windows']} windows, {res['pipeline_gb']} GB; windows/s best / median "
            f"of {RUNS})", "", "", "")]
    for w in (1, 2):
        out += [
            (f"  parquet read by pyarrow (page cache), {w} thread(s)", rate(f"parquet_read_w{w}"), "", ""),
            (f"  copy once from mapped files (ceiling), {w} thread(s)", rate(f"copy_once_w{w}"), "", ""),
            (f"  petastorm make_batch_reader + decode, {w} worker(s)", rate(f"petastorm_reader_w{w}"),
             f"ceiling x {res[f'petastorm_reader_w{w}_best'] / ceiling:.2f}", ""),
            (f"  whole pipeline, petastorm reader, {w} worker(s)", rate(f"pipeline_petastorm_w{w}"), "", ""),
            (f"  whole pipeline (tf_dataset), {w} worker(s)", rate(f"pipeline_arrow_w{w}"),
             f"ceiling x {res[f'pipeline_arrow_w{w}_best'] / ceiling:.2f}",
             ">= 10000" if w == 2 else ""),
        ]
    out += [
        ("  previous pipeline (from_generator+unbatch), 2 workers", rate("previous_pipeline_w2"),
         f"now x {res['pipeline_arrow_w2_best'] / res['previous_pipeline_w2_best']:.1f}", ">= 4 x"),
        ("  2 workers over 1, same process (best; median)",
         f"{res['pipeline_arrow_2_over_1']:.2f}; {res['pipeline_arrow_2_over_1_median']:.2f}",
         f"ceiling's own: {res['copy_once_2_over_1']:.2f}; {res['copy_once_2_over_1_median']:.2f}", ">= 1.6"),
        ("  N workers pinned to N cores: 1 / 2", f"{rate('pinned_pipeline_c1')}; {rate('pinned_pipeline_c2')}",
         f"2 over 1: {res['pinned_pipeline_2_over_1']:.2f}; {res['pinned_pipeline_2_over_1_median']:.2f}", ""),
        ("training step, CPU, float32 (batch 32)", f"{res['train_step_float32']:.1f} windows/s",
         f"input / step x {res['input_pipeline_windows_per_s'] / res['train_step_float32']:.0f}", ""),
        ("training step, CPU, mixed_bfloat16", f"{res['train_step_bfloat16']:.1f} windows/s",
         f"oneDNN on: {res['train_step_bfloat16_onednn']:.1f}; CPU bf16: {res['cpu_flags_bf16']}", ""),
        ("  [train] precision = auto here", _auto_training_precision(),
         f"float32 over bf16: x {res['train_step_float32'] / res['train_step_bfloat16']:.1f}", "the faster one"),
    ]
    return out


def _auto_training_precision() -> str:
    """What ``[train] precision = "auto"`` trains in on this machine's CPU (genreclf.ml.inference.resolve)."""
    from genreclf.config import POLICIES
    from genreclf.ml.inference import resolve

    return POLICIES[resolve("auto", has_gpu=False, training=True)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-output")
    args = p.parse_args(argv)
    from genreclf.io.spark import setup_logging

    setup_logging()
    os.makedirs(args.out, exist_ok=True)
    res = run(args.out)
    table = rows(res)
    width = max(len(r[0]) for r in table)
    for name, value, ratio, target in table:
        print(f"  {name:<{width}}  {value:>22}  {ratio:<44} {target}")
    path = os.path.join(args.out, "pipeline-results.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=2, sort_keys=True)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
