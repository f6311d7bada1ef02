"""Frozen pretrained backbones as feature extractors for a genre head: each of the musicnn wheel's four
checkpoints (``[train] backbones``) as a Keras model from a mel patch to the chosen layers
(``[train] head_layers``) side by side, and the genre network that puts the fitted head(s) on them.

All four take the same input (musicnn's recipe), so a bundle with several backbones runs them all on
the same decoded patches: one decode, one model call per batch. Each backbone is a nested model
named for it (their inner layer names repeat, the checkpoints' own).
"""

from __future__ import annotations

import numpy as np

#: [train] backbones name -> (checkpoint in genreclf.ml.pretrained.MODELS, the network's kind).
CHECKPOINTS = {"musicnn-msd": ("MSD_musicnn", "musicnn"), "musicnn-mtt": ("MTT_musicnn", "musicnn"),
               "vgg-msd": ("MSD_vgg", "vgg"), "vgg-mtt": ("MTT_vgg", "vgg")}


def _layers(network, kind: str) -> dict:
    """{head layer name: its tensor (n, features)} of a built backbone (genreclf.config.HEAD_LAYERS)."""
    from keras import layers

    if kind == "musicnn":
        return {"penultimate": network.outputs[1], "tags": network.outputs[0],
                "midend": network.get_layer("batch_normalization_9").output}  # max and mean over time: 1506
    pools = network.outputs[1:]
    return {"penultimate": layers.Flatten()(pools[-1]), "tags": network.outputs[0],  # 2 x 1 x 128: 256
            "midend": layers.Concatenate()([layers.GlobalAveragePooling2D()(pools[3]),  # 11 x 6 x 128 -> 256
                                            layers.GlobalMaxPooling2D()(pools[3])])}


def extractor(name: str, head_layers: tuple):
    """Backbone ``name`` with its pretrained weights, frozen, as a model (n, 187, 96, 1) -> (n, features):
    the ``head_layers`` side by side, in that order."""
    import keras

    from genreclf.ml import musicnn, pretrained

    checkpoint, kind = CHECKPOINTS[name]
    network = musicnn.build_musicnn() if kind == "musicnn" else musicnn.build_vgg()
    musicnn.load_weights(network, pretrained.checkpoint(checkpoint))
    network.trainable = False
    outputs = _layers(network, kind)
    chosen = [outputs[layer] for layer in head_layers]
    joined = keras.layers.Concatenate(name="features")(chosen) if len(chosen) > 1 else chosen[0]
    return keras.Model(network.inputs, joined, name=name.replace("-", "_"))


def genre_network(extractors: list, heads: list, n_classes: int):
    """One model, mel patch -> genre probabilities: ``heads`` (genreclf.ml.heads.Head) on the
    extractors' features, one head on all of them side by side (one head given), or one per extractor
    with their log-probabilities averaged (late fusion: the normalised geometric mean)."""
    import keras
    from keras import layers

    from genreclf.ml.musicnn import PATCH

    inp = keras.Input((*PATCH, 1), name="mel")
    features = [e(inp) for e in extractors]
    if len(heads) == 1:
        x = layers.Concatenate(name="features")(features) if len(features) > 1 else features[0]
        out = _dense(heads[0], n_classes, "genre", "softmax")(x)
    else:
        logp = [_dense(h, n_classes, f"genre_{e.name}", "log_softmax")(f) for h, e, f in zip(heads, extractors, features)]
        out = layers.Activation("softmax", name="genre")(layers.Average(name="mean_log_probabilities")(logp))
    return keras.Model(inp, out, name="musicnn_genre")


def _dense(head, n_classes: int, name: str, activation: str):
    from keras import layers

    dense = layers.Dense(n_classes, activation=activation, name=name)
    dense.build((None, head.kernel.shape[0]))
    dense.set_weights([head.kernel, head.bias])
    return dense


def features_of(extractors: list, windows, batch_size: int, workers: int) -> tuple:
    """Every window of ``windows`` (a WindowSet) through every extractor, one model call per batch:
    ([features (n, d) per extractor], labels (n,), track ids (n,), window indices (n,))."""
    import keras

    from genreclf.ml.musicnn import PATCH

    inp = keras.Input((*PATCH, 1))
    both = keras.Model(inp, [e(inp) for e in extractors])
    parts, ys, ids, index = [], [], [], []
    for b in windows.batches(batch_size, shuffle=False, workers=workers):
        out = both.predict_on_batch(np.asarray(b.x, np.float32)[..., None])
        parts.append([np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])])
        ys.append(b.y)
        ids.append(b.track_ids)
        index.append(b.windows)
    if not parts:
        return [np.zeros((0, e.output_shape[-1]), np.float32) for e in extractors], np.zeros(0, np.int64), \
            np.array([], object), np.zeros(0, np.int64)
    return ([np.concatenate([p[i] for p in parts]) for i in range(len(extractors))], np.concatenate(ys),
            np.concatenate(ids), np.concatenate(index))
