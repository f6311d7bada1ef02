"""evaluate: a model bundle on featurize output, or K-fold cross-validation of training itself.

    ./spark-submit.sh evaluate --model out/model --features out/features [--split val|all]
    ./spark-submit.sh evaluate --cv 5 --features out/features --output out/cv [--repeat 5] [--conf conf/musicnn.toml]
"""

import argparse
import sys

from genreclf.cli import EPILOG, add_conf, add_setting_flags, run_main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spark-submit.sh evaluate",
                                description="Track- and window-level accuracy, mean log loss, macro-F1, expected "
                                            "calibration error, per-class precision/recall, confusion matrix and "
                                            "reliability diagram (CSV, PNG) of a bundle; or, with --cv K, K-fold "
                                            "cross-validation of the training recipe (folds grouped by artist, "
                                            "stratified by label), mean ± sd over the folds (or, with --repeat R, over R "
                                            "repetitions of them).",
                                epilog=EPILOG)
    p.add_argument("--model", metavar="BUNDLE",
                   help="the bundle to evaluate, or an MLflow model URI (models:/NAME/VERSION; then give --output) "
                        "(not with --cv)")
    p.add_argument("--features", required=True, metavar="DIR", help="featurize output with labels")
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="the bundle's validation tracks (default) or every labelled track")
    p.add_argument("--cv", type=int, metavar="K",
                   help="train and test K times, each fold's tracks held out once (needs --output; trains "
                        "with [train] settings; fold bundles are kept and reused by a rerun)")
    p.add_argument("--seed", type=int, help="with --cv: seed of the folds (default [train] seed)")
    p.add_argument("--repeat", type=int, default=1, metavar="R",
                   help="with --cv: R repetitions of the K folds, shuffled with seeds SEED..SEED+R-1 (the same folds "
                        "for every recipe: compare presets on equal ground); mean ± sd over the repetitions' means")
    p.add_argument("--output", metavar="DIR", help="where reports go (default BUNDLE/evaluation)")
    add_setting_flags(p, "evaluate", ["batch_size"], metavars={"batch_size": "WINDOWS"})
    p.add_argument("--no-calibration", dest="calibrate", action="store_false",
                   help="ignore the bundle's temperature: the reference's plain mean of window softmaxes")
    add_conf(p)
    return p


def evaluate(args, settings):
    from genreclf.errors import ConfigError

    if args.cv is not None:
        if args.model or not args.output:
            raise ConfigError("--cv K trains its own fold models: give --features and --output, not --model")
        from genreclf.crossval import run_crossval

        overrides = {} if args.calibrate else {"calibration": "none"}
        run_crossval(args.features, args.output, args.cv, settings=settings, seed=args.seed, repeats=args.repeat,
                     **overrides)
        return
    if args.repeat != 1:
        raise ConfigError("--repeat R repeats cross-validation: give it with --cv K")
    if not args.model:
        raise ConfigError("give --model BUNDLE to evaluate a bundle, or --cv K to cross-validate")
    from genreclf.evaluate import run_evaluate

    run_evaluate(args.model, args.features, output=args.output, split=args.split, calibrate=args.calibrate,
                 settings=settings)


def main(argv=None) -> int:
    return run_main(parser(), evaluate, argv, writes=("output",))


if __name__ == "__main__":
    sys.exit(main())
