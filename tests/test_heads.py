"""The genre head on frozen features (genreclf.ml.heads): scikit-learn's L2 logistic regression on
standardised features, as one dense layer on the raw ones; a label without training windows keeps a
finite probability."""

import numpy as np
import pytest

from genreclf.ml.heads import fit_softmax

pytestmark = pytest.mark.pure


def _data(n=240, d=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 20, d) + rng.uniform(-50, 50, d)  # scales standardising must undo
    x[:, 0] += 3 * y
    return x, y


@pytest.mark.parametrize("c", [0.001, 0.1, 10.0])
def test_the_head_is_scikit_learns_logistic_regression_on_standardised_features(c):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = _data()
    head = fit_softmax(x, y, 3, c)
    z = StandardScaler().fit_transform(x)  # the intercept as a penalised column of ones, as ours
    reference = LogisticRegression(C=c, fit_intercept=False, tol=1e-10, max_iter=10_000).fit(
        np.hstack([z, np.ones((len(z), 1))]), y)
    np.testing.assert_allclose(np.exp(head.log_probabilities(x)),
                               reference.predict_proba(np.hstack([z, np.ones((len(z), 1))])), atol=1e-4)
    assert head.kernel.shape == (12, 3) and head.kernel.dtype == np.float32 and head.bias.shape == (3,)


def test_a_label_without_training_windows_keeps_a_finite_probability_and_weights_count():
    x, y = _data()
    head = fit_softmax(x, y, 4, 0.01, validation=(x[:20], y[:20]))
    p = np.exp(head.log_probabilities(x))
    assert np.all(p[:, 3] > 0) and p[:, 3].max() < p[:, :3].max(axis=1).min()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert set(head.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(head.history["loss"]) == head.iterations and head.history["loss"][-1] < np.log(4)
    weighted = fit_softmax(x, y, 4, 0.01, sample_weight=np.where(y == 0, 2.0, 1.0))  # class_weight's way in
    assert np.exp(weighted.log_probabilities(x))[:, 0].mean() > p[:, 0].mean()
