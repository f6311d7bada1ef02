"""genreclf benchmarks: every stage against its floor and the reference recipe, ratios in one run.

    make bench            # or: python -m benchmarks.run [--tracks 24] [--out bench-output]
    python -m benchmarks.pipeline    # the training-input part alone

Absolute seconds on shared 2-core machines are noisy, so every figure is printed with a ratio to
a baseline measured in the same run. Results also go to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import pipeline
from genreclf.config import Recipe, ScoreSettings

log = logging.getLogger("genreclf.bench")
R = Recipe()
BATCH = ScoreSettings().batch_size  # windows per model call, as score makes them


# ---------------------------------------------------------------- corpus
def _encode_one(args):
    from genreclf.audio.synth import STYLES, encode, synthesize

    path, i, seconds = args
    style = STYLES[i % len(STYLES)]
    encode(path, synthesize(style, 1000 + i, seconds, 44100), 44100, "mp3", channels=2, bit_rate=192000)
    return path


def make_corpus(out: str, n: int) -> tuple:
    """n 30 s tracks (44.1 kHz stereo 192 kbps mp3) in out/tracks, one 10-minute file in out/long."""
    from multiprocessing import get_context

    tracks, long_dir = os.path.join(out, "tracks"), os.path.join(out, "long")
    os.makedirs(tracks, exist_ok=True)
    os.makedirs(long_dir, exist_ok=True)
    jobs = [(os.path.join(tracks, f"t{i:03d}.mp3"), i, 30.0) for i in range(n)]
    jobs = [j for j in jobs if not os.path.exists(j[0])]
    long_path = os.path.join(long_dir, "ten_minutes.mp3")
    if not os.path.exists(long_path):
        jobs.append((long_path, 7, 600.0))
    if jobs:
        started = time.time()
        with get_context("spawn").Pool(os.cpu_count() or 1) as pool:
            pool.map(_encode_one, jobs)
        log.info("bench corpus: %d files written in %.0f s", len(jobs), time.time() - started)
    return sorted(os.path.join(tracks, f) for f in os.listdir(tracks))[:n], long_path


def link_inputs(directory: str, paths) -> str:
    """``directory`` holding a symlink to each of ``paths``: an input directory of exactly those files
    (links of an earlier run with more tracks are removed: a job would score them too)."""
    os.makedirs(directory, exist_ok=True)
    wanted = {os.path.basename(p) for p in paths}
    for name in os.listdir(directory):
        if name not in wanted and os.path.islink(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
    for p in paths:
        link = os.path.join(directory, os.path.basename(p))
        if not os.path.exists(link):
            os.symlink(os.path.abspath(p), link)
    return directory


# ---------------------------------------------------------------- single-process baselines
def floor_loop(paths, recipe=R) -> float:
    """The unavoidable work, one core: decode -> resample -> window features (the recipe's front-end,
    stored dtype). Returns seconds."""
    from genreclf.audio.decode import AudioReader
    from genreclf.audio.extract import STFT_BATCH
    from genreclf.audio.stft import window_features
    from genreclf.audio.windows import iter_windows

    started = time.perf_counter()
    for p in paths:
        with AudioReader(p, recipe.sample_rate) as reader:
            batch = []
            for w in iter_windows(reader.chunks(), recipe):
                batch.append(w)
                if len(batch) == STFT_BATCH:
                    window_features(np.stack(batch), recipe)
                    batch = []
            if batch:
                window_features(np.stack(batch), recipe)
    return time.perf_counter() - started


def reference_loop(paths) -> float:
    """The reference implementation's recipe: librosa.load(kaiser_fast) + one librosa.stft per window."""
    import librosa
    import scipy.signal

    window = scipy.signal.get_window("hann", 1024, fftbins=False)
    started = time.perf_counter()
    for p in paths:
        y, _ = librosa.load(p, sr=22050, res_type="kaiser_fast")
        for k in range(19):
            seg = y[k * 33075:k * 33075 + 66150]
            if len(seg) < 66150:
                seg = np.pad(seg, (0, 66150 - len(seg)))
            np.abs(librosa.stft(seg, n_fft=1024, hop_length=512, window=window, pad_mode="reflect"))[:, :128]
    return time.perf_counter() - started


def model_loop(paths, bundle) -> float:
    """Single-process scoring with the same model: decode -> STFT -> predict -> mean per track."""
    from genreclf.audio.extract import featurize_file
    from genreclf.ml.inference import mean_probabilities, predict
    from genreclf.ml.model_cache import get_model

    _, model, _ = get_model(bundle)
    predict(model, featurize_file(paths[0], R).features, BATCH)  # warm-up: graph tracing
    started = time.perf_counter()
    for p in paths:
        mean_probabilities(predict(model, featurize_file(p, R).features, BATCH))
    return time.perf_counter() - started


def make_bundle(out: str, labels) -> str:
    """An untrained (seeded) bundle: scoring speed does not depend on the weights."""
    import keras

    from genreclf.formats.bundle import BUNDLE_FILE, MODEL_FILE, bundle_info, write_json
    from genreclf.ml.network import build_model, compile_model

    path = os.path.join(out, "bundle")
    if not os.path.exists(os.path.join(path, MODEL_FILE)):
        os.makedirs(path, exist_ok=True)
        keras.utils.set_random_seed(0)
        compile_model(build_model((R.frames, R.bands, 1), len(labels))).save(os.path.join(path, MODEL_FILE))
        write_json(os.path.join(path, BUNDLE_FILE), bundle_info(labels, R))
    return path


# ---------------------------------------------------------------- Spark jobs
def spark_session(master: str, task_cpus: int = 1):
    from pyspark.sql import SparkSession

    from genreclf.io.spark import worker_environment

    os.environ["PYSPARK_PYTHON"] = sys.executable
    worker_environment()
    s = (SparkSession.builder.master(master).appName(f"genreclf-bench-{master}")
         .config("spark.driver.memory", "2g").config("spark.ui.enabled", "false")
         .config("spark.task.cpus", str(task_cpus))
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.sql.execution.arrow.maxRecordsPerBatch", "32").getOrCreate())
    s.sparkContext.setLogLevel("ERROR")
    return s


def timed(fn, repeat=3):
    """Best of ``repeat`` runs (the first warms the JVM and the Python workers)."""
    best = None
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        took = time.perf_counter() - started
        best = took if best is None else min(best, took)
    return best


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def peak_rss_mb(long_path: str) -> float:
    """Peak RSS of a fresh Python process running a featurize task's code path on one long file.

    Read from /proc's VmHWM: ``getrusage``'s ru_maxrss in a child also counts the parent's RSS
    at fork time (the parent here holds Spark and TensorFlow).
    """
    code = (
        "import resource, sys\n"
        "from genreclf.config import Recipe\n"
        "from genreclf.audio.extract import window_tables\n"
        "from genreclf.formats.schema import window_schema\n"
        "import pandas as pd\n"
        "r = Recipe()\n"
        "batch = pd.DataFrame({'path': [sys.argv[1]], 'track_id': ['long'], 'label': [None], 'size_bytes': [0], 'mtime': [0.0]})\n"
        "rows = sum(t.num_rows for t in window_tables([batch], r, window_schema(r), rows_per_table=255, max_duration_s=3600))\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(rows, int(hwm) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, long_path], capture_output=True, text=True, check=True)
    rows, mb = out.stdout.split()
    assert int(rows) == 399, rows
    return float(mb)


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="make bench", description=__doc__.splitlines()[0])
    p.add_argument("--tracks", type=int, default=48, help="N: 30 s tracks (2N are made for the linearity check)")
    p.add_argument("--out", default="bench-output")
    args = p.parse_args(argv)
    from genreclf.io.spark import setup_logging

    setup_logging()
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "genreclf-numba-cache"))
    n = args.tracks
    out = os.path.abspath(args.out)
    all_paths, long_path = make_corpus(os.path.join(out, "corpus"), 2 * n)
    paths = all_paths[:n]
    res = {"tracks": n, "machine_cores": os.cpu_count()}

    # Baselines, one core, same files.
    floor_loop(paths[:2])  # warm-ups: numba caches, FFT plans
    reference_loop(paths[:1])
    res["floor_s_per_track"] = floor_loop(paths) / n
    res["reference_s_per_track"] = reference_loop(paths) / n
    log.info("floor %.1f ms/track, reference %.1f ms/track", 1e3 * res["floor_s_per_track"],
             1e3 * res["reference_s_per_track"])

    # featurize job, local[1] and local[2], N and 2N tracks.
    from genreclf.featurize import run_featurize
    from genreclf.score import run_score

    sub = {key: link_inputs(os.path.join(out, "inputs", key), files) for key, files in (("n", paths), ("2n", all_paths))}
    feats = os.path.join(out, "features")
    bundle = make_bundle(out, [chr(ord("a") + i) for i in range(16)])
    for cores in (1, 2):
        spark = spark_session(f"local[{cores}]")
        run_featurize(spark, [sub["n"]], feats, overwrite=True)  # warm-up: JVM, Python workers, numba cache
        t_n = timed(lambda: run_featurize(spark, [sub["n"]], feats, overwrite=True))
        t_2n = timed(lambda: run_featurize(spark, [sub["2n"]], feats + "-2n", overwrite=True))
        # Steady state: the marginal cost of N more tracks; what is left of T(N) is the job's fixed cost.
        res[f"featurize_local{cores}_s_per_track"] = (t_2n - t_n) / n
        res[f"featurize_local{cores}_fixed_s"] = t_n - (t_2n - t_n)
        res[f"featurize_local{cores}_2n_over_n"] = t_2n / t_n
        res[f"featurize_local{cores}_2n_s"] = t_2n
        if cores == 2:
            res["bytes_per_track"] = dir_bytes(os.path.join(feats, "windows")) / n
            for key, kwargs in (("audio_n", {"inputs": [sub["n"]]}), ("audio_2n", {"inputs": [sub["2n"]]}),
                                ("features_n", {"features": feats}), ("features_2n", {"features": feats + "-2n"})):
                res[f"score_{key}_s"] = timed(
                    lambda: run_score(spark, bundle, os.path.join(out, f"scores-{key}"), overwrite=True, **kwargs))
            res["score_audio_local2_s_per_track"] = (res["score_audio_2n_s"] - res["score_audio_n_s"]) / n
            res["score_features_local2_s_per_track"] = (res["score_features_2n_s"] - res["score_features_n_s"]) / n
        spark.stop()
    res["model_loop_s_per_track"] = model_loop(paths, bundle) / n

    res["peak_rss_mb_10min"] = peak_rss_mb(long_path)
    res.update(pipeline.run(out))
    report(res, out)
    return 0


def report(res: dict, out: str) -> None:
    n = res["tracks"]
    floor, ref, loop = res["floor_s_per_track"], res["reference_s_per_track"], res["model_loop_s_per_track"]
    # Whole jobs over 2N tracks (fixed costs included: conservative and stable), core-seconds per track.
    f1 = res["featurize_local1_2n_s"] / (2 * n)
    f2 = 2 * res["featurize_local2_2n_s"] / (2 * n)
    s_audio = 2 * res["score_audio_2n_s"] / (2 * n)
    s_feat = 2 * res["score_features_2n_s"] / (2 * n)
    model_only = max(loop - floor, 1e-9)  # the model's share of the single-process loop
    ratios = {
        "featurize_local1_vs_floor": floor / f1, "featurize_local2_per_core_vs_floor": floor / f2,
        "featurize_local1_vs_reference": ref / f1, "featurize_local2_per_core_vs_reference": ref / f2,
        "local2_speedup": res["featurize_local1_2n_s"] / res["featurize_local2_2n_s"],
        "featurize_local2_time_2n_over_n": res["featurize_local2_2n_over_n"],
        "score_audio_cost_vs_featurize_plus_model": s_audio / (f2 + model_only),
        "score_audio_vs_single_process_loop": loop / s_audio,
        "steady_featurize_local2_per_core_vs_floor": floor / (2 * res["featurize_local2_s_per_track"]),
    }
    rows = [
        ("floor: decode+resample+STFT, 1 core", f"{1 / floor:.2f} tracks/s", "1.00 (baseline)", ""),
        ("reference recipe (librosa), 1 core", f"{1 / ref:.2f} tracks/s", f"floor x {floor / ref:.2f}", ""),
        ("featurize job local[1], per core", f"{1 / f1:.2f} tracks/s",
         f"floor x {ratios['featurize_local1_vs_floor']:.2f}; ref x {ratios['featurize_local1_vs_reference']:.2f}",
         ">= 0.85 floor, >= 3.5 ref"),
        ("featurize job local[2], per core", f"{1 / f2:.2f} tracks/s",
         f"floor x {ratios['featurize_local2_per_core_vs_floor']:.2f}; "
         f"ref x {ratios['featurize_local2_per_core_vs_reference']:.2f}", ">= 0.85 floor, >= 3.5 ref"),
        ("  steady state (T(2N)-T(N))/N, local[2]", f"{1 / (2 * res['featurize_local2_s_per_track']):.2f} tracks/s",
         f"floor x {ratios['steady_featurize_local2_per_core_vs_floor']:.2f} (noisy estimate)", ""),
        ("  fixed cost per featurize job, local[2]", f"{res['featurize_local2_fixed_s']:.2f} s", "", ""),
        ("local[2] speed-up over local[1]", f"{ratios['local2_speedup']:.2f} x", "", ">= 1.7"),
        ("featurize time, 2N vs N tracks (local[2])", f"{res['featurize_local2_2n_over_n']:.2f} x", "",
         "linear: 2 - fixed/T(N)"),
        ("bytes stored per 30 s track", f"{res['bytes_per_track'] / 1e6:.2f} MB", "", "<= 2.7 MB"),
        ("single-process loop: decode+STFT+predict", f"{1 / loop:.2f} tracks/s", "baseline for scoring", ""),
        ("score from mp3 local[2], per core", f"{1 / s_audio:.2f} tracks/s",
         f"loop x {ratios['score_audio_vs_single_process_loop']:.2f}; "
         f"cost = (featurize job + model) x {ratios['score_audio_cost_vs_featurize_plus_model']:.2f}", "<= 1.3 x"),
        ("score from features local[2], per core", f"{1 / s_feat:.2f} tracks/s",
         f"model-only loop x {model_only / s_feat:.2f}", ""),
        ("  steady state (T(2N)-T(N))/N, per core", f"{1 / (2 * res['score_features_local2_s_per_track']):.2f} tracks/s",
         f"model-only loop x {model_only / (2 * res['score_features_local2_s_per_track']):.2f} (noisy estimate)", ""),
        ("peak RSS, 10-minute file (one process)", f"{res['peak_rss_mb_10min']:.0f} MB", "", "< 1 GB"),
        *pipeline.rows(res),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\ngenreclf benchmark: N={n} x 30 s mp3 (44.1 kHz stereo 192 kbps), {res['machine_cores']} cores; "
          f"job figures are whole jobs over 2N={2 * n} tracks, best of 3")
    for name, value, ratio, target in rows:
        print(f"  {name:<{width}}  {value:>18}  {ratio:<56} {target}")
    res["ratios"] = ratios
    res["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=2, sort_keys=True)
    print(f"\nresults: {os.path.join(out, 'results.json')}")


if __name__ == "__main__":
    sys.exit(main())
