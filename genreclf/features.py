"""STFT magnitudes of windows, exactly the reference recipe, batched for speed.

Equals ``np.abs(librosa.stft(w, n_fft=1024, hop_length=512, window=<symmetric Hann>,
center=True, pad_mode='reflect'))[:, :128].T`` per window (pinned by tests), but computes only the
128 kept frames and does all windows of a batch in one float32 real FFT.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from genreclf.config import Recipe


def analysis_window(recipe: Recipe) -> np.ndarray:
    """The symmetric Hann window the reference used (``scipy.signal.hanning``), float32."""
    if recipe.window_function != "hann-symmetric":
        raise ValueError(f"unsupported window function {recipe.window_function!r}")
    return np.hanning(recipe.n_fft).astype(np.float32)


def stft_magnitudes(windows: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Magnitudes of a batch of windows.

    Parameters
    ----------
    windows : ndarray, shape (k, recipe.window), float32
    recipe : Recipe

    Returns
    -------
    ndarray, shape (k, recipe.frames, recipe.bins), float32 — time by frequency, linear magnitude.
    """
    windows = np.atleast_2d(np.asarray(windows, np.float32))
    half = recipe.n_fft // 2
    # Reflect-pad the start as a centred STFT does; the end needs no padding for the kept frames
    # when the window is long enough, but pad it too so any recipe stays exact.
    padded = np.pad(windows, ((0, 0), (half, half)), mode="reflect")
    k = windows.shape[0]
    starts = np.arange(recipe.frames) * recipe.stft_hop
    if starts[-1] + recipe.n_fft > padded.shape[1]:
        raise ValueError("recipe keeps more frames than a window holds")
    frames = np.lib.stride_tricks.sliding_window_view(padded, recipe.n_fft, axis=1)[:, starts, :]
    spec = scipy.fft.rfft(frames * analysis_window(recipe), axis=-1)
    return np.abs(spec).reshape(k, recipe.frames, recipe.bins)
