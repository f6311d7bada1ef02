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
               replicas: int = 1, training: bool = True):
    """(x, one-hot y) batches for Keras: x (batch, frames, bins, 1) in the recipe dtype (float16 by
    default: the model casts it in its first layer, halving host-to-device bytes), y float32.

    Each pass (Keras epoch) draws a new order: that of ``clock``'s epoch when given (its callback
    in the fit), else of the pass's number; the dataset's cardinality is exact.

    With ``replicas`` > 1 batches carry sample weights, so that N replicas compute what one device
    would. Each replica's loss is the mean over its own rows, so a training batch split unevenly
    (5 + 4) would weigh the rows of the smaller half more: the last training batch is padded to a
    multiple of the replicas with copies of its last window weighted 0, and its real rows weigh
    padded/real (9 rows padded to 10: 10/9), which makes its gradient exactly one device's mean.
    Validation batches are not padded (an uneven split is exact for sums and counts), except a
    set smaller than one global batch: Keras builds a distributed model from the mean of the
    replicas' first batches, which fails when they differ in size (Keras 3.13); its padding rows
    weigh 0 but count in Keras's loss mean (a validation loss lower by real/padded).
    """
    import tensorflow as tf

    n_classes = len(windows.labels)
    eye = np.eye(n_classes, dtype=np.float32)
    passes = iter(range(2**31))
    r = windows.recipe

    def generate():
        epoch = clock.epoch if clock is not None else next(passes)
        first = True
        for b in windows.batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch, workers=workers,
                                 pool_windows=pool_windows, reader=reader):
            if (b.y < 0).any():
                raise ValueError(f"track {b.track_ids[b.y < 0][0]} has no label in {windows.labels}")
            if replicas == 1:
                yield b.x[..., None], eye[b.y]
                continue
            n = len(b.y)
            pad = -n % replicas if training or first else 0
            weight = (n + pad) / n if training else 1.0
            first = False
            weights = np.concatenate([np.full(n, weight, np.float32), np.zeros(pad, np.float32)])
            rows = np.concatenate([np.arange(n), np.full(pad, n - 1)])
            yield b.x[rows][..., None], eye[b.y[rows]], weights

    spec = (tf.TensorSpec((None, r.frames, r.bands, 1), tf.dtypes.as_dtype(r.dtype)),
            tf.TensorSpec((None, n_classes), tf.float32))
    if replicas > 1:
        spec = (*spec, tf.TensorSpec((None,), tf.float32))
    ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
    ds = ds.apply(tf.data.experimental.assert_cardinality(windows.n_batches(batch_size)))
    return ds.prefetch(tf.data.AUTOTUNE)

