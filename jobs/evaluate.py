"""evaluate: a model bundle on featurize output -> accuracy, log loss, macro-F1, confusion matrix.

    ./spark-submit.sh evaluate --model out/model --features out/features [--split val|all]
"""

import argparse
import sys

from genreclf.cli import run_main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spark-submit.sh evaluate",
                                description="Window- and track-level accuracy, mean log loss, macro-F1, per-class "
                                            "precision/recall and confusion matrix (CSV, PNG).")
    p.add_argument("--model", required=True, metavar="BUNDLE")
    p.add_argument("--features", required=True, metavar="DIR", help="featurize output with labels")
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="the bundle's validation tracks (default) or every labelled track")
    p.add_argument("--output", metavar="DIR", help="where reports go (default BUNDLE/evaluation)")
    p.add_argument("--batch-size", type=int, default=64)
    return p


def evaluate(args, settings):
    from genreclf.evaluate import run_evaluate

    run_evaluate(args.model, args.features, output=args.output, split=args.split, batch_size=args.batch_size)


def main(argv=None) -> int:
    return run_main(parser(), evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
