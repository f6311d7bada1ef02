"""Train the reference CNN or a head on the pretrained musicnn on featurize output and write a self-contained model bundle."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from genreclf.config import Settings, load_settings
from genreclf.errors import ConfigError, OutputExistsError
from genreclf.formats.bundle import BUNDLE_FILE, MODEL_FILE, write_training_record
from genreclf.formats.featureset import FeatureSet
from genreclf.io import storage, tracking
from genreclf.io.lock import OutputLock, new_run_id
from genreclf.ml import checkpoint
from genreclf.ml.calibration import fit_temperatures
from genreclf.ml.devices import replicas, strategy, windows_seen
from genreclf.ml.pipeline import WindowSet
from genreclf.ml.reports import (
    calibrated_report,
    format_report,
    predict_windows,
    track_codes,
    write_reports,
)
from genreclf.ml.split import choose_labels, split_tracks, usable_tracks
from genreclf.ml.tfdata import EpochClock, tf_dataset

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

    ``overrides`` replace fields of the ``[train]`` settings (:class:`~genreclf.config.TrainSettings`),
    validated the same way. ``exclude_tracks`` are left out entirely (a cross-validation test fold);
    ``labels`` fixes the output classes (default: ``[train] labels_from``). With MLflow tracking on
    ([mlflow]), the run is logged (:func:`log_training`) and, with ``register``, the model registered.
    ``features``: a featurize output's location, or the handle of one already open (cross-validation's folds).
    """
    settings = settings or load_settings()
    storage.configure(settings.storage.to_dict())
    features = features if isinstance(features, FeatureSet) else FeatureSet.open(features)
    try:
        cfg = dataclasses.replace(settings.train, **overrides)
    except TypeError as e:
        raise ConfigError(f"unknown training setting: {e}") from None
    if storage.exists(model_out):
        if not overwrite:
            raise OutputExistsError(f"{model_out} already exists; pass --overwrite to replace it")
        if storage.is_file(model_out) or (storage.list_dir(model_out)
                                          and not storage.exists(storage.join(model_out, BUNDLE_FILE))):
            raise OutputExistsError(f"{model_out} is not a model bundle (no {BUNDLE_FILE}); --overwrite replaces "
                                    "only a bundle: choose another --model directory")
    if register and not settings.mlflow.uri():
        raise ConfigError("--register needs MLflow tracking: set [mlflow] tracking_uri or MLFLOW_TRACKING_URI")
    lock = OutputLock(storage.sibling(model_out, "lock"), new_run_id(), job="train",
                      break_lock=break_lock, stale_after_s=settings.storage.lock_stale_after_s).acquire()
    try:
        with tracking.start(settings.mlflow, f"train {storage.basename(model_out)}", tags={"genreclf.job": "train"}
                            ) as tracker:
            _remove_dead_staging(model_out)
            report = _train(features, model_out, settings, cfg, group_col, exclude_tracks, labels, resume)
            log_training(tracker, model_out, settings, cfg, register, model=not exclude_tracks)
        return report
    finally:
        lock.release()


def log_training(tracker, model_out: str, settings: Settings, cfg, register: str | None = None,
                 model: bool = True) -> None:
    """A committed bundle into an MLflow run: the recipe and [train] settings as params, each epoch's
    metrics (step = epoch), the validation metrics and temperature, the reports and plots as
    artifacts, and (``model``; not for a cross-validation fold) the bundle as a pyfunc model,
    registered as ``register``."""
    if not tracker.active:
        return
    import json

    local = storage.fetch_dir(model_out)
    with open(os.path.join(local, BUNDLE_FILE)) as f:
        info = json.load(f)
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


def _train(features: FeatureSet, model_out, settings, cfg, group_col, exclude_tracks, labels, resume=False) -> dict:
    """run_train under the bundle's lock: split, fit, calibrate and report, then commit the bundle whole."""
    from genreclf.ml.tfsetup import configure_tensorflow

    recipe = features.recipe
    tracks = features.tracks(check=True)
    labels, train_ids, val_ids = _split(tracks, settings, cfg, group_col, exclude_tracks, labels)
    tf = configure_tensorflow(training=True, precision="float32", cpu_devices=cfg.devices)
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

    where = checkpoint.location(model_out)
    resumed = _checkpoints(where, resume, checkpoint.fingerprint(
        recipe, features.run_id, dataclasses.asdict(cfg), labels, val_ids,
        max(1, len(devices))))
    # The bundle is built in a local directory and committed whole at the end (storage.local_output):
    # a kill leaves the old bundle, never half of a new one.
    with storage.local_output(model_out) as tmp:
        fit_model = _fit_on_backbone if cfg.network == "musicnn" else _fit
        model, history, fit = fit_model(tmp, recipe, labels, train_set, val_set, cfg, workers, devices, resumed)
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
    log.info("train: bundle written to %s", model_out)
    return report


def _remove_dead_staging(model_out: str) -> None:
    """Hidden bundle directories a killed run was building beside ``model_out`` (this run holds the lock)."""
    for leftover in storage.staged_leftovers(model_out):
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

    from genreclf.ml.inference import POLICIES, resolve

    policy = requested
    if requested == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
        policy = POLICIES[resolve("auto", bool(gpus), capability, training=True)]
        log.info("train: precision auto -> %s (%s)", policy, f"GPU compute capability {capability}" if gpus else "CPU")
    keras.mixed_precision.set_global_policy(policy)
    return policy


def _fit(tmp, recipe, labels, train_set, val_set, cfg, workers, devices, resumed) -> tuple:
    """The reference network fitted with checkpointing and early stopping, saved float32 into ``tmp``,
    over ``devices`` (one replica each; genreclf.ml.devices). Returns (the model, its history, facts
    of the fit for bundle.json)."""
    import keras
    import tensorflow as tf

    from genreclf.ml.network import build_model, compile_model

    keras.utils.set_random_seed(cfg.seed)
    n_replicas = max(1, len(devices))
    spread = strategy(tf, devices)
    with spread.scope():
        seen, per_replica = windows_seen(spread) if n_replicas > 1 else (None, None)
        network = build_model((recipe.frames, recipe.bands, 1), len(labels), recipe.dtype, dropout=cfg.dropout)
        model = compile_model(network, metrics=[seen] if seen else (), weighted=n_replicas > 1)
        state = resumed["state"]
        best_weights = checkpoint.restore(model, resumed["where"], state) if state else None
    first = state["epoch"] if state else 0
    log.info("model: %d parameters%s", model.count_params(),
             f"; {n_replicas} replicas ({', '.join(devices)}), {cfg.batch_size} windows each a step"
             if n_replicas > 1 else "")
    pipeline = dict(batch_size=cfg.batch_size * n_replicas, workers=workers, pool_windows=cfg.shuffle_buffer,
                    reader=cfg.reader, replicas=n_replicas)
    clock = EpochClock(first)
    train_ds = tf_dataset(train_set, shuffle=True, seed=cfg.seed, clock=clock, **pipeline)
    val_ds = tf_dataset(val_set, shuffle=False, training=False, **pipeline) if val_set else None
    monitor = "val_loss" if val_ds is not None else "loss"
    stopping = checkpoint.resumable_early_stopping(state, best_weights, monitor=monitor, patience=cfg.patience,
                                                   restore_best_weights=True)
    callbacks = [
        keras.callbacks.ModelCheckpoint(os.path.join(tmp, MODEL_FILE), monitor=monitor, save_best_only=True,
                                        initial_value_threshold=state["best"] if state else None),
        stopping,
        *([per_replica] if per_replica else []),
        clock.callback(),
        checkpoint.epoch_checkpoint(resumed["where"], resumed["fingerprint"], stopping, state),  # after early stopping's
    ]
    weights = class_weights(train_set.label_counts()) if cfg.class_weight == "balanced" else None
    if weights:
        log.info("train: class weights %s", ", ".join(f"{labels[i]} {w:.2f}" for i, w in weights.items()))
    started = time.time()
    history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks, verbose=2,
                        shuffle=False, class_weight=weights, initial_epoch=first)  # tf_dataset shuffles itself
    hist, facts = _fitted(tmp, history, train_set.n_windows, time.time() - started,
                          prior=state["history"] if state else None)
    model = as_float32(model, recipe, len(labels), distributed=n_replicas > 1)  # the bundle: float32, one device
    model.save(os.path.join(tmp, MODEL_FILE))  # the best weights (restored by early stopping)
    return model, hist, {**facts, "optimizer": "Adadelta", "learning_rate": 1.0, "resumed_after_epoch": first,
                         "global_batch": cfg.batch_size * n_replicas,
                         **({"windows_per_replica": per_replica.per_replica} if per_replica else {})}


def _fitted(tmp, history, n_windows: int, train_s: float, prior: dict | None = None) -> tuple:
    """A fit's history as plain floats, its curves drawn into ``tmp``, and its facts for bundle.json."""
    from genreclf.ml.plots import training_curves

    hist = {k: [*(prior or {}).get(k, []), *(float(v) for v in vals)] for k, vals in history.history.items()}
    epochs_run = len(hist.get("loss", []))  # a resumed run's included
    windows_per_s = n_windows * len(history.history.get("loss", [])) / max(train_s, 1e-9)
    log.info("train: %d epochs in %.0f s (%.1f windows/s, validation included)", epochs_run, train_s, windows_per_s)
    training_curves(hist, os.path.join(tmp, "training_curves.png"))
    return hist, {"epochs_run": epochs_run, "train_seconds": round(train_s, 1), "windows_per_s": round(windows_per_s, 1)}


#: The head on the frozen backbone: Adam at Keras's default rate (a linear softmax on 200 features).
HEAD_LEARNING_RATE = 1e-3


def _fit_on_backbone(tmp, recipe, labels, train_set, val_set, cfg, workers, devices, resumed) -> tuple:
    """A softmax head fitted on the frozen musicnn (MSD) backbone's 200-d penultimate features, computed
    once per window; the bundle's model is backbone + head, weights inside (executors need no wheel)."""
    import keras
    import numpy as np

    from genreclf.ml import musicnn, pretrained

    if recipe != musicnn.RECIPE:
        raise ConfigError("[train] network = 'musicnn' needs features of musicnn's recipe: featurize with "
                          "--conf conf/musicnn.toml")
    backbone = musicnn.build_musicnn()
    musicnn.load_weights(backbone, pretrained.checkpoint("MSD_musicnn"))
    backbone.trainable = False
    embed = keras.Model(backbone.inputs, backbone.outputs[1])

    def embedded(windows):
        xs, ys = [], []
        for b in windows.batches(cfg.batch_size, shuffle=False, workers=workers):
            xs.append(np.asarray(embed.predict_on_batch(np.asarray(b.x, np.float32)[..., None])))
            ys.append(b.y)
        return np.concatenate(xs), keras.utils.to_categorical(np.concatenate(ys), len(labels))

    started = time.time()
    x_train, y_train = embedded(train_set)
    validation = embedded(val_set) if val_set else None
    log.info("train: musicnn features of %d windows in %.0f s", len(x_train) + (len(validation[0]) if validation else 0),
             time.time() - started)
    keras.utils.set_random_seed(cfg.seed)
    head = keras.layers.Dense(len(labels), activation="softmax", name="genre")
    features = keras.Input((x_train.shape[1],))
    head_model = keras.Model(features, head(features))
    head_model.compile(optimizer=keras.optimizers.Adam(HEAD_LEARNING_RATE), loss="categorical_crossentropy",
                       metrics=["accuracy"])
    monitor = "val_loss" if validation else "loss"
    weights = class_weights(train_set.label_counts()) if cfg.class_weight == "balanced" else None
    started = time.time()
    history = head_model.fit(x_train, y_train, validation_data=validation, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, verbose=2, class_weight=weights, callbacks=[
                                 keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.patience,
                                                               restore_best_weights=True)])
    hist, facts = _fitted(tmp, history, len(x_train), time.time() - started)
    model = keras.Model(backbone.inputs, head(backbone.outputs[1]), name="musicnn_genre")
    model.save(os.path.join(tmp, MODEL_FILE))
    return model, hist, {**facts, "backbone": "pretrained:musicnn-msd (frozen)", "credit": pretrained.CREDIT,
                         "optimizer": "Adam", "learning_rate": HEAD_LEARNING_RATE}


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


def class_weights(counts) -> dict:
    """sklearn's "balanced" weights, n / (classes present * count), by class index; 1.0 for a class
    without training windows (it has no loss term to weight)."""
    total, present = int(sum(counts)), int(sum(c > 0 for c in counts))
    return {i: (total / (present * c) if c else 1.0) for i, c in enumerate(counts)}


def as_float32(model, recipe, n_classes: int, distributed: bool = False):
    """The same weights in a float32 single-device model: a mixed-precision model's variables are
    float32 already, so the bundle scores in float32 wherever it goes (precision at inference is
    chosen at load), and a model trained on several replicas is the same single-device model."""
    import keras

    if keras.mixed_precision.dtype_policy().name == "float32" and not distributed:
        return model
    from genreclf.ml.network import build_model

    keras.mixed_precision.set_global_policy("float32")
    plain = build_model((recipe.frames, recipe.bands, 1), n_classes, recipe.dtype)
    plain.set_weights(model.get_weights())
    return plain
