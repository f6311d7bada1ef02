"""How I/O fails, in words for rows and logs: denied, missing, not a regular file, disk full, a
bucket gone."""

from __future__ import annotations

import contextlib
import os
import re


from genreclf.errors import StorageError
from genreclf.io.storage.locations import to_location



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
