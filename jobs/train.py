"""train: featurize output -> the reference CNN or a head on musicnn -> a model bundle. Plain Python; no Spark needed.

    ./spark-submit.sh train --features out/features --model out/model [--epochs 30]
    python -m jobs.train --features out/features --model out/model
"""

import argparse
import dataclasses
import sys

from genreclf.cli import add_break_lock, add_conf, run_main
from genreclf.config import (
    CALIBRATION_MODES,
    CLASS_WEIGHTS,
    LABEL_SOURCES,
    READERS,
    TRAIN_NETWORKS,
    TRAIN_PRECISIONS,
    TrainSettings,
)


def _d(key: str) -> str:
    """A [train] key's built-in default, for help texts (conf/genreclf.toml or --conf may change it)."""
    return f"default {getattr(TrainSettings(), key)!r}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spark-submit.sh train",
                                description="Train the reference CNN, or a genre head on the pretrained musicnn (--network), on featurize output and write a model bundle.",
                                epilog="Defaults: [train] of the settings (python -m genreclf.config); a flag overrides its key. "
                                       "Runs in one process; on a GPU node TensorFlow uses the GPU with no change.")
    p.add_argument("--features", required=True, metavar="DIR", help="featurize output (windows/, tracks/)")
    p.add_argument("--model", required=True, metavar="OUT", help="bundle directory to write")
    p.add_argument("--network", choices=TRAIN_NETWORKS,
                   help="'reference': the 4th-place CNN from scratch; 'musicnn': a genre head on the frozen pretrained "
                        f"musicnn (features of conf/musicnn.toml's recipe; {_d('network')})")
    p.add_argument("--epochs", type=int, help=f"most epochs (early stopping may end sooner; {_d('epochs')})")
    p.add_argument("--batch-size", type=int, help=f"windows per batch ({_d('batch_size')}: the reference's)")
    p.add_argument("--dropout", type=float, metavar="RATE",
                   help=f"dropout rate before each dense layer, training only ({_d('dropout')}: the reference's)")
    p.add_argument("--val-fraction", type=float, help=f"share of tracks for validation, in [0, 1) ({_d('val_fraction')})")
    p.add_argument("--seed", type=int, help=f"seed for the split, weights and shuffling ({_d('seed')})")
    p.add_argument("--patience", type=int, help=f"early-stopping patience in epochs ({_d('patience')})")
    p.add_argument("--labels-from", choices=LABEL_SOURCES,
                   help=f"label list: 'data' = sorted labels found in the data, 'conf' = [labels] genres ({_d('labels_from')})")
    p.add_argument("--shuffle-buffer", type=int, metavar="WINDOWS",
                   help=f"windows pooled from several row groups and drawn from at random ({_d('shuffle_buffer')})")
    p.add_argument("--reader", choices=READERS,
                   help=f"window reader: pyarrow row groups (fast) or petastorm's make_batch_reader ({_d('reader')})")
    p.add_argument("--reader-workers", type=int, metavar="N",
                   help="reader threads; 0 = auto: 1 on CPU, which keeps the order reproducible, up to 8 on a GPU "
                        f"node (measured ~15 k windows/s per core; {_d('reader_workers')})")
    p.add_argument("--precision", choices=TRAIN_PRECISIONS,
                   help="auto = the device's native precision (mixed_bfloat16 on GPUs of compute capability >= 8.0, "
                        "mixed_float16 before, float32 on CPUs, where 16-bit training measured slower), or float32 (the "
                        f"reference), mixed_float16, mixed_bfloat16; the bundle's weights are float32 either way "
                        f"({_d('precision')})")
    p.add_argument("--devices", type=int, metavar="N",
                   help="train on N devices, one replica each with --batch-size windows a step (0 = every GPU of the "
                        f"node, one device on a CPU; {_d('devices')})")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="copy remote features (s3://, gs://, hdfs://) here once instead of reading them every epoch")
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--calibration", choices=CALIBRATION_MODES,
                     help="fit a temperature on the validation tracks and apply it to each track's mean "
                          f"(accuracy unchanged) or to every window; 'none' = the reference ({_d('calibration')})")
    cal.add_argument("--no-calibration", dest="calibration", action="store_const", const="none",
                     help="same as --calibration none: scores are the reference's plain mean of window softmaxes")
    p.add_argument("--class-weight", choices=CLASS_WEIGHTS,
                   help="'balanced': weight each class's loss by the inverse of its share of training windows "
                        f"(unbalanced labels); 'none': the reference ({_d('class_weight')})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--register", metavar="NAME",
                   help="with MLflow tracking on ([mlflow] tracking_uri or MLFLOW_TRACKING_URI): register the model "
                        "as NAME in the registry (then score --model models:/NAME/VERSION)")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run from its last epoch's checkpoint (.BUNDLE.checkpoint beside the bundle), "
                        "with the same features and settings (add --break-lock for the dead run's lock)")
    add_break_lock(p)
    add_conf(p)
    return p


#: Flags that override a [train] setting of the same name: one per setting.
TRAIN_FLAGS = tuple(f.name for f in dataclasses.fields(TrainSettings))


def train(args, settings):
    from genreclf.train import run_train

    overrides = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    run_train(args.features, args.model, overwrite=args.overwrite, settings=settings, break_lock=args.break_lock,
              resume=args.resume, register=args.register, **overrides)


def main(argv=None) -> int:
    return run_main(parser(), train, argv, writes=("model",),
                    rerun_hint="rerun with --resume to go on from the last finished epoch's checkpoint")


if __name__ == "__main__":
    sys.exit(main())
