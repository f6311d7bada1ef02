"""The feature recipe: how audio becomes model input, and the vocabularies of its keys.

The :class:`Recipe` is the reference solution's preprocessing (see ``../shared/REFERENCE.md``); it is
written next to every dataset and into every model bundle so that a model is never applied to
features made another way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from genreclf.errors import ConfigError, check_fields, one_of

#: Window functions of the STFT: the reference's symmetric Hann (``scipy.signal.hanning``), and the
#: periodic Hann of librosa and musicnn.
WINDOW_FUNCTIONS = ("hann-symmetric", "hann")
#: Front-ends (genreclf.audio.stft.window_features): STFT magnitudes over linear frequency (the
#: reference), or a power mel spectrogram of ``n_mels`` Slaney bands (musicnn's input).
FRONTENDS = ("stft", "mel")
#: Magnitude compressions (genreclf.audio.stft.compress): none (the reference), log1p(C*|X|), decibels,
#: and musicnn's log10(1 + 10000 x) of the float16-cast power.
MAGNITUDES = ("linear", "log", "db", "musicnn")
#: Floor of the "db" magnitude (-100 dB): silence maps to -100, not -inf.
DB_FLOOR = 1e-5
#: Stored feature dtypes.
FEATURE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class Recipe:
    """How audio becomes model input: mono at ``sample_rate``, windows, one STFT magnitude per window.

    Defaults are the reference implementation's: 3 s windows every 1.5 s at 22050 Hz, a centred
    reflect-padded STFT with a symmetric 1024-point Hann window and hop 512, the first 128 of its
    130 frames, stored as (128 time x 513 frequency) linear magnitudes.
    """

    sample_rate: int = 22050  # Hz, mono: every file is decoded and resampled to this
    window: int = 66150  # samples, 3 s
    hop: int = 33075  # samples, 1.5 s
    min_window_fraction: float = 0.9  # a window is kept when at least this much of it is audio
    n_fft: int = 1024  # STFT size: n_fft // 2 + 1 frequency bins (513)
    stft_hop: int = 512  # samples between STFT frames
    frames: int = 128  # STFT frames kept per window (the first 128 of 130)
    window_function: str = "hann-symmetric"  # the reference's scipy.signal.hanning; "hann": periodic (librosa's)
    frontend: str = "stft"  # "stft": magnitudes over 513 linear bins (the reference); "mel": power mel bands
    n_mels: int = 96  # mel bands (frontend "mel" only; Slaney scale and norm, as librosa)
    magnitude: str = "linear"  # "linear" (the reference), "log": log1p(log_scale*|X|), "db": 20*log10(max(|X|, DB_FLOOR))
    log_scale: float = 100.0  # C of the "log" magnitude (unused otherwise)
    dtype: str = "float16"  # stored precision of the features (halves storage vs float32)

    def __post_init__(self):
        check_fields(self, "recipe", {
            "sample_rate": (lambda v: isinstance(v, int) and 1000 <= v <= 384000, "an integer in [1000, 384000] (Hz)"),
            "n_fft": (lambda v: isinstance(v, int) and 16 <= v <= 65536, "an integer in [16, 65536]"),
            "window": (lambda v: isinstance(v, int) and v >= self.n_fft,
                       f"an integer of samples >= n_fft ({self.n_fft})"),
            "hop": (lambda v: isinstance(v, int) and v >= 1, "an integer of samples >= 1"),
            "min_window_fraction": (lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a number in (0, 1]"),
            "stft_hop": (lambda v: isinstance(v, int) and v >= 1, "an integer of samples >= 1"),
            "frames": (lambda v: isinstance(v, int) and 4 <= v <= self.window // self.stft_hop + 1,
                       f"an integer in [4, window // stft_hop + 1 = {self.window // self.stft_hop + 1}] "
                       "(the model's first convolution spans 4 frames; a window holds no more)"),
            "window_function": (lambda v: v in WINDOW_FUNCTIONS, one_of(WINDOW_FUNCTIONS)),
            "frontend": (lambda v: v in FRONTENDS, one_of(FRONTENDS)),
            "n_mels": (lambda v: isinstance(v, int) and 1 <= v <= self.n_fft // 2 + 1,
                       f"an integer in [1, n_fft // 2 + 1 = {self.n_fft // 2 + 1}]"),
            "magnitude": (lambda v: v in MAGNITUDES and (v != "musicnn" or self.frontend == "mel"),
                          one_of(MAGNITUDES) + ' ("musicnn" with frontend "mel")'),
            "log_scale": (lambda v: isinstance(v, (int, float)) and 0 < v < float("inf"), "a number > 0"),
            "dtype": (lambda v: v in FEATURE_DTYPES, one_of(FEATURE_DTYPES)),
        })

    @property
    def bins(self) -> int:
        """Frequency bins of the one-sided STFT."""
        return self.n_fft // 2 + 1

    @property
    def bands(self) -> int:
        """Frequency rows of the features: mel bands, or the STFT's bins."""
        return self.n_mels if self.frontend == "mel" else self.bins

    @property
    def min_window_samples(self) -> int:
        """Fewest decoded samples a (zero-padded) window may hold: 59535 for the defaults."""
        return int(round(self.window * self.min_window_fraction))

    @property
    def shape(self) -> tuple:
        """Shape of one window's features: (frames, bands)."""
        return (self.frames, self.bands)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
