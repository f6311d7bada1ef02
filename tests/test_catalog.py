"""Inputs expand to one catalogue row per file: directories, globs, catalogue CSVs, labels, FMA."""

import os
import shutil

import pandas as pd
import pytest

from genreclf.errors import ConfigError
from genreclf.io.catalog import apply_labels, expand_inputs

pytestmark = pytest.mark.pure  # no Spark, no training: pytest -m pure


def touch(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_directory_is_recursive_and_ids_are_relative_paths(tmp_path):
    touch(tmp_path / "a" / "one.mp3")
    touch(tmp_path / "a" / "b" / "two.ogg")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden.mp3")
    cat = expand_inputs([str(tmp_path)])
    assert sorted(cat.entries["track_id"]) == ["a/b/two.ogg", "a/one.mp3"]
    assert [os.path.basename(p) for p in cat.skipped] == [".hidden.mp3", "notes.txt"]
    assert (cat.entries["size_bytes"] == 1).all() and cat.entries["mtime"].notna().all()


def test_glob_and_explicit_files_are_never_filtered(tmp_path):
    touch(tmp_path / "x" / "a.MP3")
    touch(tmp_path / "x" / "b.txt")
    cat = expand_inputs([str(tmp_path / "x" / "*"), str(tmp_path / "x" / "b.txt")])
    assert sorted(cat.entries["track_id"]) == ["a.MP3", "b.txt"]


def test_catalogue_csv_with_relative_paths_ids_and_genres(tmp_path):
    touch(tmp_path / "audio" / "1.mp3")
    touch(tmp_path / "audio" / "2.mp3")
    csv = tmp_path / "catalogue.csv"
    csv.write_text("path,track_id,genre\naudio/1.mp3,t1,Rock\naudio/2.mp3,t2,\n")
    e = expand_inputs([str(csv)]).entries.set_index("track_id")
    assert e.loc["t1", "label"] == "Rock" and pd.isna(e.loc["t2", "label"])
    assert e.loc["t1", "path"] == str(tmp_path / "audio" / "1.mp3")


def test_missing_input_says_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="neither a file, a directory nor a glob"):
        expand_inputs([str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.flac")])


def test_labels_by_track_id(tmp_path):
    touch(tmp_path / "a.mp3")
    labels = tmp_path / "labels.csv"
    labels.write_text("track_id,genre\na.mp3,Folk\n")
    table = apply_labels(expand_inputs([str(tmp_path / "a.mp3")]).entries, str(labels))
    assert table["label"].tolist() == ["Folk"]


def test_labels_without_genre_column_are_refused(tmp_path):
    touch(tmp_path / "a.mp3")
    labels = tmp_path / "labels.csv"
    labels.write_text("track_id,style\na.mp3,Folk\n")
    with pytest.raises(ConfigError, match=r"needs a 'genre' \(or 'label'\) column"):
        apply_labels(expand_inputs([str(tmp_path / "a.mp3")]).entries, str(labels))


FMA_TRACKS = (
    ",album,artist,set,set,track,track\n"
    ",title,name,split,subset,genre_top,title\n"
    "track_id,,,,,,\n"
    "2,AWOL,AWOL,training,small,Hip-Hop,Food\n"
    "5,AWOL,AWOL,training,small,Hip-Hop,This World\n"
    "140,Alec K.,Alec K.,validation,small,Folk,Queen Of The Wires\n"
    "141,Alec K.,Alec K.,test,medium,,Ohio\n"
)


def test_fma_layout_and_tracks_csv(tmp_path):
    audio = tmp_path / "fma_small"
    for tid in (2, 140, 141):
        touch(audio / f"{tid:06d}"[:3] / f"{tid:06d}.mp3")
    touch(audio / "checksums")
    touch(audio / "README.txt")
    meta = tmp_path / "fma_metadata" / "tracks.csv"
    meta.parent.mkdir()
    meta.write_text(FMA_TRACKS)
    cat = expand_inputs([str(audio)])
    assert len(cat.skipped) == 2
    table = apply_labels(cat.entries, str(meta)).set_index("track_id")
    assert table.loc["000002", "label"] == "Hip-Hop"
    assert table.loc["000140", "label"] == "Folk"
    assert pd.isna(table.loc["000141", "label"])  # FMA tracks without a top genre stay unlabelled
    assert table.loc["000002", "group"] == "AWOL" and table.loc["000140", "group"] == "Alec K."  # artist


def test_catalogue_artist_column_becomes_the_split_group(tmp_path):
    touch(tmp_path / "1.mp3")
    touch(tmp_path / "2.mp3")
    csv = tmp_path / "catalogue.csv"
    csv.write_text("path,genre,artist\n1.mp3,Rock,Band A\n2.mp3,Rock,Band B\n")
    e = expand_inputs([str(csv)]).entries.set_index("track_id")
    assert e["group"].to_dict() == {"1.mp3": "Band A", "2.mp3": "Band B"}


def test_a_symlink_loop_is_listed_once_and_never_followed_twice(tmp_path):
    touch(tmp_path / "d" / "one.mp3")
    os.symlink(".", tmp_path / "d" / "loop")  # d/loop/loop/... was 41 rows; two such links never ended
    os.symlink("..", tmp_path / "d" / "up")
    cat = expand_inputs([str(tmp_path / "d")])
    assert cat.entries["track_id"].tolist() == ["one.mp3"]


def test_a_fifo_is_listed_as_a_row_not_skipped(tmp_path):
    touch(tmp_path / "d" / "one.mp3")
    os.mkfifo(tmp_path / "d" / "pipe.mp3")
    cat = expand_inputs([str(tmp_path / "d")])
    assert cat.entries["track_id"].tolist() == ["one.mp3", "pipe.mp3"]


#: Runs a command as root without the capabilities that let root read any file (DAC override):
#: these tests run as root, where a chmod 000 directory would otherwise read fine.
SETPRIV = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop root's DAC override")
def test_an_unreadable_directory_is_a_row_saying_so(tmp_path):
    """A subdirectory that cannot be listed was skipped silently: its files got no row, no log line.
    Listed and read as featurize's driver and tasks do, in a process that obeys permissions."""
    import json
    import subprocess
    import sys

    touch(tmp_path / "d" / "one.mp3")
    touch(tmp_path / "d" / "locked" / "hidden.mp3")
    os.chmod(tmp_path / "d" / "locked", 0)
    code = ("import json, sys\n"
            "from genreclf.io.catalog import expand_inputs\n"
            "from genreclf.config import Recipe\n"
            "from genreclf.audio.extract import featurize_file\n"
            "cat = expand_inputs([sys.argv[1]]).entries\n"
            "rows = [featurize_file(p, Recipe(), track_id=t).row for p, t in zip(cat['path'], cat['track_id'])]\n"
            "print(json.dumps({r['track_id']: [r['status'], r['error']] for r in rows}))\n")
    try:
        out = subprocess.run([*SETPRIV, sys.executable, "-c", code, str(tmp_path / "d")], capture_output=True,
                             text=True, timeout=300)
    finally:
        os.chmod(tmp_path / "d" / "locked", 0o755)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(rows) == {"one.mp3", "locked"}
    assert rows["locked"][0] == "error" and rows["locked"][1].startswith("unreadable directory: permission denied")
    assert "cannot read directory" in out.stderr and "locked" in out.stderr  # and a log line naming it


def test_conflicting_label_rows_are_an_error_listing_them(tmp_path):
    touch(tmp_path / "a.mp3")
    (tmp_path / "labels.csv").write_text("path,genre\na.mp3,Rock\na.mp3,Jazz\n")
    table = expand_inputs([str(tmp_path / "a.mp3")]).entries
    with pytest.raises(ConfigError, match="conflicting genres.*a.mp3: Jazz, Rock"):
        apply_labels(table, str(tmp_path / "labels.csv"))


def test_a_labels_csv_that_matches_no_input_is_an_error(tmp_path):
    touch(tmp_path / "music" / "a.mp3")
    (tmp_path / "labels.csv").write_text("path,genre\nelsewhere/a.mp3,Rock\n")
    table = expand_inputs([str(tmp_path / "music")]).entries
    with pytest.raises(ConfigError, match="labels none of the 1 inputs"):
        apply_labels(table, str(tmp_path / "labels.csv"))


def test_conflicting_rows_in_a_catalogue_are_an_error(tmp_path):
    """The first row used to win silently."""
    touch(tmp_path / "a.mp3")
    (tmp_path / "catalog.csv").write_text("path,genre\na.mp3,Rock\na.mp3,Jazz\n")
    with pytest.raises(ConfigError, match="conflicting genres"):
        expand_inputs([str(tmp_path / "catalog.csv")])


@pytest.mark.parametrize("order", ["file-first", "csv-first"])
def test_a_file_named_directly_and_by_a_catalogue_is_one_input_with_the_catalogues_label(tmp_path, order):
    """Was: ``--input x.mp3 cat.csv`` kept the bare file's row (no label, track id x.mp3) and the
    other order the catalogue's; now both give the catalogue's row."""
    touch(tmp_path / "d" / "x.mp3")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cat.csv").write_text("path,genre\n../d/x.mp3,metal\n")
    inputs = [str(tmp_path / "d" / "x.mp3"), str(tmp_path / "c" / "cat.csv")]
    rows = expand_inputs(inputs if order == "file-first" else inputs[::-1]).entries
    assert len(rows) == 1
    assert (rows.loc[0, "label"], rows.loc[0, "track_id"]) == ("metal", "../d/x.mp3")


def test_conflicting_labels_for_one_file_are_an_error_listing_them(tmp_path):
    touch(tmp_path / "x.mp3")
    (tmp_path / "a.csv").write_text("path,genre\nx.mp3,metal\n")
    (tmp_path / "b.csv").write_text("path,genre\nx.mp3,jazz\n")
    with pytest.raises(ConfigError, match=r"the inputs: 1 path\(s\) have conflicting genres \(.*x.mp3: jazz, metal\)"):
        expand_inputs([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    (tmp_path / "b.csv").write_text("path,genre\nx.mp3, metal \n")  # the same label, once stripped
    assert expand_inputs([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]).entries["label"].tolist() == ["metal"]


def test_labels_are_stripped_of_surrounding_whitespace(tmp_path):
    for name in ("a.mp3", "b.mp3", "c.mp3"):
        touch(tmp_path / name)
    (tmp_path / "cat.csv").write_text('path,genre\na.mp3,"pop "\nb.mp3,pop\nc.mp3,"  "\n')
    assert expand_inputs([str(tmp_path / "cat.csv")]).entries["label"].tolist() == ["pop", "pop", None]
    (tmp_path / "labels.csv").write_text('path,genre\na.mp3," rock"\n')
    labelled = apply_labels(expand_inputs([str(tmp_path / "a.mp3")]).entries, str(tmp_path / "labels.csv"))
    assert labelled["label"].tolist() == ["rock"]


def test_catalogues_as_spreadsheets_save_them(tmp_path):
    """A UTF-8 BOM (spreadsheets' 'CSV UTF-8') and UTF-16 with its BOM are read; latin-1 is refused
    naming the byte; a .csv without 'path', an empty one or one of a header alone are refused, never
    taken for audio (a BOM once made the catalogue an audio file, 'not audio', labels dropped)."""
    touch(str(tmp_path / "a" / "é.mp3"))
    text = "path,genre\na/é.mp3,rock\n"
    for name, data in (("bom.csv", b"\xef\xbb\xbf" + text.encode()), ("utf16.csv", text.encode("utf-16"))):
        (tmp_path / name).write_bytes(data)
        table = expand_inputs([str(tmp_path / name)]).entries
        assert table["label"].tolist() == ["rock"] and table["path"].str.endswith("/a/é.mp3").all(), name
    (tmp_path / "latin1.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.csv is not UTF-8: byte 0xe9 at offset 13 \(line 2\); save it"):
        expand_inputs([str(tmp_path / "latin1.csv")])
    for name, data, says in (("nopath.csv", "file,genre\nx.mp3,rock\n", "has no 'path' column"),
                             ("empty.csv", "", "is empty"), ("header.csv", "path,genre\n", "lists no files")):
        (tmp_path / name).write_text(data)
        with pytest.raises(ConfigError, match=f"{name}.*{says}|{says}"):
            expand_inputs([str(tmp_path / name)])


def test_the_jobs_own_output_inside_its_input_is_never_listed(tmp_path):
    """featurize --input D --output D/feat read back its own _common_metadata; score its lock."""
    touch(str(tmp_path / "a.mp3"))
    touch(str(tmp_path / "out" / "_common_metadata"))
    touch(str(tmp_path / "out" / "_genreclf.lock"))
    table = expand_inputs([str(tmp_path)], exclude=(str(tmp_path / "out"),)).entries
    assert table["track_id"].tolist() == ["a.mp3"]


def test_a_fifo_named_directly_is_a_row_not_a_refusal(tmp_path):
    """Named directly, as when found by listing: its 'not a regular file' row, never the job stopped."""
    os.mkfifo(tmp_path / "pipe.mp3")
    table = expand_inputs([str(tmp_path / "pipe.mp3")]).entries
    assert table["problem"].tolist() == ["not a regular file: a FIFO"]
