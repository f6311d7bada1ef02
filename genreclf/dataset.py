"""Window rows from a featurize output, through petastorm, into tf.data.

``make_batch_reader`` reads whole row groups (fast, but it does not apply Unischema codecs, so
``stft`` arrives as .npy bytes, decoded here); a predicate keeps one split's tracks. Each pass
over a :func:`tf_dataset` opens a fresh reader, so every Keras epoch sees every window once, with
row groups reshuffled per epoch, then a window-level shuffle buffer.
"""

from __future__ import annotations

import io
import warnings
from typing import Iterator

import numpy as np

from genreclf.config import Recipe


def decode_npy_column(column, recipe: Recipe) -> np.ndarray:
    """Decode a column of NdarrayCodec (.npy) bytes into one (n, frames, bins) array of the recipe dtype."""
    n = len(column)
    out = np.empty((n, *recipe.shape), dtype=recipe.dtype)
    if n == 0:
        return out
    first = io.BytesIO(column[0])
    np.lib.format.read_magic(first)
    np.lib.format.read_array_header_1_0(first)
    offset = first.tell()
    count = recipe.frames * recipe.bins
    for i, raw in enumerate(column):
        out[i] = np.frombuffer(raw, dtype=recipe.dtype, count=count, offset=offset).reshape(recipe.shape)
    return out


def _track_predicate(track_ids):
    """A petastorm predicate keeping rows of ``track_ids``; vectorised, as make_batch_reader passes a DataFrame."""
    from petastorm.predicates import PredicateBase

    class InTracks(PredicateBase):
        def __init__(self, ids):
            self._ids = frozenset(ids)

        def get_fields(self):
            return {"track_id"}

        def do_include(self, values):
            column = values["track_id"]
            if hasattr(column, "isin"):
                return column.isin(self._ids)  # petastorm expects a boolean Series here
            return column in self._ids

    return InTracks(track_ids)


def iter_window_batches(windows_url: str, recipe: Recipe, *, track_ids=None, fields=("track_id", "label", "stft"),
                        shuffle: bool = False, seed: int | None = None, workers: int = 2) -> Iterator[dict]:
    """Yield row groups of windows as dicts of arrays (``stft`` decoded), optionally only ``track_ids``.

    With ``workers <= 1`` reading is single-threaded and its order reproducible under ``seed``;
    more workers read faster (for a GPU) in a nondeterministic order.
    """
    from petastorm import make_batch_reader

    predicate = _track_predicate(track_ids) if track_ids is not None else None
    read = list(dict.fromkeys([*fields, "track_id"])) if predicate is not None else list(fields)
    pool = "thread" if workers > 1 else "dummy"
    with warnings.catch_warnings():
        # make_batch_reader warns about petastorm-encoded stores; we decode the .npy column ourselves.
        warnings.filterwarnings("ignore", message="Please use make_reader", category=UserWarning)
        reader = make_batch_reader(windows_url, schema_fields=read, predicate=predicate, num_epochs=1,
                                   shuffle_row_groups=shuffle, seed=seed, reader_pool_type=pool,
                                   workers_count=max(1, workers))
    with reader:
        for batch in reader:
            out = {f: getattr(batch, f) for f in fields if f != "stft"}
            if "stft" in fields:
                out["stft"] = decode_npy_column(batch.stft, recipe)
            yield out


def tf_dataset(windows_url: str, recipe: Recipe, labels: list, track_ids, *, batch_size: int, shuffle: bool,
               seed: int = 0, shuffle_buffer: int = 1024, workers: int = 2, n_windows: int | None = None):
    """(x, one-hot y) batches for Keras: x float32 (batch, frames, bins, 1).

    ``n_windows`` (from the tracks table) tells Keras the number of batches per epoch.
    """
    import tensorflow as tf

    index = {label: i for i, label in enumerate(labels)}
    ids = list(track_ids)
    passes = [0]

    def generate():
        passes[0] += 1
        for b in iter_window_batches(windows_url, recipe, track_ids=ids, fields=("label", "stft"),
                                     shuffle=shuffle, seed=seed + passes[0], workers=workers):
            yield b["stft"], np.fromiter((index[l] for l in b["label"]), np.int32, len(b["label"]))

    spec = (tf.TensorSpec((None, *recipe.shape), tf.dtypes.as_dtype(recipe.dtype)), tf.TensorSpec((None,), tf.int32))
    ds = tf.data.Dataset.from_generator(generate, output_signature=spec).unbatch()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    n_classes = len(labels)

    def to_model(x, y):
        return tf.cast(x, tf.float32)[..., None], tf.one_hot(y, n_classes)

    ds = ds.batch(batch_size).map(to_model, num_parallel_calls=tf.data.AUTOTUNE)
    if n_windows is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-n_windows // batch_size)))
    return ds.prefetch(tf.data.AUTOTUNE)
