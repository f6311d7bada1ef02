"""Kill points: the crash tests stop a job's driver with SIGKILL just before or just after its K-th
move or delete under the output (``GENRECLF_KILL_AT=before:K`` or ``after:K``; ``trace`` only logs
each one), to prove that a kill anywhere in a commit leaves one whole run for readers.

Armed by the driver for its output (:func:`arm`), after it removed what a dead run left there;
storage calls :func:`step` around every move and delete. ``trace`` also logs what else changes the
output between steps (:func:`note`: the driver's writes, and Spark jobs, whose tasks write): two
points with nothing between them leave the same bytes, so the tests kill at one of them. Task
processes never arm it, and nothing happens unless the variable is set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

VARIABLE = "GENRECLF_KILL_AT"
_STATE: dict = {"roots": (), "count": 0, "when": None, "k": 0}


def arm(*roots: str) -> None:
    """Count moves and deletes under these filesystem paths (an output) from now on, in this process."""
    spec = os.environ.get(VARIABLE, "").strip()
    if not spec:
        return
    when, _, k = spec.partition(":")
    if when not in ("before", "after", "trace") or (when != "trace" and not k.isdigit()):
        raise ValueError(f"{VARIABLE}={spec!r}: use before:K, after:K or trace")
    _STATE.update(roots=tuple(r.rstrip("/") for r in roots), count=0, when=when, k=int(k or 0))


def _armed_for(paths) -> bool:
    return bool(_STATE["when"]) and any(p == r or p.startswith(r + "/") for p in paths for r in _STATE["roots"])


def note(kind: str, path: str) -> None:
    """Something that changes the output without a move or delete: a write, a Spark job's tasks."""
    if _STATE["when"] == "trace" and _armed_for([path]):
        log.info("kill point note: %s %s", kind, path)


@contextlib.contextmanager
def step(kind: str, *paths: str):
    """One move or delete of ``paths`` (filesystem paths); the driver dies around it when asked."""
    if not _armed_for(paths):
        yield
        return
    _STATE["count"] += 1
    k, what = _STATE["count"], f"{kind} {' -> '.join(paths)}"
    _maybe_kill("before", k, what)
    yield
    _maybe_kill("after", k, what)


def _maybe_kill(when: str, k: int, what: str) -> None:
    if _STATE["when"] == "trace" and when == "after":
        log.info("kill point %d: %s", k, what)
    if _STATE["when"] == when and _STATE["k"] == k:
        print(f"kill point: SIGKILL {when} step {k} ({what})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
