"""Scoring on a real local Spark session: one row per file, exactly the mean of the window predictions."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from genreclf.config import Recipe
from genreclf.errors import ConfigError, OutputExistsError
from genreclf.featurize import featurize_file
from genreclf.featurize_job import run_featurize
from genreclf.score_job import run_score
from genreclf.scoreset import SUBMISSION_FILE, read_scores
from genreclf.scoring import excerpt


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, make_audio):
    audio = tmp_path_factory.mktemp("score") / "audio"
    audio.mkdir()
    rows = ["path,genre"]
    for style in ("techno", "ambient", "jazz"):
        for i in range(3):
            make_audio(audio / f"{style}{i}.mp3", 4.5 + 1.5 * i, style=style, seed=i)
            rows.append(f"{style}{i}.mp3,{style}")
    (audio / "labels.csv").write_text("\n".join(rows) + "\n")
    (audio / "broken.mp3").write_bytes(b"\x00" * 100)
    make_audio(audio / "short.mp3", 2.0)
    return audio


@pytest.fixture(scope="module")
def trained(spark, corpus, tmp_path_factory):
    from genreclf.train import run_train

    root = tmp_path_factory.mktemp("trained")
    features = root / "features"
    run_featurize(spark, [str(corpus)], str(features), labels=str(corpus / "labels.csv"))
    bundle = root / "bundle"
    run_train(str(features), str(bundle), epochs=1, batch_size=8, val_fraction=0.34, seed=1)
    return features, bundle


@pytest.fixture(scope="module")
def scored_from_audio(spark, corpus, trained, tmp_path_factory):
    """Scored with two decode threads and model calls of 4 windows, so that most tracks' windows
    span calls shared with other tracks: the tests below pin that this changes no number."""
    import dataclasses

    from genreclf.config import Settings

    _, bundle = trained
    out = tmp_path_factory.mktemp("scores") / "from_audio"
    log_dir = tmp_path_factory.mktemp("loads")
    env = spark.sparkContext.environment  # shipped with each Python UDF to its workers
    env["GENRECLF_MODEL_LOAD_LOG"] = str(log_dir)
    settings = Settings()
    settings = dataclasses.replace(settings, score=dataclasses.replace(settings.score, decode_threads=2, batch_size=4))
    try:
        summary = run_score(spark, str(bundle), str(out), inputs=[str(corpus)], csv=True, settings=settings)
    finally:
        del env["GENRECLF_MODEL_LOAD_LOG"]
    return out, summary, log_dir


def test_one_row_per_file_with_status_and_top_genre(scored_from_audio, corpus):
    out, summary, _ = scored_from_audio
    scores = read_scores(str(out)).set_index("track_id")
    files = sorted(p for p in os.listdir(corpus) if not p.endswith(".csv"))
    assert sorted(scores.index) == files
    assert scores.loc["broken.mp3", "status"] == "error" and scores.loc["broken.mp3", "error"].startswith("not audio")
    assert scores.loc["short.mp3", "error"].startswith("shorter than one 3 s window")
    ok = scores[scores["status"] == "ok"]
    assert len(ok) == 9 and summary["ok"] == 9 and summary["errors"] == 2
    for tid, row in ok.iterrows():
        probs = row["probabilities"]
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert row["genre"] == max(probs, key=probs.get) and row["confidence"] == pytest.approx(max(probs.values()))
    assert ok.loc["techno2.mp3", "n_windows"] == 4  # 7.5 s


def _by_hand(model, features, temperature=1.0, per="track"):
    """Predict each window, average, temper: softmax(log p / T) = p^(1/T) / sum p^(1/T)."""
    p = model.predict(features.astype(np.float32)[..., None], verbose=0).astype(np.float64)
    if per == "window":
        p = p ** (1 / temperature) / (p ** (1 / temperature)).sum(axis=1, keepdims=True)
    mean = p.mean(axis=0)
    if per == "track":
        mean = mean ** (1 / temperature) / (mean ** (1 / temperature)).sum()
    return mean


def test_scores_equal_an_independent_recomputation(scored_from_audio, trained, corpus):
    """Load model.keras by hand, featurize, predict each window, average, apply the bundle's
    temperature to the mean: the same within 1e-5."""
    import keras

    out, _, _ = scored_from_audio
    _, bundle = trained
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["calibration"] == "track"
    model = keras.saving.load_model(str(bundle / "model.keras"), compile=False)
    scores = read_scores(str(out)).set_index("track_id")
    for name in ("techno0.mp3", "ambient2.mp3", "jazz1.mp3"):
        feats = featurize_file(str(corpus / name), Recipe()).features
        np.testing.assert_allclose(scores.loc[name, "probability_vector"],
                                   _by_hand(model, feats, info["temperature"]), atol=1e-5)


@pytest.mark.parametrize("per, calibrate", [("window", True), ("track", True), ("track", False)])
def test_calibration_per_window_or_switched_off(spark, trained, corpus, tmp_path, per, calibrate):
    """A bundle calibrated per window tempers every window before the mean, per track the mean
    (in Spark SQL when scoring features); --no-calibration gives the reference's plain mean."""
    import keras

    features, bundle = trained
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    info = json.loads((copy / "bundle.json").read_text())
    info.update(calibration=per, temperature=2.5)
    (copy / "bundle.json").write_text(json.dumps(info))
    run_score(spark, str(copy), str(tmp_path / "s"), features=str(features), calibrate=calibrate)
    scores = read_scores(str(tmp_path / "s")).set_index("track_id")
    model = keras.saving.load_model(str(copy / "model.keras"), compile=False)
    for name in ("techno0.mp3", "jazz1.mp3"):
        feats = featurize_file(str(corpus / name), Recipe()).features
        expected = _by_hand(model, feats, 2.5 if calibrate else 1.0, per)
        np.testing.assert_allclose(scores.loc[name, "probability_vector"], expected, atol=1e-5)


def test_scoring_from_features_gives_the_same_numbers(spark, scored_from_audio, trained, tmp_path):
    out_audio, _, _ = scored_from_audio
    features, bundle = trained
    run_score(spark, str(bundle), str(tmp_path / "f"), features=str(features))
    a = read_scores(str(out_audio)).set_index("track_id")
    b = read_scores(str(tmp_path / "f")).set_index("track_id")
    assert sorted(a.index) == sorted(b.index)
    assert (a["status"] == b.loc[a.index, "status"]).all()
    for tid in a.index[a["status"] == "ok"]:
        np.testing.assert_allclose(a.loc[tid, "probability_vector"], b.loc[tid, "probability_vector"], atol=1e-6)
        assert a.loc[tid, "n_windows"] == b.loc[tid, "n_windows"]


def test_scoring_from_features_plans_no_shuffle(spark, trained, tmp_path):
    """Each task averages the tracks of the window files it reads: the plan has no Exchange."""
    from genreclf.config import Settings
    from genreclf.featureset import read_tracks
    from genreclf.score_job import _from_features, _task_options

    features, _ = trained
    options = _task_options(Recipe(), Settings(), ("none", 1.0), str(tmp_path / "staging"), {})
    frame = _from_features(spark, "unused", str(features), read_tracks(str(features)), options)
    plan = frame._jdf.queryExecution().executedPlan().toString()
    assert "MapInPandas" in plan and "Exchange" not in plan, plan


def test_every_track_has_its_windows_in_one_file(trained):
    """The featurize invariant score-from-features relies on."""
    import pyarrow.parquet as pq

    from genreclf import storage
    from genreclf.featureset import window_files

    features, _ = trained
    url = storage.join(storage.to_url(str(features)), "windows")
    fs, _ = storage.filesystem(url)
    files_of = {}
    for path in window_files(url):
        for tid in set(pq.read_table(path, filesystem=fs, columns=["track_id"])["track_id"].to_pylist()):
            files_of.setdefault(tid, []).append(path)
    assert files_of and all(len(files) == 1 for files in files_of.values())


def test_model_loads_once_per_worker_not_per_batch(scored_from_audio):
    _, _, log_dir = scored_from_audio
    loads = [line for f in os.listdir(log_dir) for line in open(os.path.join(log_dir, f))]
    workers = len(os.listdir(log_dir))
    assert 1 <= workers <= 2 and len(loads) == workers  # local[2]: at most two Python workers, one load each


def test_csv_submission_layout(scored_from_audio, trained):
    out, _, _ = scored_from_audio
    sub = pd.read_csv(out / SUBMISSION_FILE)
    assert list(sub.columns) == ["file_id", "ambient", "jazz", "techno"]
    assert len(sub) == 9 and "techno0" in set(sub["file_id"])
    np.testing.assert_allclose(sub.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)


def test_rerun_refuses_then_replaces_without_duplicates(spark, scored_from_audio, trained, corpus):
    out, _, _ = scored_from_audio
    _, bundle = trained
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_score(spark, str(bundle), str(out), inputs=[str(corpus)])
    before = read_scores(str(out))
    run_score(spark, str(bundle), str(out), inputs=[str(corpus)], overwrite=True)
    after = read_scores(str(out))
    assert len(after) == len(before) and after["track_id"].is_unique
    assert not [d for d in os.listdir(out) if ".tmp" in d]


def test_features_made_another_way_are_refused(spark, trained, tmp_path):
    import json

    features, bundle = trained
    bad = tmp_path / "bundle"
    bad.mkdir()
    info = json.loads((bundle / "bundle.json").read_text())
    info["recipe"]["stft_hop"] = 256
    (bad / "bundle.json").write_text(json.dumps(info))
    (bad / "model.keras").write_bytes((bundle / "model.keras").read_bytes())
    with pytest.raises(ConfigError, match="stft_hop model=256 features=512"):
        run_score(spark, str(bad), str(tmp_path / "out"), features=str(features))


@pytest.mark.parametrize("n, cap, expected", [(19, 0, (0, 19)), (19, 19, (0, 19)), (399, 19, (190, 209)), (20, 19, (0, 19))])
def test_centre_excerpt(n, cap, expected):
    s = excerpt(n, cap)
    assert (s.start, s.stop) == expected


def test_scoring_features_where_every_track_is_ok(spark, trained, tmp_path, make_audio):
    """No error rows at all: the tracks table's error column is all null and must still load."""
    features, bundle = trained
    audio = tmp_path / "clean"
    audio.mkdir()
    make_audio(audio / "a.mp3", 3.0)
    clean = tmp_path / "features"
    run_featurize(spark, [str(audio)], str(clean))
    run_score(spark, str(bundle), str(tmp_path / "out"), features=str(clean))
    assert read_scores(str(tmp_path / "out"))["status"].tolist() == ["ok"]


def test_submission_file_ids_are_unique_when_basenames_clash(tmp_path):
    from genreclf.scoreset import write_submission

    scores = pd.DataFrame({"track_id": ["a/x.mp3", "b/x.mp3", "y.mp3"], "path": ["/m/a/x.mp3", "/m/b/x.mp3", "/m/y.mp3"],
                           "status": ["ok"] * 3, "probability_vector": [[0.5, 0.5]] * 3})
    write_submission(scores, ["p", "q"], str(tmp_path / "s.csv"))
    assert pd.read_csv(tmp_path / "s.csv")["file_id"].tolist() == ["a/x", "b/x", "y"]


def test_a_corrupt_model_is_one_clear_error_before_any_task(spark, trained, corpus, tmp_path):
    features, bundle = trained
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "model.keras").write_bytes(b"PK\x03\x04 not a keras archive")
    with pytest.raises(ConfigError, match="model.keras cannot be loaded"):
        run_score(spark, str(broken), str(tmp_path / "out"), inputs=[str(corpus)])
    assert not (tmp_path / "out" / "scores").exists()


def test_scores_never_go_into_the_jobs_own_input(spark, trained):
    features, bundle = trained
    with pytest.raises(ConfigError, match="own input"):
        run_score(spark, str(bundle), str(features), features=str(features))


def _incremental(spark, bundle, out, audio, **kw):
    return run_score(spark, str(bundle), str(out), inputs=[str(audio)], incremental=True, **kw)


def test_incremental_scores_only_new_and_changed_files(spark, trained, corpus, tmp_path, make_audio):
    """Unchanged: nothing rescored (errors of unchanged files recur: kept too), the output identical.
    Then one file changed, one removed, one added: exactly two scored, one row dropped, the rest
    kept as they were. A rerun is a no-op."""
    _, bundle = trained
    audio = tmp_path / "audio"
    shutil.copytree(corpus, audio)
    out = tmp_path / "out"
    first = run_score(spark, str(bundle), str(out), inputs=[str(audio)])
    before = read_scores(str(out)).set_index("track_id")
    n_files = first["files_in"]
    assert set(before["precision"].dropna()) == {"float32"}  # auto on a CPU without native bfloat16
    assert before.loc["techno0.mp3", "size_bytes"] == (audio / "techno0.mp3").stat().st_size

    again = _incremental(spark, bundle, out, audio)
    assert first["errors"] and (again["kept"], again["scored"], again["retried"], again["dropped"]) == (n_files, 0, 0, 0)
    pd.testing.assert_frame_equal(read_scores(str(out)).set_index("track_id"), before)

    make_audio(audio / "jazz1.mp3", 7.5, style="techno", seed=9)  # changed: another size and mtime
    (audio / "ambient0.mp3").unlink()
    make_audio(audio / "new.mp3", 4.5, style="jazz", seed=5)
    changed = _incremental(spark, bundle, out, audio)
    assert (changed["kept"], changed["scored"], changed["dropped"]) == (n_files - 2, 2, 1)
    after = read_scores(str(out)).set_index("track_id")
    assert after.index.is_unique and len(after) == len(before)  # one removed, one added
    assert "ambient0.mp3" not in after.index and after.loc["new.mp3", "status"] == "ok"
    assert after.loc["jazz1.mp3", "size_bytes"] != before.loc["jazz1.mp3", "size_bytes"]
    for tid in ("techno0.mp3", "ambient2.mp3", "broken.mp3"):
        pd.testing.assert_series_equal(after.loc[tid], before.loc[tid])

    rerun = _incremental(spark, bundle, out, audio)
    assert (rerun["kept"], rerun["scored"], rerun["dropped"]) == (n_files, 0, 0)
    pd.testing.assert_frame_equal(read_scores(str(out)).set_index("track_id"), after)
    assert not [d for d in os.listdir(out) if d.startswith(".")]  # no staging or lock left


def test_incremental_retries_errors_that_may_not_recur():
    """A store's failure or a decoder crash is scored again; a file that is not audio is kept."""
    from genreclf.score_job import _count_failed_before, _keep_unchanged

    existing = pd.DataFrame({
        "track_id": ["a", "b", "c", "d"], "path": ["/m/a", "/m/b", "/m/c", "/m/d"],
        "status": ["ok", "error", "error", "error"],
        "error": [None, "not audio: no audio stream", "unreadable file: read failed mid-file: reset",
                  "decode failed: ValueError: boom"],
        "size_bytes": [1, 2, 3, 4], "mtime": [10.0, 20.0, 30.0, 40.0]})
    inputs = existing[["track_id", "path", "size_bytes", "mtime"]]
    kept, to_score = _keep_unchanged(existing, inputs, same_run=True)
    assert kept["path"].tolist() == ["/m/a", "/m/b"] and to_score["path"].tolist() == ["/m/c", "/m/d"]
    assert _count_failed_before(existing, to_score) == 2


def test_incremental_rescores_everything_for_another_bundle_or_settings(spark, trained, corpus, tmp_path):
    _, bundle = trained
    out = tmp_path / "out"
    run_score(spark, str(bundle), str(out), inputs=[str(corpus)])
    other = _incremental(spark, bundle, out, corpus, calibrate=False)
    assert other["kept"] == 0 and other["scored"] == other["files_in"]


def test_incremental_from_features_keeps_unchanged_tracks(spark, trained, tmp_path):
    features, bundle = trained
    out = tmp_path / "out"
    first = run_score(spark, str(bundle), str(out), features=str(features))
    before = read_scores(str(out))
    again = run_score(spark, str(bundle), str(out), features=str(features), incremental=True)
    assert (again["kept"], again["scored"]) == (first["ok"], 0)
    pd.testing.assert_frame_equal(read_scores(str(out)), before)


def test_bfloat16_agrees_with_float32_on_a_trained_bundle(trained, corpus):
    """Parity of the two precisions on the same windows: top-1 agreement and max |dp| (printed)."""
    from genreclf.inference import load
    from genreclf.scoring import predict

    _, bundle = trained
    windows = np.concatenate([featurize_file(str(p), Recipe()).features for p in sorted(corpus.glob("*[0-9].mp3"))])
    _, fp32, computed32 = load(str(bundle), "float32", 1)
    _, bf16, computed16 = load(str(bundle), "bfloat16", 1)
    assert (computed32, computed16) == ("float32", "bfloat16")
    p32, p16 = predict(fp32, windows), predict(bf16, windows)
    agree = float((p32.argmax(1) == p16.argmax(1)).mean())
    delta = float(np.abs(p32 - p16).max())
    print(f"bf16 vs fp32 on {len(windows)} windows: top-1 agreement {agree:.4f}, max |dp| {delta:.2e}")
    assert agree >= 0.99 and delta < 0.05


def test_precision_is_recorded_per_row(spark, trained, scored_from_audio, tmp_path):
    """A bfloat16 run says so in every scored row, and picks the same genres as float32."""
    import dataclasses

    from genreclf.config import Settings

    features, bundle = trained
    settings = Settings()
    settings = dataclasses.replace(settings, score=dataclasses.replace(settings.score, precision="bfloat16"))
    run_score(spark, str(bundle), str(tmp_path / "out"), features=str(features), settings=settings)
    bf16 = read_scores(str(tmp_path / "out")).set_index("track_id")
    fp32 = read_scores(str(scored_from_audio[0])).set_index("track_id")
    ok = bf16[bf16["status"] == "ok"]
    assert set(ok["precision"]) == {"bfloat16"} and bf16[bf16["status"] != "ok"]["precision"].isna().all()
    assert (ok["genre"] == fp32.loc[ok.index, "genre"]).all()
    with pytest.raises(ConfigError, match="float16.*needs GPU executors"):
        run_score(spark, str(bundle), str(tmp_path / "out16"), features=str(features),
                  settings=dataclasses.replace(settings, score=dataclasses.replace(settings.score,
                                                                                  precision="float16")))


def test_a_failed_score_leaves_no_staging_lock_or_shipped_bundle(spark, trained, corpus, tmp_path):
    """Was: a failed score left ``scores.tmp-*`` (not hidden) in the output and a 26 MB bundle zip
    in /tmp. A Python worker killed mid-task fails the job (local mode does not retry tasks)."""
    import tempfile

    from pyspark.errors import PySparkException
    from py4j.protocol import Py4JJavaError

    _, bundle = trained
    out = tmp_path / "out"
    shipped_before = {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("genreclf-ship-")}
    env = spark.sparkContext.environment
    env["GENRECLF_FAULT_ONCE"] = str(tmp_path / "fault-injected")
    try:
        with pytest.raises((Py4JJavaError, PySparkException)):
            run_score(spark, str(bundle), str(out), inputs=[str(corpus)])
    finally:
        del env["GENRECLF_FAULT_ONCE"]
    assert (tmp_path / "fault-injected").exists()
    assert os.listdir(out) == []  # no scores, no staging directory, no lock
    assert {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("genreclf-ship-")} == shipped_before


def test_files_without_a_size_still_get_their_rows(spark, trained, tmp_path, make_audio):
    """A FIFO and a file a catalogue names but the disk lacks have no size or mtime: their rows say
    why, with null size and mtime (NaN from pandas once broke the task writing them)."""
    _, bundle = trained
    audio = tmp_path / "audio"
    audio.mkdir()
    make_audio(audio / "a.mp3", 4.5)
    os.mkfifo(audio / "pipe.mp3")
    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_text("path\nmissing/gone.mp3\n")
    summary = run_score(spark, str(bundle), str(tmp_path / "out"), inputs=[str(audio), str(catalogue)])
    rows = read_scores(str(tmp_path / "out")).set_index("path")
    assert summary["files_in"] == 3 and len(rows) == 3
    pipe, gone = rows.loc[str(audio / "pipe.mp3")], rows.loc[str(tmp_path / "missing" / "gone.mp3")]
    assert pipe["error"].startswith("not a regular file") and gone["error"].startswith("unreadable file: not found")
    assert pd.isna(pipe["size_bytes"]) and pd.isna(gone["mtime"])
    assert rows.loc[str(audio / "a.mp3"), "size_bytes"] == (audio / "a.mp3").stat().st_size
