"""Cut a stream of samples into the recipe's overlapping windows.

Rule: windows of ``recipe.window`` samples start every ``recipe.hop``; every window of which at
least ``recipe.min_window_fraction`` is audio is kept and its missing tail zero-padded. So a track
of n samples has ``floor((n - 59535) / 33075) + 1`` windows for n >= 59535 (19 for 29.9-31.0 s),
and none below, with the default recipe.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from genreclf.config import Recipe


def count_windows(n_samples: int, recipe: Recipe) -> int:
    """Number of windows a track of ``n_samples`` decoded samples yields."""
    if n_samples < recipe.min_window_samples:
        return 0
    return (n_samples - recipe.min_window_samples) // recipe.hop + 1


def iter_windows(chunks: Iterable[np.ndarray], recipe: Recipe) -> Iterator[np.ndarray]:
    """Yield each window (float32, ``recipe.window`` samples) as soon as the stream holds it.

    Holds at most one window plus one incoming chunk, whatever the stream's length.
    """
    size, hop = recipe.window, recipe.hop
    buf = np.zeros(0, np.float32)
    for chunk in chunks:
        buf = np.concatenate([buf, chunk]) if buf.size else np.asarray(chunk, np.float32)
        while buf.size >= size:
            yield buf[:size].copy()
            buf = buf[hop:]
    while buf.size >= recipe.min_window_samples:
        window = np.zeros(size, np.float32)
        window[: min(size, buf.size)] = buf[:size]
        yield window
        buf = buf[hop:]
