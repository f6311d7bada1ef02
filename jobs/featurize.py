"""featurize: audio files -> petastorm windows dataset + tracks table.

    ./spark-submit.sh featurize --input music/ --output out/features [--labels labels.csv]
"""

import logging
import sys

from genreclf.cli import featurize_parser
from genreclf.config import load_settings
from genreclf.errors import GenreclfError
from genreclf.spark import get_spark, setup_logging

log = logging.getLogger("genreclf.featurize")


def main(argv=None) -> int:
    args = featurize_parser().parse_args(argv)
    setup_logging()
    try:
        settings = load_settings(args.conf)
    except GenreclfError as e:
        log.error("%s", e)
        return 2
    spark = get_spark("genreclf-featurize")
    try:
        from genreclf.featurize_job import run_featurize

        run_featurize(spark, args.input, args.output, labels=args.labels, settings=settings,
                      overwrite=args.overwrite, incremental=args.incremental)
        return 0
    except GenreclfError as e:
        log.error("%s", e)
        return 2
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
