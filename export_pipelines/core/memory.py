"""Process-wide allocator settings that keep a long Arrow export's RSS flat (Linux; no-op elsewhere).

Measured on the 1M-row Parquet bench (peak RSS, see README "Speed and memory"):

- glibc's mmap threshold is dynamic: freeing an 8 MiB part raises it to 8 MiB, after which
  ADBC's batch buffers and the parts are carved out of the malloc arenas, which end up holding
  ~40 MB of free holes between live blocks. Pinning it at its default (128 KiB) keeps every large
  block in its own mapping, returned to the kernel on free.
- Arrow's mimalloc asks for transparent huge pages; a 2 MiB huge page counts whole in RSS as soon
  as one byte of it is touched (~25 MB here). PR_SET_THP_DISABLE turns that off for this process.

Both cost a few more page faults (~0.1 s of CPU per million rows), not measurable in wall time.

`release_free_memory()` hands memory the allocators keep cached back to the kernel; the Parquet
encoder calls it after each row group (~16 times per million rows).
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 128 * 1024  # glibc's own default, made fixed
_M_MMAP_THRESHOLD = -3
_PR_SET_THP_DISABLE = 41

_applied = False
_libc: ctypes.CDLL | None = None


def settle_allocators() -> None:
    """Apply the settings once per process (later calls do nothing)."""
    global _applied, _libc
    if _applied:
        return
    _applied = True
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0)
        if os.confstr("CS_GNU_LIBC_VERSION"):  # mallopt's numbering and malloc_trim are glibc's
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            _libc = libc
    except (OSError, ValueError, AttributeError):  # no prctl / not glibc: nothing to tune
        pass


def release_free_memory() -> None:
    """Return the free memory Arrow's pool and glibc's arenas keep cached to the kernel."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    if _libc is not None:
        _libc.malloc_trim(0)
