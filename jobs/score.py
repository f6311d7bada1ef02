"""score: a model bundle applied across a cluster -> one probability vector per track.

    ./spark-submit.sh score --model out/model --input music/ --output out/scores [--csv]
    ./spark-submit.sh score --model out/model --features out/features --output out/scores
    ./spark-submit.sh score --model out/model --input music/ --output out/scores --incremental
"""

import sys

from genreclf.cli import run_main, score_parser


def score(args, settings, spark):
    from genreclf.score import run_score

    run_score(spark, args.model, args.output, inputs=args.input, features=args.features, csv=args.csv,
              overwrite=args.overwrite, incremental=args.incremental, settings=settings,
              calibrate=args.calibrate, break_lock=args.break_lock)


def main(argv=None) -> int:
    return run_main(score_parser(), score, argv, spark_app="genreclf-score", writes=("output",))


if __name__ == "__main__":
    sys.exit(main())
