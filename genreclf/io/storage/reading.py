"""Reading files: buffered, seekable, retried on transient errors; whole small files; local mmaps."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time

import pyarrow.fs as pafs

from genreclf.io.storage.failures import NotARegularFile, _permanent, describe
from genreclf.io.storage.filesystems import filesystem
from genreclf.io.storage.locations import is_local
from genreclf.io.storage.settings import _OPTIONS

log = logging.getLogger(__name__)


class _RetryingRaw(io.RawIOBase):
    """A remote file as a seekable raw stream that retries a failed read (reopening at the same
    offset, waiting ``retry_backoff_s`` doubling each time) up to ``retries`` times."""

    def __init__(self, fs, path: str):
        self._fs, self._path = fs, path
        self._pos = 0
        self.error = None  # the error that ended reading, after the retries
        self._file = self._attempt(lambda: fs.open_input_file(path))
        self.size = self._file.size()

    def _attempt(self, call):
        wait = float(_OPTIONS["retry_backoff_s"])
        for attempt in range(int(_OPTIONS["retries"]) + 1):
            try:
                return call()
            except OSError as e:
                if _permanent(e) or attempt == int(_OPTIONS["retries"]):
                    self.error = e
                    raise
                log.warning("read of %s failed (%s): retry %d in %.1f s", self._path, describe(e), attempt + 1, wait)
                time.sleep(wait)
                wait *= 2
                with contextlib.suppress(Exception):
                    self._file.close()
                with contextlib.suppress(OSError):
                    self._file = self._fs.open_input_file(self._path)

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer):
        want = min(len(buffer), max(0, self.size - self._pos))
        if want == 0:
            return 0

        def read():
            return self._file.read_at(want, self._pos)

        data = self._attempt(read)
        n = len(data)
        memoryview(buffer)[:n] = data
        self._pos += n
        return n

    def close(self):
        with contextlib.suppress(Exception):
            self._file.close()
        super().close()


def open_input(location: str):
    """A buffered, seekable binary file object; remote reads come in ``read_ahead_kb`` requests and
    are retried on transient errors. Raises FileNotFoundError / PermissionError / OSError."""
    size = int(_OPTIONS["read_ahead_kb"]) * 1024
    if is_local(location):
        path = filesystem(location)[1]
        if os.path.exists(path) and not os.path.isfile(path):  # a FIFO or device would block or never end
            raise NotARegularFile(path)
        return open(path, "rb", buffering=size)
    fs, path = filesystem(location)
    raw = _RetryingRaw(fs, path)
    reader = io.BufferedReader(raw, buffer_size=size)
    reader.size = raw.size
    return reader


def read_error(f) -> Exception | None:
    """The error that ended reads of a file from :func:`open_input` after its retries, if any."""
    return getattr(getattr(f, "raw", None), "error", None)


def size_of(f) -> int:
    """The size of a file object from :func:`open_input`."""
    if hasattr(f, "size"):
        return f.size
    return os.fstat(f.fileno()).st_size


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode()


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
