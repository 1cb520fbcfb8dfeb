"""Process-level speed settings applied by the `robo-rl` command (and the benchmarks).

glibc's allocator hands blocks above its mmap threshold (128 KiB by default, adjusted upward as
blocks are freed) back to the OS and trims the heap eagerly. A training step allocates and frees
the same few hundred 0.25-1 MiB activation buffers every update, so each update then page-faults
its buffers back in: measured here, ~3,800 minor faults and 17 ms per SAC update at 256x256
instead of ~0 faults and ~9.5 ms. Raising the thresholds keeps those pages in the process (the
behaviour jemalloc/tcmalloc users get); memory use then stays at its peak instead of shrinking.

Set ROBO_RL_MALLOC_TUNING=0 to keep the allocator's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper limit on 64-bit
_applied = False


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; returns True if applied (Linux/glibc only)."""
    global _applied
    if _applied:
        return True
    if os.environ.get("ROBO_RL_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _applied
