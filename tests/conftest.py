"""Shared fixtures: one real local Spark session for the whole run, and audio made at test time."""

import os
import sys
from typing import NamedTuple

import numpy as np
import pytest

from genreclf.audio.synth import encode, synthesize
from tests import hostenv, submit
from tests.corpus import LABELLED_TRAINING

hostenv.pin_test_process()

#: Session servers the selected tests need, started as collection ends (moto ~3 s, MLflow ~10 s of
#: imports before they answer) so that they boot while the first tests run; their fixtures wait.
_EARLY: dict = {}
_EARLY_DIRS: list = []


def pytest_collection_finish(session):
    import tempfile

    from tests.mlflowserver import MlflowServer
    from tests.s3server import MotoServer

    wanted = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    for name, server in (("s3", MotoServer), ("mlflow_server", MlflowServer)):
        if name in wanted and not session.config.option.collectonly:
            _EARLY_DIRS.append(tempfile.mkdtemp(prefix=f"genreclf-{name}-"))
            _EARLY[name] = server(_EARLY_DIRS[-1]).launch()


def pytest_sessionfinish(session):
    import shutil

    for server in _EARLY.values():  # launched for tests that never ran (-x, -k after a failure)
        server.stop()
    _EARLY.clear()
    for where in _EARLY_DIRS:
        shutil.rmtree(where, ignore_errors=True)


def _session_server(name: str, make):
    """The server launched early for this session, else a new one; ready when returned."""
    server = _EARLY.pop(name, None) or make().launch()
    return server.ready()


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A real local[2] SparkSession with modest memory, stopped at the end of the run."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    from genreclf.io.spark import worker_environment

    worker_environment()

    with hostenv.launching():  # the JVM and its Python workers: the environment the suite started with
        session = (SparkSession.builder.master("local[2]").appName("genreclf-tests")
                   .config("spark.driver.memory", "2g")
                   .config("spark.driver.extraJavaOptions", submit.JVM_OPTIONS)
                   .config("spark.sql.execution.arrow.maxRecordsPerBatch", "32")
                   .config("spark.sql.shuffle.partitions", "4")
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.executorEnv." + hostenv.ONEDNN_ENV, hostenv.session_worker_onednn())
                   .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def make_audio():
    """make_audio(path, duration_s, sr=22050, kind='mp3', style='rock', **encode_kw) -> path."""

    def _make(path, duration_s, sr=22050, kind="mp3", style="rock", seed=0, silent=False, **kw):
        y = np.zeros(int(round(duration_s * sr)), np.float32) if silent else synthesize(style, seed, duration_s, sr)
        kw.setdefault("channels", 1)
        return encode(str(path), y, sr, kind, **kw)

    return _make


@pytest.fixture(scope="session")
def mixed_corpus(tmp_path_factory, make_audio):
    """The mixed real-world corpus of tests/corpus.py (every bad-input case), made once per run.

    Returns (directory, {file name: expectation}); a sidecar cover.jpg sits beside the audio.
    """
    from tests import corpus

    audio = tmp_path_factory.mktemp("mixed") / "catalogue"
    expect = corpus.build(audio, make_audio, long_file=True)
    (audio / "cover.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return audio, expect


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-compatible server (moto_server) on 127.0.0.1 for the session; its endpoint.

    Credentials are moto's test ones, set in this process's environment (and so in spark-submit's)."""
    from tests.s3server import CREDENTIALS, MotoServer

    os.environ.update(CREDENTIALS)
    server = _session_server("s3", lambda: MotoServer(tmp_path_factory.mktemp("moto")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite store, local artifacts) on 127.0.0.1 for the session."""
    from tests.mlflowserver import MlflowServer

    server = _session_server("mlflow_server", lambda: MlflowServer(tmp_path_factory.mktemp("mlflow")))
    yield server
    server.stop()


class Labelled(NamedTuple):
    audio: object  # pathlib.Path of the corpus (labels.csv beside the audio)
    features: object  # its featurize output
    bundle: object  # a bundle trained on it (LABELLED_TRAINING)
    report: dict  # that training's validation report


@pytest.fixture(scope="session")
def labelled(spark, tmp_path_factory, make_audio):
    """A labelled corpus (three styles x three tracks of 4.5, 6 and 7.5 s, a broken and a too-short
    file), its features made by the real featurize job, and a bundle trained on them: made once per
    run for the train and score tests. Read-only: copy before changing any of it."""
    from genreclf.featurize import run_featurize
    from genreclf.train import run_train

    root = tmp_path_factory.mktemp("labelled")
    audio = root / "audio"
    audio.mkdir()
    rows = ["path,genre"]
    for style in ("techno", "ambient", "jazz"):
        for i in range(3):
            make_audio(audio / f"{style}{i}.mp3", 4.5 + 1.5 * i, style=style, seed=i)
            rows.append(f"{style}{i}.mp3,{style}")
    (audio / "labels.csv").write_text("\n".join(rows) + "\n")
    (audio / "broken.mp3").write_bytes(b"\x00" * 100)
    make_audio(audio / "short.mp3", 2.0)
    run_featurize(spark, [str(audio)], str(root / "features"), labels=str(audio / "labels.csv"))
    report = run_train(str(root / "features"), str(root / "bundle"), **LABELLED_TRAINING)
    return Labelled(audio, root / "features", root / "bundle", report)
