"""Metrics against hand-computed values; the split never puts one track (or group) on both sides."""

import math

import numpy as np
import pandas as pd
import pytest

from genreclf.ml.calibration import track_probabilities
from genreclf.ml.metrics import classification_report, log_loss
from genreclf.ml.split import split_tracks

pytestmark = pytest.mark.pure  # no Spark, no training: pytest -m pure


def test_log_loss_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.5, 0.0]])
    y = np.array([0, 2, 1])
    expected = -(math.log(0.7) + math.log(0.8) + math.log(0.5)) / 3
    assert log_loss(y, probs) == pytest.approx(expected, rel=1e-9)


def test_log_loss_clips_zero_probabilities():
    assert log_loss(np.array([1]), np.array([[1.0, 0.0]])) == pytest.approx(-math.log(1e-15), rel=1e-3)


def test_report_by_hand():
    # truth:      A A B B C ; predicted: A B B B A
    y = np.array([0, 0, 1, 1, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 0]] * 0.8 + 0.2 / 3
    r = classification_report(y, probs, ["A", "B", "C"])
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # A: P=1/2 R=1/2 F1=1/2; B: P=2/3 R=1 F1=0.8; C: P=0 R=0 F1=0
    assert r["per_class"]["A"]["precision"] == pytest.approx(0.5)
    assert r["per_class"]["B"]["f1"] == pytest.approx(0.8)
    assert r["per_class"]["C"]["recall"] == 0.0
    assert r["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_track_probabilities_average_windows():
    means = track_probabilities(np.array([[1.0, 0.0], [0.2, 0.8], [0.0, 1.0]]), np.array([0, 1, 0]), 2)
    np.testing.assert_allclose(means[0], [0.5, 0.5])
    np.testing.assert_allclose(means[1], [0.2, 0.8])


def _tracks(n_per_label=10, labels=("rock", "jazz", "folk")):
    rows = [(f"{lab}-{i}", lab, f"artist-{lab}-{i // 3}") for lab in labels for i in range(n_per_label)]
    return pd.DataFrame(rows, columns=["track_id", "label", "artist"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_is_disjoint_complete_stratified_and_seeded(seed):
    tracks = _tracks()
    train, val = split_tracks(tracks, 0.2, seed)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(tracks["track_id"])
    val_labels = tracks.set_index("track_id").loc[val, "label"].value_counts()
    assert (val_labels == 2).all() and len(val_labels) == 3
    assert split_tracks(tracks, 0.2, seed) == (train, val)


def test_split_keeps_groups_together():
    tracks = _tracks()
    train, val = split_tracks(tracks, 0.25, 0, group_col="artist")
    artist = tracks.set_index("track_id")["artist"]
    assert not set(artist[train]) & set(artist[val])
    assert len(val) > 0
