"""The train stage: a model fitted on a featurize output, written as a self-contained bundle.
:mod:`.driver` splits, checkpoints, calibrates and commits; :mod:`.fitters` fits the reference CNN
or a head on musicnn; :mod:`.tracking` logs the bundle into MLflow."""

from genreclf.train.driver import reader_threads, run_train
from genreclf.train.fitters import as_float32, class_weights
from genreclf.train.tracking import log_training

__all__ = ["as_float32", "class_weights", "log_training", "reader_threads", "run_train"]
