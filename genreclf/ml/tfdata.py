"""Windows of a featurize output as a tf.data dataset for Keras (the training input): one-hot labels,
an epoch's order from the Keras epoch, and padding for several replicas."""

from __future__ import annotations

import numpy as np

from genreclf.ml.pipeline import WindowSet


class EpochClock:
    """Which epoch a dataset's next pass draws the order of: set by Keras at each epoch's start
    (:meth:`callback`), not counted from the passes, since Keras also reads a batch of a
    distributed dataset before training (to build the model) and a resumed run starts later."""

    def __init__(self, epoch: int = 0):
        self.epoch = epoch

    def callback(self):
        import keras

        clock = self

        class SetEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock.epoch = epoch

        return SetEpoch()


def tf_dataset(windows: WindowSet, *, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 1,
               pool_windows: int = 1024, reader: str = "arrow", clock: EpochClock | None = None,
               replicas: int = 1):
    """(x, one-hot y) batches for Keras: x (batch, frames, bins, 1) in the recipe dtype (float16 by
    default: the model casts it in its first layer, halving host-to-device bytes), y float32.

    Each pass (Keras epoch) draws a new order: that of ``clock``'s epoch when given (its callback
    in the fit), else of the pass's number; the dataset's cardinality is exact. With
    ``replicas`` > 1, batches carry sample weights and the last one is padded to a multiple of the
    replicas with copies of its last window weighted 0 (they add nothing to a loss, gradient or
    metric sum; Keras's mean divides that one batch's loss by its rows, padding included):
    Keras builds a distributed model from the mean of the replicas' first batches, which fails when
    they differ in size (Keras 3.13, e.g. a validation set of 15 windows on 2 replicas).
    """
    import tensorflow as tf

    n_classes = len(windows.labels)
    eye = np.eye(n_classes, dtype=np.float32)
    passes = iter(range(2**31))
    r = windows.recipe

    def generate():
        epoch = clock.epoch if clock is not None else next(passes)
        for b in windows.batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch, workers=workers,
                                 pool_windows=pool_windows, reader=reader):
            if (b.y < 0).any():
                raise ValueError(f"track {b.track_ids[b.y < 0][0]} has no label in {windows.labels}")
            if replicas == 1:
                yield b.x[..., None], eye[b.y]
                continue
            pad = -len(b.y) % replicas
            weights = np.concatenate([np.ones(len(b.y), np.float32), np.zeros(pad, np.float32)])
            rows = np.concatenate([np.arange(len(b.y)), np.full(pad, len(b.y) - 1)])
            yield b.x[rows][..., None], eye[b.y[rows]], weights

    spec = (tf.TensorSpec((None, r.frames, r.bands, 1), tf.dtypes.as_dtype(r.dtype)),
            tf.TensorSpec((None, n_classes), tf.float32))
    if replicas > 1:
        spec = (*spec, tf.TensorSpec((None,), tf.float32))
    ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
    ds = ds.apply(tf.data.experimental.assert_cardinality(windows.n_batches(batch_size)))
    return ds.prefetch(tf.data.AUTOTUNE)

