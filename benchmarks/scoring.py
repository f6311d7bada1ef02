"""Scoring cost per track per core against its floors, measured in the same run.

    python -m benchmarks.scoring [--tracks 48] [--out bench-output]   (part of make bench)

Floors, one core, one process: decode + STFT alone (``benchmarks.run.floor_loop``), and the model
alone on 19-window tracks in each precision and batch layout (one call per track vs windows of
several tracks per call). Jobs, local[2], whole runs over N tracks (best of 3): score from mp3 in
float32 and bfloat16, with decoding inline or ahead in a thread, with 1 or 2 cores per task.
Prints ms per track per core, ratios to the floors, and the core-hours 1 M tracks would take.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from benchmarks.host import cpu_name
from benchmarks.run import R, floor_loop, link_inputs, make_bundle, make_corpus, spark_session

log = logging.getLogger("genreclf.bench")
#: The oneDNN setting the bench was started with: the model-alone processes decide for themselves as a
#: worker does, whatever this process chose when it ran a job (genreclf.ml.tfsetup sets it in os.environ).
STARTED_ONEDNN = os.environ.get("TF_ENABLE_ONEDNN_OPTS")

#: Scoring job variants: (name, spark.task.cpus, [score] settings). The first is the defaults.
VARIANTS = (
    ("defaults (precision auto), 1 core/task", 1, {}),
    ("fp32, decode inline, 1 core/task", 1, {"precision": "float32", "decode_threads": 0}),
    ("fp32, decode ahead, 1 core/task", 1, {"precision": "float32", "decode_threads": 1}),
    ("fp32, decode inline, 2 cores/task", 2, {"precision": "float32", "decode_threads": 0}),
    ("fp32, decode ahead, 2 cores/task", 2, {"precision": "float32", "decode_threads": 1}),
    ("bf16, decode ahead, 1 core/task", 1, {"precision": "bfloat16", "decode_threads": 1}),
)


def model_alone(bundle: str, precision: str, batch: int, tracks: int = 24, recipe=R, per_track: int = 19,
                onednn: str | None = None) -> float:
    """Seconds per track (``per_track`` windows: 19 of the reference's, 10 of musicnn's per 30 s) for
    the model alone, one thread, in a fresh process (the precision's oneDNN choice is made before
    TensorFlow is imported, as a worker's; ``onednn`` "0" or "1" overrides it)."""
    import subprocess

    code = (
        "import sys, time, numpy as np\n"
        "from genreclf.ml.inference import load\n"
        "from genreclf.ml.inference import TrackBatcher\n"
        f"_, model, computed = load({bundle!r}, {precision!r}, 1)\n"
        f"x = np.random.default_rng(0).random(({tracks} * {per_track}, {recipe.frames}, {recipe.bands}))"
        f".astype({recipe.dtype!r})\n"
        f"b = TrackBatcher(model, {batch}); b.add(0, x[:{batch}]); b.flush()  # warm-up: tracing\n"
        "t = time.perf_counter()\n"
        f"b = TrackBatcher(model, {batch})\n"
        f"for k in range({tracks}): b.add(k, x[{per_track} * k:{per_track} * (k + 1)])\n"
        "b.flush()\n"
        f"print(computed, (time.perf_counter() - t) / {tracks})\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if STARTED_ONEDNN is not None or onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn if onednn is not None else STARTED_ONEDNN
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    computed, seconds = out.stdout.split()[-2:]
    return float(seconds)


def best_of_3(call) -> tuple:
    """(best seconds, median seconds, the last result) of three timed calls after a warm-up call."""
    call()
    runs, result = [], None
    for _ in range(3):
        started = time.perf_counter()
        result = call()
        runs.append(time.perf_counter() - started)
    return min(runs), sorted(runs)[1], result


def gflop_per_track(bundle: str, per_track: int) -> float:
    """Forward GFLOP (2 x multiply-adds of the convolutions and dense layers) for ``per_track`` windows."""
    from genreclf.formats.bundle import load_model

    model, macs = load_model(bundle), 0

    def layers(m):  # a head's backbones are nested models (genreclf.ml.backbones)
        for layer in m.layers:
            yield from layers(layer) if hasattr(layer, "layers") else (layer,)

    for layer in layers(model):
        kind = type(layer).__name__
        if kind == "Conv2D":
            kh, kw = layer.kernel_size
            out = layer.output.shape  # (None, h, w, filters)
            macs += out[1] * out[2] * out[3] * kh * kw * layer.input.shape[-1]
        elif kind == "Dense":
            macs += layer.units * layer.input.shape[-1]
    return 2 * macs * per_track / 1e9


def run_musicnn(out: str, tracks: int, res: dict) -> None:
    """The pretrained tagger beside the reference: decode + mel floor, the model alone per precision,
    the score job with its defaults, GFLOP per track of both models."""
    from genreclf.ml import pretrained
    from genreclf.ml.musicnn import RECIPE
    from genreclf.score import run_score

    paths, _ = make_corpus(os.path.join(out, "corpus"), tracks)
    inputs = link_inputs(os.path.join(out, "score-bench-inputs"), paths)
    tagger = pretrained.tagger_bundle("pretrained:musicnn-msd")
    floor_loop(paths[:2], RECIPE)
    res["musicnn_decode_mel_s_per_track"] = floor_loop(paths[:16], RECIPE) / 16
    for precision in ("float32", "bfloat16"):
        res[f"musicnn_model_{precision}_s_per_track"] = model_alone(tagger, precision, 10, recipe=RECIPE, per_track=10)
    # float32 as it ran before oneDNN was chosen for the backbones (genreclf.ml.tfsetup): TensorFlow's kernels
    res["musicnn_model_float32_onednn_off_s_per_track"] = model_alone(tagger, "float32", 10, recipe=RECIPE,
                                                                      per_track=10, onednn="0")
    res["musicnn_gflop_per_track"] = gflop_per_track(tagger, 10)
    res["reference_gflop_per_track"] = gflop_per_track(make_bundle(out, [chr(ord("a") + i) for i in range(16)]), 19)
    fusion = head_bundle(out, ("musicnn-msd", "musicnn-mtt"))  # conf/musicnn-fusion.toml's network
    for precision in ("float32", "bfloat16"):
        res[f"fusion_model_{precision}_s_per_track"] = model_alone(fusion, precision, 10, recipe=RECIPE, per_track=10)
    res["fusion_gflop_per_track"] = gflop_per_track(fusion, 10)
    spark = spark_session("local[2]", task_cpus=1)
    try:
        for key, model in (("musicnn", "pretrained:musicnn-msd"), ("fusion", fusion)):
            target = os.path.join(out, f"score-bench-{key}")
            best, median, summary = best_of_3(lambda: run_score(spark, model, target, inputs=[inputs], overwrite=True))
            res[f"{key}_job_s"], res[f"{key}_job_median_s"] = best, median
            res[f"{key}_job_precision"] = ",".join(summary["precision"])
    finally:
        spark.stop()
    res["musicnn_tracks"] = len(paths)


def head_bundle(out: str, names: tuple, n_classes: int = 8) -> str:
    """A genre head (zero weights: cost does not depend on them) on the pretrained ``names``, as train
    builds it (genreclf.ml.backbones): one bundle, every backbone in one model call."""
    import numpy as np

    from genreclf.formats.bundle import BUNDLE_FILE, MODEL_FILE, bundle_info, write_json
    from genreclf.ml.backbones import extractor, genre_network
    from genreclf.ml.heads import Head
    from genreclf.ml.musicnn import RECIPE

    path = os.path.join(out, "bundle-" + "+".join(names))
    if not os.path.exists(os.path.join(path, MODEL_FILE)):
        os.makedirs(path, exist_ok=True)
        extractors = [extractor(n, ("penultimate",)) for n in names]
        dims = sum(e.output_shape[-1] for e in extractors)
        head = Head(np.zeros((dims, n_classes), np.float32), np.zeros(n_classes, np.float32), {}, 0)
        genre_network(extractors, [head], n_classes).save(os.path.join(path, MODEL_FILE))
        write_json(os.path.join(path, BUNDLE_FILE), bundle_info([chr(ord("a") + i) for i in range(n_classes)], RECIPE,
                                                                network="musicnn", backbone=", ".join(names)))
    return path


def report_musicnn(res: dict) -> None:
    n = res["musicnn_tracks"]
    per_core = 2 * res["musicnn_job_s"] / n
    computed = res["musicnn_job_precision"] if res["musicnn_job_precision"] in ("float32", "bfloat16") else "float32"
    floor = res["musicnn_decode_mel_s_per_track"] + res[f"musicnn_model_{computed}_s_per_track"]
    rows = [("decode + mel (16 kHz, 10 patches) alone", res["musicnn_decode_mel_s_per_track"], ""),
            ("musicnn alone float32", res["musicnn_model_float32_s_per_track"],
             f"{res['musicnn_gflop_per_track']:.2f} GFLOP per track (reference CNN: "
             f"{res['reference_gflop_per_track']:.2f})"),
            ("musicnn alone float32, oneDNN off", res["musicnn_model_float32_onednn_off_s_per_track"],
             "TensorFlow's own kernels: float32 before oneDNN was chosen for the backbones"),
            ("musicnn alone bfloat16", res["musicnn_model_bfloat16_s_per_track"],
             "native" if res.get("cpu_native_bf16") else "emulated: no native bf16 here"),
            (f"floor: decode + mel + {computed} musicnn", floor, "the precision auto computes here"),
            ("score --model pretrained:musicnn-msd, local[2]", per_core,
             f"median {2e3 * res['musicnn_job_median_s'] / n:.0f} ms; {res['musicnn_job_precision']}; floor x "
             f"{floor / per_core:.2f}")]
    fused = 2 * res["fusion_job_s"] / n
    computed = res["fusion_job_precision"] if res["fusion_job_precision"] in ("float32", "bfloat16") else "float32"
    fused_floor = res["musicnn_decode_mel_s_per_track"] + res[f"fusion_model_{computed}_s_per_track"]
    rows += [("musicnn-msd + musicnn-mtt head alone float32", res["fusion_model_float32_s_per_track"],
              f"{res['fusion_gflop_per_track']:.2f} GFLOP per track (conf/musicnn-fusion.toml)"),
             ("musicnn-msd + musicnn-mtt head alone bfloat16", res["fusion_model_bfloat16_s_per_track"], ""),
             ("score --conf conf/musicnn-fusion.toml, local[2]", fused,
              f"median {2e3 * res['fusion_job_median_s'] / n:.0f} ms; {res['fusion_job_precision']}; floor x "
              f"{fused_floor / fused:.2f}; x {fused / per_core:.2f} the one-backbone tagger")]
    width = max(len(r[0]) for r in rows)
    print(f"\nmusicnn tagger and the recommended preset's network: {n} x 30 s mp3 on {cpu_name()}, "
          "ms per track per core")
    for name, seconds, note in rows:
        print(f"  {name:<{width}}  {1e3 * seconds:7.1f} ms  {seconds * 1e6 / 3600:6.0f} core-h per 1 M tracks  {note}")


def run(out: str, tracks: int = 48) -> dict:
    from genreclf.config import Settings, override
    from genreclf.ml.inference import cpu_has_bf16
    from genreclf.score import run_score

    paths, _ = make_corpus(os.path.join(out, "corpus"), tracks)
    inputs = link_inputs(os.path.join(out, "score-bench-inputs"), paths)
    bundle = make_bundle(out, [chr(ord("a") + i) for i in range(16)])
    res = {"score_bench_tracks": len(paths), "cpu_native_bf16": cpu_has_bf16()}

    floor_loop(paths[:2])  # warm-up: numba cache, FFT plans
    res["decode_stft_s_per_track"] = floor_loop(paths[:16]) / 16
    for precision in ("float32", "bfloat16"):
        for batch in (19, Settings().score.batch_size):
            res[f"model_{precision}_batch{batch}_s_per_track"] = model_alone(bundle, precision, batch)
    log.info("floors: decode+STFT %.0f ms/track; model fp32 %.0f ms, bf16 %.0f ms",
             1e3 * res["decode_stft_s_per_track"], 1e3 * res["model_float32_batch19_s_per_track"],
             1e3 * res["model_bfloat16_batch19_s_per_track"])

    base = Settings()
    for cpus in (1, 2):
        spark = spark_session("local[2]", task_cpus=cpus)
        try:
            for name, task_cpus, knobs in VARIANTS:
                if task_cpus != cpus:
                    continue
                settings = override(base, "score", **knobs)
                target = os.path.join(out, "score-bench-scores")
                best, median, summary = best_of_3(lambda: run_score(spark, bundle, target, inputs=[inputs],
                                                                    overwrite=True, settings=settings))
                res[f"job[{name}]_s"], res[f"job[{name}]_median_s"] = best, median
                res[f"job[{name}]_precision"] = ",".join(summary["precision"])
                log.info("score job %s: best %.1f s, median %.1f s for %d tracks", name, best, median, len(paths))
        finally:
            spark.stop()
    report(res)
    return res


def report(res: dict) -> None:
    n = res["score_bench_tracks"]
    floor = res["decode_stft_s_per_track"]
    batch = max(int(k.split("batch")[1].split("_")[0]) for k in res if k.startswith("model_float32_batch"))
    rows = [("decode + STFT alone, 1 core", floor, "")]
    for precision in ("float32", "bfloat16"):
        per_track = res[f"model_{precision}_batch19_s_per_track"]
        across = res[f"model_{precision}_batch{batch}_s_per_track"]
        rows.append((f"model alone {precision}, one call per track", per_track, ""))
        rows.append((f"model alone {precision}, {batch} windows per call", across,
                     f"cross-track batching x {per_track / across:.2f}"))
    fp32_floor = floor + res["model_float32_batch19_s_per_track"]
    rows.append(("floor: decode + STFT + fp32 model", fp32_floor, ""))
    first = None
    for name, _, _ in VARIANTS:
        per_core = 2 * res[f"job[{name}]_s"] / n  # local[2]: 2 cores for the whole job
        median = 2 * res[f"job[{name}]_median_s"] / n
        first = first or per_core
        rows.append((f"score job local[2]: {name}", per_core,
                     f"median {1e3 * median:.0f} ms; {res[f'job[{name}]_precision']}; floor x "
                     f"{fp32_floor / per_core:.2f}; defaults x {first / per_core:.2f}"))
    default = 2 * res[f"job[{VARIANTS[0][0]}]_s"] / n
    res["score_mp3_ms_per_track_per_core"] = 1e3 * default
    rows.append(("target: score from mp3 <= 50 ms per track per core", default,
                 "met" if default <= 0.050 else f"not met (x {default / 0.050:.1f}): see docs/performance.md"))
    width = max(len(r[0]) for r in rows)
    print(f"\nscoring benchmark: {n} x 30 s mp3, {cpu_name()}, {os.cpu_count()} cores, native bf16: "
          f"{res['cpu_native_bf16']}; "
          "ms per track per core (jobs: whole runs, fixed costs included, best and median of 3)")
    for name, seconds, note in rows:
        hours = seconds * 1e6 / 3600
        print(f"  {name:<{width}}  {1e3 * seconds:7.1f} ms  {hours:6.0f} core-h per 1 M tracks  {note}")
    res["score_bench_created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scoring", description=__doc__.splitlines()[0])
    p.add_argument("--tracks", type=int, default=48)
    p.add_argument("--out", default="bench-output")
    p.add_argument("--only", choices=["reference", "musicnn"], help="one model's part only")
    args = p.parse_args(argv)
    from genreclf.io.spark import setup_logging

    setup_logging()
    out = os.path.abspath(args.out)
    from genreclf.ml.inference import cpu_has_bf16

    res = run(out, args.tracks) if args.only != "musicnn" else {"cpu_native_bf16": cpu_has_bf16()}
    if args.only != "reference":
        run_musicnn(out, args.tracks, res)
        report_musicnn(res)
    with open(os.path.join(out, "results-scoring.json"), "w") as f:
        json.dump(res, f, indent=2, sort_keys=True, default=float)
    print(f"results: {os.path.join(out, 'results-scoring.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
