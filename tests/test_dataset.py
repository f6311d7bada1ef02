"""The training input pipeline: every window exactly once per epoch, the right window in every batch
row, whole batches, seeded reproducibility, tracks of a split only; through pyarrow and petastorm."""

import collections
import os

import numpy as np
import pytest

from genreclf.audio.synth import synthetic_track_id as track_id
from genreclf.audio.synth import write_windows
from genreclf.config import Recipe
from genreclf.formats.featureset import FeatureSet, window_files
from genreclf.io import storage
from genreclf.formats.payload import decode_npy_column, mapped_stft_rows, stft_rows
from genreclf.ml.buffers import BufferRing, aligned_empty, gather_rows
from genreclf.ml.pipeline import WindowSet

pytestmark = pytest.mark.pure  # no Spark, no training: pytest -m pure

R = Recipe()
LABELS = ["ambient", "jazz", "rock"]


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    """30 tracks of 3-8 windows in 3 files of row groups of 11 windows: many pieces, tracks split across them."""
    root = tmp_path_factory.mktemp("windows")
    url = f"file://{root}/windows"
    return url, write_windows(url, labels=LABELS)


def keys_of(batches):
    keys = []
    for b in batches:
        assert b.x.shape == (len(b), *R.shape) and b.x.dtype == np.float16
        # The row holds the window its metadata names (the gather moved whole windows, in order).
        np.testing.assert_array_equal(b.x[:, 0, 0], [int(t[5:]) for t in b.track_ids])
        np.testing.assert_array_equal(b.x[:, 0, 1], b.windows)
        keys += list(zip(b.track_ids.tolist(), b.windows.tolist()))
    return keys


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_window_exactly_once_per_epoch(windows, workers, shuffle):
    url, tracks = windows
    ws = WindowSet(url, R, labels=LABELS)
    expected = {(t, w) for t, (_, n) in tracks.items() for w in range(n)}
    for epoch in range(2):
        batches = list(ws.batches(16, shuffle=shuffle, seed=4, epoch=epoch, workers=workers, pool_windows=40))
        keys = keys_of(batches)
        assert len(keys) == len(expected) == ws.n_windows
        assert set(keys) == expected
        # Whole batches but the last: the readers' leftovers are merged.
        assert [len(b) for b in batches[:-1]] == [16] * (len(batches) - 1) and 0 < len(batches[-1]) <= 16
        assert len(batches) == ws.n_batches(16)


def test_labels_follow_their_windows(windows):
    url, tracks = windows
    ws = WindowSet(url, R, labels=["jazz", "rock"])  # ambient is not in the list: -1
    for b in ws.batches(32, shuffle=True, workers=2):
        for t, y in zip(b.track_ids, b.y):
            label = tracks[t][0]
            assert y == (["jazz", "rock"].index(label) if label in ("jazz", "rock") else -1)


def test_only_the_wanted_tracks(windows):
    url, tracks = windows
    train = [track_id(t) for t in range(0, 30, 3)] + [track_id(t) for t in range(1, 30, 3)]
    val = [track_id(t) for t in range(2, 30, 3)]
    seen = {}
    for name, ids in (("train", train), ("val", val)):
        ws = WindowSet(url, R, track_ids=ids, labels=LABELS)
        keys = keys_of(ws.batches(16, shuffle=True, workers=2, pool_windows=32))
        seen[name] = {t for t, _ in keys}
        assert len(keys) == ws.n_windows == sum(tracks[t][1] for t in ids)
    assert seen["train"] == set(train) and seen["val"] == set(val)
    assert not seen["train"] & seen["val"]


def test_one_worker_order_is_reproducible_and_changes_per_epoch_and_seed(windows):
    url, _ = windows
    ws = WindowSet(url, R, labels=LABELS)

    def order(seed, epoch):
        return [k for b in ws.batches(16, shuffle=True, seed=seed, epoch=epoch, workers=1, pool_windows=40)
                for k in zip(b.track_ids.tolist(), b.windows.tolist())]

    first = order(1, 0)
    assert order(1, 0) == first
    assert WindowSet(url, R, labels=LABELS) and order(1, 0) == first  # and in a fresh WindowSet
    assert order(1, 1) != first and order(2, 0) != first
    assert sorted(order(1, 1)) == sorted(first)


def test_shuffled_batches_mix_tracks_and_files(windows):
    url, _ = windows
    ws = WindowSet(url, R, labels=LABELS)
    stored = keys_of(ws.batches(16, shuffle=False))
    shuffled = keys_of(ws.batches(16, shuffle=True, seed=0, pool_windows=64))
    assert stored != shuffled
    # A batch draws from many tracks, not a run of one track's consecutive windows.
    tracks_per_batch = [len(set(t for t, _ in shuffled[i:i + 16])) for i in range(0, len(shuffled) - 15, 16)]
    assert np.mean(tracks_per_batch) > 8


def test_petastorm_reader_gives_the_same_windows(windows):
    url, tracks = windows
    ws = WindowSet(url, R, track_ids=[track_id(t) for t in range(20)], labels=LABELS)
    arrow = keys_of(ws.batches(16, shuffle=True, workers=2))
    peta = keys_of(ws.batches(16, shuffle=True, workers=2, reader="petastorm"))
    assert sorted(arrow) == sorted(peta) and len(peta) == ws.n_windows


def test_tf_dataset_feeds_float16_and_one_hot(windows):
    from genreclf.ml.tfdata import tf_dataset

    url, tracks = windows
    ws = WindowSet(url, R, labels=LABELS)
    ds = tf_dataset(ws, batch_size=16, shuffle=True, workers=2)
    assert int(ds.cardinality()) == ws.n_batches(16)
    for epoch in range(2):
        n, counts = 0, collections.Counter()
        for x, y in ds:
            assert x.dtype.name == "float16" and tuple(x.shape[1:]) == (*R.shape, 1)
            assert y.dtype.name == "float32" and np.allclose(np.sum(y, axis=1), 1.0)
            for t, label in zip(x[:, 0, 0, 0].numpy().astype(int), np.argmax(y, axis=1)):
                assert LABELS[label] == tracks[track_id(t)][0]
                counts[t] += 1
            n += x.shape[0]
        assert n == ws.n_windows
        assert all(counts[int(t[5:])] == nw for t, (_, nw) in tracks.items())


def test_window_data_found_from_offsets_and_from_page_headers_equals_decoding(windows):
    import mmap

    import pyarrow.parquet as pq

    url, _ = windows
    path = window_files(url)[0]  # a path on the local filesystem
    pf = pq.ParquetFile(path)
    with open(path, "rb") as f:
        mapped = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    for g in range(pf.num_row_groups):
        column = pf.read_row_group(g, columns=["stft"])["stft"]
        decoded = decode_npy_column(column.to_pylist(), R)
        buffer, starts = stft_rows(column, R)
        out = np.empty_like(decoded)
        gather_rows(buffer, starts, out, np.arange(len(out)))
        np.testing.assert_array_equal(out, decoded)
        in_file = mapped_stft_rows(mapped, pf.metadata, g, R)
        out[:] = 0
        gather_rows(mapped, in_file, out, np.arange(len(out))[::-1].copy())  # any order of positions
        np.testing.assert_array_equal(out[::-1], decoded)
    with pytest.raises(ValueError, match="another recipe"):
        stft_rows(column, Recipe(n_fft=512))


def test_mapped_and_pyarrow_reads_give_the_same_batches(windows):
    url, _ = windows
    mapped = WindowSet(url, R, labels=LABELS)
    plain = WindowSet(url, R, labels=LABELS, mmap=False)
    assert mapped.n_mapped == len(mapped.pieces) and plain.n_mapped == 0
    a = list(mapped.batches(16, shuffle=True, seed=2, workers=1))
    b = list(plain.batches(16, shuffle=True, seed=2, workers=1))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.x, y.x)
        assert x.track_ids.tolist() == y.track_ids.tolist()


def test_cache_copies_remote_features_once(windows, tmp_path):
    url, _ = windows
    features = FeatureSet.open(storage.parent(storage.to_location(url)))
    local = features.cached(str(tmp_path / "cache"))
    assert local.url != url and sorted(os.listdir(local.base)) == sorted(os.path.basename(p) for p in window_files(url))
    assert sorted(os.listdir(local.base)) == sorted(os.path.basename(p) for p in local.paths)
    again = features.cached(str(tmp_path / "cache"))
    assert again == local
    a = WindowSet(url, R, labels=LABELS)
    b = WindowSet(local, R, labels=LABELS)
    assert sorted(keys_of(a.batches(32, shuffle=False))) == sorted(keys_of(b.batches(32, shuffle=False)))
    assert features.cached("") == features.windows()


def test_batch_buffers_are_aligned_and_reused_only_when_free():
    x = aligned_empty((3, 5, 7), np.float16)
    assert x.ctypes.data % 64 == 0 and x.shape == (3, 5, 7)
    ring = BufferRing((3, 5, 7), np.float16, capacity=2)
    a = ring.get()
    b = ring.get()
    assert a.ctypes.data != b.ctypes.data  # both still referenced
    address = a.ctypes.data
    del a
    c = ring.get()
    assert c.ctypes.data == address and c.ctypes.data % 64 == 0  # a's buffer, free again
    d = ring.get()  # ring full and every buffer busy: fresh memory
    assert d.ctypes.data not in (b.ctypes.data, c.ctypes.data)
