"""A run stopped mid-way resumes. featurize's and score's process group (spark-submit, its JVM and
Python workers) is first sent SIGINT (Ctrl-C) or SIGTERM at ~30 % of its tasks: it stops in order
(exit 130 / 143, one line, no traceback, its lock released). The same command is run again and
resumes without taking over any lock, and is SIGKILLed at ~60 %; run once more (no --break-lock: the
lock's holder is provably gone on this host), it keeps every finished task, runs only the rest, and
gives exactly the uninterrupted run's output. On local disk and on the S3 test server; the
uninterrupted runs (local disk) are the reference for both.

Runs in the ``faults`` pytest invocation (one Spark application at a time, two runs at once here).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.fs as pafs
import pytest

from genreclf.formats.scoreoutput import read_scores
from genreclf.formats.taskrecords import TASKS_DIR
from genreclf.io import storage
from tests import submit
from tests.s3server import bucket_outputs
from tests.test_killpoints import features_state, same_features

pytestmark = pytest.mark.faults

BUCKET = "resume"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, make_audio):
    """12 short tracks (and two dead paths) in a catalogue; tasks of two files (6 tasks); a seeded,
    untrained reference bundle; float32 scores (the same numbers on every CPU)."""
    import keras

    from genreclf.config import Recipe
    from genreclf.formats.bundle import BUNDLE_FILE, MODEL_FILE, bundle_info, write_json
    from genreclf.ml.network import build_model

    root = tmp_path_factory.mktemp("resume")
    (root / "audio").mkdir()
    styles = ("rock", "jazz", "techno")
    rows = ["path,genre"]
    for i in range(12):
        make_audio(root / "audio" / f"t{i:02d}.mp3", 3.2, style=styles[i % 3], seed=i)
        rows.append(f"audio/t{i:02d}.mp3,{styles[i % 3]}")
    rows += ["audio/gone-1.mp3,rock", "audio/gone-2.mp3,jazz"]
    (root / "catalogue.csv").write_text("\n".join(rows) + "\n")
    (root / "bundle").mkdir()
    keras.utils.set_random_seed(0)
    build_model((Recipe().frames, Recipe().bands, 1), 3).save(str(root / "bundle" / MODEL_FILE))
    write_json(str(root / "bundle" / BUNDLE_FILE), bundle_info(["jazz", "rock", "techno"], Recipe()))
    (root / "conf.toml").write_text('[featurize]\nfiles_per_task = 2\n[score]\nprecision = "float32"\n')
    return root


@pytest.fixture(scope="module", params=["local", "s3"])
def place(request, tmp_path_factory):
    """(output root, extra environment): local disk, or a bucket of the S3 test server (the inputs stay local)."""
    if request.param == "local":
        yield str(tmp_path_factory.mktemp("resume-out")), {}
        return
    with bucket_outputs(request.getfixturevalue("s3"), BUCKET) as (root, env):
        yield root, env


def featurize_args(corpus, out):
    return ["featurize", "--input", str(corpus / "catalogue.csv"), "--output", out, "--conf", str(corpus / "conf.toml")]


def score_args(corpus, out):
    return ["score", "--model", str(corpus / "bundle"), "--input", str(corpus / "catalogue.csv"), "--output", out,
            "--conf", str(corpus / "conf.toml")]


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    """What uninterrupted runs of the two commands give (local disk; the two at once)."""
    root = tmp_path_factory.mktemp("resume-reference")
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(run, featurize_args(corpus, str(root / "features")), {}),
                pool.submit(run, score_args(corpus, str(root / "scores")), {})]
        [r.result() for r in runs]
    return features_state(str(root / "features")), _scores(str(root / "scores"))


def _records(out: str) -> int:
    try:
        return sum(1 for e in storage.list_dir(storage.join(storage.to_url(out), TASKS_DIR))
                   if e.base_name.endswith(".parquet") and not e.base_name.startswith("."))
    except OSError:
        return 0


PLAN = re.compile(r"to (?:open|score) in (\d+) tasks")


def run(args: list, env: dict, *, kill_share: float | None = None, signum: int = signal.SIGKILL) -> tuple:
    """Run a job in its own process group (SIGINT at its default disposition, as a terminal's
    foreground job); with ``kill_share``, send ``signum`` to the group once that share of the tasks
    its log plans have written their records under its output (``--output`` in ``args``).
    Returns (output, (records seen at the signal, tasks planned))."""
    import threading

    out = args[args.index("--output") + 1]
    proc = subprocess.Popen(submit.command("--master", "local[1]", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=submit.env(**env), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    seen = None
    try:
        deadline = time.monotonic() + 300
        while kill_share is not None and proc.poll() is None and time.monotonic() < deadline:
            planned = next((int(m.group(1)) for m in map(PLAN.search, list(lines)) if m), None)
            if planned and _records(out) >= max(1, round(kill_share * planned)):
                os.killpg(proc.pid, signum)
                seen = (_records(out), planned)
                break
            time.sleep(0.05)
        proc.wait(timeout=600)
        reader.join(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    output = "".join(lines)
    if kill_share is None:
        assert proc.returncode == 0, output[-3000:]
    else:
        expected = -signal.SIGKILL if signum == signal.SIGKILL else 128 + signum
        assert seen is not None and proc.returncode == expected, ("the run was not stopped", output[-3000:])
    return output, seen


def interrupted(args: list, env: dict, signum: int) -> None:
    """A run sent ``signum`` (SIGINT as Ctrl-C, SIGTERM) at ~30 % of its tasks: exit 128 + signum with
    one line and no traceback, and its lock released."""
    out = args[args.index("--output") + 1]
    stopped, (seen, n) = run(args, env, kill_share=0.3, signum=signum)
    assert seen < n, "the run ended before the signal"
    lines = [line for line in stopped.splitlines() if "interrupted by" in line]
    assert len(lines) == 1 and "rerun the same command" in lines[0], stopped[-3000:]
    for bad in ("Traceback", "internal error", "Exception", "\tat "):
        assert bad not in stopped, (bad, stopped[-3000:])
    assert not storage.exists(storage.join(storage.to_url(out), "_genreclf.lock"))


def stopped_then_rerun(args: list, env: dict, signum: int) -> str:
    """Interrupted with ``signum``; rerun and SIGKILLed at ~60 %; rerun to the end. Checks each rerun
    kept every finished task and ran only the rest, and nothing is left behind; returns the output."""
    out = args[args.index("--output") + 1]
    interrupted(args, env, signum)
    second, (seen, n) = run(args, env, kill_share=0.6)
    assert 0 < seen < n and re.search(r"resuming: \d+ of \d+ tasks", second), second[-3000:]
    assert "taking over the lock" not in second  # the interrupted run released it
    rerun, _ = run(args, env)
    kept = int(re.search(rf"resuming: (\d+) of {n} tasks' outputs kept", rerun).group(1))
    assert kept >= seen, (kept, seen, rerun[-3000:])
    assert "taking over the lock" in rerun  # the SIGKILLed run left its lock; no --break-lock needed here
    ran = int(re.search(r"in (\d+) tasks \(of (\d+)\)", rerun).group(1)) if kept < n else 0
    assert ran == n - kept, rerun[-3000:]
    fs, base = storage.filesystem(out)
    left = [e.path for e in fs.get_file_info(pafs.FileSelector(base, recursive=True))
            if TASKS_DIR in e.path or "/." in e.path or e.path.endswith("_genreclf.lock")]
    assert left == [], left
    return out


def _scores(out: str):
    return read_scores(out).drop(columns=["probabilities"])


def _same_scores(a, b) -> bool:
    ok = a.status == "ok"
    probs = np.allclose(np.stack(a.loc[ok, "probability_vector"]), np.stack(b.loc[ok, "probability_vector"]), atol=1e-5)
    rest = ["probability_vector", "confidence"]
    return len(a) == len(b) and probs and a.drop(columns=rest).equals(b.drop(columns=rest))


def test_stopped_featurize_and_score_resume_and_equal_the_uninterrupted_runs(corpus, place, uninterrupted):
    root, env = place
    with ThreadPoolExecutor(2) as pool:  # the two jobs at once
        features = pool.submit(stopped_then_rerun, featurize_args(corpus, storage.join(root, "features")), env,
                               signal.SIGINT)
        scores = pool.submit(stopped_then_rerun, score_args(corpus, storage.join(root, "scores")), env, signal.SIGTERM)
        features, scores = features.result(), scores.result()
    assert same_features(features_state(features), uninterrupted[0])
    assert _same_scores(_scores(scores), uninterrupted[1])
