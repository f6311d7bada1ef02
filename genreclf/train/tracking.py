"""A committed bundle logged into an MLflow run (when [mlflow] tracking is on)."""

from __future__ import annotations

import dataclasses
import json
import os

from genreclf.config import Settings
from genreclf.formats.bundle import MODEL_FILE, Bundle


def log_training(tracker, model_out, settings: Settings, cfg, register: str | None = None,
                 model: bool = True) -> None:
    """A committed bundle into an MLflow run: the recipe and [train] settings as params, each epoch's
    metrics (step = epoch), the validation metrics and temperature, the reports and plots as
    artifacts, and (``model``; not for a cross-validation fold) the bundle as a pyfunc model,
    registered as ``register``."""
    if not tracker.active:
        return
    bundle = Bundle.open(model_out)
    local, info = bundle.local(every_file=True), bundle.info
    tracker.params({"recipe": info["recipe"], "train": dataclasses.asdict(cfg), "features": info.get("trained_on"),
                    "labels": len(info["labels"]), "replicas": info.get("replicas", 1)})
    with open(os.path.join(local, "history.json")) as f:
        tracker.history(json.load(f))
    with open(os.path.join(local, "metrics.json")) as f:
        metrics = json.load(f)
    tracker.metrics({"val": {k: metrics.get(k) for k in ("tracks", "windows", "uncalibrated")},
                     "temperature": info.get("temperature", 1.0), "epochs_run": info.get("epochs_run", 0)})
    tracker.artifacts([os.path.join(local, name) for name in sorted(os.listdir(local)) if name != MODEL_FILE],
                      "reports")  # the model is the pyfunc model's
    if model:
        from genreclf import mlflow_model

        tracker.log_model(mlflow_model.__file__, local, mlflow_model.model_config(settings),
                          mlflow_model.signature(info["labels"]), register=register)
