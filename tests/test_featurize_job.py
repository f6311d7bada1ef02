"""The featurize job on a real local Spark session: one tracks row per file, petastorm-readable windows."""

import os
import subprocess

import numpy as np
import pandas as pd
import pytest

from genreclf.config import Recipe
from genreclf.errors import OutputExistsError
from genreclf.featurize import run_featurize
from genreclf.formats.featureset import read_recipe, read_tracks
from genreclf.io.storage import to_url
from tests.spies import resolutions


@pytest.fixture(scope="module")
def mixed(mixed_corpus):
    return mixed_corpus


@pytest.fixture(scope="module")
def featurized(spark, mixed, tmp_path_factory):
    audio, expect = mixed
    out = tmp_path_factory.mktemp("out") / "features"
    summary = run_featurize(spark, [str(audio)], str(out))
    return out, summary


def test_exactly_one_row_per_input_file_with_status_and_reason(mixed, featurized):
    audio, expect = mixed
    out, _ = featurized
    tracks = read_tracks(str(out))
    assert sorted(tracks["track_id"]) == sorted(expect)
    assert tracks["path"].is_unique
    by_id = tracks.set_index("track_id")
    for name, (status, detail) in expect.items():
        row = by_id.loc[name]
        assert row["status"] == status, (name, row["error"])
        if status == "ok":
            assert row["n_windows"] == detail, name
            assert pd.isna(row["error"])
        else:
            assert row["n_windows"] == 0
            assert row["error"] and (detail is None or row["error"].startswith(detail)), (name, row["error"])


def test_windows_read_back_with_petastorm_make_reader(featurized):
    from petastorm import make_reader

    out, _ = featurized
    tracks = read_tracks(str(out)).set_index("track_id")
    counts, seen = {}, {}
    with make_reader(to_url(str(out / "windows")), reader_pool_type="dummy", num_epochs=1) as reader:
        for row in reader:
            assert row.stft.shape == (128, 513) and row.stft.dtype == np.float16
            assert np.isfinite(row.stft).all()
            counts[row.track_id] = counts.get(row.track_id, 0) + 1
            seen.setdefault(row.track_id, set()).add(int(row.window))
    ok = tracks[tracks["status"] == "ok"]
    assert counts == ok["n_windows"].to_dict()
    assert all(seen[t] == set(range(n)) for t, n in counts.items())


def test_windows_read_back_with_plain_spark(spark, featurized):
    out, summary = featurized
    df = spark.read.parquet(to_url(str(out / "windows")))
    assert set(df.columns) == {"track_id", "window", "label", "stft"}
    assert df.count() == summary["windows_written"]


def test_summary_counts_and_recipe_is_recorded(mixed, featurized):
    audio, expect = mixed
    out, summary = featurized
    n_ok = sum(1 for s, _ in expect.values() if s == "ok")
    assert summary["files_in"] == len(expect)
    assert summary["ok"] == n_ok and summary["errors"] == len(expect) - n_ok
    assert summary["windows_written"] == sum(n for s, n in expect.values() if s == "ok")
    assert summary["errors_by_reason"]["truncated"] == 1
    assert summary["sidecar_files_passed_over"] == 1
    assert summary["tracks_per_s"] > 0
    assert read_recipe(str(out)) == Recipe()


def test_rerun_into_existing_output_refuses_then_overwrites(spark, tmp_path, make_audio):
    audio = tmp_path / "in"
    audio.mkdir()
    make_audio(audio / "a.mp3", 4.5)
    out = tmp_path / "out"
    run_featurize(spark, [str(audio)], str(out))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_featurize(spark, [str(audio)], str(out))
    make_audio(audio / "b.mp3", 4.5)
    run_featurize(spark, [str(audio)], str(out), overwrite=True)
    assert sorted(read_tracks(str(out))["track_id"]) == ["a.mp3", "b.mp3"]


def test_incremental_skips_unchanged_and_replaces_changed_without_duplicates(spark, tmp_path, make_audio, monkeypatch):
    """--incremental processes only what changed; on its way the output is opened once and its
    handle passed down (its lock, its windows and task records are its children)."""
    audio = tmp_path / "in"
    audio.mkdir()
    make_audio(audio / "a.mp3", 4.5)
    make_audio(audio / "b.mp3", 4.5)
    (audio / "broken.mp3").write_bytes(b"")
    out = tmp_path / "out"
    run_featurize(spark, [str(audio)], str(out))

    make_audio(audio / "c.mp3", 3.0)  # new
    make_audio(audio / "b.mp3", 6.0, seed=1)  # changed: 3 windows instead of 2
    os.utime(audio / "b.mp3", (1e9, 1e9))
    make_audio(audio / "broken.mp3", 3.0)  # an earlier error, now fixed: retried
    places = resolutions(monkeypatch, out)
    summary = run_featurize(spark, [str(audio)], str(out), incremental=True)
    monkeypatch.undo()
    assert sorted(places) == ["genreclf/featurize.py:run_featurize"]  # was 18 places in 6 modules
    assert summary["unchanged_skipped"] == 1 and summary["processed"] == 3

    tracks = read_tracks(str(out)).set_index("track_id")
    assert sorted(tracks.index) == ["a.mp3", "b.mp3", "broken.mp3", "c.mp3"]
    assert (tracks["status"] == "ok").all()
    windows = spark.read.parquet(to_url(str(out / "windows"))).groupBy("track_id").count().toPandas()
    assert windows.set_index("track_id")["count"].to_dict() == tracks["n_windows"].to_dict()
    assert tracks.loc["b.mp3", "n_windows"] == 3


def test_labels_from_a_csv_reach_the_windows(spark, tmp_path, make_audio):
    audio = tmp_path / "in"
    (audio / "x").mkdir(parents=True)
    make_audio(audio / "x" / "a.mp3", 3.0)
    make_audio(audio / "b.mp3", 3.0)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,genre\nx/a.mp3,Rock\nb.mp3,Jazz\n")
    out = tmp_path / "out"
    run_featurize(spark, [str(audio)], str(out), labels=str(labels))
    got = spark.read.parquet(to_url(str(out / "windows"))).select("track_id", "label").distinct().toPandas()
    assert dict(zip(got["track_id"], got["label"])) == {"x/a.mp3": "Rock", "b.mp3": "Jazz"}
    assert dict(zip(*read_tracks(str(out))[["track_id", "label"]].T.values)) == {"x/a.mp3": "Rock", "b.mp3": "Jazz"}


def test_all_files_bad_still_writes_rows(spark, tmp_path):
    audio = tmp_path / "in"
    audio.mkdir()
    (audio / "a.mp3").write_bytes(b"")
    (audio / "b.mp3").write_text("nope")
    out = tmp_path / "out"
    summary = run_featurize(spark, [str(audio)], str(out))
    assert summary["ok"] == 0 and summary["errors"] == 2
    assert len(read_tracks(str(out))) == 2


def test_a_crashed_runs_window_files_are_never_read_and_removed_by_the_next_run(spark, tmp_path, make_audio):
    """A killed --incremental run left window files whose tracks were never committed; the rerun
    wrote those tracks again and they had 2x their windows. A task killed while writing leaves a
    hidden partial file: removed too."""
    import shutil

    from genreclf.formats.features import count_windows
    from genreclf.formats.featureset import window_files

    audio = tmp_path / "in"
    audio.mkdir()
    make_audio(audio / "a.mp3", 4.5)
    out = tmp_path / "out"
    run_featurize(spark, [str(audio)], str(out))
    windows = out / "windows"
    committed = window_files(to_url(str(windows)))
    shutil.copy(committed[0], windows / "part-20260101000000-deadbeef-00000.parquet")  # as a killed run leaves it
    partial = windows / ".part-20260101000000-deadbeef-00001.parquet.attempt-0.tmp"  # a task killed mid-write
    partial.write_bytes(open(committed[0], "rb").read()[:1000])
    assert window_files(to_url(str(windows))) == committed  # readers follow the commit, not the listing
    run_featurize(spark, [str(audio)], str(out), incremental=True)
    assert not (windows / "part-20260101000000-deadbeef-00000.parquet").exists() and not partial.exists()
    files = window_files(to_url(str(windows)))
    assert count_windows(to_url(str(windows)), files).to_dict() == {"a.mp3": 2}


def test_incremental_with_a_second_root_keeps_track_ids_unique(spark, tmp_path, make_audio):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    make_audio(first / "a.mp3", 3.0)
    make_audio(second / "a.mp3", 3.0, seed=5)  # same relative name, another file
    out = tmp_path / "out"
    run_featurize(spark, [str(first)], str(out))
    run_featurize(spark, [str(first), str(second)], str(out), incremental=True)
    tracks = read_tracks(str(out))
    assert tracks["track_id"].is_unique and len(tracks) == 2
    assert sorted(tracks["track_id"]) == sorted(["a.mp3", str(second / "a.mp3")])


def test_a_held_lock_refuses_a_second_writer_a_gone_holder_here_is_taken_over_and_another_hosts_needs_break_lock(
        spark, tmp_path, make_audio, caplog):
    import json
    import socket
    import time

    from genreclf.io.lock import LockedError

    audio = tmp_path / "in"
    audio.mkdir()
    make_audio(audio / "a.mp3", 3.0)
    out = tmp_path / "out"
    out.mkdir()
    lock = out / "_genreclf.lock"
    holder = {"run_id": "r1", "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "job": "x"}
    lock.write_text(json.dumps(holder))
    with pytest.raises(LockedError, match=f"pid {os.getpid()}.*one writer per output"):
        run_featurize(spark, [str(audio)], str(out), break_lock=True)  # never breaks a live holder
    elsewhere = {**holder, "host": "another-host", "started": time.time() - 2 * 86400}  # stale, maybe alive there
    lock.write_text(json.dumps(elsewhere))
    with pytest.raises(LockedError, match="another-host.*--break-lock"):
        run_featurize(spark, [str(audio)], str(out))
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({**holder, "pid": dead.pid}))  # a killed run of this host: the rerun takes over
    run_featurize(spark, [str(audio)], str(out))
    assert f"taking over the lock of run r1 (x) on host {socket.gethostname()}, pid {dead.pid}" in caplog.text
    assert not lock.exists() and len(read_tracks(str(out))) == 1
    lock.write_text(json.dumps(elsewhere))
    run_featurize(spark, [str(audio)], str(out), overwrite=True, break_lock=True)
    assert not lock.exists()


def test_an_output_of_another_kind_is_refused_even_with_overwrite(spark, tmp_path, make_audio):
    audio = tmp_path / "in"
    audio.mkdir()
    make_audio(audio / "a.mp3", 3.0)
    with pytest.raises(OutputExistsError, match="not a featurize output"):
        run_featurize(spark, [str(audio)], str(audio), overwrite=True)  # the job's own input
    assert sorted(p.name for p in audio.iterdir()) == ["a.mp3"]


def test_a_file_named_directly_and_by_a_catalogue_gets_the_same_labelled_row_in_either_order(spark, tmp_path,
                                                                                             make_audio):
    """Was: ``--input x.mp3 cat.csv`` lost the label (and took the track id x.mp3), the other order kept it."""
    (tmp_path / "d").mkdir()
    (tmp_path / "c").mkdir()
    make_audio(tmp_path / "d" / "x.mp3", 3.5, style="rock")
    (tmp_path / "c" / "cat.csv").write_text("path,genre\n../d/x.mp3, metal\n")
    inputs = [str(tmp_path / "d" / "x.mp3"), str(tmp_path / "c" / "cat.csv")]
    rows = []
    for order, given in (("file-first", inputs), ("csv-first", inputs[::-1])):
        run_featurize(spark, given, str(tmp_path / order))
        rows.append(read_tracks(str(tmp_path / order)).drop(columns=["mtime"]))
    assert rows[0].equals(rows[1]) and len(rows[0]) == 1
    assert (rows[0].loc[0, "label"], rows[0].loc[0, "track_id"], rows[0].loc[0, "status"]) == ("metal", "../d/x.mp3", "ok")
