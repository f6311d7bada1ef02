"""train: featurize output -> the reference CNN or a head on musicnn -> a model bundle. Plain Python; no Spark needed.

    ./spark-submit.sh train --features out/features --model out/model [--epochs 30]
    python -m jobs.train --features out/features --model out/model
"""

import argparse
import dataclasses
import sys

from genreclf.cli import add_break_lock, add_conf, add_setting_flags, run_main
from genreclf.config import TrainSettings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spark-submit.sh train",
                                description="Train the reference CNN, or a genre head on the pretrained musicnn "
                                            "(--network), on featurize output and write a model bundle.",
                                epilog="Defaults: [train] of the settings (python -m genreclf.config); a flag overrides "
                                       "its key (defaults shown are the built-in ones: conf/genreclf.toml and --conf "
                                       "may change them). Runs in one process; on a GPU node TensorFlow uses the GPU "
                                       "with no change.")
    p.add_argument("--features", required=True, metavar="DIR", help="featurize output (windows/, tracks/)")
    p.add_argument("--model", required=True, metavar="OUT", help="bundle directory to write")
    settings = p.add_argument_group("training settings", "one flag per [train] key")
    add_setting_flags(p, "train", [k for k in TRAIN_KEYS if k != "calibration"], group=settings, metavars={
        "dropout": "RATE", "shuffle_buffer": "WINDOWS", "reader_workers": "N", "devices": "N", "cache_dir": "DIR"})
    cal = settings.add_mutually_exclusive_group()
    add_setting_flags(p, "train", ["calibration"], group=cal)
    cal.add_argument("--no-calibration", dest="setting:train:calibration", action="store_const", const="none",
                     help="same as --calibration none: scores are the reference's plain mean of window softmaxes")
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


#: Every [train] key has its flag (--KEY); run_main lays them over the settings.
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainSettings))


def train(args, settings):
    from genreclf.train import run_train

    run_train(args.features, args.model, overwrite=args.overwrite, settings=settings, break_lock=args.break_lock,
              resume=args.resume, register=args.register)


def main(argv=None) -> int:
    return run_main(parser(), train, argv, writes=("model",),
                    rerun_hint="rerun with --resume to go on from the last finished epoch's checkpoint")


if __name__ == "__main__":
    sys.exit(main())
