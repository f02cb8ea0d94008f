"""Process-wide allocator settings that keep a long Arrow export's RSS flat (Linux; no-op elsewhere).

Measured on the 1M-row Parquet bench (peak RSS, see bench/RESULTS.md "Memory of a Parquet export"):

- glibc's mmap threshold is dynamic: freeing an 8 MiB part raises it to 8 MiB, after which
  ADBC's batch buffers and the parts are carved out of the malloc arenas, which end up holding
  ~40 MB of free holes between live blocks. Pinning it at its default (128 KiB) keeps every large
  block in its own mapping, returned to the kernel on free.
- Arrow's mimalloc madvises its memory for transparent huge pages; a 2 MiB huge page counts whole
  in RSS once one byte of it is touched (~25 MB here). PR_SET_THP_DISABLE turns that off.

Together 228 -> 182 MB. The price: fresh pages for every batch, ~75k more page faults per
million rows (~0.2 s of system CPU, ~8% of the export process's CPU).

`release_free_memory()` asks Arrow's pool to return what it caches (mimalloc's mi_collect); the
Parquet encoder calls it after each row group (~16 times per million rows): another -3 MB.
glibc's malloc_trim was tried too: no lower peak once the threshold is pinned, 25% more faults.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 128 * 1024  # glibc's own default, made fixed
_M_MMAP_THRESHOLD = -3
_PR_SET_THP_DISABLE = 41

_applied = False


def settle_allocators() -> None:
    """Apply the settings once per process (later calls do nothing)."""
    global _applied
    if _applied:
        return
    _applied = True
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0)
        if os.confstr("CS_GNU_LIBC_VERSION"):  # mallopt's numbering is glibc's
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, ValueError, AttributeError):  # no prctl / not glibc: nothing to tune
        pass


def release_free_memory() -> None:
    """Return the free memory Arrow's pool keeps cached to the kernel."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
