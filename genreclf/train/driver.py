"""The train driver: a featurize output split into training and validation tracks (whole artists
when named), fitted (:mod:`.fitters`), calibrated and reported, then committed as one bundle
directory; each epoch checkpointed beside it, so ``--resume`` continues a killed run."""

from __future__ import annotations

import dataclasses
import logging
import os

from genreclf.config import Settings, load_settings, override
from genreclf.errors import ConfigError, OutputExistsError
from genreclf.formats.bundle import BUNDLE_FILE, write_training_record
from genreclf.formats.featureset import FeatureSet
from genreclf.io import storage, tracking
from genreclf.io.lock import OutputLock, new_run_id
from genreclf.ml import checkpoint
from genreclf.ml.calibration import fit_temperatures
from genreclf.ml.devices import replicas
from genreclf.ml.pipeline import WindowSet
from genreclf.ml.reports import (
    calibrated_report,
    format_report,
    predict_windows,
    track_codes,
    write_reports,
)
from genreclf.ml.split import choose_labels, split_tracks, usable_tracks
from genreclf.train.fitters import Fit, fitter
from genreclf.train.tracking import log_training

log = logging.getLogger(__name__)


def reader_threads(requested: int, on_gpu: bool) -> int:
    """``requested`` reader threads, or for 0 (auto): 1 on CPU, where the model step (~70 windows/s)
    is far slower than one reader (~15-30 k/s) and one thread keeps the order reproducible; with a
    GPU, one per core up to 8 (measured ~15-17 k windows/s per core; a GPU trains 10^4-10^5/s)."""
    if requested:
        return requested
    return max(1, min(8, os.cpu_count() or 1)) if on_gpu else 1


def run_train(features: str | FeatureSet, model_out: str, *, overwrite: bool = False, settings: Settings | None = None,
              group_col: str | None = None, exclude_tracks=(), labels: list | None = None, break_lock: bool = False,
              resume: bool = False, register: str | None = None, **overrides) -> dict:
    """Fit the model; returns the validation report. Writes the bundle to ``model_out`` atomically.
    Each epoch commits a checkpoint beside it (genreclf.ml.checkpoint); ``resume`` continues a
    killed run from its last one.

    ``overrides`` replace keys of the ``[train]`` settings (:func:`genreclf.config.override`). ``exclude_tracks`` are left out entirely (a cross-validation test fold);
    ``labels`` fixes the output classes (default: ``[train] labels_from``). With MLflow tracking on
    ([mlflow]), the run is logged (:func:`log_training`) and, with ``register``, the model registered.
    ``features``: a featurize output's location, or the handle of one already open (cross-validation's folds).
    """
    settings = settings or load_settings()
    storage.configure(settings.storage.to_dict())
    features = features if isinstance(features, FeatureSet) else FeatureSet.open(features)
    cfg = override(settings, "train", **overrides).train
    out = storage.Location.open(model_out)  # the bundle's location, resolved once: passed down as it is
    if out.exists():
        if not overwrite:
            raise OutputExistsError(f"{out.location} already exists; pass --overwrite to replace it")
        if out.is_file() or (out.list() and not out.child(BUNDLE_FILE).exists()):
            raise OutputExistsError(f"{out.location} is not a model bundle (no {BUNDLE_FILE}); --overwrite replaces "
                                    "only a bundle: choose another --model directory")
    if register and not settings.mlflow.uri():
        raise ConfigError("--register needs MLflow tracking: set [mlflow] tracking_uri or MLFLOW_TRACKING_URI")
    lock = OutputLock(storage.sibling(out, "lock"), new_run_id(), job="train",
                      break_lock=break_lock, stale_after_s=settings.storage.lock_stale_after_s).acquire()
    try:
        with tracking.start(settings.mlflow, f"train {storage.basename(out)}", tags={"genreclf.job": "train"}
                            ) as tracker:
            _remove_dead_staging(out)
            report = _train(features, out, settings, cfg, group_col, exclude_tracks, labels, resume)
            log_training(tracker, out, settings, cfg, register, model=not exclude_tracks)
        return report
    finally:
        lock.release()


def _train(features: FeatureSet, out: storage.Location, settings, cfg, group_col, exclude_tracks, labels, resume=False) -> dict:
    """run_train under the bundle's lock: split, fit, calibrate and report, then commit the bundle whole."""
    from genreclf.ml.tfsetup import ONEDNN_FLOAT32_NETWORKS, configure_tensorflow

    recipe = features.recipe
    tracks = features.tracks(check=True)
    labels, train_ids, val_ids = _split(tracks, settings, cfg, group_col, exclude_tracks, labels)
    # A head's backbones only infer (no gradient through them): oneDNN's kernels pay there.
    tf = configure_tensorflow(training=True, precision="float32", cpu_devices=cfg.devices,
                              onednn=cfg.network in ONEDNN_FLOAT32_NETWORKS)
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    cfg = dataclasses.replace(cfg, precision=_policy(tf, cfg.precision))
    devices = replicas(tf, cfg.devices)
    workers = reader_threads(cfg.reader_workers, on_gpu)
    windows = features.cached(cfg.cache_dir)
    train_set = WindowSet(windows, recipe, track_ids=train_ids, labels=labels)
    val_set = WindowSet(windows, recipe, track_ids=val_ids, labels=labels) if val_ids else None
    for ids, some in ((train_ids, train_set), (val_ids, val_set)):
        if some is not None:
            features.check_window_counts(tracks[tracks["track_id"].isin(set(ids))], some.window_counts())
    log.info("train: %d labels, %d tracks (%d windows) for training, %d tracks (%d windows) for validation; "
             "%s reader, %d thread(s)", len(labels), len(train_ids), train_set.n_windows, len(val_ids),
             val_set.n_windows if val_set else 0, cfg.reader, workers)

    where = checkpoint.location(out)
    resumed = _checkpoints(where, resume, checkpoint.fingerprint(
        recipe, features.run_id, dataclasses.asdict(cfg), labels, val_ids,
        max(1, len(devices))))
    # The bundle is built in a local directory and committed whole at the end (storage.local_output):
    # a kill leaves the old bundle, never half of a new one.
    with storage.local_output(out) as tmp:
        model, history, fit = fitter(cfg.network)(Fit(tmp, recipe, labels, train_set, val_set, cfg, workers, devices,
                                                      resumed, features.run_id))
        report, calibration, temperatures = _calibrate(tmp, model, val_set, labels, cfg, workers, features)
        write_training_record(
            tmp, labels=labels, recipe=recipe, history=history, seed=cfg.seed, val_fraction=cfg.val_fraction,
            val_ids=val_ids, calibration=calibration, temperatures=temperatures, network=cfg.network,
            trained_on=features.url, batch_size=cfg.batch_size,
            parameters=model.count_params(), excluded_tracks=len(set(exclude_tracks)), class_weight=cfg.class_weight,
            precision=cfg.precision, reader=cfg.reader, reader_workers=workers, device="GPU" if on_gpu else "CPU",
            replicas=max(1, len(devices)),
            train_tracks=len(train_ids), val_tracks=len(val_ids), train_windows=train_set.n_windows,
            val_windows=val_set.n_windows if val_set else 0, **fit)
    storage.delete(where)  # the run is committed: its checkpoints are done with
    log.info("train: bundle written to %s", out.location)
    return report


def _remove_dead_staging(out: storage.Location) -> None:
    """Hidden bundle directories a killed run was building beside ``out`` (this run holds the lock)."""
    for leftover in storage.staged_leftovers(out):
        storage.delete(leftover)
        log.info("train: removed %s of an interrupted run", storage.basename(leftover))


def _checkpoints(where: str, resume: bool, print_: dict) -> dict:
    """Where this run's checkpoints go and, with ``resume``, the state it continues from; a
    checkpoint of an earlier interrupted run is removed when not resumed."""
    state = checkpoint.load(where, print_) if resume else None
    if state is None and storage.exists(where):
        log.info("train: removing the checkpoint of an interrupted run at %s (--resume continues one)", where)
        storage.delete(where)
    if state is not None:
        log.info("train: resuming after epoch %d from %s", state["epoch"], where)
    return {"where": where, "fingerprint": print_, "state": state}


def _split(tracks, settings, cfg, group_col, exclude_tracks, labels) -> tuple:
    """(labels, training track ids, validation track ids): by track, whole artists/albums when named."""
    labels = list(labels) if labels else choose_labels(tracks, cfg.labels_from, settings)
    usable = usable_tracks(tracks, labels)
    usable = usable[~usable["track_id"].isin(set(exclude_tracks))]
    if group_col is None and "group" in usable and usable["group"].notna().any():
        group_col = "group"  # the catalogue named artists or albums: keep each on one side
        log.info("train: splitting by group (artist/album) for %d tracks", int(usable["group"].notna().sum()))
    train_ids, val_ids = split_tracks(usable, cfg.val_fraction, cfg.seed, group_col=group_col)
    return labels, train_ids, val_ids


def _policy(tf, requested: str) -> str:
    """The Keras dtype policy to train in: ``requested``, or for auto the device's native precision
    (genreclf.ml.inference.resolve, shared with scoring), set for this process."""
    import keras

    from genreclf.config import POLICIES
    from genreclf.ml.inference import resolve

    policy = requested
    if requested == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
        policy = POLICIES[resolve("auto", bool(gpus), capability, training=True)]
        log.info("train: precision auto -> %s (%s)", policy, f"GPU compute capability {capability}" if gpus else "CPU")
    keras.mixed_precision.set_global_policy(policy)
    return policy


def _calibrate(tmp, model, val_set, labels, cfg, workers, features) -> tuple:
    """Temperatures fitted on the validation tracks and the validation report written into ``tmp``.
    Returns (the report, the calibration mode in force, the temperatures fitted)."""
    if not val_set:
        if cfg.calibration != "none":
            log.warning("train: no validation tracks to fit a temperature on; the bundle is not calibrated")
        return {}, "none", {}
    ids, window_labels, probs = predict_windows(model, val_set, batch_size=cfg.batch_size, workers=workers)
    codes, _, y_tracks = track_codes(ids, window_labels, labels)
    temperatures = fit_temperatures(probs, codes, y_tracks)
    report = calibrated_report(ids, window_labels, probs, labels, cfg.calibration,
                               temperatures.get(cfg.calibration, 1.0))
    report.update(split="val", features=features.url)
    write_reports(tmp, report, labels)
    for line in format_report(report).splitlines():
        log.info("validation %s", line)
    return report, cfg.calibration, temperatures


