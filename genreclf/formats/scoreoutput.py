"""A score output opened once (:class:`ScoreOutput`): its location resolved, then asked for its
commit record, its run directories, its lock and its task records instead of resolving the
location again in every step.

Layout (:mod:`genreclf.formats.scores` for the rows): one directory per run, ``DIR/run-RUN/``
holding ``scores/part-*.parquet``, ``labels.json`` and, on request, ``submission.csv``;
``DIR/current.json`` names the committed run. The driver commits a complete run directory by one
atomic write of ``current.json`` (a single object write on object stores), so readers see the
three files change together; the previous run's directory is removed after the commit, and
directories of runs that never committed by the next run, under the output's lock.
"""

from __future__ import annotations

import json
import logging
import time

import pandas as pd
import pyarrow as pa

from genreclf.errors import DamagedInputError
from genreclf.formats.scores import LABELS_FILE, SCORES_DIR, SUBMISSION_FILE, read_dir
from genreclf.formats.taskrecords import TASKS_DIR
from genreclf.io import storage
from genreclf.io.lock import LOCK_FILE, OutputLock

log = logging.getLogger(__name__)

#: The commit record: {"run": directory name, "run_id", "rows", "labels", "submission": bool, "committed"}.
CURRENT_FILE = "current.json"
RUN_PREFIX = "run-"


class ScoreOutput:
    """A score output (local path or URL), opened once: :meth:`open` resolves the location; the
    rest is asked of the handle (``root``: its :class:`~genreclf.io.storage.Location`)."""

    def __init__(self, location):
        self.root = storage.Location.open(location)  # the one resolution of the location
        self.url, self.location = self.root.url, self.root.location

    @classmethod
    def open(cls, location) -> "ScoreOutput":
        return location if isinstance(location, ScoreOutput) else cls(location)

    def committed(self) -> dict | None:
        """The commit record (see CURRENT_FILE); None when nothing was committed. An output of an
        earlier version (``DIR/scores`` beside ``DIR/labels.json``) reads as run ``""``."""
        current = self.root.child(CURRENT_FILE)
        try:
            return json.loads(storage.read_text(current))
        except FileNotFoundError:
            return {"run": "", "run_id": ""} if self.root.child(SCORES_DIR).exists() else None
        except ValueError:
            raise DamagedInputError(f"{current.location} is not valid JSON: the score output's commit record is "
                                    "damaged; score again with --overwrite") from None

    def committed_part(self, name: str = "") -> storage.Location | None:
        """Where the committed run keeps ``name`` (``scores``, ``labels.json``, ``submission.csv``; ""
        for its directory); None when nothing is committed."""
        record = self.committed()
        if record is None:
            return None
        parts = [p for p in (record["run"], name) if p]
        return self.root.child(*parts) if parts else self.root

    def foreign_entries(self) -> list:
        """Names that no score output holds (a folder of the user's, a featurize output): score
        writes only into a new or empty directory or its own output, --overwrite or not."""
        ours = {CURRENT_FILE, SCORES_DIR, LABELS_FILE, SUBMISSION_FILE, LOCK_FILE, TASKS_DIR}
        return sorted(e.base_name for e in self.root.list() if e.base_name not in ours
                      and not e.base_name.startswith(".") and not e.base_name.startswith(RUN_PREFIX))

    def run_dir(self, run_id: str) -> storage.Location:
        """The directory a run writes (invisible to readers until :meth:`commit` names it)."""
        return self.root.child(RUN_PREFIX + run_id)

    def lock(self, run_id: str, **options) -> OutputLock:
        return OutputLock(self.root.child(LOCK_FILE).url, run_id, job="score", **options)

    def read_scores(self) -> pd.DataFrame:
        """The committed scores as pandas; no rows when none."""
        return read_dir(self.committed_part(SCORES_DIR) or self.root.child(SCORES_DIR))

    def commit(self, run_id: str, labels: list, rows: int, submission: bool) -> storage.Location:
        """Make run ``run_id`` (its directory complete) the committed run by one atomic write of
        ``current.json``; then remove what it replaced: the previous run's directory (or an earlier
        version's ``scores/``, ``labels.json`` and ``submission.csv``). Returns the run's directory."""
        previous = self.committed()
        record = {"run": RUN_PREFIX + run_id, "run_id": run_id, "rows": rows, "labels": labels,
                  "submission": submission, "committed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        storage.write_text(self.root.child(CURRENT_FILE), json.dumps(record, indent=2))
        if previous is not None and previous["run"]:
            self.root.child(previous["run"]).delete()
        elif previous is not None:
            for name in (SCORES_DIR, LABELS_FILE, SUBMISSION_FILE):
                self.root.child(name).delete()
        return self.run_dir(run_id)

    def remove_uncommitted(self, record: dict | None) -> int:
        """Delete run directories the commit ``record`` (:meth:`committed`) does not name (killed or
        failed runs; the caller holds the lock) and staging directories of earlier versions; returns how many."""
        current = record["run"] if record else None
        stale = [e for e in self.root.list() if e.type == pa.fs.FileType.Directory and (
            (e.base_name.startswith(RUN_PREFIX) and e.base_name != current)
            or (e.base_name.startswith(f".{SCORES_DIR}-") and e.base_name.endswith(".staging")))]
        for entry in stale:
            self.root.child(entry.base_name).delete()
            log.info("score: removed %s of an interrupted run (never committed)", entry.base_name)
        partial = storage.partial_files(self.root)  # a killed writer's hidden partial commit record
        self.root.delete_files(partial)
        return len(stale) + len(partial)


def committed(output) -> dict | None:
    """The commit record of a score output (a local path or URL); None when nothing was committed."""
    return ScoreOutput.open(output).committed()


def committed_location(output, name: str = "") -> str | None:
    """Where the committed run of a score output keeps ``name`` ("" for its directory), as a location."""
    part = ScoreOutput.open(output).committed_part(name)
    return part.location if part is not None else None


def read_scores(output) -> pd.DataFrame:
    """The committed scores of a score output (a local path or URL) as pandas; no rows when none."""
    return ScoreOutput.open(output).read_scores()
