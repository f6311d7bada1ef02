"""SIGINT (Ctrl-C) and SIGTERM: a job stops in order, never mid-step with a traceback.

While :func:`interrupts` is active, either signal raises :class:`~genreclf.errors.Interrupted` in
the main thread, so every ``finally`` on the way out runs: Spark's jobs are cancelled and its
context stopped, the output's lock released, staging removed. A step that must not be cut in two
(starting Spark's JVM: cut, it outlives the driver) runs under :func:`deferred`, and the signal is
raised when it ends. A second signal while the job unwinds exits at once with the signal's code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from genreclf.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STATE: dict = {"active": False, "seen": [], "deferring": 0, "pending": None}


def _handler(signum, frame):
    if _STATE["seen"]:
        os.write(2, f"{signal.Signals(signum).name} again: exiting now; the next run takes the lock over\n".encode())
        os._exit(128 + signum)
    if _STATE["deferring"]:
        _STATE["pending"] = signum
        return
    _STATE["seen"].append(signum)
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts():
    """Turn SIGINT and SIGTERM into :class:`Interrupted` in the block (main thread only; the
    previous handlers come back after it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _STATE.update(active=True, seen=[], deferring=0, pending=None)
    try:
        yield
    finally:
        _STATE["active"] = False
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred():
    """Hold a signal that arrives in the block until the block is done, then raise it."""
    _STATE["deferring"] += 1
    try:
        yield
    finally:
        _STATE["deferring"] -= 1
        pending = _STATE["pending"]
        if pending is not None and not _STATE["deferring"]:
            _STATE["pending"] = None
            _STATE["seen"].append(pending)
            raise Interrupted(pending)


def reinstall() -> None:
    """Take SIGINT back after a library installed its own handler (SparkContext does)."""
    if _STATE["active"] and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)


def name(signum: int) -> str:
    return {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}.get(signum, signal.Signals(signum).name)
