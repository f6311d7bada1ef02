"""The window payload: each ``stft`` cell is one .npy array (petastorm's NdarrayCodec) of the
recipe's shape and dtype. Decoded row by row, or found in place from the column's offsets or a
file's page headers (no per-row decoding: what the training reader and score's tasks take)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from genreclf.config import Recipe


def decode_npy_column(column, recipe: Recipe) -> np.ndarray:
    """Decode a sequence of NdarrayCodec (.npy) bytes into one (n, frames, bins) array of the recipe dtype."""
    n = len(column)
    out = np.empty((n, *recipe.shape), dtype=recipe.dtype)
    if n == 0:
        return out
    first = io.BytesIO(column[0])
    np.lib.format.read_magic(first)
    np.lib.format.read_array_header_1_0(first)
    offset = first.tell()
    count = recipe.frames * recipe.bands
    for i, raw in enumerate(column):
        out[i] = np.frombuffer(raw, dtype=recipe.dtype, count=count, offset=offset).reshape(recipe.shape)
    return out


def _payload_bytes(recipe: Recipe) -> int:
    return recipe.frames * recipe.bands * np.dtype(recipe.dtype).itemsize


def _check_rows(first_row: bytes, lengths: np.ndarray, recipe: Recipe) -> int:
    """The .npy header size, after checking every row is one array of the recipe's shape and dtype."""
    payload = _payload_bytes(recipe)
    row = int(lengths[0])
    if not (lengths == row).all() or row <= payload:
        raise ValueError(f"stft rows are not .npy arrays of {recipe.shape} {recipe.dtype}: features made with "
                         "another recipe? (check recipe.json)")
    header = io.BytesIO(first_row[: row - payload])
    np.lib.format.read_magic(header)
    shape, _, dtype = np.lib.format.read_array_header_1_0(header)
    if tuple(shape) != tuple(recipe.shape) or dtype != np.dtype(recipe.dtype):
        raise ValueError(f"stft rows hold {shape} {dtype} but the recipe says {recipe.shape} {recipe.dtype}: "
                         "features made with another recipe? (check recipe.json)")
    return row - payload


def stft_rows(column: pa.Array | pa.ChunkedArray, recipe: Recipe) -> tuple:
    """(buffer, starts): an ``stft`` column's data buffer as uint8 and where each row's array data begins.

    Every row of a recipe is one .npy array of the same size with the same header, so the payloads
    are found from the offsets alone, with no per-row decoding; each is ``recipe.frames x bins``
    values of ``recipe.dtype``.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.chunks[0] if column.num_chunks == 1 else column.combine_chunks()
    n = len(column)
    if n == 0:
        return np.empty(0, np.uint8), np.empty(0, np.int64)
    _, offsets, data = column.buffers()
    offsets = np.frombuffer(offsets, np.int32, n + 1, offset=column.offset * 4).astype(np.int64)
    buffer = np.frombuffer(data, np.uint8)
    header = _check_rows(buffer[offsets[0]:offsets[1]].tobytes(), np.diff(offsets), recipe)
    return buffer, offsets[:-1] + header


def mapped_stft_rows(buffer: np.ndarray, metadata, row_group: int, recipe: Recipe) -> np.ndarray | None:
    """Where each row's array data begins in a whole window file (``buffer``, e.g. memory-mapped),
    read from the Parquet page headers; None when the file's layout needs pyarrow to decode."""
    from genreclf.formats.pages import plain_binary_values

    index = metadata.schema.names.index("stft")
    found = plain_binary_values(buffer, metadata.row_group(row_group).column(index),
                                metadata.schema.column(index).max_definition_level)
    if found is None:
        return None
    starts, lengths = found
    if not len(starts):
        return starts
    first = buffer[starts[0]:starts[0] + lengths[0]].tobytes()
    return starts + _check_rows(first, lengths, recipe)
