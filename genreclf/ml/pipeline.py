"""The training input pipeline: window rows of a featurize output -> shuffled batches (-> tf.data: tfdata).

A GPU trains the reference CNN on tens of thousands of windows per second, so this pipeline does
per window only what it must: one copy, from the window file into its batch. Local window files
are memory-mapped and each row's array data is found from the Parquet page headers
(:mod:`~genreclf.formats.pages`); other filesystems, or files of another layout, are read a row
group at a time by pyarrow and found from the column's offsets. Batches are 64-byte aligned so that
``from_generator`` hands them to TensorFlow without a copy (measured: 6.7 k windows/s for unaligned
batches, the copy, vs > 100 k/s aligned), and stay float16 until the model's first layer.

* :class:`WindowSet` indexes the wanted tracks' rows once per pipeline (the small ``track_id``,
  ``window`` and ``label`` columns of every row group: a "piece"); the exact window count per split
  comes from it.
* Each epoch deals the pieces, in a seeded random order, round-robin to ``workers`` reader threads.
  A reader keeps a pool of at least ``pool_windows`` windows from several row groups and emits
  batches drawn at random from it (row groups shuffled per epoch + windows shuffled within a
  pool: two levels, as a row-group store needs). Each reader's last partial batch goes to the
  consumer, which merges them: an epoch is ``ceil(n / batch_size)`` batches, every window once.
* With one worker the order depends only on the seed and the epoch: reproducible.
* ``reader="petastorm"`` takes the same windows through petastorm's ``make_batch_reader`` (its own
  thread pool, per-row .npy decoding), for comparison and for stores only petastorm can read.
"""

from __future__ import annotations

import logging
import queue
import threading
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genreclf.config import READERS, Recipe
from genreclf.formats.featureset import Windows, window_files
from genreclf.formats.payload import decode_npy_column, mapped_stft_rows, stft_rows
from genreclf.io import storage
from genreclf.ml.buffers import BufferRing, aligned_empty, gather_rows, tune_allocators

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    """One row group of a window file, and which of its rows a pipeline wants."""

    path: str
    row_group: int
    rows: np.ndarray  # positions of the wanted rows in the row group
    track_ids: np.ndarray  # object, per wanted row
    windows: np.ndarray  # int32 window index within its track, per wanted row
    labels: np.ndarray  # int32 index into the label list, -1 when unlabelled or unknown
    starts: np.ndarray | None = None  # where each wanted row's array data begins in the mapped file


@dataclass
class Batch:
    """Up to ``batch_size`` windows: ``x`` (n, frames, bins) in the recipe dtype, and per window its
    label index, track id and window index."""

    x: np.ndarray
    y: np.ndarray
    track_ids: np.ndarray
    windows: np.ndarray

    def __len__(self):
        return len(self.y)


class WindowSet:
    """The windows of some tracks of a featurize output, indexed by row group, ready to batch.

    ``windows``: the window files (:meth:`FeatureSet.windows` or its local copy, ``cached``; a
    ``windows/`` URL or path is opened for the caller that has nothing else of the output);
    ``track_ids`` keeps only those tracks (None: all); ``labels`` maps each window's label to its
    index in that list (-1 when missing or not in it).
    """

    def __init__(self, windows: Windows | str, recipe: Recipe, *, track_ids=None, labels=None, mmap: bool = True):
        if isinstance(windows, str):
            url = storage.to_url(windows)
            windows = Windows(url, *storage.filesystem(url), tuple(window_files(url)))
        self._windows = windows
        self.url, self._fs, self._paths = windows.url, windows.fs, windows.paths
        self.recipe = recipe
        self.labels = list(labels) if labels is not None else []
        self._wanted = pa.array(sorted(set(track_ids)), pa.string()) if track_ids is not None else None
        self._metadata = {}
        self._mapped = {}  # path -> the whole file, memory-mapped (local files only)
        self._mmap = mmap
        self._rings = {}
        self.pieces = self._index()
        self.n_windows = int(sum(len(p.rows) for p in self.pieces))
        self.n_mapped = sum(p.starts is not None for p in self.pieces)

    def _index(self) -> list:
        label_set = pa.array(self.labels, pa.string())
        pieces = []
        for path in self._paths:  # present and readable: FeatureSet.check
            with self._fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                self._metadata[path] = pf.metadata
                mapped = storage.map_local(self._fs, path) if self._mmap else None
                if mapped is not None:
                    self._mapped[path] = mapped
                for g in range(pf.num_row_groups):
                    t = pf.read_row_group(g, columns=["track_id", "window", "label"])
                    keep = (np.ones(t.num_rows, bool) if self._wanted is None
                            else pc.is_in(t["track_id"], value_set=self._wanted).to_numpy(zero_copy_only=False))
                    rows = np.flatnonzero(keep)
                    if not len(rows):
                        continue
                    starts = mapped_stft_rows(mapped, pf.metadata, g, self.recipe) if mapped is not None else None
                    labels = pc.index_in(t["label"], value_set=label_set).fill_null(-1).to_numpy(zero_copy_only=False)
                    pieces.append(Piece(path, g, rows, t["track_id"].to_numpy(zero_copy_only=False)[rows],
                                        t["window"].to_numpy(zero_copy_only=False)[rows].astype(np.int32),
                                        labels[rows].astype(np.int32),
                                        starts[rows] if starts is not None else None))
        return pieces

    def subset(self, track_ids) -> "WindowSet":
        """The windows of ``track_ids`` (some of this set's tracks), from the same files, same labels."""
        return WindowSet(self._windows, self.recipe, track_ids=track_ids, labels=self.labels, mmap=self._mmap)

    def window_counts(self):
        """Windows per track id (a pandas Series)."""
        import pandas as pd

        ids = np.concatenate([p.track_ids for p in self.pieces]) if self.pieces else np.zeros(0, object)
        return pd.Series(ids).value_counts()

    def label_counts(self) -> np.ndarray:
        """Windows per label (in ``labels`` order), unlabelled ones left out."""
        found = np.concatenate([p.labels for p in self.pieces]) if self.pieces else np.zeros(0, np.int32)
        return np.bincount(found[found >= 0], minlength=len(self.labels))

    def read(self, piece: Piece) -> tuple:
        """(buffer, starts): a uint8 buffer holding the piece's windows and where each wanted row's
        array data begins in it. Mapped pieces need no I/O here: the copy into a batch reads them."""
        if piece.starts is not None:
            return self._mapped[piece.path], piece.starts
        with self._fs.open_input_file(piece.path) as f:
            pf = pq.ParquetFile(f, metadata=self._metadata[piece.path], pre_buffer=True)
            table = pf.read_row_group(piece.row_group, columns=["stft"])
        buffer, starts = stft_rows(table["stft"], self.recipe)
        return buffer, starts[piece.rows]

    def ring(self, batch_size: int, workers: int) -> BufferRing:
        """Batch buffers kept across passes: enough for the readers' queue, tf.data's prefetch and the model."""
        key = (batch_size, workers)
        if key not in self._rings:
            self._rings[key] = BufferRing((batch_size, *self.recipe.shape), self.recipe.dtype, 2 * workers + 10)
        return self._rings[key]

    def n_batches(self, batch_size: int) -> int:
        return -(-self.n_windows // batch_size)

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, workers: int = 1,
                pool_windows: int = 1024, reader: str = "arrow") -> Iterator[Batch]:
        """One pass over every window, in batches of ``batch_size`` (the last one may be short).

        Shuffled passes draw a new order for each ``epoch``; the same (seed, epoch) gives the
        same order when ``workers == 1``.
        """
        if reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, not {reader!r}")
        if batch_size < 1 or workers < 1:
            raise ValueError("batch_size and workers must be >= 1")
        tune_allocators()
        if reader == "petastorm":
            yield from self._petastorm_batches(batch_size, shuffle, seed, epoch, workers, pool_windows)
            return
        order = list(self.pieces)
        if shuffle:
            order = [order[i] for i in np.random.default_rng([seed, epoch]).permutation(len(order))]
        yield from _threaded_batches(self, order, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                                     workers=workers, pool_windows=pool_windows)

    def _petastorm_batches(self, batch_size, shuffle, seed, epoch, workers, pool_windows) -> Iterator[Batch]:
        from petastorm import make_batch_reader

        index = {label: i for i, label in enumerate(self.labels)}
        ids = self._wanted.to_pylist() if self._wanted is not None else None
        with warnings.catch_warnings():
            # make_batch_reader warns about petastorm-encoded stores; we decode the .npy column ourselves.
            warnings.filterwarnings("ignore", message="Please use make_reader", category=UserWarning)
            reader = make_batch_reader(self.url, schema_fields=["track_id", "window", "label", "stft"],
                                       predicate=_track_predicate(ids) if ids is not None else None, num_epochs=1,
                                       shuffle_row_groups=shuffle, seed=seed * 7919 + epoch,
                                       reader_pool_type="thread" if workers > 1 else "dummy", workers_count=workers)
        pool = _Pool(batch_size, pool_windows, np.random.default_rng([seed, epoch, 0]) if shuffle else None,
                     self.recipe, self.ring(batch_size, 1))
        with reader:
            for b in reader:
                n = len(b.track_id)
                if not n:
                    continue
                pool.add(*_compact(decode_npy_column(b.stft, self.recipe)), Piece(
                    "", 0, np.arange(n), np.asarray(b.track_id, object), np.asarray(b.window, np.int32),
                    np.array([index.get(label, -1) for label in b.label], np.int32)))
                yield from pool.drain(final=False)
        yield from pool.drain(final=True)


def _compact(windows: np.ndarray) -> tuple:
    """(buffer, starts) of a C-contiguous (n, frames, bins) array."""
    return windows.reshape(-1).view(np.uint8), np.arange(len(windows), dtype=np.int64) * windows[0].nbytes


class _Pool:
    """Windows of several row groups, emitted as batches in random (or stored) order, each window once."""

    def __init__(self, batch_size: int, pool_windows: int, rng: np.random.Generator | None, recipe: Recipe,
                 ring: BufferRing | None = None):
        self.batch_size = batch_size
        self.pool_windows = max(pool_windows, batch_size)
        self.rng = rng
        self.recipe = recipe
        self.ring = ring
        self._buffers, self._starts, self._pieces, self.n = [], [], [], 0

    def add(self, buffer: np.ndarray, starts: np.ndarray, piece: Piece) -> None:
        """A piece's wanted windows: ``starts[i]`` is where row ``piece.rows[i]``'s array data begins in ``buffer``."""
        self._buffers.append(buffer)
        self._starts.append(starts)
        self._pieces.append(piece)
        self.n += len(piece.rows)

    def drain(self, final: bool, flush: bool = False) -> Iterator[Batch]:
        """Full batches once the pool holds ``pool_windows``, or now with ``flush`` (the remainder,
        under one batch, stays); with ``final`` every window, the last batch short."""
        if not self.n or (not (final or flush) and self.n < self.pool_windows):
            return
        source = np.repeat(np.arange(len(self._pieces)), [len(p.rows) for p in self._pieces])
        starts = np.concatenate(self._starts)
        y = np.concatenate([p.labels for p in self._pieces])
        ids = np.concatenate([p.track_ids for p in self._pieces])
        windows = np.concatenate([p.windows for p in self._pieces])
        order = self.rng.permutation(self.n) if self.rng is not None else np.arange(self.n)
        n_out = -(-self.n // self.batch_size) if final else self.n // self.batch_size
        for k in range(n_out):
            pick = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield Batch(self._gather(source[pick], starts[pick], aligned=True), y[pick], ids[pick], windows[pick])
        rest = order[n_out * self.batch_size:]
        if len(rest):  # fewer than batch_size windows wait, compacted, for the next row groups
            buffer, compacted = _compact(self._gather(source[rest], starts[rest], aligned=False))
            self._buffers, self._starts = [buffer], [compacted]
            self._pieces = [Piece("", 0, np.arange(len(rest)), ids[rest], windows[rest], y[rest])]
        else:
            self._buffers, self._starts, self._pieces = [], [], []
        self.n = len(rest)

    def _gather(self, source: np.ndarray, starts: np.ndarray, *, aligned: bool) -> np.ndarray:
        """Copy the chosen windows, in order, into one new array: one memcpy per window, without the GIL,
        one call per source buffer (a Python loop of row copies takes the GIL per window, and the
        reader threads then queue for it)."""
        shape = (len(starts), *self.recipe.shape)
        if aligned and self.ring is not None and shape == self.ring.shape:
            out = self.ring.get()
        else:
            out = (aligned_empty if aligned else np.empty)(shape, self.recipe.dtype)
        by_source = np.argsort(source, kind="stable")
        grouped = source[by_source]
        cuts = np.flatnonzero(np.diff(grouped)) + 1
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(grouped)]):
            positions = by_source[a:b]
            gather_rows(self._buffers[grouped[a]], starts[positions], out, positions)
        return out

    def take_rest(self) -> tuple | None:
        """The windows left (fewer than a batch) as (buffer, starts, piece), or None."""
        if not self.n:
            return None
        return self._buffers[0], self._starts[0], self._pieces[0]


_DONE = object()



def _threaded_batches(windows: WindowSet, order: list, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                      workers: int, pool_windows: int) -> Iterator[Batch]:
    """Readers in ``workers`` threads, each with its share of the pieces and its own pool; their
    leftovers (under one batch each) are merged here, so batches are full except the very last."""
    out: queue.Queue = queue.Queue(maxsize=2 * workers + 2)
    ring = windows.ring(batch_size, workers)
    stop = threading.Event()
    leftovers = []

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read(w: int) -> None:
        try:
            pool = _Pool(batch_size, max(pool_windows // workers, batch_size),
                         np.random.default_rng([seed, epoch, w]) if shuffle else None, windows.recipe, ring)
            for piece in order[w::workers]:
                pool.add(*windows.read(piece), piece)
                for batch in pool.drain(final=False):
                    if not put(batch):
                        return
                if stop.is_set():
                    return
            for batch in pool.drain(final=False, flush=True):  # the remainder goes to the consumer
                if not put(batch):
                    return
            rest = pool.take_rest()
            if rest is not None:
                leftovers.append((w, rest))
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)

    threads = [threading.Thread(target=read, args=(w,), name=f"genreclf-reader-{w}", daemon=True)
               for w in range(workers)]
    for t in threads:
        t.start()
    try:
        running = workers
        while running:
            item = out.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
        pool = _Pool(batch_size, batch_size, np.random.default_rng([seed, epoch, workers]) if shuffle else None,
                     windows.recipe)
        for _, rest in sorted(leftovers, key=lambda item: item[0]):
            pool.add(*rest)
        yield from pool.drain(final=True)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)


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
