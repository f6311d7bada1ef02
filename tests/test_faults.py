"""Crash safety with real processes, at a moment no kill point names: featurize (spark-submit, local
mode) SIGKILLed as a process group while its tasks are writing window files; the old output stays
whole and a rerun (--incremental --break-lock) gives exactly the output of an uninterrupted run.
Kills at every commit step are tests/test_killpoints.py's.

Runs in its own pytest invocation (``-m faults``): only one Spark application at a time.
"""

import os
import shutil
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from genreclf.formats.features import read_tracks, window_files
from genreclf.io import storage
from tests import submit

pytestmark = pytest.mark.faults

def featurize(inputs, out, *flags):
    return submit.run("--master", "local[2]", "featurize", "--input", inputs, "--output", out, *flags).output


def killed_featurize(audio, out, when, *flags):
    """Start featurize in its own process group and SIGKILL the group when ``when(out, line)`` says so."""
    return killed(submit.command("--master", "local[2]", "featurize", "--input", audio, "--output", out, *flags),
                  out, when)


def killed(cmd, out, when):
    """Start ``cmd`` in its own process group and SIGKILL the group when ``when(out, line)`` says so."""
    import queue
    import threading

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=submit.env(),
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


def mid_tasks(out, line):
    windows = out / "windows"
    return windows.is_dir() and any(p.name.startswith("part-") and "-0000" in p.name and p.stat().st_size
                                    for p in windows.iterdir() if p.name not in _before.get(str(out), set()))


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


def test_a_run_killed_while_its_tasks_write_then_a_rerun_equals_an_uninterrupted_run(corpus, tmp_path):
    _, every, base, reference = corpus
    out = copy_of(base, tmp_path)  # a committed output holding part of the catalogue
    committed_before = state(out)
    killed_featurize(every, out, mid_tasks, "--incremental")  # the catalogue grew
    assert_same(state(out), committed_before)  # readers still see the last commit, whole
    featurize(every, out, "--incremental", "--break-lock")  # the dead run's lock is stale: taken over
    assert_same(state(out), reference)
    assert not (out / "_genreclf.lock").exists()
    assert [p.name for p in (out / "windows").iterdir() if p.name.startswith(".")] == []
