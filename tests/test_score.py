"""Scoring on a real local Spark session: one row per file, exactly the mean of the window predictions."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from genreclf.audio.extract import featurize_file
from genreclf.config import Recipe, ScoreSettings, Settings
from genreclf.errors import ConfigError, DamagedInputError, OutputExistsError
from genreclf.featurize import run_featurize
from genreclf.formats.scoreoutput import committed_location, read_scores
from genreclf.formats.scores import SUBMISSION_FILE
from genreclf.ml.inference import cpu_has_bf16, excerpt
from genreclf.score import run_score
from tests import hostenv
from tests.spies import resolutions

#: Scores compared with a float32 recomputation are computed in float32 on every CPU: the default
#: precision, auto, is bfloat16 where the CPU has it natively (tested on its own below).
FLOAT32 = Settings(score=ScoreSettings(precision="float32"))


@pytest.fixture(scope="module")
def corpus(labelled):
    """The shared labelled corpus (tests/conftest.py): 9 labelled tracks, a broken and a short file."""
    return labelled.audio


@pytest.fixture(scope="module")
def trained(labelled):
    """Its features and the bundle trained on them (tests/conftest.py)."""
    return labelled.features, labelled.bundle


@pytest.fixture(scope="module")
def scored_from_audio(spark, corpus, trained, tmp_path_factory):
    """Scored with two decode threads and model calls of 4 windows, so that most tracks' windows
    span calls shared with other tracks: the tests below pin that this changes no number."""
    import dataclasses

    _, bundle = trained
    out = tmp_path_factory.mktemp("scores") / "from_audio"
    log_dir = tmp_path_factory.mktemp("loads")
    env = spark.sparkContext.environment  # shipped with each Python UDF to its workers
    env["GENRECLF_MODEL_LOAD_LOG"] = str(log_dir)
    settings = dataclasses.replace(FLOAT32, score=dataclasses.replace(FLOAT32.score, decode_threads=2, batch_size=4))
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
    run_score(spark, str(copy), str(tmp_path / "s"), features=str(features), calibrate=calibrate, settings=FLOAT32)
    scores = read_scores(str(tmp_path / "s")).set_index("track_id")
    model = keras.saving.load_model(str(copy / "model.keras"), compile=False)
    for name in ("techno0.mp3", "jazz1.mp3"):
        feats = featurize_file(str(corpus / name), Recipe()).features
        expected = _by_hand(model, feats, 2.5 if calibrate else 1.0, per)
        np.testing.assert_allclose(scores.loc[name, "probability_vector"], expected, atol=1e-5)


def test_scoring_from_features_gives_the_same_numbers(spark, scored_from_audio, trained, tmp_path):
    out_audio, _, _ = scored_from_audio
    features, bundle = trained
    run_score(spark, str(bundle), str(tmp_path / "f"), features=str(features), settings=FLOAT32)
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
    from genreclf.formats.featureset import FeatureSet
    from genreclf.score.driver import _plan_features, _task_options

    features, _ = trained
    options = _task_options(Recipe(), Settings(), ("none", 1.0), str(tmp_path / "out"), {})
    opened = FeatureSet.open(str(features))
    tasks = _plan_features(opened, opened.tracks(), "", {}, 2)
    frame = tasks.frame(spark, "unused", options, range(len(tasks.keys)))
    plan = frame._jdf.queryExecution().executedPlan().toString()
    assert "MapInPandas" in plan and "Exchange" not in plan, plan


def test_every_track_has_its_windows_in_one_file(trained):
    """The featurize invariant score-from-features relies on."""
    import pyarrow.parquet as pq

    from genreclf.formats.featureset import window_files
    from genreclf.io import storage

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
    sub = pd.read_csv(committed_location(str(out), SUBMISSION_FILE))
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
    from genreclf.formats.scores import write_submission

    scores = pd.DataFrame({"track_id": ["a/x.mp3", "b/x.mp3", "y.mp3"], "path": ["/m/a/x.mp3", "/m/b/x.mp3", "/m/y.mp3"],
                           "status": ["ok"] * 3, "probability_vector": [[0.5, 0.5]] * 3})
    write_submission(scores, ["p", "q"], str(tmp_path / "s.csv"))
    assert pd.read_csv(tmp_path / "s.csv")["file_id"].tolist() == ["a/x", "b/x", "y"]


def test_a_corrupt_model_is_one_clear_error_before_any_task(spark, trained, corpus, tmp_path):
    features, bundle = trained
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "model.keras").write_bytes(b"PK\x03\x04 not a keras archive")
    with pytest.raises(DamagedInputError, match=r"model.keras is truncated or not a Keras archive: restore the bundle"):
        run_score(spark, str(broken), str(tmp_path / "out"), inputs=[str(corpus)])
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_scores_never_go_into_the_jobs_own_input(spark, trained):
    features, bundle = trained
    with pytest.raises(ConfigError, match="own input"):
        run_score(spark, str(bundle), str(features), features=str(features))


def test_overwrite_replaces_only_a_score_output(spark, trained, corpus, tmp_path):
    """--overwrite into a folder of the user's own files or into a featurize output is refused, as
    featurize refuses (it once committed a run beside them)."""
    features, bundle = trained
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for out, holds in ((tmp_path / "mine", "notes.txt"), (features, "recipe.json")):
        with pytest.raises(OutputExistsError, match=f"is not a score output \\(it holds .*{holds}"):
            run_score(spark, str(bundle), str(out), inputs=[str(corpus)], overwrite=True)
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def _incremental(spark, bundle, out, audio, **kw):
    return run_score(spark, str(bundle), str(out), inputs=[str(audio)], incremental=True, **kw)


def test_incremental_scores_only_new_and_changed_files(spark, trained, corpus, tmp_path, make_audio, monkeypatch):
    """Unchanged: nothing rescored (errors of unchanged files recur: kept too), the output identical.
    Then one file changed, one removed, one added: exactly two scored, one row dropped, the rest
    kept as they were. A rerun is a no-op, and resolves --output in at most two places."""
    _, bundle = trained
    audio = tmp_path / "audio"
    shutil.copytree(corpus, audio)
    out = tmp_path / "out"
    first = run_score(spark, str(bundle), str(out), inputs=[str(audio)])
    before = read_scores(str(out)).set_index("track_id")
    n_files = first["files_in"]
    # The default precision, auto, as resolved for this CPU (GENRECLF_CPU_FLAGS forces either answer).
    assert set(before["precision"].dropna()) == {hostenv.auto_precision()}
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

    places, bundle_places = resolutions(monkeypatch, out, bundle)
    rerun = _incremental(spark, bundle, out, audio)
    monkeypatch.undo()
    assert 1 <= len(places) <= 2, sorted(places)  # the output's handle and its lock (seen: the spy works); was 8
    assert 1 <= len(bundle_places) <= 2, sorted(bundle_places)  # the bundle's handle; was 3
    assert (rerun["kept"], rerun["scored"], rerun["dropped"]) == (n_files, 0, 0)
    pd.testing.assert_frame_equal(read_scores(str(out)).set_index("track_id"), after)
    assert not [d for d in os.listdir(out) if d.startswith(".") or d == "_genreclf.lock"]  # no staging or lock left
    assert sorted(os.listdir(out)) == ["current.json", json.loads((out / "current.json").read_text())["run"]]


def test_incremental_retries_errors_that_may_not_recur():
    """A store's failure or a decoder crash is scored again; a file that is not audio is kept."""
    from genreclf.formats.scores import count_failed_before, keep_unchanged

    existing = pd.DataFrame({
        "track_id": ["a", "b", "c", "d"], "path": ["/m/a", "/m/b", "/m/c", "/m/d"],
        "status": ["ok", "error", "error", "error"],
        "error": [None, "not audio: no audio stream", "unreadable file: read failed mid-file: reset",
                  "decode failed: ValueError: boom"],
        "size_bytes": [1, 2, 3, 4], "mtime": [10.0, 20.0, 30.0, 40.0]})
    inputs = existing[["track_id", "path", "size_bytes", "mtime"]]
    kept, to_score = keep_unchanged(existing, inputs, same_run=True)
    assert kept["path"].tolist() == ["/m/a", "/m/b"] and to_score["path"].tolist() == ["/m/c", "/m/d"]
    assert count_failed_before(existing, to_score) == 2


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


def _logit_scale(bundle, windows) -> float:
    """Largest |logit| of the float32 model on ``windows``: the softmax layer's input times its kernel."""
    import keras

    model = keras.saving.load_model(str(bundle / "model.keras"), compile=False)
    head = model.layers[-1]
    hidden = keras.Model(model.inputs, head.input).predict(windows, verbose=0)
    kernel, bias = head.get_weights()
    return float(np.abs(hidden.astype(np.float64) @ kernel + bias).max())


def _bf16_roundings(bundle) -> int:
    """Roundings to bfloat16 on the way to the logits: the input's cast, then the output of each layer
    that computes new values in bfloat16 (convolutions, dense, batch norm, average pooling)."""
    import keras

    from genreclf.ml.inference import cast_model

    cast = cast_model(keras.saving.load_model(str(bundle / "model.keras"), compile=False), "bfloat16")
    computing = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.BatchNormalization,
                 keras.layers.AveragePooling2D)
    return 1 + sum(isinstance(layer, computing) and layer.dtype_policy.compute_dtype == "bfloat16"
                   for layer in cast.layers)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16 (no amx_bf16 / avx512_bf16 "
                    "flag; force with GENRECLF_CPU_FLAGS=avx512_bf16): bfloat16 would only be emulated, slowly, "
                    "and auto computes float32 here")
def test_bfloat16_scores_agree_with_float32_within_its_rounding(spark, trained, corpus, tmp_path):
    """The same features scored in bfloat16 and float32 by real workers (plain means, no tempering):
    every |dp| within the bound bfloat16's 8-bit significand gives (tests/hostenv.py), and the same
    top genre wherever float32's margin between its two best exceeds twice that bound. Each row
    records the precision computed."""
    features, bundle = trained
    bf16 = Settings(score=ScoreSettings(precision="bfloat16"))
    run_score(spark, str(bundle), str(tmp_path / "bf16"), features=str(features), calibrate=False, settings=bf16)
    run_score(spark, str(bundle), str(tmp_path / "fp32"), features=str(features), calibrate=False, settings=FLOAT32)
    b16 = read_scores(str(tmp_path / "bf16")).set_index("track_id")
    f32 = read_scores(str(tmp_path / "fp32")).set_index("track_id")
    ok = b16.index[b16["status"] == "ok"]
    assert len(ok) == 9 and set(b16.loc[ok, "precision"]) == {"bfloat16"} and set(f32.loc[ok, "precision"]) == {"float32"}
    assert b16.loc[b16["status"] != "ok", "precision"].isna().all()

    p16, p32 = np.stack(b16.loc[ok, "probability_vector"]), np.stack(f32.loc[ok, "probability_vector"])
    windows = np.concatenate([featurize_file(str(corpus / tid), Recipe()).features for tid in ok])[..., None]
    bound = hostenv.bf16_probability_bound(_logit_scale(bundle, windows), _bf16_roundings(bundle))
    delta = float(np.abs(p16 - p32).max())
    top2 = np.sort(p32, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 2 * bound
    print(f"bf16 vs fp32 on {len(ok)} tracks: max |dp| {delta:.2e}, bound {bound:.2e}, "
          f"{int(decided.sum())} tracks with a decided top genre")
    assert delta <= bound
    assert (p16.argmax(1) == p32.argmax(1))[decided].all()


def test_float16_is_refused_without_gpu_executors(spark, trained, tmp_path):
    features, bundle = trained
    with pytest.raises(ConfigError, match="float16.*needs GPU executors"):
        run_score(spark, str(bundle), str(tmp_path / "out16"), features=str(features),
                  settings=Settings(score=ScoreSettings(precision="float16")))


def test_a_failed_score_leaves_no_staging_lock_or_shipped_bundle(spark, trained, corpus, tmp_path):
    """Was: a failed score left ``scores.tmp-*`` (not hidden) in the output and a 26 MB bundle zip
    in /tmp. A Python worker killed mid-task fails the job (local mode does not retry tasks)."""
    import tempfile

    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

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
    assert os.listdir(out) == []  # no scores, no run directory, no lock
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


def test_a_taggers_genre_is_the_most_probable_of_its_genre_tags():
    """Tags that are no genre (a decade, a mood) may top the list: they lead ``top_tags``, not ``genre``."""
    from genreclf.formats.scores import TOP_TAGS, score_row, score_table

    labels = ["00s", "rock", "sad", "jazz", "guitar", "pop"]
    row = score_row("t", "/m/t.mp3", "ok", None, 3, [0.9, 0.4, 0.8, 0.6, 0.1, 0.2])
    tagged = score_table([row], labels, genre_labels=["rock", "jazz", "pop"]).to_pylist()[0]
    assert (tagged["genre"], tagged["confidence"]) == ("jazz", 0.6)
    assert tagged["top_tags"] == ["00s", "sad", "jazz", "rock", "pop"][:TOP_TAGS]
    plain = score_table([row], labels).to_pylist()[0]
    assert plain["genre"] == "00s" and plain["top_tags"] == tagged["top_tags"]
    error = score_table([score_row("e", "/m/e.mp3", "error", "not audio")], labels).to_pylist()[0]
    assert error["genre"] is None and error["top_tags"] is None


def test_paths_the_listing_shows_dead_get_their_rows_on_the_driver_and_a_task_once_present(spark, trained, tmp_path,
                                                                                          make_audio):
    """2,000 missing paths and an empty file beside one real file: featurize and score give every row,
    with one task (the real file); a catalogue of dead paths alone starts no Spark job. Once a path
    exists, --incremental sends that file, and only it, to a task."""
    from genreclf.formats.featureset import read_tracks
    from genreclf.formats.scoreoutput import committed

    _, bundle = trained
    (tmp_path / "music").mkdir()
    make_audio(tmp_path / "music" / "real.mp3", 3.5)
    (tmp_path / "music" / "empty.mp3").write_bytes(b"")
    dead = [f"music/gone-{i:04d}.mp3" for i in range(2000)]
    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_text("path\n" + "\n".join(["music/real.mp3", "music/empty.mp3", *dead]) + "\n")
    features, scores = tmp_path / "features", tmp_path / "scores"

    made = run_featurize(spark, [str(catalogue)], str(features))
    scored = run_score(spark, str(bundle), str(scores), inputs=[str(catalogue)], settings=FLOAT32)
    for summary in (made, scored):
        assert (summary["tasks"], summary["answered_at_listing"], summary["files_in"]) == (1, 2001, 2002), summary
    tracks = read_tracks(str(features)).set_index("track_id")
    rows = read_scores(str(scores)).set_index("track_id")
    for table in (tracks, rows):
        assert len(table) == 2002 and table.loc["music/real.mp3", "status"] == "ok"
        assert (table.loc[dead, "error"] == "unreadable file: not found").all()
        assert table.loc["music/empty.mp3", "error"] == "empty file: 0 bytes"
    assert scored["files"] == 1 and len(os.listdir(scores / committed(str(scores))["run"] / "scores")) == 1

    jobs = len(spark.sparkContext.statusTracker().getJobIdsForGroup())
    only_dead = tmp_path / "dead.csv"
    only_dead.write_text("path\n" + "\n".join(dead) + "\n")
    alone = run_score(spark, str(bundle), str(tmp_path / "dead-scores"), inputs=[str(only_dead)], settings=FLOAT32)
    assert alone["tasks"] == 0 and alone["errors"] == 2000
    assert len(spark.sparkContext.statusTracker().getJobIdsForGroup()) == jobs  # no Spark job ran

    make_audio(tmp_path / dead[7], 3.5, style="jazz")  # now present
    again = run_featurize(spark, [str(catalogue)], str(features), incremental=True)
    rescored = _incremental(spark, bundle, scores, catalogue, settings=FLOAT32)
    assert (again["tasks"], again["answered_at_listing"], again["unchanged_skipped"]) == (1, 2000, 1)
    # score keeps the rows of errors that recur for an unchanged file (the empty one) as they were
    assert (rescored["tasks"], rescored["answered_at_listing"], rescored["scored"], rescored["kept"]) == (1, 1999, 1, 2)
    assert read_tracks(str(features)).set_index("track_id").loc[dead[7], "status"] == "ok"
    assert read_scores(str(scores)).set_index("track_id").loc[dead[7], "status"] == "ok"
