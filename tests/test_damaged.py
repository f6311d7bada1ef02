"""Damaged inputs get one line naming what is damaged and what to do, exit code 2, no traceback:
a model bundle (model.keras or bundle.json missing, truncated, unparseable, a Lambda layer, labels
that are not a list of names, a label count the model does not predict), a featurize output (a
window file its commit names missing or truncated, n_windows that disagree with the window rows, a
track id twice) and a full disk."""

import json
import shutil
import subprocess

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genreclf.errors import DamagedInputError, StorageError
from genreclf.formats.bundle import BUNDLE_FILE, MODEL_FILE
from genreclf.formats.featureset import tracks_file, window_files
from genreclf.io import storage


def one_line_error(capsys, main, argv) -> str:
    """Run a job's main in this process: exit code 2 and exactly one ERROR line, no traceback."""
    import logging
    import sys

    try:
        rc = main(argv)
    finally:  # the job's log handler writes to this test's captured stderr: not to later tests'
        for handler in [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is sys.stderr]:
            logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if " ERROR " in line]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def evaluate(capsys, bundle, features) -> str:
    from jobs.evaluate import main

    return one_line_error(capsys, main, ["--model", str(bundle), "--features", str(features),
                                         "--output", str(bundle) + "-evaluation"])


def a_copy(src, tmp_path, name):
    return shutil.copytree(src, tmp_path / name)


def _lambda_model(path):
    import keras

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(str(path))


@pytest.mark.parametrize("damage, message", [
    ("missing model", "is not a genreclf model bundle (needs bundle.json and model.keras)"),
    ("truncated model", "model.keras is truncated or not a Keras archive: restore the bundle"),
    ("lambda layer", "model.keras holds a Lambda layer (code in the model: refused, Keras safe mode)"),
    ("bundle.json not json", "bundle.json is not valid JSON"),
    ("labels a string", "bundle.json 'labels' must be a non-empty list of label names, not 'abc'"),
    ("a label too few", "model.keras predicts 3 classes but bundle.json lists 2 labels"),
])
def test_a_damaged_bundle_is_one_line_naming_the_file(labelled, tmp_path, capsys, damage, message):
    bundle = a_copy(labelled.bundle, tmp_path, "bundle")
    info = json.loads((bundle / BUNDLE_FILE).read_text())
    if damage == "missing model":
        (bundle / MODEL_FILE).unlink()
    elif damage == "truncated model":
        data = (bundle / MODEL_FILE).read_bytes()
        (bundle / MODEL_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "lambda layer":
        _lambda_model(bundle / MODEL_FILE)
    elif damage == "bundle.json not json":
        (bundle / BUNDLE_FILE).write_text('{"labels": ["a", ')
    elif damage == "labels a string":
        (bundle / BUNDLE_FILE).write_text(json.dumps({**info, "labels": "abc"}))
    elif damage == "a label too few":
        (bundle / BUNDLE_FILE).write_text(json.dumps({**info, "labels": info["labels"][:2]}))
    line = evaluate(capsys, bundle, labelled.features)
    assert message in line and str(bundle) in line


def test_score_names_a_truncated_model_not_a_missing_file(spark, labelled, tmp_path):
    """Was: "File not found" for a model.keras cut in half."""
    from genreclf.score import run_score

    bundle = a_copy(labelled.bundle, tmp_path, "bundle")
    data = (bundle / MODEL_FILE).read_bytes()
    (bundle / MODEL_FILE).write_bytes(data[: len(data) // 3])
    with pytest.raises(DamagedInputError, match=r"model.keras is truncated or not a Keras archive"):
        run_score(spark, str(bundle), str(tmp_path / "out"), features=str(labelled.features))


def _damage_features(features, damage):
    windows = storage.join(storage.to_url(str(features)), "windows")
    first = window_files(windows)[0]
    if damage == "missing window file":
        storage.delete(first)
        return "window file", "named by its commit, is missing"
    if damage == "truncated window file":
        data = open(first, "rb").read()
        open(first, "wb").write(data[: len(data) // 2])
        return "window file", "is truncated or not Parquet"
    table = pq.read_table(tracks_file(str(features)))
    rows = table.to_pandas()
    if damage == "wrong n_windows":
        ok = rows.index[rows["status"] == "ok"][0]
        rows.loc[ok, "n_windows"] += 1
        expected = "windows but its tracks table counts"
    else:  # a duplicated row
        rows = pd.concat([rows, rows.iloc[[0]]])
        expected = "names 1 track id(s) twice"
    pq.write_table(pa.Table.from_pandas(rows, schema=table.schema, preserve_index=False)
                   .replace_schema_metadata(table.schema.metadata), tracks_file(str(features))[len("file://"):])
    return "tracks table" if "twice" in expected else "window files", expected


@pytest.mark.parametrize("damage", ["missing window file", "truncated window file", "wrong n_windows",
                                    "duplicated track id"])
def test_a_damaged_featurize_output_is_one_line_for_train_and_score(spark, labelled, tmp_path, capsys, damage):
    from genreclf.score import run_score
    from jobs.train import main

    features = a_copy(labelled.features, tmp_path, "features")
    what, expected = _damage_features(features, damage)
    line = one_line_error(capsys, main, ["--features", str(features), "--model", str(tmp_path / "m"), "--epochs", "1"])
    assert f"featurize output {features} is damaged" in line and expected in line and what in line
    assert "featurize it again with --overwrite" in line
    with pytest.raises(DamagedInputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run_score(spark, str(labelled.bundle), str(tmp_path / "scores"), features=str(features))


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a disk that fills during a featurize run (needs the right to mount)."""
    where = tmp_path / "disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    yield where
    subprocess.run(["umount", str(where)], check=True)


def test_featurize_onto_a_full_disk_is_one_line_naming_the_file(spark, labelled, small_disk):
    """Was: 133 log lines of task tracebacks."""
    from genreclf.featurize import run_featurize

    out = small_disk / "features"
    with pytest.raises(StorageError, match=rf"^no space left on device while writing {out}/windows/\S+: free space "
                                           r"there or write to another location \(nothing was committed\)$"):
        run_featurize(spark, [str(labelled.audio)], str(out))
    assert not (out / "tracks").exists() and not (out / "_genreclf.lock").exists()
