"""Tags with no labels at all: ``score --model pretrained:musicnn-msd`` on real music (../shared/corpus-train):
one row per file, the 50 tag probabilities, and the top tags its sources say."""

import csv
import os
import shutil

import numpy as np
import pytest

from genreclf.errors import ConfigError
from genreclf.formats.scores import read_scores
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
        assert row["genre"] in allowed, (name, row["genre"], sorted(row["probabilities"].items(), key=lambda kv: -kv[1])[:3])
        assert row["n_windows"] == 10  # 30 s at 16 kHz: ten 187-frame patches
        assert list(row["probabilities"]) == tags and np.all(np.asarray(row["probability_vector"]) <= 1)
        assert row["confidence"] == pytest.approx(max(row["probability_vector"]))
    assert (tmp_path / "out" / "submission.csv").read_text().splitlines()[0].split(",")[1:4] == tags[:3]


def test_an_unknown_pretrained_model_is_one_line_naming_those_there_are(spark, clips, tmp_path):
    audio, _ = clips
    with pytest.raises(ConfigError, match="no such pretrained model; known: pretrained:musicnn-msd"):
        run_score(spark, "pretrained:vggish", str(tmp_path / "out"), inputs=[str(audio)])
