"""Featurize and score, stage by stage and as jobs: each job's marginal cost per track against its floor.

    python -m benchmarks.stages [--tracks 48] [--out bench-output]   (part of make bench)

The floor is one process on one core doing only the unavoidable work (decode, mixdown, resample,
window features; for score also the model alone). Each of its stages is timed on its own over the
same files, with what the job adds after it (encoding window rows, writing Parquet). The jobs run on
N and 5N tracks (best of 3 after a warm-up); their marginal cost ``(T(5N) - T(N)) / 4N`` per core is
what a million tracks cost, without the fixed cost a run pays once. Ratios are to floors measured in
the same run, on the CPU named in the header.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.host import cpu_name
from benchmarks.run import R, floor_loop, link_inputs, make_bundle, make_corpus, spark_session
from benchmarks.scoring import best_of_3, model_alone

log = logging.getLogger("genreclf.bench")
#: Stages of featurize's per-track work, in order; the first five are its floor.
STAGES = ("decode", "mixdown", "resample", "windows", "features", "encode", "write")
#: The issue-32 bound on a job's marginal cost per core over its single-process floor.
TARGET = 1.15


def split_featurize(paths, recipe=R) -> dict:
    """Seconds per track of each of :data:`STAGES`, each timed on its own over ``paths`` (one core)."""
    import pyarrow.parquet as pq
    import soxr

    from genreclf.audio.decode import _BLOCK, AudioReader, Downmixer
    from genreclf.audio.extract import STFT_BATCH, WindowTableBuilder
    from genreclf.audio.stft import window_features
    from genreclf.audio.windows import iter_windows
    from genreclf.formats.schema import window_arrow_schema, window_schema

    spent = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter
    field = window_schema(recipe).fields["stft"]
    with tempfile.TemporaryDirectory() as tmp:
        for k, path in enumerate(paths):
            t0 = clock()
            with AudioReader(path, recipe.sample_rate) as reader:  # open, demux, decode
                frames = list(reader.frames())
            t1 = clock()
            mixer, mono = Downmixer(_BLOCK), []
            for frame in frames:
                mixer.add(frame)
                if mixer.samples >= _BLOCK:
                    mono.append(mixer.take())
            mono.append(mixer.take())
            t2 = clock()
            stream = soxr.ResampleStream(frames[0].sample_rate, recipe.sample_rate, 1, dtype="float32", quality="HQ")
            signal = np.concatenate(mono)
            blocks = [stream.resample_chunk(signal[i:i + _BLOCK], last=i + _BLOCK >= signal.size)
                      for i in range(0, signal.size, _BLOCK)]
            t3 = clock()
            windows = np.stack(list(iter_windows(blocks, recipe)))
            t4 = clock()
            features = [window_features(windows[i:i + STFT_BATCH], recipe) for i in range(0, len(windows), STFT_BATCH)]
            t5 = clock()
            builder = WindowTableBuilder(field, recipe, len(windows))
            for i, window in enumerate(np.concatenate(features)):
                builder.add(path, i, None, window)
            table = builder.table()
            t6 = clock()
            pq.write_table(table, os.path.join(tmp, f"{k}.parquet"), compression="none", use_dictionary=False,
                           write_statistics=["track_id", "window"])
            t7 = clock()
            for stage, took in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
                spent[stage] += took
    return {stage: s / len(paths) for stage, s in spent.items()}


def marginal(job, small: str, large: str, n_small: int, n_large: int, cores: int) -> tuple:
    """(marginal core-seconds per track, fixed seconds per run) of ``job(inputs)`` from best-of-3 runs
    on two corpus sizes: the slope and intercept of the line through them."""
    t_small = best_of_3(lambda: job(small))[0]
    t_large = best_of_3(lambda: job(large))[0]
    slope = (t_large - t_small) / (n_large - n_small)
    return cores * slope, t_small - slope * n_small


def run(out: str, tracks: int = 48, scale: int = 5) -> dict:
    from genreclf.config import Settings, override
    from genreclf.featurize import run_featurize
    from genreclf.score import run_score

    all_paths, _ = make_corpus(os.path.join(out, "corpus"), scale * tracks)
    small = link_inputs(os.path.join(out, "stages-inputs", "x1"), all_paths[:tracks])
    large = link_inputs(os.path.join(out, "stages-inputs", f"x{scale}"), all_paths)
    bundle = make_bundle(out, [chr(ord("a") + i) for i in range(16)])
    res = {"stages_tracks": tracks, "stages_scale": scale, "stages_cpu": cpu_name()}

    split_featurize(all_paths[:2])  # warm-ups: numba cache, FFT plans, codec tables
    floor_loop(all_paths[:2])
    res.update({f"stage_{k}_s": v for k, v in split_featurize(all_paths[:tracks]).items()})
    res["featurize_floor_s"] = floor_loop(all_paths[:tracks]) / tracks
    res["score_model_s"] = model_alone(bundle, "float32", Settings().score.batch_size)
    log.info("featurize floor %.1f ms/track; stages %s", 1e3 * res["featurize_floor_s"],
             ", ".join(f"{k} {1e3 * res[f'stage_{k}_s']:.1f}" for k in STAGES))

    n_small, n_large = tracks, scale * tracks
    feats = os.path.join(out, "stages-features")
    for cores in (1, 2):
        spark = spark_session(f"local[{cores}]")
        try:
            featurize = lambda inputs: run_featurize(spark, [inputs], feats, overwrite=True)  # noqa: E731
            res[f"featurize_local{cores}_marginal_s"], res[f"featurize_local{cores}_fixed_s"] = marginal(
                featurize, small, large, n_small, n_large, cores)
            precision = {}
            settings = override(Settings(), "score", precision="float32")  # as the floor's model

            def score(inputs):
                summary = run_score(spark, bundle, os.path.join(out, "stages-scores"), inputs=[inputs],
                                    overwrite=True, settings=settings)
                precision["computed"] = ",".join(summary["precision"])

            res[f"score_local{cores}_marginal_s"], res[f"score_local{cores}_fixed_s"] = marginal(
                score, small, large, n_small, n_large, cores)
            res["score_job_precision"] = precision["computed"]
        finally:
            spark.stop()
    report(res)
    return res


def report(res: dict) -> None:
    floor = res["featurize_floor_s"]
    score_floor = floor + res["score_model_s"]
    rows = [(f"  {k}", res[f"stage_{k}_s"], "in the floor" if i < 5 else "the job's own work")
            for i, k in enumerate(STAGES)]
    rows.insert(0, ("featurize floor, streamed (decode .. features), 1 core", floor, "baseline"))
    for cores in (1, 2):
        m = res[f"featurize_local{cores}_marginal_s"]
        rows.append((f"featurize job local[{cores}], marginal per core", m,
                     f"floor x {m / floor:.2f} (target <= {TARGET}); fixed {res[f'featurize_local{cores}_fixed_s']:.1f} s"))
    rows.append(("score floor: decode + features + model alone (float32)", score_floor, ""))
    for cores in (1, 2):
        m = res[f"score_local{cores}_marginal_s"]
        rows.append((f"score job local[{cores}] from mp3, marginal per core", m,
                     f"floor x {m / score_floor:.2f} (target <= {TARGET}); fixed {res[f'score_local{cores}_fixed_s']:.1f} s; "
                     f"{res['score_job_precision']}"))
    width = max(len(r[0]) for r in rows)
    print(f"\nstage benchmark: {res['stages_tracks']} and {res['stages_scale'] * res['stages_tracks']} x 30 s mp3, "
          f"{res['stages_cpu']}, {os.cpu_count()} cores; ms per track per core (jobs: best of 3, marginal)")
    for name, seconds, note in rows:
        print(f"  {name:<{width}}  {1e3 * seconds:7.1f} ms  {note}")
    res["stages_created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.splitlines()[0])
    p.add_argument("--tracks", type=int, default=48, help="N: the small corpus (the large one is 5N)")
    p.add_argument("--out", default="bench-output")
    args = p.parse_args(argv)
    from genreclf.io.spark import setup_logging

    setup_logging()
    out = os.path.abspath(args.out)
    res = run(out, args.tracks)
    with open(os.path.join(out, "results-stages.json"), "w") as f:
        json.dump(res, f, indent=2, sort_keys=True, default=float)
    print(f"results: {os.path.join(out, 'results-stages.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
