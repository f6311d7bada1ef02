"""The STFT is exactly the reference recipe's (librosa, symmetric Hann, reflect padding)."""

import librosa
import numpy as np
import pytest
import scipy.signal

from genreclf.audio.stft import analysis_window, stft_magnitudes
from genreclf.config import Recipe

pytestmark = pytest.mark.pure  # no Spark, no training: pytest -m pure

R = Recipe()


def reference(window):
    """What the reference implementation computed per window (librosa >= 0.9 needs pad_mode='reflect')."""
    spec = librosa.stft(window, n_fft=1024, hop_length=512, window=scipy.signal.get_window("hann", 1024, fftbins=False),
                        center=True, pad_mode="reflect")
    return np.abs(spec)[:, :128].T


def test_window_function_is_symmetric_hann():
    w = analysis_window(R)
    np.testing.assert_allclose(w, w[::-1])
    assert w[0] == 0 and w[-1] == 0


def test_matches_librosa_reference():
    rng = np.random.default_rng(0)
    windows = rng.standard_normal((3, R.window)).astype(np.float32)
    ours = stft_magnitudes(windows, R)
    assert ours.shape == (3, 128, 513) and ours.dtype == np.float32
    for w, got in zip(windows, ours):
        ref = reference(w)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.max())


def test_silence_is_finite_zero():
    out = stft_magnitudes(np.zeros((2, R.window), np.float32), R)
    assert np.isfinite(out).all() and not out.any()


def test_sine_peaks_at_its_bin():
    t = np.arange(R.window) / R.sample_rate
    freq = 1000.0
    out = stft_magnitudes(np.sin(2 * np.pi * freq * t).astype(np.float32), R)
    expected_bin = round(freq * R.n_fft / R.sample_rate)
    # Every frame but the first, whose left half is the reflect padding, peaks at the tone's bin.
    assert (out[0, 1:].argmax(axis=1) == expected_bin).all()


def test_float16_cast_is_bit_identical_to_numpy():
    from genreclf.audio.stft import to_dtype

    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = np.concatenate([bits[np.isfinite(bits)], [0.0, -0.0, 6.1e-5, 5.96e-8, 65504, 65520, np.inf, -np.inf]])
    values = values.astype(np.float32)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    got = to_dtype(values, "float16")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("magnitude, formula", [
    ("linear", lambda m: m),
    ("log", lambda m: np.log1p(100.0 * m)),
    ("db", lambda m: 20 * np.log10(np.maximum(m, 1e-5))),
])
def test_compressed_features_equal_their_formula(magnitude, formula):
    """window_features = formula(|librosa STFT|) in the stored float16, for every magnitude recipe."""
    from genreclf.audio.stft import window_features

    rng = np.random.default_rng(1)
    windows = (0.3 * rng.standard_normal((2, R.window))).astype(np.float32)
    windows[1, : R.window // 2] = 0  # silence: the log's and the floor's domain
    recipe = Recipe(magnitude=magnitude)
    got = window_features(windows, recipe)
    assert got.dtype == np.float16 and got.shape == (2, 128, 513)
    expected = np.stack([formula(reference(w).astype(np.float64)) for w in windows]).astype(np.float16)
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_featurize_uses_the_recipe_magnitude(tmp_path, make_audio):
    """The one seam: a file featurized with magnitude = log holds log1p(C |X|) of the linear features."""
    from genreclf.audio.extract import featurize_file

    path = make_audio(tmp_path / "a.mp3", 4.5, style="techno")
    linear = featurize_file(str(path), Recipe(dtype="float32")).features
    logged = featurize_file(str(path), Recipe(dtype="float32", magnitude="log", log_scale=10.0)).features
    np.testing.assert_allclose(logged, np.log1p(10.0 * linear), rtol=1e-5, atol=1e-6)


def test_the_preset_gives_the_recipe_musicnn_was_trained_on():
    from genreclf.config import DEFAULT_CONF, load_settings
    from genreclf.ml.musicnn import RECIPE

    assert load_settings(DEFAULT_CONF.replace("genreclf.toml", "musicnn.toml")).recipe == RECIPE
    assert RECIPE.shape == (187, 96)


def test_mel_front_end_matches_librosa_melspectrogram_on_the_same_samples():
    """musicnn's input as its code made it (librosa <= 0.8: centred frames, reflect padding, periodic
    Hann, power 2, Slaney mel), then float16, then log10(1 + 10000 x): within float32 rounding."""
    from genreclf.audio.stft import mel_power, window_features
    from genreclf.ml.musicnn import RECIPE as MEL

    rng = np.random.default_rng(5)
    t = np.arange(MEL.window) / MEL.sample_rate
    windows = np.stack([0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(MEL.window),
                        0.3 * rng.standard_normal(MEL.window)]).astype(np.float32)
    power = mel_power(windows, MEL)
    features = window_features(windows, MEL)
    assert features.shape == (2, 187, 96) and features.dtype == np.float32
    for w, ours, feats in zip(windows, power, features):
        ref = librosa.feature.melspectrogram(y=w, sr=16000, n_fft=512, hop_length=256, n_mels=96,
                                             pad_mode="reflect")[:, :187].T
        np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=1e-6 * ref.max())
        np.testing.assert_allclose(feats, np.log10(10000 * ref.astype(np.float16) + 1), atol=2e-3)
        np.testing.assert_array_equal(feats, np.log10(10000 * ours.astype(np.float16) + 1))
