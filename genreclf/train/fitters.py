"""The two ways train fits a model, each given one :class:`Fit` (where the bundle is built, the
data, the settings): the reference CNN from scratch (:func:`fit_reference`) and a softmax head on
frozen pretrained backbones (:func:`fit_head`). Each returns (model, history, facts for bundle.json)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

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
    run_id: str = ""  # the featurize run read (a head's backbone features are kept per run)


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


def fit_head(fit: Fit) -> tuple:
    """A genre head on frozen pretrained backbones ([train] backbones, head_layers, fusion, head_c:
    genreclf.ml.heads), their features computed once per window (and kept for the next fit on the same
    featurize run in this process: cross-validation's folds); the bundle's model is backbones + head,
    weights inside (executors need no wheel)."""
    from genreclf.ml import backbones, musicnn, pretrained
    from genreclf.ml.heads import fit_softmax

    tmp, recipe, labels, cfg = fit.tmp, fit.recipe, fit.labels, fit.cfg
    if recipe != musicnn.RECIPE:
        raise ConfigError("[train] network = 'musicnn' needs features of musicnn's recipe: featurize with "
                          "--conf conf/musicnn.toml")
    names, layers = cfg.names("backbones"), cfg.names("head_layers")
    extractors = [backbones.extractor(n, layers) for n in names]
    started = time.time()
    x_train, y_train = _features(fit, names, extractors, fit.train_set)
    validation = _features(fit, names, extractors, fit.val_set) if fit.val_set else None
    log.info("train: features of %s (%s) for %d windows in %.0f s", ", ".join(names), ", ".join(layers),
             len(y_train) + (len(validation[1]) if validation else 0), time.time() - started)
    weights = None
    if cfg.class_weight == "balanced":
        by_class = class_weights(fit.train_set.label_counts())
        weights = np.array([by_class[int(c)] for c in y_train])
    groups = [list(range(len(names)))] if cfg.fusion == "concat" else [[i] for i in range(len(names))]
    started = time.time()
    heads = [fit_softmax(np.hstack([x_train[i] for i in g]), y_train, len(labels), cfg.head_c, sample_weight=weights,
                         validation=(np.hstack([validation[0][i] for i in g]), validation[1]) if validation else None)
             for g in groups]
    seconds = time.time() - started
    history = heads[0].history if len(heads) == 1 else {
        f"{names[i]}/{key}": values for i, h in enumerate(heads) for key, values in h.history.items()}
    log.info("train: %d head(s) in %.1f s (%s L-BFGS iterations)%s", len(heads), seconds,
             "/".join(str(h.iterations) for h in heads),
             f"; validation loss {history['val_loss'][-1]:.3f}, accuracy {history['val_accuracy'][-1]:.3f}"
             if history.get("val_loss") else "")
    _fitted_head_curves(tmp, history)
    model = backbones.genre_network(extractors, heads, len(labels))
    model.save(os.path.join(tmp, MODEL_FILE))
    return model, history, {
        "backbone": ", ".join(f"pretrained:{n}" for n in names) + " (frozen)", "head_layers": list(layers),
        "fusion": cfg.fusion if len(names) > 1 else "none", "head_c": cfg.head_c, "credit": pretrained.CREDIT,
        "optimizer": "L-BFGS", "head_iterations": [h.iterations for h in heads], "train_seconds": round(seconds, 1),
        "feature_dims": [int(x.shape[1]) for x in x_train]}


def _fitted_head_curves(tmp: str, history: dict) -> None:
    """One head's loss and accuracy per L-BFGS iteration (late fusion's several: none drawn)."""
    from genreclf.ml.plots import training_curves

    if "loss" in history:
        training_curves(history, os.path.join(tmp, "training_curves.png"))


#: Backbone features of the last featurize run read in this process: {(run, backbone, layers, ...):
#: {track id: (its windows' features, their labels)}}; cross-validation's folds fit heads on the same
#: windows 25 times, and a second preset sharing a backbone reuses it.
_FEATURES: dict = {}


def _features(fit: Fit, names: tuple, extractors: list, windows: WindowSet) -> tuple:
    """(features per extractor, labels) of every window of ``windows``, each backbone's computed once
    per track for a featurize run (``fit.run_id``); tracks in sorted id order, windows in order."""
    from genreclf.ml.backbones import features_of

    keys = [(fit.run_id, windows.url, n, fit.cfg.head_layers, tuple(fit.labels), fit.cfg.precision) for n in names]
    if not fit.run_id or any(k[0] != fit.run_id for k in _FEATURES):
        _FEATURES.clear()  # another run: its features are done with
    memos = [_FEATURES.setdefault(k, {}) if fit.run_id else {} for k in keys]
    wanted = sorted(windows.window_counts().index)
    lacking = [i for i, memo in enumerate(memos) if any(t not in memo for t in wanted)]
    if lacking:
        missing = sorted({t for i in lacking for t in wanted if t not in memos[i]})
        subset = windows if len(missing) == len(wanted) else windows.subset(missing)
        parts, ys, ids, index = features_of([extractors[i] for i in lacking], subset, fit.cfg.batch_size, fit.workers)
        order = np.lexsort((index, ids.astype(str)))
        ids, ys, parts = ids[order], ys[order], [p[order] for p in parts]
        bounds = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:]):
            for i, part in zip(lacking, parts):
                memos[i][ids[a]] = (part[a:b], ys[a:b])
    return ([np.concatenate([memo[t][0] for t in wanted]) for memo in memos],
            np.concatenate([memos[0][t][1] for t in wanted]))


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
