"""Crash safety with real processes: featurize (spark-submit, local mode) is SIGKILLed as a process
group after listing, mid-tasks and at the commit; a rerun (--incremental or --overwrite, with
--break-lock for the dead run's lock) gives exactly the output of an uninterrupted run, and a kill
of --overwrite leaves the old output whole.

Runs in its own pytest invocation (``-m faults``): only one Spark application at a time.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from genreclf import storage
from genreclf.featureset import read_tracks, window_files

pytestmark = pytest.mark.faults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBMIT = os.path.join(ROOT, "spark-submit.sh")
ENV = dict(os.environ, GENRECLF_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")


def featurize(inputs, out, *flags):
    cmd = [SUBMIT, "--master", "local[2]", "featurize", "--input", str(inputs), "--output", str(out), *flags]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout + res.stderr


def killed_featurize(audio, out, when, *flags):
    """Start featurize in its own process group and SIGKILL the group when ``when(out, line)`` says so."""
    import queue
    import threading

    cmd = [SUBMIT, "--master", "local[2]", "featurize", "--input", str(audio), "--output", str(out), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=0.01)
                seen.append(line)
            except queue.Empty:
                line = ""
            if when(out, line):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
                return "".join(seen)
        pytest.fail(f"the run ended before the kill point (rc {proc.poll()}): {''.join(seen)[-2000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def after_listing(out, line):
    return "input files" in line


def mid_tasks(out, line):
    windows = out / "windows"
    return windows.is_dir() and any(p.name.startswith("part-") and "-0000" in p.name and p.stat().st_size
                                    for p in windows.iterdir() if p.name not in _before.get(str(out), set()))


def at_commit(out, line):
    return "featurize: committing" in line


_before: dict = {}


def state(out):
    """(tracks table but paths, sorted window rows) of a featurize output, read as its readers do."""
    tracks = read_tracks(str(out)).drop(columns=["path"]).sort_values("track_id").reset_index(drop=True)
    url = storage.join(storage.to_url(str(out)), "windows")
    rows = []
    for path in window_files(url):
        t = pq.read_table(path, columns=["track_id", "window", "label", "stft"])
        rows += zip(t["track_id"].to_pylist(), t["window"].to_pylist(), t["label"].to_pylist(), t["stft"].to_pylist())
    return tracks, sorted(rows)


def assert_same(a, b):
    (ta, wa), (tb, wb) = a, b
    assert ta.equals(tb), (ta, tb)
    assert len(wa) == len(wb) and wa == wb


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, make_audio):
    """Catalogue CSVs of three and of all seven inputs (one broken), the committed output of the
    three, and the output of an uninterrupted run over all seven."""
    root = tmp_path_factory.mktemp("faults")
    (root / "audio").mkdir()
    for i in range(6):
        make_audio(root / "audio" / f"t{i}.mp3", 3.0 + 1.5 * (i % 3), style=("rock", "jazz", "techno")[i % 3], seed=i)
    (root / "audio" / "bad.mp3").write_bytes(b"\x00" * 64)
    first, every = root / "first.csv", root / "all.csv"
    first.write_text("path\n" + "".join(f"audio/t{i}.mp3\n" for i in range(3)))
    every.write_text("path\n" + "".join(f"audio/t{i}.mp3\n" for i in range(6)) + "audio/bad.mp3\n")
    base, reference = root / "base", root / "reference"
    featurize(first, base)
    featurize(every, reference)
    return first, every, base, state(reference)


def copy_of(base, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(base, out)
    _before[str(out)] = {p.name for p in (out / "windows").iterdir()}
    return out


@pytest.mark.parametrize("when", [after_listing, mid_tasks, at_commit], ids=lambda f: f.__name__)
def test_a_killed_incremental_run_then_a_rerun_equals_an_uninterrupted_run(corpus, tmp_path, when):
    _, every, base, reference = corpus
    out = copy_of(base, tmp_path)  # a committed output holding part of the catalogue
    committed_before = state(out)
    killed_featurize(every, out, when, "--incremental")  # the catalogue grew
    if when is not at_commit:
        assert_same(state(out), committed_before)  # readers still see the last commit, whole
    featurize(every, out, "--incremental", "--break-lock")  # the dead run's lock is stale: taken over
    assert_same(state(out), reference)
    assert not (out / "_genreclf.lock").exists()
    assert [p.name for p in (out / "windows").iterdir() if p.name.startswith(".")] == []


def test_a_killed_overwrite_leaves_the_old_output_whole(corpus, tmp_path):
    _, every, base, reference = corpus
    out = copy_of(base, tmp_path)
    old = state(out)
    killed_featurize(every, out, mid_tasks, "--overwrite")
    assert_same(state(out), old)
    featurize(every, out, "--overwrite", "--break-lock")
    assert_same(state(out), reference)
