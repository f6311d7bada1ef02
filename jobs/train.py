"""train: featurize output -> the reference CNN -> a model bundle. Plain Python; no Spark needed.

    ./spark-submit.sh train --features out/features --model out/model [--epochs 30]
    python -m jobs.train --features out/features --model out/model
"""

import argparse
import sys

from genreclf.cli import run_main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spark-submit.sh train",
                                description="Train the reference CNN on featurize output and write a model bundle.",
                                epilog="Runs in one process; on a GPU node TensorFlow uses the GPU with no change.")
    p.add_argument("--features", required=True, metavar="DIR", help="featurize output (windows/, tracks/)")
    p.add_argument("--model", required=True, metavar="OUT", help="bundle directory to write")
    p.add_argument("--epochs", type=int, default=30, help="most epochs (early stopping may end sooner; default 30)")
    p.add_argument("--batch-size", type=int, default=128, help="windows per batch (reference: 128)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of tracks for validation (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, weights and shuffling")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    p.add_argument("--labels-from", choices=("data", "conf"), default="data",
                   help="label list: sorted labels found in the data, or [labels] genres of the config")
    p.add_argument("--shuffle-buffer", type=int, default=1024, help="window-level shuffle buffer")
    p.add_argument("--reader-workers", type=int, default=1,
                   help="petastorm reader threads: 1 (default) reads in a reproducible order; use 4 or more "
                        "on a GPU node, where one thread cannot keep up")
    p.add_argument("--mixed-precision", action="store_true", help="float16 compute on GPUs (off by default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--conf", metavar="TOML", help="settings file (default conf/genreclf.toml)")
    return p


def train(args, settings):
    from genreclf.train import run_train

    run_train(args.features, args.model, epochs=args.epochs, batch_size=args.batch_size,
              val_fraction=args.val_fraction, seed=args.seed, patience=args.patience,
              labels_from=args.labels_from, shuffle_buffer=args.shuffle_buffer,
              reader_workers=args.reader_workers, mixed_precision=args.mixed_precision,
              overwrite=args.overwrite, settings=settings)


def main(argv=None) -> int:
    return run_main(parser(), train, argv)


if __name__ == "__main__":
    sys.exit(main())
