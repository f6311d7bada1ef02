"""Crash safety with real processes: featurize (spark-submit, local mode) is SIGKILLed as a process
group after listing, mid-tasks and at the commit; a rerun (--incremental or --overwrite, with
--break-lock for the dead run's lock) gives exactly the output of an uninterrupted run, and a kill
of --overwrite leaves the old output whole. Score is killed mid-tasks the same way.

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


def score(bundle, inputs, out, *flags):
    submit.run("--master", "local[2]", "score", "--model", bundle, "--input", inputs, "--output", out, *flags)


def scores_mid_tasks(out, line):
    """A task has written its part to the run's staging directory (one file a task: see one_file_a_task)."""
    return any(p.name.endswith(".parquet") for d in out.glob(".scores-*.staging") for p in d.iterdir())


def test_a_killed_score_leaves_the_old_scores_and_a_rerun_equals_an_uninterrupted_run(corpus, tmp_path):
    """Kill ``score --incremental`` (the catalogue grew) once a task has staged its rows: the old
    scores are untouched; a rerun leaves no staging directory or lock and gives the scores of an
    uninterrupted run (within 1e-6; tracks kept from the old output are the same numbers)."""
    import keras

    from genreclf.config import Recipe
    from genreclf.formats.bundle import BUNDLE_FILE, MODEL_FILE, bundle_info, write_json
    from genreclf.formats.scores import read_scores
    from genreclf.ml.network import build_model

    first, every, _, _ = corpus
    bundle = tmp_path / "bundle"  # seeded, untrained: crash safety does not depend on the weights
    bundle.mkdir()
    keras.utils.set_random_seed(0)
    build_model((Recipe().frames, Recipe().bands, 1), 3).save(str(bundle / MODEL_FILE))
    write_json(str(bundle / BUNDLE_FILE), bundle_info(["jazz", "rock", "techno"], Recipe()))
    conf = tmp_path / "one_file_a_task.toml"
    conf.write_text("[featurize]\nfiles_per_task = 1\n")
    reference, out = tmp_path / "reference", tmp_path / "out"
    score(bundle, every, reference, "--conf", str(conf))
    # The scores an earlier run made of the first three files: the uninterrupted run's rows of
    # those files, in a copy of its output (one app fewer than scoring them again: ~30 s).
    shutil.copytree(reference, out)
    table = pq.read_table(str(out / "scores"))
    shutil.rmtree(out / "scores")
    (out / "scores").mkdir()
    firsts = [line.split("/")[-1] for line in first.read_text().split()[1:]]
    keep = [os.path.basename(p) in firsts for p in table["path"].to_pylist()]
    pq.write_table(table.filter(keep), str(out / "scores" / "part-00000.parquet"))
    old = read_scores(str(out))
    assert len(old) == 3
    killed(submit.command("--master", "local[2]", "score", "--model", bundle, "--input", every, "--output", out,
                          "--incremental", "--conf", conf), out, scores_mid_tasks)
    assert list(out.glob(".scores-*.staging")) and (out / "_genreclf.lock").exists()  # killed mid-run
    assert read_scores(str(out)).equals(old)
    score(bundle, every, out, "--incremental", "--break-lock", "--conf", str(conf))
    assert not list(out.glob(".scores-*")) and not (out / "_genreclf.lock").exists()
    got, want = read_scores(str(out)), read_scores(str(reference))
    assert got["track_id"].tolist() == want["track_id"].tolist()
    for column in ("status", "error", "genre", "n_windows", "size_bytes", "mtime", "precision"):
        assert got[column].equals(want[column]), column
    for a, b in zip(got["probability_vector"], want["probability_vector"]):
        assert (a is None and b is None) or max(abs(x - y) for x, y in zip(a, b)) < 1e-6
