"""Times one precision of a bundle in this process: what genreclf.ml.autoprecision runs in a fresh
process per candidate (oneDNN, fixed at TensorFlow's import, comes from the environment)."""

from __future__ import annotations

import sys
import time


def time_here(bundle_dir: str, precision: str, threads: int, batch: int) -> float:
    """Best of 2 predict calls (after one that traces) on ``batch`` random windows, seconds per window."""
    import numpy as np

    from genreclf.formats.bundle import Bundle
    from genreclf.ml.inference import load, predict

    recipe = Bundle.open(bundle_dir).recipe
    _, model, _ = load(bundle_dir, precision, threads)
    x = np.random.default_rng(0).random((batch, *recipe.shape), dtype=np.float32).astype(recipe.dtype)
    predict(model, x, batch)
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        predict(model, x, batch)
        best = min(best, time.perf_counter() - started)
    return best / batch


if __name__ == "__main__":  # python -m genreclf.ml.candidate_timing BUNDLE PRECISION THREADS BATCH
    print(time_here(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
