"""One writer per output: a lock file in (or beside) the output naming its holder.

Taken before a job changes anything in its output and released after its commit. A second writer
is refused with the holder's run id, host, pid and start time. A lock whose holder is provably
gone (this host, and its process is not running: a killed or crashed run) is taken over with a
warning, so that rerunning the same command resumes; a lock of another host (or older than
``[storage] lock_stale_after_s``) may be a live run elsewhere: ``--break-lock`` breaks it once
it is stale, and nothing breaks a live one.

Local disks create the lock exclusively (``O_EXCL``: two writers cannot both get it). Object stores
here have no conditional create, so there the lock is check-then-write: it stops a second writer
started after the first one took it (the common case), not two started in the same second.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from genreclf.errors import GenreclfError
from genreclf.io import storage

LOCK_FILE = "_genreclf.lock"

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """A run's id (its lock's holder, its run directory and commit record): the start time, sortable,
    and 8 random hex digits."""
    import uuid

    return time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:8]


class LockedError(GenreclfError):
    """The output is being written by another run."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, /proc), so that a pid reused by another
    process is not taken for the holder; "" where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def gone_here(holder: dict) -> bool:
    """Whether the holder ran on this host and its process is no longer running."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = int(holder.get("pid", -1))
    if not _pid_alive(pid):
        return True
    started = holder.get("pid_start", "")
    return bool(started) and _process_start(pid) not in ("", started)  # the pid is another process now


def stale_reason(holder: dict, stale_after_s: float) -> str | None:
    """Why a lock's holder is gone, or None while it may still be running."""
    if gone_here(holder):
        return f"pid {holder.get('pid')} is not running on this host"
    age = time.time() - float(holder.get("started", 0))
    if age > stale_after_s:
        return f"taken {age / 3600:.1f} h ago (more than lock_stale_after_s = {stale_after_s:.0f} s)"
    return None


class OutputLock:
    """The lock of one output location; use as a context manager or acquire()/release()."""

    def __init__(self, location: str, run_id: str, *, break_lock: bool = False, stale_after_s: float = 86400.0,
                 job: str = ""):
        self.where = storage.Location.open(location)  # resolved once, for taking, reading and removing it
        self.location = self.where.location  # what messages name
        self.holder = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                       "pid_start": _process_start(os.getpid()), "started": time.time(), "job": job}
        self.break_lock = break_lock
        self.stale_after_s = stale_after_s
        self.held = False

    def acquire(self) -> "OutputLock":
        payload = json.dumps(self.holder).encode()
        for _ in range(2):
            try:
                created = storage.create_exclusive(self.where, payload)
            except OSError as e:
                raise GenreclfError(f"cannot write to {storage.parent(self.location)}: {storage.describe(e)}") from None
            if created:
                self.held = True
                return self
            try:
                other = json.loads(storage.read_text(self.where))
            except (OSError, ValueError):
                other = {}
            stale = stale_reason(other, self.stale_after_s)
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(other.get("started", 0))))
            who = (f"run {other.get('run_id', '?')} ({other.get('job') or 'a genreclf job'}) on host "
                   f"{other.get('host', '?')}, pid {other.get('pid', '?')}, since {started}")
            if stale is None:
                raise LockedError(f"{self.location} is held by {who}: one writer per output; wait for it to finish "
                                  "or write elsewhere")
            if gone_here(other):
                log.warning("taking over the lock of %s: %s (a killed or crashed run; this run resumes it)", who, stale)
            elif not self.break_lock:
                raise LockedError(f"{self.location} is held by {who}, which looks gone ({stale}); "
                                  "rerun with --break-lock to take it over")
            storage.delete(self.where)
        raise LockedError(f"{self.location}: could not take the lock (another writer took it meanwhile)")

    def release(self) -> None:
        """Remove the lock; a store that lost it (a bucket removed mid-run) is a warning, not a second error."""
        if self.held:
            self.held = False
            try:
                storage.delete(self.where)
            except OSError as e:
                log.warning("could not remove the lock %s: %s", self.location, storage.describe(e))

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
