"""Locations as URLs (file://, hdfs://, s3://...), with pyarrow filesystems; local files memory-mapped."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pyarrow.fs as pafs


def to_url(location: str) -> str:
    """A local path becomes an absolute ``file://`` URL; URLs pass through."""
    if urlparse(location).scheme:
        return location.rstrip("/")
    return "file://" + os.path.abspath(os.path.expanduser(location))


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def filesystem(url: str):
    """(pyarrow FileSystem, path within it) for a URL."""
    return pafs.FileSystem.from_uri(url)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def delete(url: str) -> None:
    fs, path = filesystem(url)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def write_text(url: str, text: str) -> None:
    fs, path = filesystem(url)
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def read_text(url: str) -> str:
    fs, path = filesystem(url)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def map_local(fs, path: str):
    """A file of a local filesystem as a read-only uint8 array backed by the page cache (no descriptor
    kept open), or None when ``fs`` is not local or the file cannot be mapped (e.g. empty)."""
    import mmap

    import numpy as np

    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    try:
        with open(path, "rb") as f:
            return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    except (OSError, ValueError):
        return None
