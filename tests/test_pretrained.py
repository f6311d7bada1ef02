"""Tags with no labels at all: ``score --model pretrained:musicnn-msd`` on real music (../shared/corpus-train):
one row per file, the 50 tag probabilities, and the top tags its sources say."""

import csv
import os
import shutil

import numpy as np
import pytest

from genreclf.errors import ConfigError
from genreclf.formats.scoreoutput import committed_location, read_scores
from genreclf.formats.scores import SUBMISSION_FILE
from genreclf.score import run_score

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "corpus-train")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two clips whose source tag says "Instrumental Rock", two of Kenta Cho's game music, and a
    file that is not audio: {file name: expected top tags}."""
    if not os.path.isdir(CORPUS):
        pytest.skip(f"the real corpus is not beside the repository ({CORPUS})")
    rows = list(csv.DictReader(open(os.path.join(CORPUS, "MANIFEST.csv"))))
    rock = [r["file"] for r in rows if "Instrumental Rock" in r["label_basis"]][:2]
    electronic = [r["file"] for r in rows if r["artist"] == "Kenta Cho"][:2]
    audio = tmp_path_factory.mktemp("pretrained") / "audio"
    audio.mkdir()
    expected = {}
    for files, tags in ((rock, {"rock", "metal"}), (electronic, {"electronic"})):
        for f in files:
            shutil.copy(os.path.join(CORPUS, f), audio / os.path.basename(f))
            expected[os.path.basename(f)] = tags
    (audio / "notes.mp3").write_text("not audio")
    return audio, expected


def test_the_msd_tagger_names_rock_and_electronic_music_with_no_labels(spark, clips, tmp_path):
    from genreclf.ml import pretrained

    audio, expected = clips
    summary = run_score(spark, "pretrained:musicnn-msd", str(tmp_path / "out"), inputs=[str(audio)], csv=True)
    scores = read_scores(str(tmp_path / "out")).set_index("track_id")
    tags = pretrained.labels("MSD_musicnn")
    assert len(scores) == len(expected) + 1 and summary["ok"] == len(expected)
    assert scores.loc["notes.mp3", "status"] == "error" and scores.loc["notes.mp3", "error"].startswith("not audio")
    for name, allowed in expected.items():
        row = scores.loc[name]
        assert row["genre"] in allowed, (name, row["genre"], row["top_tags"])
        assert row["genre"] in pretrained.GENRE_TAGS["MSD_musicnn"] and len(row["top_tags"]) == 5
        assert row["top_tags"][0] == max(row["probabilities"], key=row["probabilities"].get)
        assert row["n_windows"] == 10  # 30 s at 16 kHz: ten 187-frame patches
        assert list(row["probabilities"]) == tags and np.all(np.asarray(row["probability_vector"]) <= 1)
        assert row["confidence"] == pytest.approx(max(row["probability_vector"]))
    assert open(committed_location(str(tmp_path / "out"), SUBMISSION_FILE)).read().splitlines()[0].split(",")[1:4] == tags[:3]


def test_an_unknown_pretrained_model_is_one_line_naming_those_there_are(spark, clips, tmp_path):
    audio, _ = clips
    with pytest.raises(ConfigError, match="no such pretrained model; known: pretrained:musicnn-msd"):
        run_score(spark, "pretrained:vggish", str(tmp_path / "out"), inputs=[str(audio)])


def test_transfer_training_through_the_whole_pipeline_with_the_musicnn_preset(spark, labelled, tmp_path):
    """featurize -> train -> score -> evaluate with --conf conf/musicnn.toml on the shared labelled corpus:
    mel patches, a head on the frozen backbone, a self-contained bundle that scores and evaluates."""
    import dataclasses

    from genreclf.config import DEFAULT_CONF, load_settings
    from genreclf.evaluate import run_evaluate
    from genreclf.featurize import run_featurize
    from genreclf.formats.bundle import load_bundle_info
    from genreclf.ml.musicnn import RECIPE
    from genreclf.train import run_train

    settings = load_settings(DEFAULT_CONF.replace("genreclf.toml", "musicnn.toml"))
    features, bundle = tmp_path / "features", tmp_path / "bundle"
    run_featurize(spark, [str(labelled.audio)], str(features), labels=str(labelled.audio / "labels.csv"),
                  settings=settings)
    report = run_train(str(features), str(bundle), settings=settings, val_fraction=0.34, seed=1)
    info = load_bundle_info(str(bundle))
    assert info["network"] == "musicnn" and info["optimizer"] == "L-BFGS" and "musicnn" in info["credit"]
    assert info["backbone"] == "pretrained:musicnn-msd (frozen)" and info["feature_dims"] == [200]
    assert info["labels"] == ["ambient", "jazz", "techno"] and info["recipe"] == RECIPE.to_dict()
    assert report["tracks"]["n"] == 3
    run_score(spark, str(bundle), str(tmp_path / "scores"), inputs=[str(labelled.audio)], settings=settings)
    scores = read_scores(str(tmp_path / "scores")).set_index("track_id")
    ok = scores[scores["status"] == "ok"]
    assert len(ok) == 9 and set(ok["genre"]) <= set(info["labels"])
    np.testing.assert_allclose([sum(p.values()) for p in ok["probabilities"]], 1.0, atol=1e-5)
    again = run_evaluate(str(bundle), str(features), output=str(tmp_path / "evaluation"), settings=settings)
    assert again["tracks"]["accuracy"] == pytest.approx(report["tracks"]["accuracy"])
    _late_fusion_is_the_heads_mean_log_probabilities(features, tmp_path / "late", settings)


def _late_fusion_is_the_heads_mean_log_probabilities(features, bundle, settings):
    """A head each on musicnn's penultimate layer and VGG's (a second checkpoint of the wheel), fused late:
    the bundle gives softmax(mean of the heads' log-softmax), recomputed here from its own layers."""
    import keras

    from genreclf.formats.bundle import Bundle, load_bundle_info
    from genreclf.formats.featureset import FeatureSet
    from genreclf.ml.pipeline import WindowSet
    from genreclf.train import run_train

    run_train(str(features), str(bundle), settings=settings, val_fraction=0.34, seed=1, backbones="musicnn-msd,vgg-msd",
              fusion="late")
    info = load_bundle_info(str(bundle))
    assert info["fusion"] == "late" and info["feature_dims"] == [200, 256]
    model = Bundle.open(str(bundle)).model()
    opened = FeatureSet.open(str(features))
    x = next(WindowSet(opened.windows(), opened.recipe).batches(8, shuffle=False)).x[..., None].astype(np.float32)
    logps = []
    for name in ("musicnn_msd", "vgg_msd"):
        kernel, bias = model.get_layer(f"genre_{name}").get_weights()
        z = np.asarray(model.get_layer(name).predict(x, verbose=0), np.float64) @ kernel + bias
        logps.append(z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True))
    fused = np.exp(np.mean(logps, axis=0))
    np.testing.assert_allclose(model.predict(x, verbose=0), fused / fused.sum(1, keepdims=True), atol=1e-5)
    keras.backend.clear_session()

