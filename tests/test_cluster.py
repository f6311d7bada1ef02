"""Cluster behaviour on a real standalone master + two workers on 127.0.0.1, through spark-submit.sh:
outputs equal local mode's, a scoring run of the recommended preset whose Python worker dies mid-job
still completes with exactly one row per track and the model's numbers, and executors run make pack's
environment.

Runs in its own pytest invocation (``-m cluster``) so only one Spark application is alive at a time.
"""

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from genreclf.formats.featureset import read_tracks
from genreclf.formats.scoreoutput import read_scores
from tests import hostenv
from tests import submit as spark_submit
from tests.standalone import StandaloneCluster

pytestmark = pytest.mark.cluster

# Executors sized to the small workers: 1 core and 1 GB each.
SMALL = ["--conf", "spark.executor.memory=512m", "--conf", "spark.executor.cores=1",
         "--conf", "spark.driver.memory=1g", "--conf", "spark.python.worker.memory=256m",
         "--conf", f"spark.executor.extraJavaOptions={spark_submit.JVM_OPTIONS}"]
# Scores compared across runs within 1e-6 are computed in float32 on every CPU (auto may be bfloat16).
FLOAT32 = ("--precision", "float32")


def submit(*args, master=None, extra=()):
    """spark-submit.sh on the cluster (``master``, small executors) or as ``extra`` says; its output."""
    return spark_submit.run(*(["--master", master, *SMALL] if master else []), *extra, *args).output


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_audio):
    root = tmp_path_factory.mktemp("cluster")
    audio = root / "audio"
    audio.mkdir()
    rows = ["path,genre"]
    for style in ("techno", "ambient"):
        for i in range(4):
            make_audio(audio / f"{style}{i}.mp3", 4.5 + 3.0 * (i % 2), style=style, seed=i)
            rows.append(f"{style}{i}.mp3,{style}")
    (audio / "labels.csv").write_text("\n".join(rows) + "\n")
    (audio / "empty.mp3").write_bytes(b"")
    (audio / "noise.mp3").write_bytes(os.urandom(5000))
    return root, audio


@pytest.fixture(scope="module")
def local_run(data):
    """The reference: featurize, train and score in local mode, one application at a time."""
    root, audio = data
    submit("featurize", "--input", str(audio), "--labels", str(audio / "labels.csv"), "--output", str(root / "local_f"),
           master=None, extra=["--master", "local[2]"])
    submit("train", "--features", str(root / "local_f"), "--model", str(root / "bundle"), "--epochs", "1",
           "--batch-size", "8", "--val-fraction", "0.25")
    submit("score", "--model", str(root / "bundle"), "--input", str(audio), "--output", str(root / "local_s"),
           *FLOAT32, extra=["--master", "local[2]"])
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    """Master and two workers; each worker announces one (fake) GPU: applications that ask for none are
    unaffected. Their JVMs boot while the local-mode reference runs (daemons, not a second application)."""
    c = StandaloneCluster(tmp_path_factory.mktemp("standalone"), workers=2, gpus=["0"]).launch()
    try:
        request.getfixturevalue("local_run")
        c.ready()
        yield c
    finally:
        c.stop()


def _busy(pid: int) -> bool:
    """Whether a JVM runs Python work now (it has a child process: PySpark's daemon and workers)."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if entry.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    return True
        except OSError:
            continue
    return False


def kill_a_busy_executor(cluster, killed: list, stop: threading.Event):
    """SIGKILL (by PID) the first executor JVM seen running Python tasks; record its pid."""
    while not stop.is_set():
        for pid in cluster.executors():
            if _busy(pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.05)


def test_featurize_on_the_cluster_equals_local_mode_even_when_an_executor_jvm_is_killed(cluster, data, local_run):
    root, audio = data
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=kill_a_busy_executor, args=(cluster, killed, stop))
    killer.start()
    try:
        log = submit("featurize", "--input", str(audio), "--labels", str(audio / "labels.csv"),
                     "--output", str(root / "cluster_f"), master=cluster.url)
    finally:
        stop.set()
        killer.join()
    assert killed, "no executor was killed mid-job"
    assert "featurize summary: 10 files in" in log
    cols = ["track_id", "label", "status", "error", "duration_s", "n_windows", "sample_rate", "channels", "codec"]
    local = read_tracks(str(root / "local_f"))[cols].sort_values("track_id").reset_index(drop=True)
    remote = read_tracks(str(root / "cluster_f"))[cols].sort_values("track_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(local, remote)
    # The windows themselves: byte-identical features per (track, window).
    import pyarrow.parquet as pq

    def windows(d):
        t = pq.read_table(str(d / "windows"), columns=["track_id", "window", "stft"]).to_pandas()
        return t.sort_values(["track_id", "window"]).reset_index(drop=True)

    a, b = windows(root / "local_f"), windows(root / "cluster_f")
    assert len(a) == len(b) == local["n_windows"].sum()
    assert (a["track_id"] == b["track_id"]).all() and (a["window"] == b["window"]).all()
    assert all(x == y for x, y in zip(a["stft"], b["stft"]))


@pytest.fixture(scope="module")
def recommended(data, tmp_path_factory):
    """conf/musicnn-fusion.toml (two pretrained backbones, one head): the corpus featurized with its recipe
    (local[2]) and a bundle trained on it."""
    from genreclf.config import DEFAULT_CONF

    _, audio = data
    root = tmp_path_factory.mktemp("recommended")
    preset = ["--conf", os.path.join(os.path.dirname(DEFAULT_CONF), "musicnn-fusion.toml")]
    submit("featurize", "--input", str(audio), "--labels", str(audio / "labels.csv"), "--output", str(root / "features"),
           *preset, extra=["--master", "local[2]"])
    submit("train", "--features", str(root / "features"), "--model", str(root / "bundle"), "--val-fraction", "0.25",
           *preset)
    return root, preset


def _window_means(bundle, features) -> pd.DataFrame:
    """Each track's mean window probabilities through ``bundle``'s model, from the featurized windows: what
    scoring from audio must give (decoding and features are the same code)."""
    from genreclf.formats.bundle import Bundle
    from genreclf.formats.featureset import FeatureSet
    from genreclf.ml.pipeline import WindowSet

    model = Bundle.open(str(bundle)).model()
    opened = FeatureSet.open(str(features))
    ids, probs = [], []
    for b in WindowSet(opened.windows(), opened.recipe).batches(16, shuffle=False):
        ids.append(b.track_ids)
        probs.append(model.predict(np.asarray(b.x, np.float32)[..., None], verbose=0))
    return pd.DataFrame(np.concatenate(probs)).groupby(np.concatenate(ids)).mean()


def test_the_recommended_preset_scores_mp3_on_the_cluster_through_a_killed_python_worker(cluster, data, recommended,
                                                                                       tmp_path):
    """Scored from mp3 on the cluster with conf/musicnn-fusion.toml (both backbones in one task, on the same
    decoded audio) while a Python worker dies mid-job: exactly one row per file, and each track's numbers
    are its windows' mean through the bundle, recomputed here from the featurized windows."""
    from genreclf.formats.bundle import load_bundle_info

    _, audio = data
    root, preset = recommended
    assert load_bundle_info(str(root / "bundle"))["feature_dims"] == [200, 200]
    marker = tmp_path / "fault-injected"
    submit("score", "--model", str(root / "bundle"), "--input", str(audio), "--output", str(root / "cluster_s"),
           *preset, *FLOAT32, master=cluster.url,
           extra=["--conf", f"spark.executorEnv.GENRECLF_FAULT_ONCE={marker}"])
    assert marker.exists(), "the fault was not injected"
    remote = read_scores(str(root / "cluster_s")).set_index("track_id")
    assert remote.index.is_unique and len(remote) == 10 and (remote["status"] == "ok").sum() == 8
    assert set(remote.index[remote["status"] != "ok"]) == {"empty.mp3", "noise.mp3"}
    expected = _window_means(root / "bundle", root / "features")
    for tid in remote.index[remote["status"] == "ok"]:
        np.testing.assert_allclose(remote.loc[tid, "probability_vector"], expected.loc[tid].to_numpy(), atol=1e-5)


def test_score_from_features_on_gpu_executors_running_the_packed_environment(cluster, data, local_run, tmp_path):
    """A GPU cluster whose nodes lack our virtualenv: make pack's archive shipped with ``--archives
    build/genreclf-env.tar.gz#env``, and Spark's GPU scheduling (conf/spark-gpu.conf's properties).
    Every executor's Python worker is the unpacked archive's interpreter, importing numpy and
    TensorFlow from it; every task's model is pinned to the GPU Spark gave it (CUDA_VISIBLE_DEVICES);
    no CUDA here, so precision auto computes on the CPU without oneDNN (kept off for GPU tasks):
    float32 whatever the CPU, and the numbers equal local mode's."""
    root, _ = data
    packed = os.path.join(spark_submit.ROOT, "build", "genreclf-env.tar.gz")
    assert os.path.exists(packed), "no packed environment: run make pack (make test does)"
    loads = tmp_path / "loads"
    loads.mkdir()
    gpu = ["--conf", "spark.executor.resource.gpu.amount=1", "--conf", "spark.task.resource.gpu.amount=1",
           "--conf", f"spark.executorEnv.GENRECLF_MODEL_LOAD_LOG={loads}", "--archives", f"{packed}#env",
           "--conf", "spark.cores.max=1"]  # one executor: one unpacking of the archive (~10 s a core), not two at once
    submit("score", "--model", str(root / "bundle"), "--features", str(root / "local_f"),
           "--output", str(root / "cluster_fs"), master=cluster.url, extra=gpu)
    lines = [line.rstrip("\n").split("\t") for f in loads.iterdir() for line in f.open()]
    auto = hostenv.auto_precision(gpu_task=True)  # float32 unless the suite was started with oneDNN forced on
    assert lines and all(precision == auto and gpus == "0" for _, precision, gpus, *_ in lines), lines
    for *_, executable, numpy_file, tensorflow_file in lines:
        env = os.path.dirname(os.path.dirname(executable))  # WORKER_DIR/app-ID/N/env: the archive Spark unpacked
        assert os.path.basename(env) == "env" and executable.startswith(cluster.workdir), executable
        assert numpy_file.startswith(env + os.sep) and tensorflow_file.startswith(env + os.sep), lines
    local = read_scores(str(root / "local_s")).set_index("track_id")
    remote = read_scores(str(root / "cluster_fs")).set_index("track_id")
    assert sorted(remote.index) == sorted(local.index)
    assert (remote["status"] == local.loc[remote.index, "status"]).all() and (remote["status"] == "ok").any()
    if auto != "float32":
        return  # bfloat16 against float32: tests/test_score.py's parity test bounds the difference
    for tid in remote.index[remote["status"] == "ok"]:
        np.testing.assert_allclose(remote.loc[tid, "probability_vector"], local.loc[tid, "probability_vector"],
                                   atol=1e-6)


def test_featurize_and_score_on_s3_from_the_cluster(cluster, data, local_run, s3, tmp_path):
    """The executors read the catalogue from a real S3 server and write windows and scores to it."""
    from genreclf.io import storage
    from tests.s3server import CREDENTIALS

    root, audio = data
    conf = tmp_path / "s3.toml"
    conf.write_text(f'[storage]\nendpoint_url = "{s3.endpoint}"\n')
    storage.configure({"endpoint_url": s3.endpoint})
    import pyarrow.fs as pafs

    pafs.S3FileSystem(endpoint_override=s3.endpoint.split("://")[1], scheme="http",
                      allow_bucket_creation=True).create_dir("cluster")
    storage.upload_dir(str(audio), "s3://cluster/audio")
    creds = [arg for key, value in CREDENTIALS.items() for arg in ("--conf", f"spark.executorEnv.{key}={value}")]
    log = submit("featurize", "--input", "s3://cluster/audio", "--labels", "s3://cluster/audio/labels.csv",
                 "--output", "s3://cluster/features", "--conf", str(conf), master=cluster.url, extra=creds)
    assert "featurize summary: 10 files in" in log
    cols = ["track_id", "label", "status", "error", "duration_s", "n_windows", "sample_rate", "channels", "codec"]
    local = read_tracks(str(root / "local_f"))[cols].sort_values("track_id").reset_index(drop=True)
    remote = read_tracks("s3://cluster/features")[cols].sort_values("track_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(local, remote)
    submit("score", "--model", str(root / "bundle"), "--input", "s3://cluster/audio", "--output",
           "s3://cluster/scores", "--conf", str(conf), *FLOAT32, master=cluster.url, extra=creds)
    local_scores = read_scores(str(root / "local_s")).set_index("track_id")
    remote_scores = read_scores("s3://cluster/scores").set_index("track_id")
    assert sorted(remote_scores.index) == sorted(local_scores.index)
    statuses = remote_scores["status"]
    assert (statuses == local_scores.loc[remote_scores.index, "status"]).all() and (statuses == "ok").sum() == 8
    for tid in remote_scores.index[remote_scores["status"] == "ok"]:
        np.testing.assert_allclose(remote_scores.loc[tid, "probability_vector"],
                                   local_scores.loc[tid, "probability_vector"], atol=1e-6)

