"""How a run is cut into tasks and what names them: pure functions, no Spark.

Tasks are cut by bytes (``group_by_work``), never fewer than the cores, at most ``max_files`` each;
a task's key changes with anything that decides its output and with nothing else, so a rerun of the
same command plans the same tasks and keeps those a killed run finished.
"""

import os

import numpy as np
import pytest

from genreclf.formats.taskrecords import task_key
from genreclf.io.spark import UNKNOWN_SIZE_BYTES, group_by_work

pytestmark = pytest.mark.pure


def _check_partition(groups, n):
    """The groups are contiguous, in order, non-empty, and cover every row once."""
    assert groups[0][0] == 0 and groups[-1][1] == n
    assert all(a < b for a, b in groups) and all(groups[i][1] == groups[i + 1][0] for i in range(len(groups) - 1))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target, max_files, cores", [(10 << 20, 64, 2), (256 << 20, 1024, 2), (1 << 20, 8, 8)])
def test_groups_cover_every_file_once_with_bounded_bytes_and_files(seed, target, max_files, cores):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    sizes = [int(s) for s in rng.lognormal(np.log(800_000), 1.0, n)]
    for i in rng.choice(n, n // 10):  # unknown sizes (a FIFO, a row the listing could not size)
        sizes[i] = None
    groups = group_by_work(sizes, target_bytes=target, max_files=max_files, parallelism=cores)
    _check_partition(groups, n)
    weights = [UNKNOWN_SIZE_BYTES if s is None else s for s in sizes]
    total = sum(weights)
    assert len(groups) >= min(n, cores)
    assert all(b - a <= max_files for a, b in groups)
    biggest = max(weights)
    for a, b in groups:  # about the target: never more than one file's weight over twice the mean share
        assert sum(weights[a:b]) <= 2 * max(total / len(groups), target) + biggest


def test_tasks_are_sized_by_bytes_not_by_count():
    """1,000 mp3s of ~1 MB: 4 tasks of 256 MB (the old rule, 64 files a task, made 16); 10,000 tiny
    files: bounded by max_files."""
    assert len(group_by_work([1 << 20] * 1000, target_bytes=256 << 20, max_files=1024, parallelism=2)) == 4
    assert len(group_by_work([4096] * 10_000, target_bytes=256 << 20, max_files=1024, parallelism=2)) == 10


def test_small_inputs_use_every_core_and_one_huge_file_is_a_task_of_its_own():
    assert group_by_work([1000, 1000, 1000], target_bytes=1 << 30, max_files=64, parallelism=2) in (
        [(0, 1), (1, 3)], [(0, 2), (2, 3)])
    assert group_by_work([5, 5, 5, 10 ** 9, 5], target_bytes=1000, max_files=64, parallelism=2) == [
        (0, 3), (3, 4), (4, 5)]
    assert group_by_work([1], target_bytes=1, max_files=1, parallelism=8) == [(0, 1)]
    assert group_by_work([], target_bytes=1, max_files=1, parallelism=2) == []


def test_the_plan_is_deterministic():
    sizes = [int(s) for s in np.random.default_rng(3).integers(1, 5 << 20, 500)]
    first = group_by_work(sizes, target_bytes=64 << 20, max_files=100, parallelism=2)
    assert first == group_by_work(list(sizes), target_bytes=64 << 20, max_files=100, parallelism=2)


def test_a_task_key_changes_with_what_decides_the_output_and_nothing_else():
    rows = [("/m/a.mp3", "a.mp3", "rock", None, 1000, 1.5), ("/m/b.mp3", "b.mp3", None, None, 2000, 2.5)]
    key = task_key("run-1", {"recipe": {"sample_rate": 22050}}, rows)
    assert key == task_key("run-1", {"recipe": {"sample_rate": 22050}}, [tuple(r) for r in rows])
    changed = [
        task_key("run-2", {"recipe": {"sample_rate": 22050}}, rows),  # another commit to build on
        task_key("run-1", {"recipe": {"sample_rate": 16000}}, rows),  # another setting
        task_key("run-1", {"recipe": {"sample_rate": 22050}}, [rows[0], (*rows[1][:4], 2001, 2.5)]),  # size
        task_key("run-1", {"recipe": {"sample_rate": 22050}}, [rows[0], (*rows[1][:5], 9.0)]),  # mtime
        task_key("run-1", {"recipe": {"sample_rate": 22050}}, [(*rows[0][:2], "jazz", *rows[0][3:]), rows[1]]),
        task_key("run-1", {"recipe": {"sample_rate": 22050}}, rows[:1]),  # fewer files
    ]
    assert len({key, *changed}) == len(changed) + 1


def test_the_listing_answers_missing_empty_and_special_files_without_opening_them(tmp_path):
    from genreclf.io.storage import probe

    (tmp_path / "empty.mp3").write_bytes(b"")
    (tmp_path / "a.mp3").write_bytes(b"x" * 10)
    os.mkfifo(tmp_path / "pipe.mp3")
    (tmp_path / "dir.mp3").mkdir()
    assert probe(str(tmp_path / "a.mp3"))[0] == 10 and probe(str(tmp_path / "a.mp3"))[2] is None
    assert probe(str(tmp_path / "missing.mp3")) == (None, None, "unreadable file: not found")
    assert probe(str(tmp_path / "empty.mp3"))[::2] == (0, "empty file: 0 bytes")
    assert probe(str(tmp_path / "pipe.mp3"))[2] == "not a regular file: a FIFO"
    assert probe(str(tmp_path / "dir.mp3"))[2] == "not a regular file: a directory"


@pytest.mark.parametrize("master, cores", [("local", 1), ("local[3]", 3), ("local[2,4]", 2),
                                           ("local[*]", len(os.sched_getaffinity(0)))])
def test_a_local_masters_cores_are_known_without_starting_spark(monkeypatch, master, cores):
    """What tasks are planned for comes from the master spark-submit.sh names: no SparkContext (~2.5 s)."""
    from genreclf.io.spark import LazySpark, default_parallelism

    monkeypatch.setenv("GENRECLF_SPARK_MASTER", master)
    spark = LazySpark("never-started")
    assert default_parallelism(spark) == cores and not spark.started
