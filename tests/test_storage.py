"""The storage layer's commit helpers: a directory replaced has the new one in place before the old
one is removed, on local disks and on an S3 server; a hidden partial file never shows."""

import os

import pyarrow.fs as pafs
import pytest

from genreclf.io import storage


def tree(location) -> dict:
    fs, base = storage.filesystem(location)
    return {e.path[len(base):].lstrip("/"): fs.open_input_stream(e.path).read()
            for e in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if e.type == pafs.FileType.File}


@pytest.mark.pure
def test_a_local_directory_is_swapped_whole_and_the_old_one_removed(tmp_path):
    final, staged = tmp_path / "bundle", tmp_path / ".bundle.x.tmp"
    for d, files in ((final, {"a": b"old", "gone": b"old"}), (staged, {"a": b"new", "sub/b": b"new"})):
        for name, data in files.items():
            os.makedirs(os.path.dirname(d / name), exist_ok=True)
            (d / name).write_bytes(data)
    storage.replace_dir(str(staged), str(final))
    assert tree(str(final)) == {"a": b"new", "sub/b": b"new"}
    assert sorted(os.listdir(tmp_path)) == ["bundle"]  # the old directory and the staged name are gone


@pytest.mark.pure
def test_a_failed_write_leaves_neither_a_partial_file_nor_a_changed_one(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with storage.atomic_output(str(target)) as out:
            out.write(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_an_object_store_directory_is_replaced_new_objects_first(s3):
    storage.configure({"endpoint_url": s3.endpoint})
    try:
        fs = pafs.S3FileSystem(endpoint_override=s3.endpoint.split("://")[1], scheme="http",
                               allow_bucket_creation=True)
        fs.create_dir("replace")
        storage.write_bytes("s3://replace/bundle/a", b"old")
        storage.write_bytes("s3://replace/bundle/gone", b"old")
        storage.write_bytes("s3://replace/.bundle.x.tmp/a", b"new")
        storage.write_bytes("s3://replace/.bundle.x.tmp/sub/b", b"new")
        storage.replace_dir("s3://replace/.bundle.x.tmp", "s3://replace/bundle")
        assert tree("s3://replace/bundle") == {"a": b"new", "sub/b": b"new"}
        assert not storage.exists("s3://replace/.bundle.x.tmp/a")
    finally:
        storage.configure({"endpoint_url": ""})


@pytest.mark.pure
def test_an_opened_location_goes_where_its_string_goes_and_is_not_resolved_again(tmp_path, monkeypatch):
    """A Location is its URL as a string; the storage functions use its filesystem as it is, and
    another process resolves it afresh (a filesystem need not pickle)."""
    import pickle

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x")
    root = storage.Location.open(str(tmp_path / "d"))
    assert root == storage.to_url(str(tmp_path / "d")) and root.location == str(tmp_path / "d")
    monkeypatch.setattr(storage.filesystems, "to_url", lambda *_: pytest.fail("resolved again"))
    assert storage.read_text(root.child("a.txt")) == "x" and storage.is_dir(root)
    assert storage.filesystem(root.child("a.txt")) == (root.fs, root.path + "/a.txt")
    monkeypatch.undo()
    again = pickle.loads(pickle.dumps(root.child("a.txt")))
    assert isinstance(again, storage.Location) and again.path == root.path + "/a.txt"
