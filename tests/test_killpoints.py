"""Kill points: the driver of a real job (spark-submit, local mode) is SIGKILLed just before and just
after each of its moves and deletes under the output (``GENRECLF_KILL_AT``, genreclf/io/killpoints.py),
for every one of them, on local disk and on the S3 test server: ``featurize --incremental`` (the
catalogue grew) and ``score --overwrite --csv`` over an older complete output.

After each kill a reader finds one whole run, the old one or the new one (the tracks table and
the windows it names; the committed scores, labels and submission together), and the rerun with
``--break-lock`` gives exactly what an uninterrupted run gives, leaving no lock, partial file or
uncommitted run directory.

Runs in the ``faults`` pytest invocation (one Spark application at a time).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from genreclf.formats.featureset import read_tracks, window_files
from genreclf.formats.scoreoutput import committed, committed_location, read_scores
from genreclf.formats.scores import LABELS_FILE, SUBMISSION_FILE
from genreclf.io import storage
from genreclf.io.killpoints import VARIABLE
from genreclf.io.lock import LOCK_FILE
from tests import submit
from tests.s3server import bucket_outputs

pytestmark = pytest.mark.faults

BUCKET = "kills"


def job(*args, env: dict, point: str | None = None) -> str:
    """Run a job in its own process group and return its output; with ``point`` (before:K, after:K)
    it must die there, with ``trace`` it logs its steps and completes."""
    extra = {**env, VARIABLE: point} if point else env
    proc = subprocess.Popen(submit.command("--master", "local[1]", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=submit.env(**extra), start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=600)
    finally:
        try:  # a killed driver's JVM and Python workers must not outlive the test
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    if point and point != "trace":
        assert f"kill point: SIGKILL {point.replace(':', ' step ')} " in output, output[-3000:]
    else:
        assert proc.returncode == 0, output[-3000:]
    return output


def kill_points(trace: str) -> tuple:
    """From a traced run: (the distinct points to kill at, in order, the number of steps). Just after
    step K and just before step K+1 leave the same bytes when nothing was written between them (no
    write of the driver's, no Spark job): one kill covers both."""
    events = re.findall(r"kill point (\d+|note): ", trace)
    steps = [int(e) for e in events if e != "note"]
    assert steps == list(range(1, len(steps) + 1)) and steps, trace[-3000:]
    points, between = ["before:1"], False
    for event in events:
        if event == "note":
            between = True
            continue
        k = int(event)
        if k > 1 and between:
            points.append(f"before:{k}")
        points.append(f"after:{k}")
        between = False
    return points, len(steps)


class Store:
    """Where the outputs of one store live, and how to copy and inspect them."""

    def __init__(self, root: str, env: dict):
        self.root, self.env = root, env

    def location(self, name: str) -> str:
        return storage.join(self.root, name) if storage.is_url(self.root) else os.path.join(self.root, name)

    def copy(self, local_dir, dst: str) -> str:
        if storage.is_url(dst):
            storage.upload_dir(str(local_dir), dst)
        else:
            shutil.copytree(local_dir, dst)
        return dst

    def snapshot(self, out: str, local_dir) -> None:
        """A local copy of an output as it is now (for the runs that start from it)."""
        fs, base = storage.filesystem(out)
        shutil.rmtree(local_dir, ignore_errors=True)
        for entry in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            if entry.type == pafs.FileType.File:
                target = os.path.join(str(local_dir), entry.path[len(base):].lstrip("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with fs.open_input_stream(entry.path) as src, open(target, "wb") as dst:
                    dst.write(src.read())

    def leftovers(self, out: str) -> list:
        """What a finished run must not leave: its lock, hidden partial files, uncommitted run directories."""
        fs, base = storage.filesystem(out)
        current = (committed(out) or {}).get("run")
        left = []
        for entry in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            rel = entry.path[len(base):].lstrip("/")
            top = rel.split("/", 1)[0]
            if rel == LOCK_FILE or any(part.startswith(".") for part in rel.split("/")) or (
                    top.startswith("run-") and top != current):
                left.append(rel)
        return left


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, make_audio):
    """Three short tracks; catalogues of the first two and of all three; a seeded, untrained
    reference model (crash safety does not depend on the weights)."""
    import keras

    from genreclf.config import Recipe
    from genreclf.formats.bundle import BUNDLE_FILE, MODEL_FILE, bundle_info, write_json
    from genreclf.ml.network import build_model

    root = tmp_path_factory.mktemp("kills")
    (root / "audio").mkdir()
    for i, style in enumerate(("rock", "jazz", "techno")):
        make_audio(root / "audio" / f"t{i}.mp3", 3.5, style=style, seed=i)
    (root / "first.csv").write_text("path,genre\naudio/t0.mp3,rock\naudio/t1.mp3,jazz\n")
    (root / "all.csv").write_text("path,genre\naudio/t0.mp3,rock\naudio/t1.mp3,jazz\naudio/t2.mp3,techno\n")
    (root / "bundle").mkdir()
    keras.utils.set_random_seed(0)
    build_model((Recipe().frames, Recipe().bands, 1), 3).save(str(root / "bundle" / MODEL_FILE))
    write_json(str(root / "bundle" / BUNDLE_FILE), bundle_info(["jazz", "rock", "techno"], Recipe()))
    (root / "float32.toml").write_text('[score]\nprecision = "float32"\n')  # the same numbers on every CPU
    return root


def featurize(corpus, catalogue, out, *flags, env, point=None):
    return job("featurize", "--input", str(corpus / catalogue), "--output", out, *flags, env=env, point=point)


def score(corpus, catalogue, out, *flags, env, point=None):
    return job("score", "--model", str(corpus / "bundle"), "--input", str(corpus / catalogue), "--output", out,
               "--csv", "--conf", str(corpus / "float32.toml"), *flags, env=env, point=point)


@pytest.fixture(scope="module")
def older(corpus):
    """The older complete outputs the killed runs replace: featurize and score of the first two files
    (the two runs at once)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(featurize, corpus, "first.csv", str(corpus / "features-first"), env={}),
                pool.submit(score, corpus, "first.csv", str(corpus / "scores-first"), env={})]
        [run.result() for run in runs]
    return corpus / "features-first", corpus / "scores-first"


@pytest.fixture(scope="module", params=["local", "s3"])
def store(request, tmp_path_factory):
    """Outputs on local disk, or in a bucket of the S3 test server (the inputs stay local)."""
    if request.param == "local":
        yield Store(str(tmp_path_factory.mktemp("kill-outputs")), {})
        return
    with bucket_outputs(request.getfixturevalue("s3"), BUCKET) as (root, env):
        yield Store(root, env)


def features_state(out: str):
    """A featurize output as its readers see it: the tracks table and the window rows it names."""
    tracks = read_tracks(out).sort_values("track_id").reset_index(drop=True)
    fs, _ = storage.filesystem(out)
    rows = []
    for path in window_files(storage.join(storage.to_url(out), "windows")):
        with fs.open_input_file(path) as f:
            t = pq.read_table(f, columns=["track_id", "window", "label", "stft"])
        rows += zip(t["track_id"].to_pylist(), t["window"].to_pylist(), t["label"].to_pylist(), t["stft"].to_pylist())
    return tracks, sorted(rows)


def same_features(a, b) -> bool:
    return a[0].equals(b[0]) and a[1] == b[1]


def scores_state(out: str):
    """A score output as its readers see it: the committed scores, labels and submission, together."""
    record = committed(out)
    if record is None:
        return None
    scores = read_scores(out)
    labels = json.loads(storage.read_text(committed_location(out, LABELS_FILE)))
    csv = storage.read_text(committed_location(out, SUBMISSION_FILE)) if record.get("submission") else None
    assert labels == record["labels"] and len(scores) == record["rows"]
    return scores, labels, csv


def same_scores(a, b) -> bool:
    return a is not None and b is not None and a[0].equals(b[0]) and a[1:] == b[1:]


def killed_at_every_point(store, older_output, name, run, state, same, scratch):
    """The older output's copy is replaced by ``run`` killed at each distinct point of a traced,
    uninterrupted run; each time a reader sees the old run or the new one, whole, and the rerun
    with --break-lock gives the uninterrupted run's output, leaving nothing behind.

    The first kill ("before:1", always a point: before the first step, after the tasks) is of a
    fresh run, while the traced run finds the others; what it leaves (its finished tasks' outputs)
    is where the runs killed at the other points start: they resume those tasks (no Spark job) and
    go through the same steps. The second store's test starts every run, the traced one too, from
    the first store's snapshot (task records name files, not locations). Runs go two at a time."""
    from concurrent.futures import ThreadPoolExecutor

    old = state(str(older_output))
    snapshot = scratch / f"{name}-tasks-done"

    def each(point, last=False, start=older_output) -> dict:
        """Kill at ``point``; what a reader sees then, and (unless the run had completed) after the rerun."""
        out = store.copy(start, store.location(f"{name}-{point.replace(':', '')}"))
        run(out, point=point)
        seen = {"point": point, "killed": state(out), "last": last}
        if start == older_output:
            store.snapshot(out, snapshot)
        if not last:
            run(out, "--break-lock")
            seen["rerun"] = state(out)
        seen["leftovers"] = store.leftovers(out)
        return seen

    made = snapshot.exists()  # by the other store's test: what the tasks leave does not depend on the store

    def traced():
        reference = store.copy(snapshot if made else older_output, store.location(f"{name}-reference"))
        return kill_points(run(reference, point="trace")), reference

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(each, "before:1", False, snapshot if made else older_output)
        (points, n), reference = traced()
        assert points[0] == "before:1"
        first = first.result()
        rest = [pool.submit(each, point, point == f"after:{n}", snapshot) for point in points[1:]]
        results = [first, *(f.result() for f in rest)]
    new = state(reference)
    assert not same(new, old) and store.leftovers(reference) == []
    failures = []
    for seen in results:
        point = seen["point"]
        if not (same(seen["killed"], old) or same(seen["killed"], new)):
            failures.append(f"killed {point}: a reader sees neither the old run nor the new one")
        if seen["last"] and not same(seen["killed"], new):  # the last step done: the run had completed
            failures.append(f"killed {point}: not the complete run")
        if not seen["last"] and not same(seen["rerun"], new):
            failures.append(f"killed {point}: the rerun differs from an uninterrupted run")
        if seen["leftovers"]:
            failures.append(f"killed {point}: {'the run' if seen['last'] else 'the rerun'} left {seen['leftovers']}")
    assert not failures and len(points) >= n + 1, (points, failures)


def test_featurize_incremental_killed_before_and_after_every_step(store, corpus, older):
    def run(out, *flags, point=None):
        return featurize(corpus, "all.csv", out, "--incremental", *flags, env=store.env, point=point)

    killed_at_every_point(store, older[0], "features", run, features_state, same_features, corpus)


def test_score_overwrite_csv_killed_before_and_after_every_step(store, corpus, older):
    def run(out, *flags, point=None):
        return score(corpus, "all.csv", out, "--overwrite", *flags, env=store.env, point=point)

    killed_at_every_point(store, older[1], "scores", run, scores_state, same_scores, corpus)
