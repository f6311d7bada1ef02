"""Listing inputs: directory walks (one call per directory, sizes and mtimes with it), globs, and
what the driver can say of a file without opening it."""

from __future__ import annotations

import fnmatch
import glob as _glob
import logging
import os
import re
import time

import pyarrow.fs as pafs

from genreclf.errors import Reason
from genreclf.io.storage.failures import NotARegularFile, describe
from genreclf.io.storage.filesystems import _prefix, filesystem
from genreclf.io.storage.locations import is_url, to_url
from genreclf.io.storage.settings import _OPTIONS

log = logging.getLogger(__name__)


def walk_files(root: str, *, skip_dir=lambda name: name.startswith(".")) -> list:
    """Every file under ``root`` as (location, size, mtime seconds, problem), sorted by location;
    ``problem`` is the error row the driver can give without opening the file (:func:`problem_of`), or None.

    Breadth-first, one listing call per directory (sizes and mtimes come with it: no per-file stat),
    with a progress line every ``list_progress_s`` seconds; directories ``skip_dir`` names are not
    entered. A directory already visited (a symlink loop) is not listed again.
    """
    fs, base = filesystem(root)
    prefix = _prefix(to_url(root) if not is_url(root) else root, base)
    found, pending, seen = [], [base], set()
    started = last = time.monotonic()
    dirs = 0
    while pending:
        current = pending.pop()
        key = os.path.realpath(current) if isinstance(fs, pafs.LocalFileSystem) else current
        if key in seen:
            log.warning("listing: %s%s was visited already (a symlink loop?): not listed twice", prefix, current)
            continue
        seen.add(key)
        dirs += 1
        try:
            entries = fs.get_file_info(pafs.FileSelector(current))
        except OSError as e:
            if current == base:
                raise
            # The directory gets a row of its own (its reason comes from opening it): never silent.
            log.warning("listing: cannot read directory %s%s: %s", prefix, current, describe(e))
            found.append((prefix + current, None, None, f"{Reason.UNREADABLE_DIRECTORY}: {describe(e)}"))
            continue
        for entry in entries:
            if entry.type == pafs.FileType.Directory:
                if not skip_dir(entry.base_name):
                    pending.append(entry.path)
            elif entry.type in (pafs.FileType.File, pafs.FileType.Unknown):  # a FIFO, socket, device: a row, never read
                found.append((prefix + entry.path, *_facts(fs, entry)))
        now = time.monotonic()
        if now - last >= _OPTIONS["list_progress_s"]:
            log.info("listing %s: %d files in %d directories so far (%.0f s)", root, len(found), dirs, now - started)
            last = now
    found.sort()
    return found


def has_magic(pattern: str) -> bool:
    return _glob.has_magic(pattern)


def glob(pattern: str) -> tuple:
    """(root, [(location, size, mtime)]) of the files a glob matches (``**`` crosses directories)."""
    if not is_url(pattern):
        root = _glob_root(os.path.expanduser(pattern), os.sep)
        files = sorted(os.path.abspath(p) for p in _glob.glob(os.path.expanduser(pattern), recursive=True)
                       if os.path.isfile(p))
        return os.path.abspath(root), [(p, *probe(p)) for p in files]
    root = _glob_root(pattern, "/")
    regex = re.compile(_glob_regex(pattern))
    return root, [entry for entry in walk_files(root, skip_dir=lambda name: False) if regex.match(entry[0])]


def probe(location: str) -> tuple:
    """(size, mtime seconds, problem) of one input file, from one stat (a HEAD request on object
    stores): ``problem`` is the row's error when the file cannot be featurized, as the task that
    opened it would say it (missing, not a regular file, empty, unreadable), else None."""
    fs, path = filesystem(location)
    try:
        entry = fs.get_file_info(path)
    except OSError as e:
        return None, None, f"{Reason.UNREADABLE_FILE}: {describe(e)}"
    return _facts(fs, entry)


def _facts(fs, entry: pafs.FileInfo) -> tuple:
    """(size, mtime, problem) of a FileInfo: what the driver knows of an input without opening it."""
    if entry.type == pafs.FileType.NotFound:
        return None, None, f"{Reason.UNREADABLE_FILE}: not found"
    if entry.type != pafs.FileType.File:
        if isinstance(fs, pafs.LocalFileSystem):
            try:
                kind = NotARegularFile(entry.path)
            except OSError as e:  # gone since the listing
                return None, None, f"{Reason.UNREADABLE_FILE}: {describe(e)}"
            if kind.unreadable:
                return None, None, f"{Reason.UNREADABLE_DIRECTORY}: {kind.unreadable}"
            return None, None, f"{Reason.NOT_A_REGULAR_FILE}: a {kind.kind}"
        return None, None, f"{Reason.NOT_A_REGULAR_FILE}: a {'directory' if entry.type == pafs.FileType.Directory else 'special file'}"
    mtime = entry.mtime_ns / 1e9 if entry.mtime_ns else None
    if entry.size == 0:
        return 0, mtime, f"{Reason.EMPTY_FILE}: 0 bytes"
    if isinstance(fs, pafs.LocalFileSystem) and not os.access(entry.path, os.R_OK):
        return entry.size, mtime, f"{Reason.UNREADABLE_FILE}: permission denied"
    return entry.size, mtime, None


def _glob_root(pattern: str, sep: str) -> str:
    parts = []
    for part in pattern.split(sep):
        if _glob.has_magic(part):
            break
        parts.append(part)
    return sep.join(parts) or "."


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i)
            out.append(fnmatch.translate(pattern[i:end + 1])[4:-3] if end > 0 else re.escape("["))
            i = end + 1 if end > 0 else i + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out) + r"\Z"
