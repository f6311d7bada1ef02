"""Honest evaluation: temperature scaling that can only help the data it is fitted on, and
cross-validation folds that never split an artist or a track."""

import numpy as np
import pandas as pd
import pytest

from genreclf.crossval import cv_folds, repeated_folds
from genreclf.errors import ConfigError
from genreclf.ml.calibration import apply_temperature, fit_temperature, track_probabilities
from genreclf.ml.metrics import log_loss, reliability

pytestmark = pytest.mark.pure  # no Spark, no training: pytest -m pure


def _overconfident(seed, n_tracks=30, windows=5, classes=4, sharpness=6.0):
    """Window probabilities of a model that is right ~60 % of the time but near-certain always."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n_tracks)
    guess = np.where(rng.random(n_tracks) < 0.6, y, rng.integers(0, classes, n_tracks))
    codes = np.repeat(np.arange(n_tracks), windows)
    logits = rng.normal(0, 1, (n_tracks * windows, classes))
    logits[np.arange(len(codes)), guess[codes]] += 3
    z = sharpness * logits
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), codes, y


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", ["track", "window"])
def test_temperature_never_raises_the_fitted_log_loss(seed, mode):
    probs, codes, y = _overconfident(seed, sharpness=[0.3, 1.0, 6.0, 20.0, 1.5][seed])
    n = len(y)
    t = fit_temperature(probs, codes, y, mode=mode)
    before = log_loss(y, track_probabilities(probs, codes, n))
    after = log_loss(y, track_probabilities(probs, codes, n, temperature=t, mode=mode))
    assert after <= before + 1e-12
    assert t >= 1.0  # only ever softens (see calibration.T_RANGE)


@pytest.mark.parametrize("seed", range(3))
def test_temperature_leaves_the_argmax_unchanged(seed):
    probs, codes, y = _overconfident(seed)
    n = len(y)
    for t in (0.3, 1.7, 4.0):
        np.testing.assert_array_equal(apply_temperature(probs, t).argmax(1), probs.argmax(1))  # every window
        tracks = track_probabilities(probs, codes, n, temperature=t, mode="track")
        np.testing.assert_array_equal(tracks.argmax(1), track_probabilities(probs, codes, n).argmax(1))
        np.testing.assert_allclose(tracks.sum(1), 1.0)


def test_an_overconfident_model_is_softened_and_its_calibration_error_falls():
    probs, codes, y = _overconfident(0, n_tracks=200)
    n = len(y)
    t = fit_temperature(probs, codes, y, mode="track")
    assert t > 1.5
    raw, calibrated = track_probabilities(probs, codes, n), track_probabilities(probs, codes, n, temperature=t)
    assert reliability(y, calibrated)["ece"] < reliability(y, raw)["ece"]


def test_no_validation_tracks_means_no_temperature():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int), np.zeros(0, int)) == 1.0


def test_expected_calibration_error_by_hand():
    # two bins used: confidence 0.9 (2 right of 2 -> gap 0.1), confidence 0.6 (1 right of 2 -> gap 0.1)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 0, 0, 0])
    r = reliability(y, probs)
    assert r["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * abs(0.5 - 0.6))


def _catalogue(seed=0):
    """8 artists over 3 labels, 2-6 tracks each; one artist spans two labels."""
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(8):
        for t in range(int(rng.integers(2, 7))):
            label = ("rock", "jazz", "speech")[a % 3] if not (a == 7 and t == 0) else "jazz"
            rows.append((f"artist{a}/track{t}.mp3", label, f"artist{a}"))
    rows += [(f"loose/track{t}.mp3", "speech", None) for t in range(4)]  # no artist: each its own group
    return pd.DataFrame(rows, columns=["track_id", "label", "group"])


@pytest.mark.parametrize("k, seed", [(2, 0), (3, 1), (5, 2)])
def test_folds_never_share_an_artist_or_a_track(k, seed):
    tracks = _catalogue(seed)
    folds = cv_folds(tracks, k, seed)
    artist = tracks.set_index("track_id")["group"]
    tests = [set(te) for _, te in folds]
    assert len(folds) == k and all(tests)
    assert sorted(t for te in tests for t in te) == sorted(tracks["track_id"])  # each track tested exactly once
    for train, test in folds:
        assert not set(train) & set(test)
        assert set(train) | set(test) == set(tracks["track_id"])
        assert not set(artist[list(test)].dropna()) & set(artist[list(train)].dropna())
    assert cv_folds(tracks, k, seed) == folds  # seeded


def test_repetitions_reshuffle_the_folds_and_depend_only_on_the_tracks():
    """--repeat R: repetition r is the folds of seed + r - 1 (each track tested once per repetition); the
    same tracks give the same folds whatever else differs (their order, the features' recipe)."""
    tracks = _catalogue(0)
    folds = repeated_folds(tracks, 3, 7, repeats=3)
    assert [(r, i) for r, i, _, _ in folds] == [(r, i) for r in (1, 2, 3) for i in (1, 2, 3)]
    ordered = tracks.sort_values("track_id").reset_index(drop=True)
    for r in (1, 2, 3):
        assert [(tr, te) for rr, _, tr, te in folds if rr == r] == cv_folds(ordered, 3, 7 + r - 1)
    assert len({tuple(te) for *_, te in folds}) > 3  # the repetitions are shuffled differently
    shuffled = tracks.sample(frac=1, random_state=1).reset_index(drop=True)
    assert repeated_folds(shuffled, 3, 7, 3) == folds  # the tracks table's row order plays no part
    for bad in (0, 101, 1.5, True):
        with pytest.raises(ConfigError, match="--repeat"):
            repeated_folds(tracks, 3, 7, bad)


def test_too_many_folds_for_the_artists_is_refused():
    tracks = pd.DataFrame({"track_id": list("abcdef"), "label": ["x", "y"] * 3, "group": ["A"] * 3 + ["B"] * 3})
    with pytest.raises(ConfigError, match="only 2 groups"):
        cv_folds(tracks, 3, 0)
    with pytest.raises(ConfigError, match="must be an integer >= 2"):
        cv_folds(tracks, 1, 0)


def test_a_dataset_manifest_works_as_a_labels_csv(tmp_path):
    """``file``/``label``/``artist`` columns (corpus-train's MANIFEST.csv) are read as path/genre/group."""
    from genreclf.io.catalog import apply_labels, expand_inputs

    (tmp_path / "clips").mkdir()
    for name in ("a.mp3", "b.mp3"):
        (tmp_path / "clips" / name).write_bytes(b"x")
    (tmp_path / "MANIFEST.csv").write_text("file,label,artist\nclips/a.mp3,jazz,Ann\nclips/b.mp3,rock,Bob\n")
    table = apply_labels(expand_inputs([str(tmp_path / "clips")]).entries, str(tmp_path / "MANIFEST.csv"))
    assert table.set_index("track_id")[["label", "group"]].to_dict("index") == {
        "a.mp3": {"label": "jazz", "group": "Ann"}, "b.mp3": {"label": "rock", "group": "Bob"}}


def test_balanced_class_weights_as_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    from genreclf.train import class_weights

    counts = [30, 10, 0, 5]
    y = np.repeat([0, 1, 3], [30, 10, 5])
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=y)
    got = class_weights(counts)
    assert [got[0], got[1], got[3]] == pytest.approx(list(expected)) and got[2] == 1.0


def test_a_model_trained_on_linear_magnitudes_refuses_log_features():
    from genreclf.config import Recipe
    from genreclf.formats.bundle import bundle_info, check_recipe

    info = bundle_info(["a", "b"], Recipe())
    check_recipe(info, Recipe(), "the same features")
    with pytest.raises(ConfigError, match="magnitude model='linear' features='log'"):
        check_recipe(info, Recipe(magnitude="log"), "log features")
