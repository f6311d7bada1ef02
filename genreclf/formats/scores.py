"""Score rows: their schema, the tables and files a run writes them in (``scores/part-*.parquet``,
one row per input file; ``labels.json``; the crowdAI ``submission.csv``) and ``--incremental``'s
rules for which rows a rerun keeps.

A run's rows reach its directory as task records (:mod:`genreclf.formats.taskrecords`), compacted
by the driver (:class:`CompactWriter`); the run directory and its commit are the score output's
(:mod:`genreclf.formats.scoreoutput`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.fs  # noqa: F401  (pa.fs)
import pyarrow.parquet as pq

from genreclf.errors import Reason
from genreclf.formats.schema import STATUS_OK
from genreclf.io import storage

log = logging.getLogger(__name__)

SCORES_DIR = "scores"
LABELS_FILE = "labels.json"
SUBMISSION_FILE = "submission.csv"

#: Columns of a score row: the input file as scored (path, size, mtime: what ``--incremental``
#: compares), the top genre and its probability, then every label's probability (as a map, and as a
#: vector in the bundle's label order), the most probable labels, and the precision the model computed in.
#: For a tagger (``pretrained:musicnn-*``) ``genre`` is the top of its genre tags, ``top_tags`` its top tags.
SCORES_SCHEMA = pa.schema([
    ("track_id", pa.string()),
    ("path", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("n_windows", pa.int32()),  # windows averaged (0 for errors)
    ("genre", pa.string()),
    ("confidence", pa.float64()),
    ("probabilities", pa.map_(pa.string(), pa.float64())),
    ("probability_vector", pa.list_(pa.float64())),
    ("top_tags", pa.list_(pa.string())),  # the TOP_TAGS most probable labels, most probable first
    ("size_bytes", pa.int64()),  # the input file's size and mtime when listed
    ("mtime", pa.float64()),
    ("precision", pa.string()),  # float32 | bfloat16 | float16; null when no model ran
])
#: Parquet metadata key of every part: the run that scored it (bundle digest, settings that change
#: the numbers), as JSON. ``--incremental`` keeps rows only of a run with the same values.
RUN_KEY = b"genreclf.score_run"
#: Labels listed in ``top_tags``.
TOP_TAGS = 5


def score_row(track_id, path, status, error=None, n_windows=0, probs=None, *, size_bytes=None, mtime=None,
              precision=None) -> dict:
    """One score row as :func:`score_table` takes it. A missing size or mtime (a FIFO, a file a
    catalogue names but the store lacks) may come as None or NaN (pandas' null): it is null."""
    return {"track_id": track_id, "path": path, "status": status, "error": error, "n_windows": int(n_windows),
            "probs": probs, "size_bytes": None if _missing(size_bytes) else int(size_bytes),
            "mtime": None if _missing(mtime) else float(mtime), "precision": precision}


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def genre_candidates(labels: list, genre_labels: list | None = None) -> list:
    """Indices of the labels a track's ``genre`` is chosen from: ``genre_labels`` (a tagger's genre
    tags) or every label."""
    return [i for i, label in enumerate(labels) if label in set(genre_labels)] if genre_labels else list(
        range(len(labels)))


def top_genre(probs, candidates: list) -> int:
    """The most probable of ``candidates`` (the first of equal maxima, as argmax)."""
    return max(candidates, key=lambda i: probs[i])


def score_table(rows: list, labels: list, run: dict | None = None, genre_labels: list | None = None) -> pa.Table:
    """Rows (:func:`score_row` dicts) as a table of SCORES_SCHEMA, with ``run`` as its metadata;
    ``genre`` is the most probable of ``genre_labels`` (default: of every label)."""
    cols = {name: [] for name in SCORES_SCHEMA.names}
    candidates = genre_candidates(labels, genre_labels)
    for row in rows:
        for key in ("track_id", "path", "status", "error", "n_windows", "size_bytes", "mtime", "precision"):
            cols[key].append(row[key])
        probs = row["probs"]
        if probs is None:
            for key in ("genre", "confidence", "probabilities", "probability_vector", "top_tags"):
                cols[key].append(None)
            continue
        probs = [float(p) for p in probs]
        top = top_genre(probs, candidates)
        cols["genre"].append(labels[top])
        cols["confidence"].append(probs[top])
        cols["probabilities"].append(list(zip(labels, probs)))
        cols["probability_vector"].append(probs)
        cols["top_tags"].append([labels[i] for i in sorted(range(len(probs)), key=lambda i: -probs[i])[:TOP_TAGS]])
    table = pa.Table.from_pydict(cols, schema=SCORES_SCHEMA)
    return table.replace_schema_metadata({RUN_KEY: json.dumps(run or {}, sort_keys=True)})


def rows_of(frame: pd.DataFrame) -> list:
    """Score rows (as :func:`score_row`) back from a frame of :func:`read_dir`: kept rows of a rerun."""
    rows = []
    for r in frame.itertuples(index=False):
        probs = list(r.probability_vector) if r.probability_vector is not None else None
        rows.append(score_row(r.track_id, r.path, r.status, r.error, r.n_windows, probs, size_bytes=r.size_bytes,
                              mtime=r.mtime, precision=r.precision))
    return rows


def read_run(location) -> dict | None:
    """The run record of a scores directory (a Location; see RUN_KEY); None when absent, empty or of
    an older version."""
    fs, path = location.fs, location.path
    try:
        parts = [f for f in fs.get_file_info(pa.fs.FileSelector(path)) if f.base_name.endswith(".parquet")]
    except FileNotFoundError:
        return None
    if not parts:
        return None
    meta = pq.read_schema(parts[0].path, filesystem=fs).metadata or {}
    return json.loads(meta[RUN_KEY]) if RUN_KEY in meta else None


#: A committed run's scores are cut into files of at most this much Arrow data (~400,000 rows of 16
#: genres; a 50-tag tagger's rows are ~3x larger), whatever the number of tasks: a million tracks
#: are a handful of files, not one per task (was ~15,600 files of ~64 rows).
MAX_SCORE_FILE_MB = 256
#: Rows gathered into one row group of a compacted file.
ROW_GROUP_ROWS = 65536
#: The columns the driver keeps of every row it compacts: the commit's check and the summary.
SUMMARY_COLUMNS = ["track_id", "path", "status", "error", "n_windows", "genre", "precision"]


class CompactWriter:
    """Writes a run's score rows (tables of SCORES_SCHEMA: task records, the driver's rows) into
    ``staging/part-NNNNN.parquet`` files of at most MAX_SCORE_FILE_MB, in place (the run directory
    is invisible until its commit, and removed whole if the run fails); keeps only SUMMARY_COLUMNS
    in memory (:meth:`close` returns them)."""

    def __init__(self, staging: storage.Location, run: dict):
        self.staging, self.run = staging, run
        self.files = 0
        self._pending: list = []
        self._rows = 0
        self._file_bytes = 0
        self._out = self._writer = None
        self._summary: list = []

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        table = table.cast(SCORES_SCHEMA)
        self._summary.append(table.select(SUMMARY_COLUMNS))
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self, *, last: bool = False) -> None:
        if not self._pending and not (last and self.files == 0):  # a run of no rows still has one file
            return
        table = pa.concat_tables([SCORES_SCHEMA.empty_table(), *self._pending]).combine_chunks()
        self._pending, self._rows = [], 0
        if self._writer is not None and self._file_bytes + table.nbytes > MAX_SCORE_FILE_MB << 20:
            self._close_file()
        if self._writer is None:
            location = self.staging.child(f"part-{self.files:05d}.parquet")
            self._context = storage.direct_output(location)
            self._out = self._context.__enter__()
            self._writer = pq.ParquetWriter(self._out, SCORES_SCHEMA.with_metadata(
                {RUN_KEY: json.dumps(self.run, sort_keys=True)}))
            self._file_bytes = 0
            self.files += 1
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self._file_bytes += table.nbytes

    def _close_file(self) -> None:
        self._writer.close()
        self._writer = None
        self._context.__exit__(None, None, None)

    def rows(self) -> pd.DataFrame:
        """SUMMARY_COLUMNS of every row added so far."""
        empty = SCORES_SCHEMA.empty_table().select(SUMMARY_COLUMNS)
        return pa.concat_tables([empty, *self._summary]).to_pandas()

    def close(self) -> pd.DataFrame:
        """Write what is pending and finish the last file; the rows' SUMMARY_COLUMNS."""
        self._flush(last=True)
        if self._writer is not None:
            self._close_file()
        return self.rows()

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._context.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._writer = None


def read_dir(location, columns: list | None = None) -> pd.DataFrame:
    """The parts of a scores directory (a Location or location string; committed or staged; none: no
    rows) as pandas, ``probabilities`` as dicts; only ``columns`` when given."""
    location = storage.Location.open(location)
    fs, path = location.fs, location.path
    schema = SCORES_SCHEMA if columns is None else pa.schema([SCORES_SCHEMA.field(c) for c in columns])
    if fs.get_file_info(path).type == pa.fs.FileType.NotFound:
        table = schema.empty_table().to_pandas()
    else:
        table = pq.read_table(path, filesystem=fs, schema=SCORES_SCHEMA, columns=columns).to_pandas()
    if "probabilities" in table.columns:
        table["probabilities"] = table["probabilities"].map(lambda m: dict(m) if m is not None else None)
    return table.sort_values("track_id", kind="stable").reset_index(drop=True)


def write_labels(directory: storage.Location, labels: list) -> None:
    storage.write_direct(directory.child(LABELS_FILE), json.dumps(labels, indent=2).encode())


def write_submission(scores: pd.DataFrame, labels: list, location: str) -> None:
    """``location`` (in an uncommitted run directory) in the crowdAI submission layout: ``file_id`` (basename without extension), one column per genre.

    Two inputs with one basename (``a/x.mp3``, ``b/x.mp3``) would give one id twice: those rows take
    their ``track_id`` without extension instead (``a/x``, ``b/x``), so every ``file_id`` is unique.
    """
    ok = scores[scores["status"] == STATUS_OK]
    file_id = ok["path"].map(lambda p: os.path.splitext(storage.basename(p))[0])
    clash = file_id.duplicated(keep=False)
    if clash.any():
        file_id = file_id.where(~clash, ok["track_id"].map(lambda t: os.path.splitext(t)[0]))
        log.warning("submission: %d files share a basename; their file_id is their track_id (e.g. %s)",
                    int(clash.sum()), file_id[clash].iloc[0])
    probs = pd.DataFrame(ok["probability_vector"].tolist(), columns=labels, index=ok.index)
    probs.insert(0, "file_id", file_id)
    text = io.StringIO()
    probs.to_csv(text, index=False, float_format="%.6f")
    storage.write_direct(location, text.getvalue().encode())


#: Error reasons that may not recur for an unchanged file (a store's failure, a decoder crash):
#: ``--incremental`` scores those files again. Any other error of an unchanged file would recur.
RETRIED_REASONS = (Reason.UNREADABLE_FILE, Reason.UNREADABLE_DIRECTORY, Reason.DECODE_FAILED)


def retried(rows: pd.DataFrame) -> pd.Series:
    return (rows["status"] != STATUS_OK) & rows["error"].fillna("").str.startswith(RETRIED_REASONS)


def keep_unchanged(existing, inputs, same_run: bool) -> tuple:
    """(rows of ``existing`` to keep, the inputs still to score) for ``--incremental``.

    Kept: the rows of a run with the same bundle and settings whose file has the same path, size
    and mtime (under this run's track_id), but for errors that may not recur (RETRIED_REASONS).
    """
    if existing is None or not same_run or existing.empty:
        return None, inputs
    keepable = existing[~retried(existing)]
    key = inputs[["path", "size_bytes", "mtime"]].merge(
        keepable[["path", "size_bytes", "mtime"]].assign(_kept=True), how="left", on=["path", "size_bytes", "mtime"])
    unchanged = key["_kept"].eq(True).to_numpy()
    ids = dict(zip(inputs["path"][unchanged], inputs["track_id"][unchanged]))
    kept = keepable[keepable["path"].isin(ids)].copy()
    kept["track_id"] = kept["path"].map(ids)
    return kept, inputs[~unchanged]


def count_failed_before(existing, to_score) -> int:
    """Inputs to score whose unchanged file failed before for a reason that may not recur: retried."""
    failed = existing[retried(existing)][["path", "size_bytes", "mtime"]]
    return len(to_score[["path", "size_bytes", "mtime"]].merge(failed, on=["path", "size_bytes", "mtime"]))


@dataclass
class IncrementalPlan:
    """What a score run does with an existing output: rows ``kept`` as they are (None: nothing kept),
    inputs ``to_score``, of which ``retried`` failed before, and ``dropped`` rows of files no longer listed."""

    kept: pd.DataFrame | None
    to_score: pd.DataFrame
    retried: int = 0
    dropped: int = 0
    answered: int = 0  # of to_score: rows the driver gave from the listing (missing, empty...), no task
    tasks: int = 0  # tasks planned for the rest
    tasks_kept: int = 0  # of them, finished by an interrupted run and kept
    files: int = 0  # Parquet files the committed scores are in

    @property
    def n_kept(self) -> int:
        return 0 if self.kept is None else len(self.kept)


def plan_incremental(existing, candidates: pd.DataFrame, listed: pd.Series, same_run: bool) -> IncrementalPlan:
    """``--incremental`` over ``existing`` rows (None: no output yet): keep unchanged rows of the same
    run (:func:`keep_unchanged`), score the other ``candidates``; rows of paths not ``listed`` are
    dropped: the output mirrors the current listing."""
    kept, to_score = keep_unchanged(existing, candidates, same_run)
    return IncrementalPlan(kept, to_score, retried=0 if kept is None else count_failed_before(existing, to_score),
                           dropped=0 if existing is None else int((~existing["path"].isin(set(listed))).sum()))
