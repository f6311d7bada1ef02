"""The finished tasks of a run not yet committed, kept across a crash: ``OUT/_tasks/KEY.parquet``.

A featurize or score task ends by writing its record here, whole (a hidden name moved into place):
its rows (the tracks rows of its files, or their score rows) and, in the record's metadata, what
else it wrote (featurize: its window file). ``KEY`` is a digest of everything that decides the
task's output: the commit the run builds on, the settings that change its numbers and its input
rows (path, size, mtime, track id, label). So a rerun of the same command after a crash plans the
same tasks, keeps those with a record and runs only the rest; a record that no task of the new
plan has is another run's, and is removed. The directory is removed once the run has committed;
readers never look in it (Spark and pyarrow skip names starting with ``_`` too).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from genreclf.io import storage

TASKS_DIR = "_tasks"
#: Parquet metadata key of a record: what the task wrote besides its rows, as JSON.
WROTE_KEY = b"genreclf.task_wrote"
#: Records read at once by the driver (object stores: one GET each, overlapped).
READ_THREADS = 16


def task_key(base: str, settings: dict, rows) -> str:
    """The name of a task's outputs: a digest of the commit it builds on (``base``), ``settings``
    and its input ``rows`` (tuples of plain values)."""
    digest = hashlib.sha256(json.dumps([base, settings], sort_keys=True, default=str).encode())
    for row in rows:
        digest.update(json.dumps(row, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:24]


def _dir(out) -> storage.Location:
    """The records' directory of an output (its Location, or a location string: an executor's)."""
    return storage.Location.open(out).child(TASKS_DIR)


def write_record(out, key: str, table: pa.Table, attempt: int, wrote: dict | None = None) -> None:
    """A task's record, written last (after the files it names): the task counts as finished from here."""
    meta = dict(table.schema.metadata or {})
    meta[WROTE_KEY] = json.dumps(wrote or {}).encode()
    with storage.atomic_output(_dir(out).child(f"{key}.parquet"), tag=f"attempt-{attempt}") as f:
        pq.write_table(table.replace_schema_metadata(meta), f)


def finished(out) -> set:
    """Keys of the tasks whose record is present."""
    return {e.base_name[:-len(".parquet")] for e in _dir(out).list()
            if e.type == pa.fs.FileType.File and e.base_name.endswith(".parquet") and not e.base_name.startswith(".")}


def read_records(out, keys: list, schema: pa.Schema, columns: list | None = None):
    """(key, table, what it wrote) per key, in order; read ``READ_THREADS`` at a time."""
    where = _dir(out)

    def read(key):
        with where.fs.open_input_file(f"{where.path}/{key}.parquet") as f:
            parquet = pq.ParquetFile(f)
            meta = parquet.schema_arrow.metadata or {}
            table = parquet.read(columns=columns)
        wrote = json.loads(meta.get(WROTE_KEY, b"{}"))
        return key, table.cast(schema if columns is None else pa.schema([schema.field(c) for c in columns])), wrote

    with ThreadPoolExecutor(READ_THREADS) as pool:
        for start in range(0, len(keys), 4 * READ_THREADS):  # bounded read-ahead: memory stays ~64 records
            yield from pool.map(read, keys[start:start + 4 * READ_THREADS])


def remove_others(out, keep: set) -> int:
    """Delete the records not in ``keep`` (another run's) and partial ones (a task killed mid-write)."""
    where = _dir(out)
    stale = [e.path for e in where.list() if e.type == pa.fs.FileType.File
             and (e.base_name.startswith(".") or e.base_name[:-len(".parquet")] not in keep)]
    where.delete_files(stale)
    return len(stale)


def remove_all(out) -> None:
    """Delete the records once the run they belong to has committed."""
    _dir(out).delete()
