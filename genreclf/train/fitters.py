"""The two ways train fits a model, each given one :class:`Fit` (where the bundle is built, the
data, the settings): the reference CNN from scratch (:func:`fit_reference`) and a softmax head on
the frozen musicnn backbone (:func:`fit_head`). Each returns (model, history, facts for bundle.json)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from genreclf.config import Recipe, TrainSettings
from genreclf.errors import ConfigError
from genreclf.formats.bundle import MODEL_FILE
from genreclf.ml import checkpoint
from genreclf.ml.devices import strategy, windows_seen
from genreclf.ml.pipeline import WindowSet
from genreclf.ml.tfdata import EpochClock, tf_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fit:
    """What a fitter is given."""

    tmp: str  # the local directory the bundle is built in (committed whole by the driver)
    recipe: Recipe
    labels: list
    train_set: WindowSet
    val_set: WindowSet | None
    cfg: TrainSettings  # [train], precision resolved
    workers: int  # reader threads
    devices: list  # one replica each ([] : the default device)
    resumed: dict  # {"where", "fingerprint", "state"}: the checkpoint this run writes and continues from


def fitter(network: str):
    """The fitter of ``[train] network``."""
    return fit_head if network == "musicnn" else fit_reference


def fit_reference(fit: Fit) -> tuple:
    """The reference network fitted with checkpointing and early stopping, saved float32 into ``fit.tmp``,
    over ``fit.devices`` (one replica each; genreclf.ml.devices). Returns (the model, its history, facts
    of the fit for bundle.json)."""
    tmp, recipe, labels, train_set, val_set, cfg = fit.tmp, fit.recipe, fit.labels, fit.train_set, fit.val_set, fit.cfg
    workers, devices, resumed = fit.workers, fit.devices, fit.resumed
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
    model = as_float32(model, recipe, len(labels))  # the bundle: float32, one device, any Keras backend
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


def fit_head(fit: Fit) -> tuple:
    """A softmax head fitted on the frozen musicnn (MSD) backbone's 200-d penultimate features, computed
    once per window; the bundle's model is backbone + head, weights inside (executors need no wheel)."""
    tmp, recipe, labels, train_set, val_set, cfg, workers = (fit.tmp, fit.recipe, fit.labels, fit.train_set,
                                                             fit.val_set, fit.cfg, fit.workers)
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


def class_weights(counts) -> dict:
    """sklearn's "balanced" weights, n / (classes present * count), by class index; 1.0 for a class
    without training windows (it has no loss term to weight)."""
    total, present = int(sum(counts)), int(sum(c > 0 for c in counts))
    return {i: (total / (present * c) if c else 1.0) for i, c in enumerate(counts)}


def as_float32(model, recipe, n_classes: int):
    """The bundle's network: the same weights in a float32, single-device, backend-neutral model (a
    mixed-precision model's variables are float32 already, so the bundle scores in float32 wherever it
    goes, precision at inference being chosen at load; a model of several replicas is the same
    single-device model; its BatchNormalization is not synchronized, so it loads on any Keras backend)."""
    import keras

    from genreclf.ml.network import build_model

    keras.mixed_precision.set_global_policy("float32")  # from here on: the reports predict in float32 too
    plain = build_model((recipe.frames, recipe.bands, 1), n_classes, recipe.dtype, training=False)
    plain.set_weights(model.get_weights())
    return plain
