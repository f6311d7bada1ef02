"""The user's entry points: spark-submit.sh and the jobs' --help, and one real spark-submit run."""

import os
import subprocess
import sys

import pytest

from genreclf.formats.featureset import read_tracks
from tests import submit

ROOT = submit.ROOT


def run(*args, **kw):
    return submit.run(*args, check=False, **kw)


def test_wrapper_help_lists_jobs_and_options():
    res = run("--help")
    assert res.returncode == 0
    assert "featurize" in res.stdout and "--archives" in res.stdout and "--master" in res.stdout


def test_unknown_job_is_refused_with_the_list():
    res = run("fly")
    assert res.returncode == 2 and "featurize, train, evaluate, score" in res.stderr


def test_a_packed_environment_is_for_cluster_executors_only():
    """In local mode the tasks run in the driver's Python: --archives would give them a path that
    exists only in executors' working directories (Spark failed after ~60 s)."""
    res = run("--master", "local[2]", "--archives", "build/genreclf-env.tar.gz#env", "score", "--help")
    assert res.returncode == 2 and "--archives ships a Python environment to a cluster's executors" in res.stderr


def test_featurize_help_needs_no_spark():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "featurize.py"), "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0
    for option in ("--input", "--output", "--labels", "--overwrite", "--incremental", "--conf"):
        assert option in res.stdout


def test_spark_submit_featurize_end_to_end_and_refuses_rerun(tmp_path, make_audio):
    audio = tmp_path / "in"
    audio.mkdir()
    make_audio(audio / "song.mp3", 4.5)
    (audio / "broken.mp3").write_bytes(b"")
    out = tmp_path / "out"
    res = run("featurize", "--input", str(audio), "--output", str(out))
    log = res.stdout + res.stderr  # spark-submit merges the Python driver's stderr into its stdout
    assert res.returncode == 0, log[-3000:]
    assert "featurize summary: 2 files in" in log
    assert "error       1  empty file" in log
    assert "FutureWarning" not in log
    tracks = read_tracks(str(out)).set_index("track_id")
    assert tracks.loc["song.mp3", "n_windows"] == 2 and tracks.loc["broken.mp3", "status"] == "error"

    again = run("featurize", "--input", str(audio), "--output", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stdout + again.stderr


@pytest.mark.parametrize("job, options", [
    ("train", ("--features", "--model", "--epochs", "--batch-size", "--val-fraction", "--seed")),
    ("evaluate", ("--model", "--features", "--split")),
])
def test_single_process_jobs_run_without_spark_and_explain_themselves(job, options):
    res = run(job, "--help")
    assert res.returncode == 0, res.stderr
    for option in options:
        assert option in res.stdout
    assert "spark-submit" not in res.stderr  # exec'd plainly, no JVM


def test_train_on_a_missing_output_says_what_to_do(tmp_path):
    res = run("train", "--features", str(tmp_path / "nothing"), "--model", str(tmp_path / "m"))
    assert res.returncode == 2
    assert "is not a featurize output" in res.stderr and "featurize first" in res.stderr


def test_an_internal_failure_prints_its_traceback_once_with_a_hint(tmp_path, capsys, monkeypatch):
    from jobs import train

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("genreclf.train.run_train", broken)  # a bug stand-in; not a component mock
    rc = train.main(["--features", str(tmp_path), "--model", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("Traceback") == 1 and "RuntimeError: boom" in err and "a rerun is safe" in err
