"""Temperature scaling (Guo et al. 2017, arXiv 1706.04599): one scalar T fitted on validation tracks.

A calibrated distribution is ``softmax(log p / T)``: T > 1 softens an over-confident model (T < 1
would sharpen; see T_RANGE for why it is not fitted), and the class order (hence the argmax) never
changes. Log
probabilities stand in for logits (softmax(log p) = p, so they differ by a constant per row).

Two places to apply T (``[train] calibration``, :data:`genreclf.config.CALIBRATION_MODES`; "none" fits
nothing, T = 1, the reference):
- ``"track"``: on the mean of a track's window probabilities; track-level argmax and accuracy are
  exactly unchanged.
- ``"window"``: on every window, then averaged; may change a track's argmax.
"""

from __future__ import annotations

import numpy as np

#: Temperatures are searched in [1, 50] (on log T): calibration only softens. A network trained to
#: near-zero training loss is over-confident (Guo et al.), and a T < 1 fitted on a validation split
#: of ~15-20 tracks fits its noise: in the reference recipe's 5-fold cross-validation on
#: corpus-train (docs/quality.md), the one fold that fitted T = 0.71 raised its test log loss from
#: 15.6 to 17.4, while the four with T = 1.7-1.9 lowered theirs by 4-34 %.
T_RANGE = (1.0, 50.0)
#: Probabilities floor before the log: float32 softmax underflows to 0 for logit gaps > ~104.
TINY = 1e-45


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of probabilities (n, classes) -> softmax(log p / T), float64."""
    z = np.log(np.maximum(np.asarray(probs, np.float64), TINY)) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def track_probabilities(window_probs: np.ndarray, codes: np.ndarray, n_tracks: int, *,
                        temperature: float = 1.0, mode: str = "track") -> np.ndarray:
    """Each track's probability vector from its windows (``codes[i]`` = track index of window i)."""
    if mode not in ("track", "window", "none"):
        raise ValueError(f"unknown calibration mode {mode!r}")
    p = np.asarray(window_probs, np.float64)
    if mode == "window" and temperature != 1.0:
        p = apply_temperature(p, temperature)
    sums = np.zeros((n_tracks, p.shape[1]))
    np.add.at(sums, codes, p)
    means = sums / np.maximum(np.bincount(codes, minlength=n_tracks), 1)[:, None]
    if mode == "track" and temperature != 1.0:
        means = apply_temperature(means, temperature)
    return means


def _nll(track_probs: np.ndarray, y: np.ndarray) -> float:
    from genreclf.ml.metrics import EPS

    p = np.clip(track_probs[np.arange(len(y)), y], EPS, 1 - EPS)
    return float(-np.mean(np.log(p)))


def fit_temperature(window_probs: np.ndarray, codes: np.ndarray, y_tracks: np.ndarray, *, mode: str = "track") -> float:
    """The T in T_RANGE minimising the validation tracks' mean log loss; 1.0 when nothing beats it (or no data).

    A bounded 1-D search on log T; T = 1 is always a candidate, so calibration never raises the
    validation log loss it was fitted on.
    """
    from scipy.optimize import minimize_scalar

    if mode == "none" or len(y_tracks) == 0:
        return 1.0
    n = len(y_tracks)

    def loss(log_t):
        return _nll(track_probabilities(window_probs, codes, n, temperature=float(np.exp(log_t)), mode=mode), y_tracks)

    best = minimize_scalar(loss, bounds=tuple(np.log(T_RANGE)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x)) if best.fun < loss(0.0) else 1.0


def fit_temperatures(window_probs: np.ndarray, codes: np.ndarray, y_tracks: np.ndarray) -> dict:
    """The fitted temperature of each mode that applies one: {"track": T, "window": T}."""
    return {mode: fit_temperature(window_probs, codes, y_tracks, mode=mode) for mode in ("track", "window")}
