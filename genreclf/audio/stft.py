"""A window's features from its samples, for every recipe: STFT magnitudes (exactly the reference's,
batched for speed) or, with ``frontend = "mel"``, power mel bands (musicnn's input), compressed as the
recipe says, in the stored dtype. :func:`window_features` is the one seam featurize, score and the
benchmark call.

Equals ``np.abs(librosa.stft(w, n_fft=1024, hop_length=512, window=<symmetric Hann>,
center=True, pad_mode='reflect'))[:, :128].T`` per window (pinned by tests), but computes only the
128 kept frames and does all windows of a batch in one float32 real FFT.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import scipy.fft

from genreclf.config import DB_FLOOR, Recipe


def analysis_window(recipe: Recipe) -> np.ndarray:
    """The recipe's window, float32: the symmetric Hann the reference used (``scipy.signal.hanning``),
    or the periodic one of librosa's STFT (``scipy.signal.get_window("hann", n, fftbins=True)``)."""
    if recipe.window_function == "hann-symmetric":
        return np.hanning(recipe.n_fft).astype(np.float32)
    if recipe.window_function == "hann":
        return np.hanning(recipe.n_fft + 1)[:-1].astype(np.float32)
    raise ValueError(f"unsupported window function {recipe.window_function!r}")


@functools.lru_cache(maxsize=4)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """The (bins, n_mels) float32 Slaney mel filter bank, transposed for ``power @ filters``:
    ``librosa.filters.mel``'s defaults, which musicnn used."""
    import librosa

    return np.ascontiguousarray(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).T, np.float32)


def mel_power(windows: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Power mel spectrogram of a batch of windows, (k, frames, n_mels) float32: the squared STFT
    magnitudes of :func:`stft_magnitudes` (centred, reflect-padded frames) through the mel filters.
    Equals ``librosa.feature.melspectrogram(y=w, sr, n_fft, hop_length, n_mels, pad_mode="reflect")
    [:, :frames].T`` per window (pinned by tests)."""
    mags = stft_magnitudes(windows, recipe)
    np.square(mags, out=mags)
    return mags @ mel_filters(recipe.sample_rate, recipe.n_fft, recipe.n_mels)


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
    frames = np.lib.stride_tricks.sliding_window_view(padded, recipe.n_fft, axis=1)[:, starts, :]  # a copy
    frames *= analysis_window(recipe)
    spec = scipy.fft.rfft(frames, axis=-1, overwrite_x=True)
    return np.abs(spec).reshape(k, recipe.frames, recipe.bins)


def compress(mags: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The recipe's magnitude compression, in place on float32 magnitudes: "linear" (none, the
    reference), "log" = log1p(log_scale * |X|), "db" = 20 * log10(max(|X|, DB_FLOOR)), "musicnn" =
    log10(1 + 10000 x) of the power rounded to float16 first, as musicnn computed its input."""
    if recipe.magnitude == "musicnn":
        mags[...] = mags.astype(np.float16)
        np.multiply(mags, np.float32(10000.0), out=mags)
        np.add(mags, np.float32(1.0), out=mags)
        np.log10(mags, out=mags)
    elif recipe.magnitude == "log":
        np.multiply(mags, np.float32(recipe.log_scale), out=mags)
        np.log1p(mags, out=mags)
    elif recipe.magnitude == "db":
        np.maximum(mags, np.float32(DB_FLOOR), out=mags)
        np.log10(mags, out=mags)
        np.multiply(mags, np.float32(20.0), out=mags)
    elif recipe.magnitude != "linear":  # Recipe validates; a hand-made dict might not
        raise ValueError(f"unsupported magnitude {recipe.magnitude!r}")
    return mags


def window_features(windows: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Model input of a batch of windows (k, recipe.window): (k, frames, bands) in ``recipe.dtype``."""
    spectra = mel_power(windows, recipe) if recipe.frontend == "mel" else stft_magnitudes(windows, recipe)
    return to_dtype(compress(spectra, recipe), recipe.dtype)


@numba.njit(cache=True, nogil=True)
def _f32_to_f16_bits(x, out):  # pragma: no cover - compiled
    for i in range(x.size):
        v = x[i]
        sign = (v >> 16) & 0x8000
        v &= 0x7FFFFFFF
        if v >= 0x47800000:  # overflow -> inf; NaN stays a quiet NaN
            o = 0x7E00 if v > 0x7F800000 else 0x7C00
        elif v < 0x38800000:  # below float16's smallest normal: round into a subnormal
            shift = 126 - (v >> 23)
            if shift > 24:
                o = 0
            else:
                m = (v & 0x7FFFFF) | 0x800000
                o = m >> shift
                rem = m & ((1 << shift) - 1)
                half = 1 << (shift - 1)
                if rem > half or (rem == half and (o & 1)):
                    o += 1
        else:  # rebias the exponent, round the mantissa to nearest even
            o = ((v + 0xC8000FFF + ((v >> 13) & 1)) >> 13) & 0xFFFF
        out[i] = o | sign


def to_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    """Cast features to the stored dtype; float16 bit-identical to numpy's cast, ~40x faster.

    numpy 1.26 converts float32 to float16 in a scalar loop (~30 ns a value, more than the STFT
    itself); this compiled loop does the same round-to-nearest-even in ~1 ns.
    """
    if np.dtype(dtype) != np.float16:
        return a.astype(dtype, copy=False)
    a = np.ascontiguousarray(a, np.float32)
    out = np.empty(a.shape, np.uint16)
    _f32_to_f16_bits(a.reshape(-1).view(np.uint32), out.reshape(-1))
    return out.view(np.float16)
