"""The pretrained musicnn tagger: our Keras 3 network gives the original graph's outputs, and its weights
install from the package registry, checked, with one clear line when they are missing or altered."""

import os
import shutil
import zipfile

import numpy as np
import pytest

from genreclf.errors import ConfigError
from genreclf.ml import pretrained

pytestmark = pytest.mark.pure  # no Spark, no training: pytest -m pure

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "musicnn.npz")
VGG_FIXTURE = os.path.join(os.path.dirname(FIXTURE), "musicnn_vgg.npz")


@pytest.mark.parametrize("model", ["MSD_musicnn", "MTT_musicnn"])
def test_the_keras_network_gives_the_original_graphs_outputs(model):
    """tests/fixtures/musicnn.npz holds the original TF1 graph's sigmoid tags and 200-d penultimate
    layer on three mel patches of real clips (made by tests/fixtures/make_musicnn_fixture.py)."""
    from genreclf.ml.musicnn import build_musicnn, load_weights
    from genreclf.ml.tfsetup import configure_tensorflow

    configure_tensorflow(training=False)
    fixture = np.load(FIXTURE)
    network = build_musicnn()
    load_weights(network, pretrained.checkpoint(model))
    tags, penultimate = network.predict(fixture["x"][..., None], verbose=0)
    key = model.split("_")[0].lower()
    np.testing.assert_allclose(tags, fixture[f"{key}_tags"], atol=1e-4)
    np.testing.assert_allclose(penultimate, fixture[f"{key}_penultimate"], atol=1e-4)
    assert len(pretrained.labels(model)) == tags.shape[1] == 50


@pytest.mark.parametrize("model", ["MSD_vgg", "MTT_vgg"])
def test_the_keras_vgg_gives_the_original_graphs_outputs(model):
    """tests/fixtures/musicnn_vgg.npz holds the wheel's original VGG graphs' sigmoid tags and last pooled
    map on musicnn.npz's three mel patches (made by tests/fixtures/make_vgg_fixture.py)."""
    from genreclf.ml.musicnn import build_vgg, load_weights
    from genreclf.ml.tfsetup import configure_tensorflow

    configure_tensorflow(training=False)
    fixture = np.load(VGG_FIXTURE)
    network = build_vgg()
    load_weights(network, pretrained.checkpoint(model))
    tags, *_, pool5 = network.predict(np.load(FIXTURE)["x"][..., None], verbose=0)  # the musicnn test's patches
    np.testing.assert_allclose(tags, fixture[f"{model.lower()}_tags"], atol=1e-4)
    np.testing.assert_allclose(pool5, fixture[f"{model.lower()}_pool5"], atol=1e-4)
    assert len(pretrained.labels(model)) == tags.shape[1] == 50


def test_missing_or_altered_weights_are_one_line_naming_the_command(tmp_path, monkeypatch):
    copy = tmp_path / "share"
    shutil.copytree(pretrained.data_dir(), copy)
    monkeypatch.setenv("GENRECLF_DATA_DIR", str(copy))
    assert pretrained.checkpoint("MSD_musicnn").startswith(str(copy))
    data = copy / "musicnn" / "MSD_musicnn" / "model.data-00000-of-00001"
    with open(data, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01")
    with pytest.raises(ConfigError, match="altered .*make install"):
        pretrained.checkpoint("MSD_musicnn")
    data.unlink()
    with pytest.raises(ConfigError, match="missing: run make install"):
        pretrained.checkpoint("MSD_musicnn")
    with pytest.raises(ConfigError, match="no pretrained model 'VGG'"):
        pretrained.checkpoint("VGG")


def test_a_wheel_that_is_not_the_published_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GENRECLF_DATA_DIR", str(tmp_path / "empty"))
    fake = tmp_path / "musicnn-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("musicnn/configuration.py", "MSD_LABELS = ['rock']\n")
    with pytest.raises(ConfigError, match="SHA-256 is not musicnn==0.1.0's"):
        pretrained.install(str(fake))
    assert not (tmp_path / "empty").exists()
