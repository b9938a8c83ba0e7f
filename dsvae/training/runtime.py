"""Process-level runtime settings the toolkit applies itself (CPU allocator)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def apply_cpu_allocator_settings() -> bool:
    """Keep freed heap pages mapped instead of returning big buffers to the OS every step.

    glibc serves large allocations (activation buffers) with mmap and unmaps them on free,
    so every training step re-faults the same pages (the kernel time shows as sys time).
    Turning mmap allocations off and the trim threshold up keeps those pages in the heap.
    Set ``DSVAE_MALLOC=default`` to leave glibc's defaults. Returns True when applied.
    """
    if os.environ.get("DSVAE_MALLOC", "keep") == "default" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
    return bool(ok)
