"""What to featurize: expand inputs (directories, globs, files, catalogue CSVs) into catalogue rows.

A catalogue row is one input file: ``path`` (absolute), ``track_id``, ``label`` (or null),
``group`` (artist or album when the catalogue names one, for leak-free splits), ``size_bytes`` and
``mtime`` (for incremental reruns). Labels come from the catalogue CSV's
``genre`` column, a ``--labels`` CSV (``path`` or ``track_id`` to ``genre``) or FMA's ``tracks.csv``
(``track.genre_top``, matched by the track id in the file name, e.g. ``000/000002.mp3``).
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field

import pandas as pd

from genreclf.errors import ConfigError

log = logging.getLogger(__name__)

CATALOG_COLUMNS = ["path", "track_id", "label", "group", "size_bytes", "mtime"]

#: Catalogue columns that name a track's group (artist first): a training split keeps groups whole.
GROUP_COLUMNS = ("artist", "artist_id", "album", "album_id")

#: Sidecar files that directory listings pass over (by extension; named files and globs never are).
SIDECAR_EXTENSIONS = frozenset({
    ".csv", ".tsv", ".json", ".txt", ".md", ".nfo", ".log", ".pdf", ".jpg", ".jpeg", ".png", ".gif",
    ".bmp", ".webp", ".m3u", ".m3u8", ".pls", ".cue", ".sfv", ".md5", ".sha1", ".sha256", ".xml",
    ".parquet", ".crc",
})
#: Column names a labels CSV may use instead of ours (a dataset manifest's ``file`` and ``label``).
LABEL_ALIASES = {"file": "path", "label": "genre"}

SIDECAR_NAMES = frozenset({"checksums", "README", "LICENSE", "_SUCCESS"})


@dataclass
class Catalog:
    """The expanded inputs plus what listing passed over (reported in the job summary)."""

    entries: pd.DataFrame
    skipped: list = field(default_factory=list)  # sidecar files seen in directories


def _is_sidecar(name: str) -> bool:
    return name.startswith(".") or name in SIDECAR_NAMES or os.path.splitext(name)[1].lower() in SIDECAR_EXTENSIONS


def _walk(root: str, skipped: list) -> list:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            (skipped if _is_sidecar(name) else found).append(full)
    return found


def _is_fma_tracks_csv(path: str) -> bool:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        head = [f.readline() for _ in range(3)]
    return head[0].startswith(",") and "genre_top" in head[1] and head[2].startswith("track_id")


def read_fma_labels(tracks_csv: str) -> pd.DataFrame:
    """FMA ``tracks.csv`` -> DataFrame by track_id (int): ``label`` (top genre, may be null), ``group`` (artist)."""
    tracks = pd.read_csv(tracks_csv, index_col=0, header=[0, 1])
    out = pd.DataFrame({"label": tracks[("track", "genre_top")]}, index=tracks.index)
    for col in (("artist", "id"), ("artist", "name")):
        if col in tracks.columns:
            out["group"] = tracks[col].astype(str)
            break
    return out


def _read_catalog_csv(path: str) -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    if "path" not in table.columns:
        raise ConfigError(f"catalogue {path} has no 'path' column (columns: {list(table.columns)}); "
                          "a catalogue CSV needs 'path' and may have 'track_id' and 'genre'")
    base = os.path.dirname(os.path.abspath(path))
    out = pd.DataFrame({"path": [os.path.normpath(os.path.join(base, p)) for p in table["path"]]})
    out["track_id"] = table["track_id"] if "track_id" in table.columns else None
    out["label"] = table["genre"] if "genre" in table.columns else None
    out["group"] = _group_of(table)
    out["_root"] = base
    return out


def _group_of(table: pd.DataFrame):
    for col in GROUP_COLUMNS:
        if col in table.columns:
            return table[col]
    return None


def _looks_like_catalog(path: str) -> bool:
    if not path.lower().endswith(".csv"):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline()
    return "path" in [c.strip().strip('"') for c in header.split(",")]


def expand_inputs(inputs: list) -> Catalog:
    """Expand each input: a directory (recursive), a glob, a file, or a catalogue CSV with ``path``."""
    frames, skipped = [], []
    for raw in inputs:
        item = os.path.expanduser(raw)
        if os.path.isdir(item):
            root = os.path.abspath(item)
            files = _walk(root, skipped)
            frames.append(pd.DataFrame({"path": files, "track_id": None, "label": None, "group": None, "_root": root}))
        elif os.path.isfile(item) and _looks_like_catalog(item):
            frames.append(_read_catalog_csv(item))
        elif os.path.isfile(item):
            path = os.path.abspath(item)
            frames.append(pd.DataFrame({"path": [path], "track_id": None, "label": None, "group": None,
                                        "_root": os.path.dirname(path)}))
        elif glob.has_magic(item):
            files = sorted(os.path.abspath(p) for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not files:
                raise ConfigError(f"input glob {raw!r} matches no file")
            root = os.path.abspath(_glob_root(item))
            frames.append(pd.DataFrame({"path": files, "track_id": None, "label": None, "group": None, "_root": root}))
        else:
            raise ConfigError(f"input {raw!r} is neither a file, a directory nor a glob that matches files")
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CATALOG_COLUMNS + ["_root"])
    if table.empty:
        raise ConfigError(f"no input files found in {inputs}")
    missing = table["track_id"].isna()
    table.loc[missing, "track_id"] = [os.path.relpath(p, r) for p, r in zip(table.loc[missing, "path"],
                                                                          table.loc[missing, "_root"])]
    table = table.drop(columns="_root").drop_duplicates("path", keep="first").reset_index(drop=True)
    dup = table["track_id"].duplicated(keep=False)
    if dup.any():
        # Same relative name under two roots: qualify with the full path to keep ids unique.
        table.loc[dup, "track_id"] = table.loc[dup, "path"]
    sizes, mtimes = [], []
    for p in table["path"]:
        try:
            st = os.stat(p)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime)
        except OSError:
            sizes.append(None)
            mtimes.append(None)
    table["size_bytes"] = pd.array(sizes, dtype="Int64")
    table["mtime"] = pd.array(mtimes, dtype="Float64")
    return Catalog(table[CATALOG_COLUMNS], skipped)


def _glob_root(pattern: str) -> str:
    parts = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or "."


def apply_labels(table: pd.DataFrame, labels_csv: str) -> pd.DataFrame:
    """Fill ``label`` from a labels CSV: FMA ``tracks.csv``, or ``path``/``track_id`` -> ``genre``."""
    if not os.path.isfile(labels_csv):
        raise ConfigError(f"labels file {labels_csv} does not exist")
    table = table.copy()
    if _is_fma_tracks_csv(labels_csv):
        fma = read_fma_labels(labels_csv)
        ids = pd.to_numeric(table["path"].map(lambda p: os.path.splitext(os.path.basename(p))[0]),
                            errors="coerce")
        found = ids.map(fma["label"])
        table["label"] = found.where(found.notna(), table["label"])
        if "group" in fma:
            group = ids.map(fma["group"])
            table["group"] = group.where(group.notna(), table["group"])
        fma = ids.notna()
        table.loc[fma, "track_id"] = table.loc[fma, "path"].map(lambda p: os.path.splitext(os.path.basename(p))[0])
        return table
    labels = pd.read_csv(labels_csv, dtype=str, keep_default_na=False, na_values=[""])
    labels = labels.rename(columns={a: b for a, b in LABEL_ALIASES.items()
                                    if a in labels.columns and b not in labels.columns})
    if "genre" not in labels.columns or not ({"path", "track_id"} & set(labels.columns)):
        raise ConfigError(f"labels {labels_csv} needs a 'genre' (or 'label') column and a 'path' (or 'file') or 'track_id' column "
                          f"(has {list(labels.columns)}), or must be FMA's tracks.csv")
    if "path" in labels.columns:
        base = os.path.dirname(os.path.abspath(labels_csv))
        by_path = {os.path.normpath(os.path.join(base, p)): g for p, g in zip(labels["path"], labels["genre"])}
        by_rel = dict(zip(labels["path"], labels["genre"]))
        found = [by_path.get(p, by_rel.get(t)) for p, t in zip(table["path"], table["track_id"])]
    else:
        by_id = dict(zip(labels["track_id"], labels["genre"]))
        found = [by_id.get(t) for t in table["track_id"]]
    table["label"] = [f if f is not None else old for f, old in zip(found, table["label"])]
    group = _group_of(labels)
    if group is not None:
        key = "path" if "path" in labels.columns else "track_id"
        if key == "path":
            by = {os.path.normpath(os.path.join(base, p)): g for p, g in zip(labels["path"], group)}
            by.update(zip(labels["path"], group))
            table["group"] = [by.get(p, by.get(t, old)) for p, t, old in zip(table["path"], table["track_id"], table["group"])]
        else:
            by = dict(zip(labels["track_id"], group))
            table["group"] = [by.get(t, old) for t, old in zip(table["track_id"], table["group"])]
    return table
