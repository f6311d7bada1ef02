"""Featurize and score from an S3-compatible store vs local paths, same corpus, same run.

    python -m benchmarks.object_store [--tracks 24] [--out bench-output]   (part of make bench)

The store is moto's server (the tests' S3 server) on 127.0.0.1: a single-threaded Python server
sharing the 2 cores with Spark, so the ratios bound what genreclf's remote path costs from above
(a real store serves from other machines). Prints tracks/s for each and the ratio s3 / local.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile

from benchmarks.run import link_inputs, make_bundle, make_corpus, spark_session, timed

log = logging.getLogger("genreclf.bench")


def run(out: str, tracks: int = 24) -> dict:
    import pyarrow.fs as pafs

    from genreclf.config import Settings, StorageSettings
    from genreclf.featurize import run_featurize
    from genreclf.io import storage
    from genreclf.score import run_score
    from tests.s3server import CREDENTIALS, MotoServer

    paths, _ = make_corpus(os.path.join(out, "corpus"), tracks)  # the make bench corpus, when made
    local_in = link_inputs(os.path.join(out, "s3-bench-inputs"), paths)
    os.environ.update(CREDENTIALS)
    server = MotoServer(tempfile.mkdtemp(prefix="genreclf-moto-")).start()
    res = {"s3_bench_tracks": len(paths)}
    spark = None
    try:
        settings = Settings(storage=StorageSettings(endpoint_url=server.endpoint))
        storage.configure(settings.storage.to_dict())
        pafs.S3FileSystem(endpoint_override=server.endpoint.split("://")[1], scheme="http",
                          allow_bucket_creation=True).create_dir("bench")
        storage.upload_dir(local_in, "s3://bench/audio")
        bundle = make_bundle(out, [chr(ord("a") + i) for i in range(16)])
        storage.upload_dir(bundle, "s3://bench/model")
        spark = spark_session("local[2]")
        spark.sparkContext.environment.update(CREDENTIALS)
        feats = {"local": os.path.join(out, "s3-bench-features"), "s3": "s3://bench/features"}
        inputs = {"local": local_in, "s3": "s3://bench/audio"}
        models = {"local": bundle, "s3": "s3://bench/model"}
        scores = {"local": os.path.join(out, "s3-bench-scores"), "s3": "s3://bench/scores"}
        run_featurize(spark, [inputs["local"]], feats["local"], overwrite=True, settings=settings)  # warm-up
        for where in ("local", "s3"):
            res[f"featurize_{where}_s"] = timed(lambda: run_featurize(
                spark, [inputs[where]], feats[where], overwrite=True, settings=settings), repeat=2)
            res[f"score_audio_{where}_s"] = timed(lambda: run_score(
                spark, models[where], scores[where], inputs=[inputs[where]], overwrite=True, settings=settings),
                repeat=2)
            res[f"score_features_{where}_s"] = timed(lambda: run_score(
                spark, models[where], scores[where], features=feats[where], overwrite=True, settings=settings),
                repeat=2)
    finally:
        if spark is not None:
            spark.stop()
        server.stop()
    n = len(paths)
    print(f"\nobject store vs local paths, {n} tracks of 30 s, local[2], moto on 127.0.0.1 (best of 2)")
    for stage in ("featurize", "score_audio", "score_features"):
        local, remote = res[f"{stage}_local_s"], res[f"{stage}_s3_s"]
        res[f"{stage}_s3_over_local"] = remote / local
        print(f"  {stage:15s} local {n / local:6.2f} tracks/s   s3 {n / remote:6.2f} tracks/s   "
              f"time s3/local x{remote / local:.2f}")
    with open(os.path.join(out, "results-object-store.json"), "w") as f:
        json.dump(res, f, indent=2)
    return res


def main(argv=None) -> int:
    from genreclf.io.spark import setup_logging

    p = argparse.ArgumentParser(prog="python -m benchmarks.object_store", description=__doc__.splitlines()[0])
    p.add_argument("--tracks", type=int, default=24)
    p.add_argument("--out", default="bench-output")
    args = p.parse_args(argv)
    setup_logging("WARNING")
    run(args.out, args.tracks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
