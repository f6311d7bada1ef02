"""The reference CNN (crowdAI 2018, 4th place), exactly as published, in Keras 3.

Input (frames=128, bins=513, 1) -> BatchNorm -> Conv2D(256, (4, bins)) = shortcut -> 4 x Conv2D(256,
(4, 1), same) -> concat with the shortcut -> average and max pooling over all 125 time steps ->
Dropout 0.2 -> Dense 480 -> Dropout 0.2 -> Dense 240 -> Dropout 0.2 -> softmax. No Lambda layers,
so the saved ``.keras`` file loads in any worker, and on any Keras 3 backend (TensorFlow, JAX, PyTorch):
the bundle's network is built with ``training=False`` (see :func:`build_model`).
"""

from __future__ import annotations

#: Keras 2's Adadelta default, which the reference used. Keras 3 defaults to 0.001 and would
#: barely move in the same number of epochs.
ADADELTA_LEARNING_RATE = 1.0


#: The reference's dropout rate before each dense layer.
DROPOUT = 0.2


def build_model(input_shape: tuple, n_classes: int, input_dtype: str = "float32", dropout: float = DROPOUT, *,
                training: bool = True):
    """The reference network for windows of ``input_shape`` = (frames, bins, 1).

    ``input_dtype`` is the stored feature dtype (float16 by default recipe): windows travel in it
    to the device, halving host-to-device bytes, and the first layer (BatchNorm) casts them to its
    compute dtype. Casting float16 to float32 is exact, so float32 results equal the reference's.
    ``dropout`` is active in training only: the saved model predicts the same whatever its rate.
    ``training``: the first BatchNormalization takes its statistics over every replica's batch
    (``synchronized``, an option only TensorFlow can build: other backends train without it);
    ``training=False`` leaves it out, which changes nothing in inference and lets the saved network
    load under ``KERAS_BACKEND=jax`` or ``torch``.
    """
    import keras
    from keras import layers

    frames, bins = input_shape[0], input_shape[1]
    inputs = keras.Input(shape=input_shape, name="stft", dtype=input_dtype)
    synchronized = training and keras.backend.backend() == "tensorflow"  # across replicas: the global batch's statistics
    x = layers.BatchNormalization(synchronized=synchronized)(inputs)
    x = layers.Conv2D(256, kernel_size=(4, bins), activation="relu")(x)
    shortcut = x
    for _ in range(4):
        x = layers.Conv2D(256, kernel_size=(4, 1), activation="relu", padding="same")(x)
    merged = layers.Concatenate()([x, shortcut])
    steps = frames - 3  # a valid 4-row convolution over 128 frames leaves 125
    x1 = layers.AveragePooling2D(pool_size=(steps, 1))(merged)
    x2 = layers.MaxPooling2D(pool_size=(steps, 1))(merged)
    x = layers.Dropout(dropout)(layers.Concatenate()([x1, x2]))
    x = layers.Flatten()(x)
    x = layers.Dense(480, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(240, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="genre")(x)
    return keras.Model(inputs, outputs, name="genreclf_reference_cnn")


def compile_model(model, learning_rate: float = ADADELTA_LEARNING_RATE, metrics=(), weighted: bool = False):
    """Adadelta + categorical cross-entropy + accuracy, as the reference (and ``metrics``); with
    ``weighted``, the metrics take the batches' sample weights (padding rows weigh 0)."""
    import keras

    chosen = ["accuracy", *metrics]
    model.compile(optimizer=keras.optimizers.Adadelta(learning_rate=learning_rate),
                  loss="categorical_crossentropy", metrics=None if weighted else chosen,
                  weighted_metrics=chosen if weighted else None)
    return model
