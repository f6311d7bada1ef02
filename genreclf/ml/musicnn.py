"""musicnn (Pons & Serra 2019, arXiv 1909.06654; ISC licence) in Keras 3, for the pretrained weights of
the ``musicnn`` wheel (:mod:`genreclf.ml.pretrained`): a tagger trained on a million songs.

Written from the paper and the checkpoint's variable shapes; no TF1 code and no musicnn module here.
Input: patches of 187 frames x 96 mel bands (3 s at 16 kHz, log10(1 + 10000 x) of a float16 power mel).

- front-end: batch norm of the input; two timbral convolutions (7 x 38 and 7 x 67 over time x
  frequency, 204 filters, valid in frequency, time padded by 3) and three temporal ones (128, 64
  and 32 x 1, 51 filters, 'same'), each ReLU, batch norm, then max over frequency: 561 features a frame;
- mid-end: three 7-frame convolutions of 64 filters across all features (the last two residual),
  each ReLU then batch norm; the front-end's and the mid-end's outputs side by side: 753 a frame;
- back-end: max and mean over time, interleaved (1506), batch norm, dense 200 ReLU (the 200-d
  "penultimate" embedding), batch norm, dense 50 (logits; sigmoid gives the tags).

Batch norms are TF1 layers': epsilon 1e-3. Dropout (0.5, training only) is left out: inference only.

The wheel's two VGG baselines (MSD_vgg, MTT_vgg; :func:`build_vgg`), same input: batch norm of the input,
then five 3 x 3 convolutions of 128 filters ('same', ReLU, batch norm), each followed by max pooling
(4 x 1 stride 2, then 2 x 2 stride 2 three times, then 4 x 4 stride 4, all 'valid'): 92 x 48, 46 x 24,
23 x 12, 11 x 6 and 2 x 1 maps of 128; flattened (256), dense 50 (logits). Dropout is left out as above.
"""

from __future__ import annotations

from genreclf.config import Recipe

#: Frames x mel bands of one input patch (the model takes it with a channel axis, as genreclf's windows).
PATCH = (187, 96)
#: The input contract: musicnn's front-end as a genreclf recipe (conf/musicnn.toml says the same).
RECIPE = Recipe(sample_rate=16000, window=47872, hop=47872, n_fft=512, stft_hop=256, frames=187,
                window_function="hann", frontend="mel", n_mels=96, magnitude="musicnn", dtype="float32")
#: Batch-norm epsilon of tf.compat.v1.layers.batch_normalization, which trained the weights.
BN_EPSILON = 1e-3
#: The checkpoint's variable scopes, in the order the original graph created them: the layers here
#: take these names, and load_weights reads each by name.
TIMBRAL = ((38, "conv2d", "batch_normalization_1"), (67, "conv2d_1", "batch_normalization_2"))
TEMPORAL = ((128, "conv2d_2", "batch_normalization_3"), (64, "conv2d_3", "batch_normalization_4"),
            (32, "conv2d_4", "batch_normalization_5"))
MIDEND = (("conv2d_5", "batch_normalization_6"), ("conv2d_6", "batch_normalization_7"),
          ("conv2d_7", "batch_normalization_8"))
#: The VGG baselines' blocks: (convolution, batch norm, max pooling size, its strides), in graph order.
VGG_BLOCKS = (("1CNN", "batch_normalization_1", (4, 1), (2, 2)), ("2CNN", "batch_normalization_2", (2, 2), (2, 2)),
              ("3CNN", "batch_normalization_3", (2, 2), (2, 2)), ("4CNN", "batch_normalization_4", (2, 2), (2, 2)),
              ("5CNN", "batch_normalization_5", (4, 4), (4, 4)))


def build_musicnn(n_tags: int = 50, filters_midend: int = 64, units_backend: int = 200):
    """The network: (n, 187, 96, 1) mel patches -> (tag probabilities (n, n_tags), the 200-d
    penultimate embedding)."""
    import keras
    from keras import layers

    frames, bands = PATCH

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)

    def pooled_over_frequency(x, width, channels):
        x = layers.MaxPooling2D((1, width))(x)
        return layers.Reshape((frames, channels))(x)

    inp = keras.Input((frames, bands, 1), name="mel")
    x = bn("batch_normalization")(inp)
    front = []
    padded = layers.ZeroPadding2D(((3, 3), (0, 0)))(x)
    for width, conv, norm in TIMBRAL:
        y = bn(norm)(layers.Conv2D(204, (7, width), activation="relu", name=conv)(padded))
        front.append(pooled_over_frequency(y, bands - width + 1, 204))
    for length, conv, norm in TEMPORAL:
        y = bn(norm)(layers.Conv2D(51, (length, 1), padding="same", activation="relu", name=conv)(x))
        front.append(pooled_over_frequency(y, bands, 51))
    front = layers.Concatenate(axis=2)(front)  # (frames, 561)

    mid = [layers.Reshape((frames, front.shape[-1], 1))(front)]
    previous = mid[0]
    for i, (conv, norm) in enumerate(MIDEND):
        y = layers.ZeroPadding2D(((3, 3), (0, 0)))(previous)
        y = layers.Conv2D(filters_midend, (7, previous.shape[2]), activation="relu", name=conv)(y)
        y = layers.Permute((1, 3, 2))(bn(norm)(y))  # (frames, filters, 1)
        previous = y if i == 0 else layers.Add()([y, previous])
        mid.append(previous)
    features = layers.Concatenate(axis=2)(mid)  # (frames, 753, 1)

    pooled = layers.Concatenate(axis=-1)([layers.MaxPooling2D((frames, 1))(features),
                                          layers.AveragePooling2D((frames, 1))(features)])
    flat = bn("batch_normalization_9")(layers.Flatten()(pooled))  # max and mean interleaved: 1506
    penultimate = bn("batch_normalization_10")(layers.Dense(units_backend, activation="relu", name="dense")(flat))
    tags = layers.Dense(n_tags, activation="sigmoid", name="dense_1")(penultimate)
    return keras.Model(inp, [tags, penultimate], name="musicnn")


def build_vgg(n_tags: int = 50, filters: int = 128):
    """A VGG baseline of the wheel: (n, 187, 96, 1) mel patches -> (tag probabilities (n, n_tags), the
    pooled maps of its five blocks (n, 92, 48, 128) ... (n, 2, 1, 128))."""
    import keras
    from keras import layers

    inp = keras.Input((*PATCH, 1), name="mel")
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="batch_normalization")(inp)
    pools = []
    for conv, norm, size, strides in VGG_BLOCKS:
        x = layers.Conv2D(filters, (3, 3), padding="same", activation="relu", name=conv)(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=norm)(x)
        x = layers.MaxPooling2D(size, strides=strides)(x)
        pools.append(x)
    tags = layers.Dense(n_tags, activation="sigmoid", name="dense")(layers.Flatten()(x))
    return keras.Model(inp, [tags, *pools], name="musicnn_vgg")


def load_weights(model, checkpoint: str) -> None:
    """Set every layer's weights from the TF1 checkpoint ``checkpoint`` (a prefix), by variable name."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(checkpoint)
    for layer in model.layers:
        names = {"Conv2D": ("kernel", "bias"), "Dense": ("kernel", "bias"),
                 "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance")}.get(type(layer).__name__)
        if names:
            layer.set_weights([reader.get_tensor(f"{layer.name}/{n}") for n in names])
