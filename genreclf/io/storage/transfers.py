"""Whole directories between local disk and a location: uploads, local staging of an output,
downloads and the per-user fetch cache."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid

import pyarrow.fs as pafs

from genreclf.io.storage.failures import writing
from genreclf.io.storage.filesystems import filesystem, located
from genreclf.io.storage.locations import hidden_name, is_local, sibling, to_location
from genreclf.io.storage.writing import replace_dir



def upload_dir(local_dir: str, location: str) -> None:
    """Copy a local directory's files to ``location`` (a directory), keeping relative names."""
    # One file at a time: pyarrow 14's threaded copy_files was seen to hang on S3 multipart uploads.
    fs, dst = filesystem(location)
    fs.create_dir(dst, recursive=True)
    for dirpath, _, names in os.walk(local_dir):  # a local scratch directory of ours
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(dirpath, name), local_dir).replace(os.sep, "/")
            with open(os.path.join(dirpath, name), "rb") as src, fs.open_output_stream(f"{dst}/{rel}") as out:
                while chunk := src.read(8 << 20):
                    out.write(chunk)


@contextlib.contextmanager
def local_output(location: str):
    """A local directory to write into, that becomes ``location`` when the block succeeds: local
    outputs are written under a hidden sibling and renamed; remote ones are written to a scratch
    directory, uploaded under a hidden name and committed with :func:`replace_dir`."""
    final = to_location(location)
    if is_local(location):
        os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
        staged = hidden_name(final)
        os.makedirs(staged)
        try:
            with writing(location):
                yield staged
            replace_dir(staged, final)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return
    scratch = tempfile.mkdtemp(prefix="genreclf-out-")
    try:
        with writing(f"{scratch} (a local scratch copy of {location})"):
            yield scratch
        staged = hidden_name(final)
        with writing(location):
            upload_dir(scratch, staged)
        replace_dir(staged, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def download(location: str, local_path: str) -> None:
    """Copy one file to a local path, under a hidden name renamed when complete."""
    fs, path = filesystem(location)
    partial = sibling(local_path, f"{uuid.uuid4().hex[:6]}.partial")
    try:
        with fs.open_input_stream(path) as src, open(partial, "wb") as dst:
            while chunk := src.read(16 << 20):
                dst.write(chunk)
        os.replace(partial, local_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


def fetch_dir(location: str, names=None) -> str:
    """A local directory holding ``location``'s files (``names`` only, when given): the directory
    itself when local, else a copy in a per-user cache keyed by the URL and the files' sizes and
    mtimes (fetched once; a changed remote bundle is fetched again)."""
    if is_local(location):
        return filesystem(location)[1]
    import hashlib

    fs, path = filesystem(location)
    entries = [e for e in fs.get_file_info(pafs.FileSelector(path)) if e.type == pafs.FileType.File
               and (names is None or e.base_name in names)]
    if not entries:
        raise FileNotFoundError(f"{location}: no files")
    key = hashlib.sha1(repr([str(location)] + sorted((e.base_name, e.size, e.mtime_ns) for e in entries)).encode())
    target = os.path.join(tempfile.gettempdir(), f"genreclf-fetched-{os.getuid()}", key.hexdigest()[:16])
    if not os.path.isdir(target):
        staged = f"{target}.{uuid.uuid4().hex[:6]}.tmp"
        os.makedirs(staged)
        for e in entries:
            download(located(location, e.path), os.path.join(staged, e.base_name))
        try:
            os.rename(staged, target)
        except OSError:  # fetched meanwhile by another process
            shutil.rmtree(staged, ignore_errors=True)
    return target
