"""Train the reference CNN on featurize output and write a self-contained model bundle."""

from __future__ import annotations

import logging
import os
import shutil
import time

from genreclf import storage
from genreclf.bundle import (BUNDLE_FILE, HISTORY_FILE, MODEL_FILE, SPLIT_FILE, bundle_info, write_json)
from genreclf.config import Settings, load_settings
from genreclf.dataset import tf_dataset
from genreclf.errors import ConfigError, OutputExistsError
from genreclf.evaluate import evaluate_predictions, format_report, predict_windows, usable_tracks, write_reports
from genreclf.featureset import read_recipe, read_tracks
from genreclf.schema import STATUS_OK, WINDOWS_DIR
from genreclf.split import split_tracks

log = logging.getLogger(__name__)


def choose_labels(tracks, vocabulary: str, settings: Settings) -> list:
    """The label list in output order: sorted labels of the data, or the configured genres."""
    if vocabulary == "data":
        labels = sorted(tracks.loc[(tracks["status"] == STATUS_OK) & tracks["label"].notna(), "label"].unique())
    elif vocabulary == "conf":
        labels = list(settings.genres)
    else:
        raise ConfigError(f"--labels-from must be 'data' or 'conf', not {vocabulary!r}")
    if len(labels) < 2:
        raise ConfigError(f"need at least two labels to train, found {labels}; featurize with --labels")
    return labels


def run_train(features: str, model_out: str, *, epochs: int = 30, batch_size: int = 128, val_fraction: float = 0.2,
              seed: int = 0, patience: int = 5, labels_from: str = "data", group_col: str | None = None,
              shuffle_buffer: int = 1024, reader_workers: int = 1, mixed_precision: bool = False,
              overwrite: bool = False, settings: Settings | None = None) -> dict:
    """Fit the model; returns the validation report. Writes the bundle to ``model_out`` atomically."""
    settings = settings or load_settings()
    if os.path.exists(model_out) and not overwrite:
        raise OutputExistsError(f"{model_out} already exists; pass --overwrite to replace it")
    recipe = read_recipe(features)
    tracks = read_tracks(features)
    labels = choose_labels(tracks, labels_from, settings)
    usable = usable_tracks(tracks, labels)
    if group_col is None and "group" in usable and usable["group"].notna().any():
        group_col = "group"  # the catalogue named artists or albums: keep each on one side
        log.info("train: splitting by group (artist/album) for %d tracks", int(usable["group"].notna().sum()))
    train_ids, val_ids = split_tracks(usable, val_fraction, seed, group_col=group_col)
    n_windows = usable.set_index("track_id")["n_windows"]
    log.info("train: %d labels, %d tracks (%d windows) for training, %d tracks (%d windows) for validation",
             len(labels), len(train_ids), int(n_windows[train_ids].sum()), len(val_ids), int(n_windows[val_ids].sum()))

    from genreclf.tfsetup import configure_tensorflow

    tf = configure_tensorflow(training=True, mixed_precision=mixed_precision)
    import keras

    if tf.config.list_physical_devices("GPU") and reader_workers < 2:
        log.info("train: on a GPU one reader thread is likely the bottleneck; try --reader-workers 4")

    from genreclf.model import build_model, compile_model

    keras.utils.set_random_seed(seed)
    model = compile_model(build_model((recipe.frames, recipe.bins, 1), len(labels)))
    log.info("model: %d parameters", model.count_params())
    windows_url = storage.join(storage.to_url(features), WINDOWS_DIR)
    train_ds = tf_dataset(windows_url, recipe, labels, train_ids, batch_size=batch_size, shuffle=True, seed=seed,
                          shuffle_buffer=shuffle_buffer, workers=reader_workers,
                          n_windows=int(n_windows[train_ids].sum()))
    val_ds = tf_dataset(windows_url, recipe, labels, val_ids, batch_size=batch_size, shuffle=False,
                        workers=reader_workers, n_windows=int(n_windows[val_ids].sum())) if val_ids else None

    tmp = model_out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    monitor = "val_loss" if val_ds is not None else "loss"
    callbacks = [
        keras.callbacks.ModelCheckpoint(os.path.join(tmp, MODEL_FILE), monitor=monitor, save_best_only=True),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, restore_best_weights=True),
    ]
    started = time.time()
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=2,
                        shuffle=False)  # tf_dataset shuffles windows itself
    train_s = time.time() - started
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    n_train_windows = int(n_windows[train_ids].sum())
    log.info("train: %d epochs in %.0f s (%.1f windows/s)", len(hist.get("loss", [])), train_s,
             n_train_windows * len(hist.get("loss", [])) / max(train_s, 1e-9))
    model.save(os.path.join(tmp, MODEL_FILE))  # the best weights (restored by early stopping)

    report = {}
    if val_ids:
        ids, window_labels, probs = predict_windows(model, windows_url, recipe, val_ids, workers=reader_workers)
        report = evaluate_predictions(ids, window_labels, probs, labels)
        report.update(split="val", features=storage.to_url(features))
        write_reports(tmp, report, labels)
        for line in format_report(report).splitlines():
            log.info("validation %s", line)
    from genreclf.plots import training_curves

    write_json(os.path.join(tmp, HISTORY_FILE), hist)
    training_curves(hist, os.path.join(tmp, "training_curves.png"))
    write_json(os.path.join(tmp, SPLIT_FILE), {"seed": seed, "val_fraction": val_fraction, "val": list(val_ids)})
    write_json(os.path.join(tmp, BUNDLE_FILE), bundle_info(
        labels, recipe, trained_on=storage.to_url(features), epochs_run=len(hist.get("loss", [])),
        batch_size=batch_size, seed=seed, optimizer="Adadelta", learning_rate=1.0, parameters=model.count_params(),
        train_tracks=len(train_ids), val_tracks=len(val_ids), train_seconds=round(train_s, 1),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    if os.path.exists(model_out):
        shutil.rmtree(model_out)
    os.replace(tmp, model_out)
    log.info("train: bundle written to %s", model_out)
    return report
