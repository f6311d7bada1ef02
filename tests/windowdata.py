"""A small windows dataset written with the featurize writer, without Spark or audio, for pipeline tests.

Window (t, w) holds t at [0, 0] and w at [0, 1] (exact in float16), so a test can check that every
batch row holds the window its metadata names.
"""

import numpy as np

from genreclf.config import Recipe
from genreclf.featureset import write_window_file
from genreclf.featurize import WindowTableBuilder
from genreclf.schema import window_schema

LABELS = ["ambient", "jazz", "rock"]


def track_id(t: int) -> str:
    return f"track{t:03d}"


def write_windows(directory, *, n_tracks=30, windows_per_track=(3, 9), files=3, rows_per_group=11, seed=0):
    """Write ``windows/`` under ``directory``; returns {track_id: (label, n_windows)}."""
    recipe = Recipe()
    rng = np.random.default_rng(seed)
    tracks = {track_id(t): (LABELS[t % len(LABELS)], int(rng.integers(*windows_per_track))) for t in range(n_tracks)}
    ids = list(tracks)
    url = f"file://{directory}/windows"
    for f in range(files):
        def tables():
            builder = WindowTableBuilder(window_schema(recipe).fields["stft"], recipe, rows_per_group)
            for tid in ids[f::files]:
                label, n = tracks[tid]
                for w in range(n):
                    x = np.zeros(recipe.shape, np.float16)
                    x[0, 0], x[0, 1] = int(tid[5:]), w
                    x[1:] = rng.random((recipe.frames - 1, recipe.bins), dtype=np.float32)
                    builder.add(tid, w, label, x)
                    if builder.full():
                        yield builder.table()
            if len(builder):
                yield builder.table()

        write_window_file(url, f"part-test-{f:05d}.parquet", 0, tables())
    return tracks
