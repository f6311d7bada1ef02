"""featurize: audio files -> petastorm windows dataset + tracks table.

    ./spark-submit.sh featurize --input music/ --output out/features [--labels labels.csv]
"""

import sys

from genreclf.cli import featurize_parser, run_main


def featurize(args, settings, spark):
    from genreclf.featurize import run_featurize

    run_featurize(spark, args.input, args.output, labels=args.labels, settings=settings,
                  overwrite=args.overwrite, incremental=args.incremental, break_lock=args.break_lock)


def main(argv=None) -> int:
    return run_main(featurize_parser(), featurize, argv, spark_app="genreclf-featurize", writes=("output",))


if __name__ == "__main__":
    sys.exit(main())
