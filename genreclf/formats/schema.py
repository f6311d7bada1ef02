"""The two outputs of featurize: the petastorm windows dataset and the one-row-per-file tracks table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from genreclf.config import Recipe

WINDOWS_DIR = "windows"
TRACKS_DIR = "tracks"
RECIPE_FILE = "recipe.json"

#: Columns of the tracks table, in order; exactly one row per input file.
TRACKS_SCHEMA = pa.schema([
    ("track_id", pa.string()),
    ("path", pa.string()),
    ("label", pa.string()),
    ("group", pa.string()),  # artist or album from the catalogue; the training split keeps it whole
    ("status", pa.string()),  # "ok" | "error"
    ("error", pa.string()),  # "reason: detail"; null when ok
    ("warning", pa.string()),  # a repair worth knowing (skipped corrupt packets); null when clean
    ("duration_s", pa.float64()),  # decoded duration; null when nothing decoded
    ("n_windows", pa.int32()),  # windows written (0 for errors)
    ("sample_rate", pa.int32()),  # the source's own rate
    ("channels", pa.int32()),
    ("codec", pa.string()),
    ("size_bytes", pa.int64()),
    ("mtime", pa.float64()),
])

STATUS_OK = "ok"
STATUS_ERROR = "error"
#: A task's row saying the run cannot go on (a full disk, a bucket gone); never committed: the
#: driver stops the run with its ``error`` as the one line the user reads.
STATUS_FATAL = "fatal"


def window_schema(recipe: Recipe):
    """The petastorm Unischema of window rows: track_id, window index, label, stft (frames x bins)."""
    from petastorm.codecs import NdarrayCodec, ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import IntegerType, StringType

    return Unischema("GenreclfWindows", [
        UnischemaField("track_id", np.str_, (), ScalarCodec(StringType()), False),
        UnischemaField("window", np.int32, (), ScalarCodec(IntegerType()), False),
        UnischemaField("label", np.str_, (), ScalarCodec(StringType()), True),
        UnischemaField("stft", np.dtype(recipe.dtype).type, recipe.shape, NdarrayCodec(), False),
    ])


def window_arrow_schema() -> pa.Schema:
    """The Parquet schema of window rows, as Spark writes the Unischema (``stft`` holds .npy bytes)."""
    return pa.schema([
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("window", pa.int32(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("stft", pa.binary(), nullable=False),
    ])


def summarize(rows: pd.DataFrame, elapsed_s: float, *, n_inputs: int, skipped: int = 0, unchanged: int = 0) -> dict:
    """Counts for the closing summary: files, ok, errors by reason, windows, elapsed, tracks/s."""
    errors = rows.loc[rows["status"] != STATUS_OK, "error"].fillna("unknown")
    reasons = errors.str.split(":", n=1).str[0].value_counts().sort_index()
    return {
        "files_in": int(n_inputs),
        "processed": int(len(rows)),
        "unchanged_skipped": int(unchanged),
        "sidecar_files_passed_over": int(skipped),
        "ok": int((rows["status"] == STATUS_OK).sum()),
        "errors": int(len(errors)),
        "errors_by_reason": {k: int(v) for k, v in reasons.items()},
        "warnings": int(rows["warning"].notna().sum()),
        "windows_written": int(rows["n_windows"].fillna(0).sum()),
        "elapsed_s": round(elapsed_s, 2),
        "tracks_per_s": round(len(rows) / elapsed_s, 2) if elapsed_s > 0 else None,
    }
