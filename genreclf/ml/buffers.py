"""Memory for the training input pipeline: 64-byte aligned batch buffers (TensorFlow takes them
without a copy), a ring of them reused across batches, the one row copy (numba memcpy from a mapped
window file into a batch), and allocator tuning that keeps freed row-group memory in the process.
"""

from __future__ import annotations

import os
import sys
import threading

import numba
import numpy as np
import pyarrow as pa


def aligned_empty(shape: tuple, dtype, align: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an ``align``-byte boundary.

    TensorFlow adopts a numpy array's memory without copying only when it is 64-byte aligned
    (EIGEN_MAX_ALIGN_BYTES); numpy aligns large arrays to 16 bytes.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return _aligned_view(np.empty(nbytes + align, np.uint8), shape, dtype, align)


def _aligned_view(raw: np.ndarray, shape: tuple, dtype, align: int = 64) -> np.ndarray:
    """An ``align``-byte aligned array of ``shape`` inside the uint8 buffer ``raw`` (``align`` bytes spare)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def gather_rows(buffer: np.ndarray, starts: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
    """``out[positions[i]] = `` the array data at ``buffer[starts[i]:]``, for each i; ``out`` is C-contiguous
    (n, ...) and each row ``out[0].nbytes`` long. One memcpy per row, without the GIL."""
    if not len(starts):
        return
    rows = out.reshape(len(out), -1).view(np.uint8)
    end = int(starts.max()) + rows.shape[1]
    if int(starts.min()) < 0 or end > len(buffer) or int(positions.max()) >= len(out):
        raise IndexError("row outside its buffer")
    _gather(buffer, starts, rows, positions)


def _memcpy():
    import ctypes

    fn = ctypes.CDLL(None).memcpy
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    fn.restype = ctypes.c_void_p
    return fn


_MEMCPY = _memcpy()


@numba.njit(nogil=True)  # not cached: numba cannot cache a function that calls through a ctypes pointer
def _gather(buffer, starts, rows, positions):
    # Measured on 2 cores: ~50 k windows/s per thread (a numba element loop: ~45 k with 8-byte
    # words, ~22 k with 2-byte; numpy row assignment ~47 k but takes the GIL per window).
    width = rows.shape[1]
    src = buffer.ctypes.data
    dst = rows.ctypes.data
    for i in range(starts.shape[0]):
        _MEMCPY(dst + positions[i] * width, src + starts[i], width)


class BufferRing:
    """Batch buffers of one shape, reused once nothing references them any more.

    TensorFlow adopts a yielded aligned array and holds a reference to it until its tensor is
    freed, so a buffer whose reference count is back to ours is free to refill. Reuse avoids
    page-faulting a fresh 16.8 MB buffer per batch: measured on 2 cores (mapped files, 2 workers)
    60-85 -> 52-60 us of CPU per window, 1-5 -> 0.4-1.6 page faults per window.
    At most ``capacity`` buffers are kept; past that, batches get fresh memory.
    """

    def __init__(self, shape: tuple, dtype, capacity: int):
        self.shape, self.dtype, self.capacity = tuple(shape), np.dtype(dtype), capacity
        self._owners: list = []  # the arrays that own the memory; views keep them referenced
        self._lock = threading.Lock()

    def get(self) -> np.ndarray:
        with self._lock:
            for owner in self._owners:
                if sys.getrefcount(owner) <= 3:  # the list, the loop variable, getrefcount's argument
                    return _aligned_view(owner, self.shape, self.dtype)
            view = aligned_empty(self.shape, self.dtype)
            if len(self._owners) < self.capacity:
                self._owners.append(view.base)
            return view


def tune_allocators() -> None:
    """Keep freed batch and row-group memory in the process instead of returning it to the OS.

    Matters where pyarrow decodes row groups (remote stores, other layouts): each is a fresh ~33 MB
    Arrow buffer, and glibc and jemalloc hand such blocks back to the OS when freed, so each new one
    is page-faulted in again. Measured on 2 cores (2 workers): 6-14 -> 0.4-3.6 page faults and
    130-150 -> 114-137 us of CPU per window; no measurable effect on mapped files. Bounded: what is
    kept is the pipeline's own peak (pools + queue). Called at the start of every pass, since
    TensorFlow's generator dataset sets glibc's trim threshold back to 128 KB when it starts; so
    only in the training and evaluation processes, never in Spark workers.
    ``GENRECLF_TUNE_ALLOCATORS=0`` turns it off.
    """
    if os.environ.get("GENRECLF_TUNE_ALLOCATORS", "1") == "0":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's maximum: 16.8 MB batches come from the heap
        libc.mallopt(m_trim_threshold, 2**30)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        pa.jemalloc_set_decay_ms(-1)
    except (NotImplementedError, pa.ArrowNotImplementedError, AttributeError):  # pyarrow built without jemalloc
        pass
