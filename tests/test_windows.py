"""The window rule: 3 s windows every 1.5 s, a trailing window kept when >= 90 % of it is audio."""

import numpy as np
import pytest

from genreclf.audio.windows import count_windows, iter_windows
from genreclf.config import Recipe

pytestmark = pytest.mark.pure  # no Spark, no training: pytest -m pure

R = Recipe()
SR = R.sample_rate


@pytest.mark.parametrize("seconds, expected", [
    (2.0, 0), (2.6, 0), (2.7, 1), (2.8, 1), (3.0, 1), (4.5, 2), (29.9, 19), (30.0, 19), (31.0, 19),
    (31.7, 20), (600.0, 399),
])
def test_count_by_duration(seconds, expected):
    assert count_windows(int(round(seconds * SR)), R) == expected


def test_count_edges_in_samples():
    assert R.min_window_samples == 59535
    assert count_windows(59534, R) == 0
    assert count_windows(59535, R) == 1
    # FMA's usual "30 s" clip is a few ms short: 1 321 967 samples at 44.1 kHz still gives 19 windows.
    assert count_windows(int(1321967 * SR / 44100), R) == 19


@pytest.mark.parametrize("n", [59534, 59535, 66150, 99225, 661500, 659295, 700000])
@pytest.mark.parametrize("chunk", [1000, 33075, 100000])
def test_iter_windows_matches_rule_and_content(n, chunk):
    rng = np.random.default_rng(n)
    y = rng.standard_normal(n).astype(np.float32)
    windows = list(iter_windows((y[i:i + chunk] for i in range(0, n, chunk)), R))
    assert len(windows) == count_windows(n, R)
    for k, w in enumerate(windows):
        start = k * R.hop
        real = y[start:start + R.window]
        assert w.shape == (R.window,) and w.dtype == np.float32
        np.testing.assert_array_equal(w[:real.size], real)
        assert not w[real.size:].any()  # zero-padded tail
