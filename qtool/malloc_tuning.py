"""Keep numpy's large temporaries on the heap (glibc), which the engine's speed depends on.

The kernels make many short-lived arrays of 0.1-10 MB. glibc serves requests above its mmap
threshold with fresh mmaps, and trims the heap top above its trim threshold; both thresholds move
with the allocation history. A temporary that gets fresh pages pays a page fault per 4 KiB,
often as much as the arithmetic on it: plain Q5_0 ran at 0.30x or 0.66x of ggml's C depending
on what ran before (benchmarks/README.md). Fixing the thresholds (32 MiB for mmap, 512 MiB for
trimming) makes every such temporary reuse heap pages already mapped. The cost is memory a
process keeps after a peak instead of handing it back, bounded by the slab sizes here.

`tune_malloc()` is called by the command line (so also by its worker processes, forked after
it); library users may call it themselves. It does nothing where mallopt is not glibc's.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit
TRIM_THRESHOLD = 512 << 20

_done: bool | None = None


def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True if they are set."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            _done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _done
