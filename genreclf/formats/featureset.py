"""A featurize output opened once, for the stages that read it (train, evaluate, cross-validation,
score from features): its location resolved, its filesystem and commit record read, then asked for
its parts (recipe, tracks, window files) instead of resolving its location again in every reader.

The tracks file is the commit record: its Parquet metadata names the window files readers may take
(written by :func:`genreclf.formats.features.commit`), so files of a run that never committed are
ignored. petastorm resolves a dataset URL once the same way (``fs_utils``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genreclf.config import Recipe
from genreclf.errors import ConfigError, DamagedInputError
from genreclf.formats.schema import RECIPE_FILE, TRACKS_DIR, TRACKS_SCHEMA, WINDOWS_DIR
from genreclf.io import storage

log = logging.getLogger(__name__)

#: Keys of the tracks file's Parquet metadata that make it the commit record.
FILES_KEY = b"genreclf.window_files"
RECIPE_KEY = b"genreclf.recipe"
RUN_KEY = b"genreclf.run_id"
#: Window files whose footers are read at once (object stores: a GET each, overlapped).
FOOTER_THREADS = 16
#: The one file of ``tracks/``.
TRACKS_FILE = "part-00000.parquet"


@dataclass(frozen=True)
class Windows:
    """Window files to read: their directory (``url``), its filesystem and the files' paths in it
    (a featurize output's committed ones, or a local copy of them: :meth:`FeatureSet.cached`)."""

    url: str
    fs: object
    base: str  # the directory's path in ``fs``
    paths: tuple

    def located(self, path: str) -> str:
        return storage.located(self.url, path)

    def sizes(self) -> dict:
        """{path: bytes} of the directory's files, from one listing (not a request per file)."""
        return {e.path: e.size for e in self.fs.get_file_info(pa.fs.FileSelector(self.base, allow_not_found=True))}


class FeatureSet:
    """A featurize output (local path or URL), opened once: :meth:`open` resolves the location and
    reads the commit record; ``recipe``, :meth:`tracks` and :meth:`windows` come from them."""

    def __init__(self, location: str):
        root = storage.Location.open(location)  # the one resolution of the location
        self.root, self.location, self.url, self.fs, self.base = root, root.location, root.url, root.fs, root.path
        self.windows_url = root.child(WINDOWS_DIR)  # a Location: readers given it resolve nothing
        self.record = self._read_record()  # {"files", "recipe", "run_id"}, None before the first commit
        self._checked = None  # the tracks table once checked: cross-validation's folds each ask for it

    @classmethod
    def open(cls, location: str) -> "FeatureSet":
        return cls(location)

    def _read_record(self) -> dict | None:
        """What the last commit recorded: {"files": [names], "recipe": dict, "run_id"}; None when the
        output has no tracks table; "files" None for outputs written before commits recorded files."""
        path = f"{self.base}/{TRACKS_DIR}/{TRACKS_FILE}"
        if self.fs.get_file_info(path).type == pa.fs.FileType.NotFound:
            return None
        with self.fs.open_input_file(path) as f:
            meta = pq.read_metadata(f).metadata or {}
        files = json.loads(meta[FILES_KEY]) if FILES_KEY in meta else None
        recipe = json.loads(meta[RECIPE_KEY]) if RECIPE_KEY in meta else None
        return {"files": files, "recipe": recipe, "run_id": meta.get(RUN_KEY, b"").decode()}

    @property
    def run_id(self) -> str:
        return (self.record or {}).get("run_id", "")

    @property
    def recipe(self) -> Recipe:
        """The recipe recorded by the commit (``recipe.json`` is a copy, read for older outputs)."""
        if self.record is not None and self.record["recipe"] is not None:
            return Recipe.from_dict(self.record["recipe"])
        try:
            with self.fs.open_input_stream(f"{self.base}/{RECIPE_FILE}") as f:
                recorded = json.loads(f.read())
        except FileNotFoundError:
            raise ConfigError(f"{self.location} is not a featurize output (no {RECIPE_FILE}); "
                              "run ./spark-submit.sh featurize first") from None
        recorded.pop("genreclf_version", None)
        return Recipe.from_dict(recorded)

    def tracks(self, *, check: bool = False) -> pd.DataFrame:
        """The tracks table; with ``check`` (what train, evaluate and score read), also checked
        against its window files (:meth:`check`), once per handle (a copy each time)."""
        if check and self._checked is not None:
            return self._checked.copy()
        try:
            tracks = pq.read_table(f"{self.base}/{TRACKS_DIR}", filesystem=self.fs, schema=TRACKS_SCHEMA).to_pandas()
        except FileNotFoundError:
            raise ConfigError(f"{self.location} is not a featurize output (no {TRACKS_DIR}/); "
                              "run ./spark-submit.sh featurize first") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise self.damaged(f"its tracks table {storage.join(self.url, TRACKS_DIR, TRACKS_FILE)} cannot be read "
                               f"({storage.describe(e)})") from None
        if check:
            self.check(tracks)
            self._checked = tracks.copy()
        return tracks

    def windows(self) -> Windows:
        """The committed window files (a listing for outputs written before commits named them)."""
        base = f"{self.base}/{WINDOWS_DIR}"
        return Windows(self.windows_url, self.fs, base, tuple(_window_paths(self.record, base, self.windows_url)))

    def damaged(self, what: str) -> DamagedInputError:
        return DamagedInputError(f"featurize output {self.location} is damaged: {what}; featurize it again with "
                                 "--overwrite")

    def check(self, tracks: pd.DataFrame) -> None:
        """Refuse a damaged featurize output before any work: a track id twice in the tracks table, a
        window file its commit names missing or unreadable (Parquet footers only: one small read per
        file), or window rows that are not as many as the ok tracks' ``n_windows``."""
        twice = tracks["track_id"][tracks["track_id"].duplicated()]
        if len(twice):
            raise self.damaged(f"its tracks table names {twice.nunique()} track id(s) twice (e.g. {twice.iloc[0]!r})")
        windows = self.windows()

        def rows(path):
            try:
                with self.fs.open_input_file(path) as f:
                    return pq.read_metadata(f).num_rows
            except FileNotFoundError:
                raise self.damaged(f"window file {windows.located(path)}, named by its commit, is missing") from None
            except (pa.ArrowInvalid, OSError) as e:
                raise self.damaged(f"window file {windows.located(path)} is truncated or not Parquet "
                                   f"({storage.describe(e)[:80]})") from None

        with ThreadPoolExecutor(FOOTER_THREADS) as pool:
            found = sum(pool.map(rows, windows.paths))
        expected = int(tracks.loc[tracks["status"] == "ok", "n_windows"].sum())
        if found != expected:
            raise self.damaged(f"its window files hold {found} windows but its tracks table counts {expected} "
                               "(n_windows of the ok tracks)")

    def check_window_counts(self, tracks: pd.DataFrame, counts: pd.Series) -> None:
        """Refuse windows read (``counts``: rows per track id) that disagree with the tracks' ``n_windows``."""
        expected = tracks.set_index("track_id")["n_windows"].astype("int64")
        found = counts.reindex(expected.index).fillna(0).astype("int64")
        wrong = expected.index[expected.to_numpy() != found.to_numpy()]
        if len(wrong):
            t = wrong[0]
            raise self.damaged(f"{len(wrong)} track(s) have other window counts than the tracks table says (e.g. "
                               f"{t!r}: {found[t]} windows, n_windows {expected[t]})")

    def cached(self, cache_dir: str) -> Windows:
        """The window files, or with ``cache_dir`` a local copy of them, made once.

        Remote features (s3://, gs://, hdfs://) are then downloaded on the first use only, not once
        per epoch. A file already in the cache with the same size is kept; each file is copied under a
        hidden name and renamed, so an interrupted copy is never taken for a complete one.
        """
        windows = self.windows()
        if not cache_dir:
            return windows
        local = os.path.join(os.path.abspath(cache_dir), hashlib.sha1(self.windows_url.encode()).hexdigest()[:16])
        os.makedirs(local, exist_ok=True)
        sizes = {i.path: i.size for i in self.fs.get_file_info(list(windows.paths))}
        copied = 0
        for path in windows.paths:
            target = os.path.join(local, path.rsplit("/", 1)[-1])
            if os.path.exists(target) and os.path.getsize(target) == sizes[path]:
                continue
            storage.download(windows.located(path), target)
            copied += 1
        wanted = {p.rsplit("/", 1)[-1] for p in windows.paths}
        for name in os.listdir(local):  # files the source no longer has (e.g. after --incremental)
            if name not in wanted:
                os.remove(os.path.join(local, name))
        log.info("features cache: %d of %d window files copied to %s", copied, len(windows.paths), local)
        fs, base = storage.filesystem(local)
        return Windows(storage.to_url(local), fs, base, tuple(sorted(os.path.join(local, n) for n in wanted)))


def tracks_file(output) -> storage.Location:
    """The one file of ``tracks/``: the commit record of a featurize output (a location or its handle)."""
    return storage.Location.open(output).child(TRACKS_DIR, TRACKS_FILE)


def _window_paths(record: dict | None, base: str, windows_url: str) -> list:
    """The window files a commit record names, under ``base`` (the windows directory's path in its
    filesystem), sorted; a listing for outputs written before commits named them."""
    if record is None or record["files"] is None:
        return listed_window_files(windows_url)
    return sorted(f"{base}/{name}" for name in record["files"])


def listed_window_files(windows_url: str) -> list:
    """Paths of every window file present, committed or not (a crashed run's included)."""
    fs, base = storage.filesystem(windows_url)
    if fs.get_file_info(base).type == pa.fs.FileType.NotFound:
        return []
    return sorted(i.path for i in fs.get_file_info(pa.fs.FileSelector(base))
                  if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))


def read_tracks(output: str, *, check: bool = False) -> pd.DataFrame:
    """The tracks table of a featurize output, for a caller that needs nothing else of it."""
    return FeatureSet.open(output).tracks(check=check)


def read_recipe(output: str) -> Recipe:
    """The recipe of a featurize output, for a caller that needs nothing else of it."""
    return FeatureSet.open(output).recipe


def window_files(windows_url: str) -> list:
    """Paths (within their filesystem) of the committed window files of a featurize output's
    ``windows/`` directory, sorted, for a caller that needs nothing else of it."""
    record = FeatureSet.open(storage.parent(storage.to_location(windows_url))).record
    return _window_paths(record, storage.filesystem(windows_url)[1], windows_url)
