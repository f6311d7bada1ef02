"""A location's pyarrow filesystem, opened once per process and store, and the single-step
operations on it (stat, list, delete, move: the steps the kill points count)."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pyarrow.fs as pafs

from genreclf.errors import ConfigError
from genreclf.io import killpoints
from genreclf.io.storage.settings import _FILESYSTEMS, _LOCK, _OPTIONS, endpoint_url
from genreclf.io.storage.locations import is_url, join, refuse_credentials, to_url



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


def filesystem(url: str):
    """(pyarrow FileSystem, path within it) for a location; filesystems are reused per process.
    A location holding a credential is refused (:func:`refuse_credentials`). An opened
    :class:`Location` answers with its own (nothing resolved again)."""
    if isinstance(url, Location):
        return url.fs, url.path
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
    Location.open(location).delete_files(paths)


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
    return Location.open(location).list()


class Location(str):
    """A user location opened once: its URL, its filesystem and its path there, resolved here and
    then asked for its parts (:meth:`child`) and single steps, never resolved again by the caller.
    It is its URL as a string, so it goes wherever a location string goes in this package, and
    the storage functions given one use its filesystem as it is (:func:`filesystem`). What the
    on-disk formats' handles (:class:`~genreclf.formats.scoreoutput.ScoreOutput`,
    :class:`~genreclf.formats.featureset.FeatureSet`, :class:`~genreclf.formats.bundle.Bundle`)
    are built on."""

    def __new__(cls, url: str, fs, path: str):
        self = super().__new__(cls, url)
        self.url, self.fs, self.path = str(url), fs, path
        return self

    @classmethod
    def open(cls, location: str) -> "Location":
        """Resolve ``location`` (a local path or URL; one holding a credential is refused)."""
        if isinstance(location, Location):
            return location
        url = to_url(location)
        fs, path = filesystem(url)
        return cls(url, fs, path)

    def __reduce__(self):  # to another process: resolved there (a filesystem may not pickle)
        return Location.open, (self.url,)

    @property
    def location(self) -> str:
        """What tables and messages hold: a plain path for local files, the URL otherwise."""
        return located(self.url, self.path)

    def child(self, *parts: str) -> "Location":
        """A location under this one, on the same filesystem (nothing resolved)."""
        return Location(join(self.url, *parts), self.fs, "/".join([self.path.rstrip("/"), *parts]))

    def located(self, path: str) -> str:
        """The location of ``path``, a path within this location's filesystem."""
        return located(self.url, path)

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def list(self) -> list:
        """FileInfos directly in this directory (none when it does not exist)."""
        return self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))

    def delete(self) -> None:
        _delete(self.fs, self.path)

    def delete_files(self, paths) -> None:
        """Delete files given as paths within this location's filesystem."""
        for path in paths:
            _delete(self.fs, path, pafs.FileType.File)

    def __repr__(self) -> str:
        return f"Location({self.url!r})"
