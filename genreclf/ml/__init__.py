"""Models: networks, the training input pipeline, split, metrics, calibration, inference and its per-worker cache, TensorFlow set-up, reports and plots."""
