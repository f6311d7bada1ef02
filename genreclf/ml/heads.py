"""The genre head on frozen features: an L2-regularised softmax regression (multinomial logistic
regression over every label, intercepts penalised too, so a label without training windows keeps a
finite probability), on features standardised by the training windows' mean and spread, fitted
full-batch by L-BFGS: deterministic, seconds for 10^4 windows, no epochs or learning rate to tune.

The objective is scikit-learn's with ``fit_intercept=False`` and a column of ones appended:
``C * sum(cross-entropy) + |W|^2 / 2``; ``c`` (``[train] head_c``) was chosen by repeated
artist-grouped cross-validation (docs/quality.md): on corpus-train's musicnn features 0.01 -> 0.001
lowered the 5 x 5 log loss 1.20 -> 1.06 (the Adam head with early stopping it replaced: 1.11).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: L-BFGS iterations at most; the fits on corpus-train converge in 60-200.
MAX_ITERATIONS = 1000
#: Floor of a feature's spread when standardising (a constant feature stays 0, not NaN).
MIN_SPREAD = 1e-6


@dataclass(frozen=True)
class Head:
    """A fitted head as one dense layer on the raw features: ``softmax(x @ kernel + bias)``
    (the standardisation folded in)."""

    kernel: np.ndarray  # (features, classes), float32
    bias: np.ndarray  # (classes,), float32
    history: dict  # per L-BFGS iteration: loss, accuracy (and val_loss, val_accuracy when given)
    iterations: int

    def log_probabilities(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, np.float64) @ self.kernel + self.bias
        return z - _logsumexp(z)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return top + np.log(np.exp(z - top).sum(axis=1, keepdims=True))


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, c: float, *, sample_weight=None,
                validation: tuple | None = None) -> Head:
    """The head on features ``x`` (n, d) with labels ``y`` (n,) in [0, n_classes); ``validation``
    (x, y) is only reported per iteration (the fit does not look at it)."""
    from scipy.optimize import minimize

    x = np.asarray(x, np.float64)
    mean, spread = x.mean(axis=0), np.maximum(x.std(axis=0), MIN_SPREAD)
    z = np.hstack([(x - mean) / spread, np.ones((len(x), 1))])
    onehot = np.eye(n_classes)[np.asarray(y)]
    w = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    dims = (z.shape[1], n_classes)

    def objective(theta):
        weights = theta.reshape(dims)
        logits = z @ weights
        logp = logits - _logsumexp(logits)
        residual = (np.exp(logp) - onehot) * w[:, None]
        return (c * -(w * (onehot * logp).sum(axis=1)).sum() + 0.5 * (theta ** 2).sum(),
                (c * z.T @ residual + weights).ravel())

    history: dict = {}
    head = None

    def record(theta):
        nonlocal head
        head = _folded(theta.reshape(dims), mean, spread, history, 0)
        for prefix, (xs, ys) in (("", (x, y)), *((("val_", validation),) if validation else ())):
            logp = head.log_probabilities(xs)
            ys = np.asarray(ys)
            history.setdefault(prefix + "loss", []).append(float(-logp[np.arange(len(ys)), ys].mean()))
            history.setdefault(prefix + "accuracy", []).append(float((logp.argmax(axis=1) == ys).mean()))

    result = minimize(objective, np.zeros(dims[0] * dims[1]), jac=True, method="L-BFGS-B", callback=record,
                      options={"maxiter": MAX_ITERATIONS})
    return _folded(result.x.reshape(dims), mean, spread, history, int(result.nit))


def _folded(weights: np.ndarray, mean: np.ndarray, spread: np.ndarray, history: dict, iterations: int) -> Head:
    """The weights on standardised features (+ intercept row) as one dense layer on raw features."""
    kernel = weights[:-1] / spread[:, None]
    bias = weights[-1] - mean @ kernel
    return Head(kernel.astype(np.float32), bias.astype(np.float32), history, iterations)
