"""What to featurize: expand inputs (directories, globs, files, catalogue CSVs) into catalogue rows.

A catalogue row is one input file: ``path`` (absolute), ``track_id``, ``label`` (or null),
``group`` (artist or album when the catalogue names one, for leak-free splits), ``size_bytes`` and
``mtime`` (for incremental reruns), and ``problem``: the error row of a file the listing already
shows cannot be used (missing, not a regular file, empty, unreadable), which the driver gives
itself, with no task; null for a file to open. Labels come from the catalogue CSV's
``genre`` column, a ``--labels`` CSV (``path`` or ``track_id`` to ``genre``) or FMA's ``tracks.csv``
(``track.genre_top``, matched by the track id in the file name, e.g. ``000/000002.mp3``).
"""

from __future__ import annotations

import codecs
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.fs as pafs

from genreclf.errors import ConfigError
from genreclf.io import storage

log = logging.getLogger(__name__)

CATALOG_COLUMNS = ["path", "track_id", "label", "group", "size_bytes", "mtime", "problem"]

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


def _listed(root: str, skipped: list) -> pd.DataFrame:
    """A directory's files (recursive, hidden directories and sidecar files passed over)."""
    rows = []
    for entry in storage.walk_files(root):
        if _is_sidecar(storage.basename(entry[0])):
            skipped.append(entry[0])
        else:
            rows.append(entry)
    return _frame(rows, root)


def _frame(rows: list, root: str) -> pd.DataFrame:
    return pd.DataFrame({"path": [r[0] for r in rows], "track_id": None, "label": None, "group": None,
                         "size_bytes": [r[1] for r in rows], "mtime": [r[2] for r in rows],
                         "problem": [r[3] for r in rows], "_root": root})


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _encoding(data: bytes) -> str:
    """The encoding a CSV declares by its byte-order mark (spreadsheets write one), else UTF-8."""
    return next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")


def read_csv_text(location: str) -> str:
    """A CSV's text: UTF-8, or what its BOM declares; anything else is refused naming the first
    byte that is not UTF-8 (a latin-1 or cp1252 export), rather than guessed."""
    data = storage.read_bytes(location)
    try:
        return data.decode(_encoding(data))
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{location} is not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}); "
                          "save it as UTF-8 (a spreadsheet's 'CSV UTF-8', or iconv -f latin1 -t utf-8)") from None


def _read_csv(location: str, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(read_csv_text(location)), **kwargs)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{location} is empty: a catalogue CSV needs a header with 'path' (and may have "
                          "'track_id' and 'genre')") from None
    except pd.errors.ParserError as e:
        raise ConfigError(f"{location} is not a readable CSV: {str(e).strip()}") from None


def _head_lines(location: str, n: int) -> list:
    with storage.open_input(location) as f:
        head = f.read(64 * 1024)
    text = head.decode(_encoding(head), errors="replace").lstrip("\ufeff")
    return (text.splitlines() + [""] * n)[:n]


def _is_fma_tracks_csv(location: str) -> bool:
    head = _head_lines(location, 3)
    return head[0].startswith(",") and "genre_top" in head[1] and head[2].startswith("track_id")


def read_fma_labels(tracks_csv: str) -> pd.DataFrame:
    """FMA ``tracks.csv`` -> DataFrame by track_id (int): ``label`` (top genre, may be null), ``group`` (artist)."""
    tracks = _read_csv(tracks_csv, index_col=0, header=[0, 1])
    out = pd.DataFrame({"label": tracks[("track", "genre_top")]}, index=tracks.index)
    for col in (("artist", "id"), ("artist", "name")):
        if col in tracks.columns:
            out["group"] = tracks[col].astype(str)
            break
    return out


def _strip_genres(table: pd.DataFrame) -> pd.DataFrame:
    """Genres without surrounding whitespace ("pop " is "pop"); a blank one is no label."""
    if "genre" in table.columns:
        table["genre"] = table["genre"].str.strip().replace("", None)
    return table


def _read_catalog_csv(location: str) -> pd.DataFrame:
    table = _strip_genres(_read_csv(location, dtype=str, keep_default_na=False, na_values=[""]))
    if "path" not in table.columns:
        raise ConfigError(f"catalogue {location} has no 'path' column (columns: {list(table.columns)}); "
                          "a catalogue CSV needs 'path' and may have 'track_id' and 'genre'")
    if table.empty:
        raise ConfigError(f"catalogue {location} lists no files (a header and no rows)")
    if "genre" in table.columns:
        _refuse_conflicts(table, "path", location)
    base = storage.parent(location)
    out = pd.DataFrame({"path": [storage.resolve(base, p) for p in table["path"]]})
    out["track_id"] = table["track_id"] if "track_id" in table.columns else None
    out["label"] = table["genre"] if "genre" in table.columns else None
    out["group"] = _group_of(table)
    # A listed file's size and mtime cost one stat each (a HEAD request on object stores); a file
    # that cannot be reached keeps nulls here and gets its error row from the driver, with no task.
    with ThreadPoolExecutor(32) as pool:  # round trips overlap: ~32x fewer seconds for a remote catalogue
        stats = list(pool.map(storage.probe, out["path"]))
    out["size_bytes"] = [s[0] for s in stats]
    out["mtime"] = [s[1] for s in stats]
    out["problem"] = [s[2] for s in stats]
    out["_root"] = base
    out["_catalog"] = True
    return out


def _group_of(table: pd.DataFrame):
    for col in GROUP_COLUMNS:
        if col in table.columns:
            return table[col]
    return None


def _is_catalog(location: str) -> bool:
    """A .csv named as an input is a catalogue: read as one, or refused in one line (no 'path'
    column, empty), never decoded as audio."""
    return location.lower().endswith(".csv")


def expand_inputs(inputs: list, exclude: tuple = ()) -> Catalog:
    """Expand each input (a local path or URL): a directory (recursive), a glob, a file, or a
    catalogue CSV with ``path``. Sizes and mtimes come from the listing. Files under an
    ``exclude`` location (as tables hold it: the job's own output, with its lock and records) are never inputs,
    wherever that output sits."""
    frames, skipped = [], []
    for raw in inputs:
        item = storage.to_location(raw)
        try:
            kind = storage.info(item).type
        except OSError as e:
            raise ConfigError(f"input {raw!r} cannot be reached: {storage.describe(e)}") from None
        if kind == pafs.FileType.Directory:
            frames.append(_listed(item, skipped))
        elif kind == pafs.FileType.File and _is_catalog(item):
            frames.append(_read_catalog_csv(item))
        elif kind in (pafs.FileType.File, pafs.FileType.Unknown):  # Unknown: a FIFO, socket, device: its row
            frames.append(_frame([(item, *storage.probe(item))], storage.parent(item)))
        elif storage.has_magic(raw):
            root, found = storage.glob(raw)
            if not found:
                raise ConfigError(f"input glob {raw!r} matches no file")
            frames.append(_frame(found, storage.to_location(root)))
        else:
            raise ConfigError(f"input {raw!r} is neither a file, a directory nor a glob that matches files")
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CATALOG_COLUMNS + ["_root"])
    for location in exclude:
        inside = table["path"].eq(location) | table["path"].str.startswith(location.rstrip("/") + "/")
        if inside.any():
            log.info("listing: %d files under the output %s passed over (the job's own output)", int(inside.sum()),
                     location)
            table = table[~inside]
    if table.empty:
        raise ConfigError(f"no input files found in {inputs}")
    missing = table["track_id"].isna()
    table.loc[missing, "track_id"] = [storage.relative(p, r) for p, r in zip(table.loc[missing, "path"],
                                                                           table.loc[missing, "_root"])]
    table = _merge_duplicates(table.drop(columns="_root"))
    dup = table["track_id"].duplicated(keep=False)
    if dup.any():
        # Same relative name under two roots: qualify with the full path to keep ids unique.
        table.loc[dup, "track_id"] = table.loc[dup, "path"]
    table["size_bytes"] = pd.array(table["size_bytes"].tolist(), dtype="Int64")
    table["mtime"] = pd.array(table["mtime"].tolist(), dtype="Float64")
    return Catalog(table[CATALOG_COLUMNS], skipped)


def _merge_duplicates(table: pd.DataFrame) -> pd.DataFrame:
    """One row per file named more than once (directly and through a catalogue CSV, in any order):
    the catalogue's row (its track id and group) with the one label given; labels that disagree are
    an error listing them."""
    catalog = table["_catalog"].eq(True) if "_catalog" in table.columns else pd.Series(False, index=table.index)
    table = table.assign(_catalog=catalog.to_numpy(), _order=range(len(table)))
    repeated = table["path"].duplicated(keep=False)
    if repeated.any():
        _refuse_conflicts(table[repeated].rename(columns={"label": "genre"}), "path", "the inputs")
        given = table[repeated].dropna(subset=["label"]).drop_duplicates("path").set_index("path")["label"]
        table.loc[repeated, "label"] = table.loc[repeated, "path"].map(given)
    table = table.sort_values(["_catalog", "_order"], ascending=[False, True], kind="stable")
    table = table.drop_duplicates("path", keep="first").sort_values("_order", kind="stable")
    return table.drop(columns=["_catalog", "_order"]).reset_index(drop=True)


def _refuse_conflicts(labels: pd.DataFrame, key: str, where: str) -> None:
    """Two rows giving one file different genres: an error that lists them (never settled silently)."""
    genres = labels.groupby(key)["genre"].nunique()
    conflicting = genres[genres > 1].index.tolist()
    if conflicting:
        rows = labels[labels[key].isin(conflicting[:5])].sort_values(key)
        listed = "; ".join(f"{k}: {', '.join(sorted(set(g['genre'].dropna())))}" for k, g in rows.groupby(key))
        raise ConfigError(f"{where}: {len(conflicting)} {key}(s) have conflicting genres ({listed}); "
                          "keep one row per file")


def apply_labels(table: pd.DataFrame, labels_csv: str) -> pd.DataFrame:
    """Fill ``label`` from a labels CSV: FMA ``tracks.csv``, or ``path``/``track_id`` -> ``genre``."""
    labels_csv = storage.to_location(labels_csv)
    if not storage.is_file(labels_csv):
        raise ConfigError(f"labels file {labels_csv} does not exist")
    table = table.copy()
    if _is_fma_tracks_csv(labels_csv):
        fma = read_fma_labels(labels_csv)
        ids = pd.to_numeric(table["path"].map(lambda p: os.path.splitext(storage.basename(p))[0]),
                            errors="coerce")
        found = ids.map(fma["label"])
        table["label"] = found.where(found.notna(), table["label"])
        if "group" in fma:
            group = ids.map(fma["group"])
            table["group"] = group.where(group.notna(), table["group"])
        fma = ids.notna()
        table.loc[fma, "track_id"] = table.loc[fma, "path"].map(lambda p: os.path.splitext(storage.basename(p))[0])
        if found.notna().sum() == 0 and len(table):
            raise ConfigError(f"labels {labels_csv} (FMA tracks.csv) labels none of the {len(table)} inputs: FMA "
                              "files are matched by the track id in their name (e.g. 000/000002.mp3)")
        return table
    labels = _read_csv(labels_csv, dtype=str, keep_default_na=False, na_values=[""])
    labels = _strip_genres(labels.rename(columns={a: b for a, b in LABEL_ALIASES.items()
                                                  if a in labels.columns and b not in labels.columns}))
    if "genre" not in labels.columns or not ({"path", "track_id"} & set(labels.columns)):
        raise ConfigError(f"labels {labels_csv} needs a 'genre' (or 'label') column and a 'path' (or 'file') or 'track_id' column "
                          f"(has {list(labels.columns)}), or must be FMA's tracks.csv")
    _refuse_conflicts(labels, "path" if "path" in labels.columns else "track_id", labels_csv)
    if "path" in labels.columns:
        base = storage.parent(labels_csv)
        by_path = {storage.resolve(base, p): g for p, g in zip(labels["path"], labels["genre"])}
        by_rel = dict(zip(labels["path"], labels["genre"]))
        found = [by_path.get(p, by_rel.get(t)) for p, t in zip(table["path"], table["track_id"])]
    else:
        by_id = dict(zip(labels["track_id"], labels["genre"]))
        found = [by_id.get(t) for t in table["track_id"]]
    if len(table) and not any(f is not None for f in found):
        example = labels["path"].iloc[0] if "path" in labels.columns else labels["track_id"].iloc[0]
        raise ConfigError(f"labels {labels_csv} labels none of the {len(table)} inputs (e.g. its row {example!r} "
                          f"vs the input {table['track_id'].iloc[0]!r}): 'path' is relative to the CSV's directory "
                          "(or absolute), 'track_id' is the path relative to the input directory")
    table["label"] = [f if f is not None else old for f, old in zip(found, table["label"])]
    group = _group_of(labels)
    if group is not None:
        key = "path" if "path" in labels.columns else "track_id"
        if key == "path":
            by = {storage.resolve(base, p): g for p, g in zip(labels["path"], group)}
            by.update(zip(labels["path"], group))
            table["group"] = [by.get(p, by.get(t, old)) for p, t, old in zip(table["path"], table["track_id"], table["group"])]
        else:
            by = dict(zip(labels["track_id"], group))
            table["group"] = [by.get(t, old) for t, old in zip(table["track_id"], table["group"])]
    return table
