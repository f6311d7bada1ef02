"""Evaluate a model on featurize output: window- and track-level accuracy, log loss, macro-F1."""

from __future__ import annotations

import logging
import os
import time

from genreclf.config import Settings, load_settings, override
from genreclf.errors import ConfigError
from genreclf.formats.bundle import SPLIT_FILE, Bundle
from genreclf.formats.featureset import FeatureSet
from genreclf.io import storage, tracking
from genreclf.ml.pipeline import WindowSet

log = logging.getLogger(__name__)


from genreclf.ml.reports import calibrated_report, format_report, predict_windows, write_reports
from genreclf.ml.split import usable_tracks


def run_evaluate(bundle_dir: str, features: str, *, output: str | None = None, split: str = "val",
                 batch_size: int | None = None, workers: int = 2, calibrate: bool = True,
                 settings: Settings | None = None) -> dict:
    """Evaluate a bundle on ``features`` (its validation tracks, or ``split='all'``); writes the reports.
    ``batch_size``: windows per model call (default ``[evaluate] batch_size``)."""
    from genreclf.ml.tfsetup import ONEDNN_FLOAT32_NETWORKS, configure_tensorflow

    settings = settings or load_settings()
    batch_size = override(settings, "evaluate", batch_size=batch_size or None).evaluate.batch_size
    named = bundle_dir
    if tracking.is_model_uri(bundle_dir):  # models:/NAME/VERSION: the bundle inside, fetched; the reports elsewhere
        if not output:
            raise ConfigError(f"--model {bundle_dir} is read-only: give --output DIR for the reports")
        bundle_dir = tracking.fetch_model(bundle_dir, settings.mlflow)
    bundle = Bundle.open(bundle_dir, named=named)
    features = FeatureSet.open(features)
    recipe = features.recipe
    bundle.check_recipe(recipe, features.location)
    labels = bundle.labels
    tracks = usable_tracks(features.tracks(check=True), labels)
    if split == "val":
        recorded = bundle.read_json(SPLIT_FILE)
        if recorded is None:
            raise ConfigError(f"{named} records no validation split; use --split all")
        tracks = tracks[tracks["track_id"].isin(recorded["val"])]
    if tracks.empty:
        raise ConfigError(f"no labelled ok tracks to evaluate in {features.location} (split {split})")
    configure_tensorflow(training=False, onednn=bundle.network in ONEDNN_FLOAT32_NETWORKS)
    model = bundle.model()
    started = time.time()
    windows = WindowSet(features.windows(), recipe, track_ids=tracks["track_id"], labels=labels)
    features.check_window_counts(tracks, windows.window_counts())
    ids, window_labels, probs = predict_windows(model, windows, batch_size=batch_size, workers=workers)
    report = calibrated_report(ids, window_labels, probs, labels, *bundle.calibration(calibrate))
    report.update(split=split, features=features.url, elapsed_s=round(time.time() - started, 2))
    out = storage.Location.open(output) if output else bundle.root.child("evaluation")
    with storage.local_output(out) as local:
        write_reports(local, report, labels)
        with tracking.start(settings.mlflow, f"evaluate {storage.basename(named)}", tags={"genreclf.job": "evaluate"}
                            ) as tracker:
            tracker.params({"model": named, "features": report["features"], "split": split, "calibrate": calibrate})
            tracker.metrics({k: report.get(k) for k in ("tracks", "windows", "uncalibrated", "temperature")})
            tracker.artifacts([os.path.join(local, name) for name in sorted(os.listdir(local))], "evaluation")
    for line in format_report(report).splitlines():
        log.info("evaluate %s", line)
    log.info("evaluate: reports in %s", out.location)
    return report
