"""Every location a user gives, a local path or a URL, read and written here with pyarrow filesystems.

Local paths, ``file://``, ``s3://`` (pyarrow's S3: the standard AWS environment variables and
profile; the endpoint from ``[storage] endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``), ``gs://``, ``hdfs://`` (where
libhdfs is installed) and, when ``fsspec`` and its backend are installed, any other fsspec protocol.
A *location* is what the tables hold: a plain absolute path for local files, a full URL otherwise.

Writes are "hidden, then commit": data goes to a name starting with ``.`` in the target's directory
(every reader here and in Spark skips it) and is moved into place when complete (:func:`atomic_output`,
the one commit helper). A file move is atomic on local disks and HDFS; on object stores it is a
server-side copy (the object appears whole) then a delete. A directory is replaced with the new one
in place before the old one is removed (:func:`replace_dir`). Outputs whose files must change
together (a featurize output, a score output) commit by one file move that names them.

Every move and delete under an output goes through :func:`_move` / :func:`_delete`, where the crash
tests stop the driver just before or after the K-th one (``GENRECLF_KILL_AT``, :mod:`genreclf.io.killpoints`).

Long because it is the one storage layer: every user location goes through this module's API
(locations, listing, reading with retries, the commit helpers); splitting it would split that API.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import glob as _glob
import io
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from genreclf.errors import ConfigError, Reason, StorageError, check_fields
from genreclf.io import killpoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StorageSettings:
    """How object stores are reached (genreclf.io.storage); credentials come from the environment
    (AWS_ACCESS_KEY_ID / AWS_PROFILE ...), never from a config file."""

    endpoint_url: str = ""  # S3-compatible endpoint (MinIO, Ceph...), e.g. "http://10.0.0.5:9000"; "" = AWS
    region: str = ""  # S3 region; "" = the environment's (AWS_REGION / AWS_DEFAULT_REGION / profile)
    retries: int = 3  # further attempts after a transient read error (connection reset, throttling)
    retry_backoff_s: float = 0.5  # first wait; doubles per retry
    read_ahead_kb: int = 1024  # remote reads are buffered in requests of this size
    list_progress_s: float = 5.0  # a progress line this often while listing a large input
    lock_stale_after_s: float = 86400.0  # an output lock this old may be broken (--break-lock)

    def __post_init__(self):
        check_fields(self, "storage", {
            "endpoint_url": (lambda v: isinstance(v, str) and (v == "" or re.match(r"^https?://[^/]+/?$", v)),
                             'a URL "http://host:port" or "https://host" (or "" for AWS)'),
            "region": (lambda v: isinstance(v, str), "a region name (or empty)"),
            "retries": (lambda v: isinstance(v, int) and 0 <= v <= 20, "an integer in [0, 20]"),
            "retry_backoff_s": (lambda v: isinstance(v, (int, float)) and 0 <= v <= 60, "seconds in [0, 60]"),
            "read_ahead_kb": (lambda v: isinstance(v, int) and 4 <= v <= 262144, "an integer in [4, 262144] (KiB)"),
            "list_progress_s": (lambda v: isinstance(v, (int, float)) and v > 0, "seconds > 0"),
            "lock_stale_after_s": (lambda v: isinstance(v, (int, float)) and v > 0, "seconds > 0"),
        })

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The settings in force in this process ([storage]; the defaults until configure()).
_OPTIONS = StorageSettings().to_dict()
_FILESYSTEMS: dict = {}
_LOCK = threading.Lock()


def configure(options: dict | None) -> None:
    """Use ``options`` (StorageSettings.to_dict()) from now on in this process (driver or worker)."""
    if not options:
        return
    with _LOCK:
        if {**_OPTIONS, **options} != _OPTIONS:
            _OPTIONS.update(options)
            _FILESYSTEMS.clear()


def is_url(location: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location))


def is_local(location: str) -> bool:
    return not is_url(location) or location.startswith("file://")


def to_url(location: str) -> str:
    """A local path becomes an absolute ``file://`` URL; URLs pass through (without a trailing /)."""
    if is_url(location):
        return location.rstrip("/") if not location.endswith("://") else location
    return "file://" + os.path.abspath(os.path.expanduser(location))


def to_location(location: str) -> str:
    """What tables hold: an absolute local path for local files (``file://`` stripped), else the URL."""
    if not is_url(location):
        return os.path.abspath(os.path.expanduser(location))
    if location.startswith("file://"):
        return urlparse(location).path
    return location.rstrip("/")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def parent(location: str) -> str:
    if not is_url(location):
        return os.path.dirname(os.path.abspath(location))
    scheme, rest = location.split("://", 1)
    return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"


def basename(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def resolve(base_dir: str, relative: str) -> str:
    """``relative`` (a path in a CSV) against the CSV's directory; absolute paths and URLs stay."""
    if is_url(relative):
        return to_location(relative)
    if not is_url(base_dir):
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(relative)))
    scheme, rest = base_dir.split("://", 1)
    if relative.startswith("/"):
        return f"{scheme}://{rest.split('/', 1)[0]}{posixpath.normpath(relative)}"
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, relative))}"


def relative(location: str, root: str) -> str:
    if not is_url(location):
        return os.path.relpath(location, root)
    return posixpath.relpath(location.split("://", 1)[1], root.split("://", 1)[1])


#: The AWS SDKs' endpoint variables, the service-specific one first (it wins); pyarrow 14 reads neither.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def endpoint_url() -> str:
    """The S3 endpoint in force: ``[storage] endpoint_url``, else the environment's, else AWS ("")."""
    return _OPTIONS["endpoint_url"] or next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), "")


def options() -> dict:
    """The settings in force, the endpoint resolved: what the driver hands to its tasks, whose
    executors may not have the driver's environment."""
    return {**_OPTIONS, "endpoint_url": endpoint_url()}


def _s3():
    kwargs = {}
    endpoint = endpoint_url()
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    if _OPTIONS["region"]:
        kwargs["region"] = _OPTIONS["region"]
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=int(_OPTIONS["retries"]) + 1)
    return pafs.S3FileSystem(**kwargs)


#: user:password@ in a URL: never printed (:func:`redact`), and refused as a location.
_CREDENTIAL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@")
CREDENTIAL_VARIABLES = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (s3://), GOOGLE_APPLICATION_CREDENTIALS (gs://)"


def redact(text: str) -> str:
    """``text`` with the user:password of every URL in it replaced by ``***``: what logs print."""
    return _CREDENTIAL.sub(r"\1***@", text)


def refuse_credentials(*locations) -> None:
    """Refuse a location holding a credential: it would land in logs, records and process lists."""
    for url in filter(None, locations):
        if is_url(url) and _CREDENTIAL.search(url):
            raise ConfigError(f"{redact(url)} has a credential inside it: give it in the environment instead "
                              f"({CREDENTIAL_VARIABLES}) and name the location without it")


def filesystem(url: str):
    """(pyarrow FileSystem, path within it) for a location; filesystems are reused per process.
    A location holding a credential is refused (:func:`refuse_credentials`)."""
    refuse_credentials(url)
    if not is_url(url):
        return _cached("local", "", lambda: pafs.LocalFileSystem()), os.path.abspath(os.path.expanduser(url))
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        return _cached("local", "", lambda: pafs.LocalFileSystem()), parsed.path
    if scheme in ("s3", "s3a"):
        return _cached("s3", "", lambda: _s3()), (parsed.netloc + parsed.path).rstrip("/")
    try:
        fs, path = pafs.FileSystem.from_uri(url)
        return _cached(scheme, parsed.netloc, lambda: fs), path
    except (pafs.ArrowInvalid, ValueError, OSError) as e:
        try:
            import fsspec
        except ImportError:
            raise _config_error(f"{url}: pyarrow cannot open {scheme}:// ({e}); install fsspec and its "
                                f"{scheme} backend to use other stores") from None
        ffs, path = fsspec.core.url_to_fs(url)
        return _cached(scheme, parsed.netloc, lambda: pafs.PyFileSystem(pafs.FSSpecHandler(ffs))), path


def _cached(scheme, netloc, make):
    key = (scheme, netloc)
    with _LOCK:
        if key not in _FILESYSTEMS:
            _FILESYSTEMS[key] = make()
        return _FILESYSTEMS[key]


def _config_error(message: str):
    return ConfigError(message)


def _prefix(url: str, path: str) -> str:
    """What goes before a filesystem path to make the location again ('' for local files)."""
    if not is_url(url) or url.startswith("file://"):
        return ""
    scheme, rest = url.split("://", 1)
    netloc = rest.split("/", 1)[0]
    return f"{scheme}://" if path.startswith(netloc) else f"{scheme}://{netloc}"


def located(url: str, path: str) -> str:
    """The location of ``path``, a path within the filesystem of ``url``."""
    return _prefix(url, path) + path


def info(location: str) -> pafs.FileInfo:
    fs, path = filesystem(location)
    return fs.get_file_info(path)


def exists(location: str) -> bool:
    return info(location).type != pafs.FileType.NotFound


def is_dir(location: str) -> bool:
    return info(location).type == pafs.FileType.Directory


def is_file(location: str) -> bool:
    return info(location).type == pafs.FileType.File


def delete(location: str) -> None:
    fs, path = filesystem(location)
    _delete(fs, path)


def delete_files(location: str, paths) -> None:
    """Delete files given as paths within the filesystem of ``location``."""
    fs, _ = filesystem(location)
    for path in paths:
        _delete(fs, path, pafs.FileType.File)


def _delete(fs, path: str, kind=None) -> None:
    """Delete a file or a directory tree (nothing when absent): one step for the kill points."""
    kind = kind or fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        return
    with killpoints.step("delete", path):
        if kind == pafs.FileType.Directory:
            fs.delete_dir(path)
        else:
            fs.delete_file(path)


def _move(fs, src: str, dst: str) -> None:
    with killpoints.step("move", src, dst):
        fs.move(src, dst)


def list_dir(location: str) -> list:
    """FileInfos directly in a directory (none when it does not exist)."""
    fs, path = filesystem(location)
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


# --- listing -------------------------------------------------------------------------------------

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


# --- reading -------------------------------------------------------------------------------------

#: How pyarrow's S3 (AWS SDK) errors say "denied" and "not there": such errors are not retried.
_DENIED = ("ACCESS_DENIED", "AccessDenied", "HTTP status 403", "Forbidden")
_MISSING = ("NO_SUCH_KEY", "NO_SUCH_BUCKET", "HTTP status 404")


def _denied(error: Exception) -> bool:
    return isinstance(error, PermissionError) or any(k in str(error) for k in _DENIED)


def _permanent(error: Exception) -> bool:
    return (isinstance(error, (FileNotFoundError, IsADirectoryError)) or _denied(error)
            or any(k in str(error) for k in _MISSING))


def describe(error: Exception) -> str:
    """A short reason for an I/O error, as rows and logs give it."""
    if isinstance(error, FileNotFoundError):
        return "not found"
    if _denied(error):
        return "permission denied"
    return (getattr(error, "strerror", None) or str(error)).splitlines()[0][:200]


class NotARegularFile(OSError):
    """A location that is not a file: a FIFO, socket or device (never opened: reading could block
    forever), or a directory (``unreadable`` says why it could not be listed)."""

    def __init__(self, path: str):
        import stat

        mode = os.stat(path).st_mode
        self.kind = ("directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else
                     "socket" if stat.S_ISSOCK(mode) else "device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
                     else "special file")
        self.unreadable = None
        if self.kind == "directory":
            try:
                os.listdir(path)
            except OSError as e:
                self.unreadable = describe(e)
        super().__init__(f"{path} is a {self.kind}")


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


# --- writing -------------------------------------------------------------------------------------

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


def hidden_name(location: str, tag: str = "") -> str:
    """A hidden sibling of ``location`` for writing before the commit."""
    return join(parent(location), f".{basename(location)}.{tag or uuid.uuid4().hex[:8]}.tmp")


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


def no_space(error: BaseException) -> bool:
    """Whether an error says the disk (or quota) is full."""
    import errno

    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(error)


@contextlib.contextmanager
def writing(location: str):
    """Writes to ``location`` inside: a full disk or a store that is gone becomes one StorageError naming it."""
    if location.startswith("file://"):
        location = to_location(location)
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        if no_space(e):
            raise StorageError(f"no space left on device while writing {location}: free space there or "
                               "write to another location") from None
        bucket = re.search(r"Bucket '([^']+)' not found", str(e))
        if bucket or any(k in str(e) for k in _MISSING):
            what = f"bucket {bucket.group(1)!r} not found" if bucket else describe(e)
            raise StorageError(f"cannot write {location}: {what} (was the bucket or directory removed while the "
                               "job ran?)") from None
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
        staged = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.{uuid.uuid4().hex[:8]}.tmp")
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
    partial = os.path.join(os.path.dirname(local_path), f".{os.path.basename(local_path)}.{uuid.uuid4().hex[:6]}.partial")
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
    key = hashlib.sha1(repr([location] + sorted((e.base_name, e.size, e.mtime_ns) for e in entries)).encode())
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
