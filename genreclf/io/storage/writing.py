"""Writing: hidden, then commit. Files through :func:`atomic_output` (the one commit helper) or in
place inside an uncommitted directory; directories replaced whole (:func:`replace_dir`)."""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid

import pyarrow.fs as pafs

from genreclf.io import killpoints
from genreclf.io.storage.failures import writing
from genreclf.io.storage.filesystems import _config_error, _delete, _move, exists, filesystem, list_dir, located
from genreclf.io.storage.locations import basename, hidden_name, is_local, parent, to_location



def _make_parent(fs, path: str) -> None:
    fs.create_dir(posixpath.dirname(path) if not isinstance(fs, pafs.LocalFileSystem) else os.path.dirname(path),
                  recursive=True)


def staged_leftovers(location: str) -> list:
    """Locations of hidden siblings :func:`hidden_name` made for ``location`` that a killed writer
    left (an old directory renamed aside, ``.old``, is kept: it may be the only copy)."""
    where, prefix = parent(to_location(location)), f".{basename(location)}."
    return [located(where, e.path) for e in list_dir(where)
            if e.base_name.startswith(prefix) and e.base_name.endswith(".tmp") and ".old." not in e.base_name]


def partial_files(location: str) -> list:
    """Paths of the hidden partial files (:func:`atomic_output`'s, a killed writer's) directly in a directory."""
    return [e.path for e in list_dir(location) if e.type == pafs.FileType.File and e.base_name.startswith(".")
            and e.base_name.endswith(".tmp")]


@contextlib.contextmanager
def atomic_output(location: str, tag: str = ""):
    """An output stream to a hidden name, moved to ``location`` when the block ends without error
    (deleted otherwise): readers see the old file or the new one, whole. The one commit helper."""
    fs, path = filesystem(location)
    tmp_path = filesystem(hidden_name(location, tag))[1]
    with writing(location):
        _make_parent(fs, path)
        killpoints.note("write", tmp_path)
        out = fs.open_output_stream(tmp_path)
        try:
            yield out
            out.close()
            _move(fs, tmp_path, path)
        except BaseException:
            with contextlib.suppress(Exception):
                out.close()
            with contextlib.suppress(Exception):
                fs.delete_file(tmp_path)
            raise


def write_bytes(location: str, data: bytes) -> None:
    with atomic_output(location) as f:
        f.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def write_direct(location: str, data: bytes) -> None:
    """Write a file in place, no hidden name: only inside a directory no reader looks at yet (a run
    directory before its commit), where a partial file is removed with the directory."""
    with direct_output(location) as out:
        out.write(data)


@contextlib.contextmanager
def direct_output(location: str):
    """An output stream to ``location`` itself, as :func:`write_direct` writes (no hidden name, no move)."""
    fs, path = filesystem(location)
    with writing(location):
        _make_parent(fs, path)
        killpoints.note("write", path)
        with fs.open_output_stream(path) as out:
            yield out


def create_exclusive(location: str, data: bytes) -> bool:
    """Create a small file only if it does not exist; False when it does. Exclusive on local disks
    (O_EXCL); check-then-write elsewhere (object stores here offer no conditional create)."""
    if is_local(location):
        path = filesystem(location)[1]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if exists(location):
        return False
    if isinstance(filesystem(location)[0], pafs.HadoopFileSystem):
        write_bytes(location, data)
    else:
        write_direct(location, data)  # one PUT: an object appears whole
    return True


def check_writable(location: str, what: str = "output") -> None:
    """Refuse, before any work, a local output that cannot be created or written (its nearest
    existing ancestor must be a writable directory). Remote locations are checked by their first
    write (the job's lock), also before any work."""
    if not is_local(location):
        return
    path = filesystem(location)[1]
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise _config_error(f"{what} {location} cannot be created: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise _config_error(f"{what} {location} is not writable ({probe}: permission denied)")


def replace_dir(staged: str, final: str) -> None:
    """Put a complete directory ``staged`` (written beside ``final`` under a hidden name) in place of
    ``final``; the new one is in place before the old one is removed.

    Local disks: one atomic exchange of the two names (Linux ``renameat2``; readers see the old
    directory or the new one, never neither), then the old one is deleted. HDFS (and local disks
    without the exchange): the old directory is renamed aside, the new one renamed in, the old one
    deleted; a kill between the two renames leaves the old one as ``.NAME.*.old`` beside it. Object
    stores have no directory rename: the new objects are moved over the old names one by one (each
    appears whole), then the old objects the new output lacks are deleted.
    """
    fs, src = filesystem(staged)
    _, dst = filesystem(final)
    present = fs.get_file_info(dst).type != pafs.FileType.NotFound
    renames = isinstance(fs, (pafs.LocalFileSystem, pafs.HadoopFileSystem))
    if renames and not present:
        _move(fs, src, dst)
    elif isinstance(fs, pafs.LocalFileSystem) and _exchange(src, dst):
        _delete(fs, src)
    elif renames:
        aside = filesystem(hidden_name(final, f"{uuid.uuid4().hex[:8]}.old"))[1]
        _move(fs, dst, aside)
        _move(fs, src, dst)
        _delete(fs, aside)
    else:
        moved = set()
        for entry in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
            if entry.type == pafs.FileType.File:
                rel = entry.path[len(src):]
                fs.create_dir(posixpath.dirname(dst + rel), recursive=True)
                _move(fs, entry.path, dst + rel)
                moved.add(rel)
        if present:
            for entry in fs.get_file_info(pafs.FileSelector(dst, recursive=True)):
                if entry.type == pafs.FileType.File and entry.path[len(dst):] not in moved:
                    _delete(fs, entry.path, pafs.FileType.File)
        with contextlib.suppress(OSError):
            fs.delete_dir(src)


def _exchange(a: str, b: str) -> bool:
    """Swap two local paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    with killpoints.step("exchange", a, b):
        done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    return done
