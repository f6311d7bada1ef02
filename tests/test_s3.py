"""Every job on s3:// locations only, against a real S3-compatible server (moto) on 127.0.0.1: the
outputs equal a local-path run of the same corpus; a missing bucket, a missing object, a store that
answers 403 and a connection dropped mid-read each give a clear error or an error row."""

import time

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from genreclf.audio.extract import featurize_file
from genreclf.config import Recipe, Settings, StorageSettings
from genreclf.errors import ConfigError
from genreclf.featurize import run_featurize
from genreclf.formats.featureset import read_tracks, window_files
from genreclf.formats.schema import WINDOWS_DIR
from genreclf.formats.scoreoutput import committed, committed_location, read_scores
from genreclf.formats.scores import SUBMISSION_FILE
from genreclf.io import storage
from genreclf.score import run_score
from tests.s3server import CREDENTIALS, CuttableProxy, MotoServer

BUCKET = "catalogue"


def _settings(endpoint: str) -> Settings:
    return Settings(storage=StorageSettings(endpoint_url=endpoint, retries=2, retry_backoff_s=0.1))


@pytest.fixture(scope="module")
def store(s3, spark, tmp_path_factory, make_audio):
    """A generated corpus (with broken files) on local disk and uploaded to s3://catalogue/audio."""
    env = spark.sparkContext.environment  # shipped with each Python UDF to its workers
    env.update(CREDENTIALS)
    storage.configure(_settings(s3.endpoint).storage.to_dict())
    root = tmp_path_factory.mktemp("s3")
    audio = root / "audio"
    audio.mkdir()
    rows = ["path,genre"]
    for style in ("techno", "ambient"):
        (audio / style).mkdir()
        for i in range(3):
            make_audio(audio / style / f"{style}{i}.mp3", 4.5 + 1.5 * i, style=style, seed=i)
            rows.append(f"{style}/{style}{i}.mp3,{style}")
    (audio / "labels.csv").write_text("\n".join(rows) + "\n")
    (audio / "broken.mp3").write_bytes(b"\x00" * 100)
    (audio / "empty.mp3").write_bytes(b"")
    make_audio(audio / "short.mp3", 2.0)
    fs = pafs.S3FileSystem(endpoint_override=s3.endpoint.split("://")[1], scheme="http", allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    storage.upload_dir(str(audio), f"s3://{BUCKET}/audio")
    yield root, audio, f"s3://{BUCKET}"
    for key in CREDENTIALS:
        env.pop(key, None)
    storage.configure(StorageSettings().to_dict())


@pytest.fixture(scope="module")
def runs(spark, s3, store):
    """featurize -> train (1 epoch) -> score (audio and features) -> evaluate, once on s3:// only and
    once on local paths (scored with the same bundle), one application at a time."""
    from genreclf.evaluate import run_evaluate
    from genreclf.train import run_train

    root, audio, bucket = store
    settings = _settings(s3.endpoint)
    out = {}
    out["featurize_s3"] = run_featurize(spark, [f"{bucket}/audio"], f"{bucket}/features",
                                        labels=f"{bucket}/audio/labels.csv", settings=settings)
    out["featurize_local"] = run_featurize(spark, [str(audio)], str(root / "features"),
                                           labels=str(audio / "labels.csv"), settings=settings)
    run_train(f"{bucket}/features", f"{bucket}/model", settings=settings, epochs=1, batch_size=8,
              val_fraction=0.34, seed=1, cache_dir=str(root / "cache"))  # window files copied once
    out["score_s3"] = run_score(spark, f"{bucket}/model", f"{bucket}/scores", inputs=[f"{bucket}/audio"],
                                settings=settings, csv=True)
    out["score_local"] = run_score(spark, f"{bucket}/model", str(root / "scores"), inputs=[str(audio)],
                                   settings=settings)
    out["score_features_s3"] = run_score(spark, f"{bucket}/model", f"{bucket}/scores_f",
                                         features=f"{bucket}/features", settings=settings)
    out["evaluate_s3"] = run_evaluate(f"{bucket}/model", f"{bucket}/features", split="all",
                                      output=f"{bucket}/evaluation")
    out["evaluate_local"] = run_evaluate(f"{bucket}/model", str(root / "features"), split="all",
                                         output=str(root / "evaluation"))
    return out


def _windows(features: str):
    url = storage.join(storage.to_url(features), WINDOWS_DIR)
    fs, _ = storage.filesystem(url)
    tables = [pq.read_table(p, filesystem=fs) for p in window_files(url)]
    rows = [(t, w, s) for table in tables for t, w, s in zip(table["track_id"].to_pylist(),
                                                              table["window"].to_pylist(), table["stft"].to_pylist())]
    return sorted(rows)


def test_featurize_on_s3_equals_the_local_run(runs, store):
    root, _, bucket = store
    remote, local = read_tracks(f"{bucket}/features"), read_tracks(str(root / "features"))
    assert remote["path"].str.startswith(f"{bucket}/audio/").all()
    same = [c for c in remote.columns if c not in ("path", "mtime")]
    assert remote[same].equals(local[same])
    assert (remote["status"] == "error").sum() == 3  # broken, empty, short: rows, not crashes
    remote_windows, local_windows = _windows(f"{bucket}/features"), _windows(str(root / "features"))
    assert len(remote_windows) == runs["featurize_s3"]["windows_written"] > 0
    assert remote_windows == local_windows  # byte for byte


def test_train_and_evaluate_on_s3(runs, store):
    root, _, bucket = store
    cached = [p.name for p in (root / "cache").rglob("part-*.parquet")]
    assert sorted(cached) == sorted(p.rsplit("/", 1)[-1] for p in window_files(f"{bucket}/features/windows"))
    assert storage.is_file(f"{bucket}/model/model.keras") and storage.is_file(f"{bucket}/model/bundle.json")
    assert storage.is_file(f"{bucket}/evaluation/metrics.json")
    remote, local = runs["evaluate_s3"], runs["evaluate_local"]
    assert remote["tracks"]["n"] == local["tracks"]["n"] == 6
    assert remote["tracks"]["log_loss"] == pytest.approx(local["tracks"]["log_loss"], abs=1e-6)
    assert remote["windows"]["accuracy"] == local["windows"]["accuracy"]


def test_scores_on_s3_equal_the_local_run(runs, store):
    root, _, bucket = store
    remote = read_scores(f"{bucket}/scores").set_index("track_id")
    local = read_scores(str(root / "scores")).set_index("track_id")
    from_features = read_scores(f"{bucket}/scores_f").set_index("track_id")
    assert list(remote.index) == list(local.index) == list(from_features.index)
    assert (remote["status"] == local["status"]).all() and (remote["status"] == from_features["status"]).all()
    ok = remote["status"] == "ok"
    for other in (local, from_features):
        np.testing.assert_allclose(np.stack(remote.loc[ok, "probability_vector"]),
                                   np.stack(other.loc[ok, "probability_vector"]), atol=1e-6)
    assert storage.read_text(committed_location(f"{bucket}/scores", SUBMISSION_FILE)).startswith("file_id,")


def test_incremental_scoring_on_s3_scores_only_a_new_object(spark, s3, runs, store, make_audio, tmp_path):
    """Listing mtimes and sizes of objects are stable: a rerun keeps every ok row; one new object is
    the one file scored. An earlier submission.csv, no longer matching, is removed."""
    _, _, bucket = store
    settings = _settings(s3.endpoint)
    before = read_scores(f"{bucket}/scores")
    again = run_score(spark, f"{bucket}/model", f"{bucket}/scores", inputs=[f"{bucket}/audio"], settings=settings,
                      incremental=True)
    assert (again["kept"], again["scored"], again["dropped"]) == (len(before), 0, 0)
    assert read_scores(f"{bucket}/scores").equals(before)
    assert committed(f"{bucket}/scores")["submission"] is False
    assert not storage.exists(committed_location(f"{bucket}/scores", SUBMISSION_FILE))
    make_audio(tmp_path / "new.mp3", 4.5, style="ambient", seed=7)
    storage.write_bytes(f"{bucket}/audio/new.mp3", (tmp_path / "new.mp3").read_bytes())
    try:
        grown = run_score(spark, f"{bucket}/model", f"{bucket}/scores", inputs=[f"{bucket}/audio"],
                          settings=settings, incremental=True, csv=True)
        assert (grown["kept"], grown["scored"]) == (again["kept"], 1)
        assert read_scores(f"{bucket}/scores").set_index("track_id").loc["new.mp3", "status"] == "ok"
    finally:
        storage.delete(f"{bucket}/audio/new.mp3")


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_the_endpoint_may_come_from_the_aws_environment_alone(spark, s3, runs, store, monkeypatch, variable):
    """No [storage] endpoint_url: the AWS SDKs' variable names the store, on the driver and (handed over
    by it) in every task; the same tracks and scores as with the setting. AWS_ENDPOINT_URL_S3 wins."""
    _, _, bucket = store
    for name in storage.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, s3.endpoint)
    if variable == "AWS_ENDPOINT_URL_S3":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there: must lose
    settings = Settings(storage=StorageSettings(retries=2, retry_backoff_s=0.1))  # endpoint_url = ""
    out = f"{bucket}/env-{variable.lower()}"
    try:
        run_featurize(spark, [f"{bucket}/audio"], f"{out}/features", labels=f"{bucket}/audio/labels.csv",
                      settings=settings)
        run_score(spark, f"{bucket}/model", f"{out}/scores", features=f"{out}/features", settings=settings)
        same = [c for c in read_tracks(f"{bucket}/features").columns if c not in ("path", "mtime")]
        assert read_tracks(f"{out}/features")[same].equals(read_tracks(f"{bucket}/features")[same])
        got = read_scores(f"{out}/scores").set_index("track_id")
        want = read_scores(f"{bucket}/scores_f").set_index("track_id")
        assert sorted(got.index) == sorted(want.index) and (got["status"] == "ok").sum() == 6
        for tid in got.index[got["status"] == "ok"]:
            np.testing.assert_allclose(got.loc[tid, "probability_vector"], want.loc[tid, "probability_vector"],
                                       atol=1e-6)
    finally:
        storage.configure(_settings(s3.endpoint).storage.to_dict())


def test_the_pretrained_tagger_scores_a_bucket_as_it_scores_local_files(spark, s3, store, tmp_path):
    """score --model pretrained:musicnn-msd reads s3:// and writes s3:// like any bundle: the same rows
    and tag probabilities as from the same files on local disk."""
    root, audio, bucket = store
    settings = _settings(s3.endpoint)
    run_score(spark, "pretrained:musicnn-msd", f"{bucket}/tags", inputs=[f"{bucket}/audio"], settings=settings)
    run_score(spark, "pretrained:musicnn-msd", str(tmp_path / "tags"), inputs=[str(audio)], settings=settings)
    remote = read_scores(f"{bucket}/tags").set_index("track_id")
    local = read_scores(str(tmp_path / "tags")).set_index("track_id")
    assert sorted(remote.index) == sorted(local.index)
    assert (remote["status"] == local.loc[remote.index, "status"]).all() and (remote["status"] == "ok").sum() == 6
    for tid in remote.index[remote["status"] == "ok"]:
        assert len(remote.loc[tid, "probability_vector"]) == 50
        np.testing.assert_allclose(remote.loc[tid, "probability_vector"], local.loc[tid, "probability_vector"],
                                   atol=1e-6)


def test_a_nonexistent_bucket_is_a_clear_driver_error(spark, s3, store, tmp_path):
    with pytest.raises(ConfigError, match="no-such-bucket"):
        run_featurize(spark, ["s3://no-such-bucket/audio"], str(tmp_path / "f"), settings=_settings(s3.endpoint))


def test_an_output_bucket_removed_mid_run_is_one_error_naming_it(spark, s3, store, monkeypatch):
    """The output bucket is deleted the moment the run holds its lock, before any task writes: the
    tasks' writes fail, and the job ends with one StorageError naming the location, nothing
    committed (was: an internal error)."""
    from genreclf.errors import StorageError
    from genreclf.io.lock import OutputLock

    _, _, bucket = store
    fs = pafs.S3FileSystem(endpoint_override=s3.endpoint.split("://")[1], scheme="http", allow_bucket_creation=True,
                           allow_bucket_deletion=True)
    fs.create_dir("vanishing")
    acquire = OutputLock.acquire

    def acquire_then_remove_the_bucket(self):
        held = acquire(self)
        assert fs.get_file_info("vanishing/features/_genreclf.lock").type == pafs.FileType.File
        fs.delete_dir("vanishing")  # the bucket and everything in it
        return held

    monkeypatch.setattr(OutputLock, "acquire", acquire_then_remove_the_bucket)
    with pytest.raises(StorageError) as failure:
        run_featurize(spark, [f"{bucket}/audio"], "s3://vanishing/features", settings=_settings(s3.endpoint))
    message = str(failure.value)
    assert message.startswith("cannot write s3://vanishing/features/") and "\n" not in message
    assert "was the bucket or directory removed while the job ran?" in message


def test_a_missing_object_in_a_catalogue_gets_an_error_row(spark, s3, store, tmp_path):
    _, _, bucket = store
    storage.write_text(f"{bucket}/catalog.csv", "path,genre\naudio/techno/techno0.mp3,techno\naudio/gone.mp3,techno\n")
    run_featurize(spark, [f"{bucket}/catalog.csv"], str(tmp_path / "f"), settings=_settings(s3.endpoint))
    tracks = read_tracks(str(tmp_path / "f")).set_index("track_id")
    assert tracks.loc["audio/techno/techno0.mp3", "status"] == "ok"
    assert tracks.loc["audio/gone.mp3", "error"] == "unreadable file: not found"


def test_a_store_that_answers_403_is_a_clear_driver_error(s3, store, tmp_path):
    denying = MotoServer(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}).start()
    try:
        storage.configure({"endpoint_url": denying.endpoint})
        with pytest.raises(ConfigError, match="permission denied"):
            from genreclf.io.catalog import expand_inputs

            expand_inputs(["s3://catalogue/audio"])
    finally:
        storage.configure({"endpoint_url": s3.endpoint})
        denying.stop()


@pytest.fixture
def proxy(s3):
    p = CuttableProxy(s3.port)
    storage.configure({"endpoint_url": p.endpoint})
    yield p
    storage.configure({"endpoint_url": s3.endpoint})
    p.close()


def test_a_connection_dropped_mid_read_is_retried_to_the_same_row(proxy, store):
    root, audio, bucket = store
    storage.configure({"read_ahead_kb": 16})  # many requests per file, so the cut lands mid-read
    local = featurize_file(str(audio / "techno" / "techno2.mp3"), Recipe())
    size = (audio / "techno" / "techno2.mp3").stat().st_size
    proxy.cut_at = proxy.bytes_sent + size // 2  # half way through the file's bytes
    try:
        remote = featurize_file(f"{bucket}/audio/techno/techno2.mp3", Recipe())
    finally:
        storage.configure({"read_ahead_kb": 1024})
    assert proxy.cuts == 1 and proxy.cut_at is None  # the connection did drop mid-file
    assert remote.row["status"] == "ok", remote.row["error"]
    np.testing.assert_array_equal(remote.features, local.features)


def test_a_store_that_stays_down_gives_an_error_row_not_a_hang(proxy, store):
    _, _, bucket = store
    proxy.refuse(True)
    started = time.time()
    result = featurize_file(f"{bucket}/audio/techno/techno0.mp3", Recipe())
    assert result.row["status"] == "error" and result.row["error"].startswith("unreadable file: ")
    assert time.time() - started < 60


def test_settings_load_from_a_url(s3, store):
    from genreclf.config import load_settings

    _, _, bucket = store
    storage.write_text(f"{bucket}/conf/genreclf.toml", "[score]\nbatch_size = 7\n[storage]\nretries = 5\n")
    settings = load_settings(f"{bucket}/conf/genreclf.toml")
    assert settings.score.batch_size == 7 and settings.storage.retries == 5
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(f"{bucket}/conf/missing.toml")
