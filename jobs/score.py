"""score: a model bundle applied across a cluster -> one probability vector per track.

    ./spark-submit.sh score --model out/model --input music/ --output out/scores [--csv]
    ./spark-submit.sh score --model out/model --features out/features --output out/scores
"""

import logging
import sys

from genreclf.cli import score_parser
from genreclf.config import load_settings
from genreclf.errors import GenreclfError
from genreclf.spark import get_spark, setup_logging

log = logging.getLogger("genreclf.score")


def main(argv=None) -> int:
    args = score_parser().parse_args(argv)
    setup_logging()
    try:
        settings = load_settings(args.conf)
    except GenreclfError as e:
        log.error("%s", e)
        return 2
    spark = get_spark("genreclf-score")
    try:
        from genreclf.score_job import run_score

        run_score(spark, args.model, args.output, inputs=args.input, features=args.features, csv=args.csv,
                  overwrite=args.overwrite, settings=settings)
        return 0
    except GenreclfError as e:
        log.error("%s", e)
        return 2
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
