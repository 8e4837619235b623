"""The process's host allocator: keep freed blocks for reuse instead of unmapping them.

A crop's forward on the CPU allocates and frees hundreds of MB-sized tensors. glibc's malloc
serves every block above its mmap threshold (at most 32 MB, adjusted as blocks are freed) with
fresh pages from the kernel and returns them on ``free``, so each such tensor pays a page
fault and the zeroing of a page for every 4 KiB it first writes. Raising the threshold (and
the heap trim threshold with it) keeps those blocks in the heap, where the next forward reuses
them, as PyTorch's CUDA caching allocator does for GPU memory. The cost: the process holds
on to its peak heap between forwards instead of handing it back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt(3) parameters of glibc.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
ENV = "VITADAPTER_MALLOC"
_applied: int | None = None


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Have glibc's malloc keep freed blocks of up to ``limit`` bytes (below 2 GiB) for reuse
    (``mallopt`` of the mmap and trim thresholds), process-wide. Returns whether it applied:
    False off Linux/glibc, or with ``VITADAPTER_MALLOC=system`` in the environment (leave the
    allocator as it is). The command line calls it for every command."""
    global _applied
    if os.environ.get(ENV, "").strip().lower() == "system" or not sys.platform.startswith(
            "linux"):
        return False
    if _applied == limit:
        return True
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Free space at the top of the heap is returned to the kernel only beyond this much.
    trim = min(2 * limit, 2**31 - 1)
    if not (mallopt(_M_MMAP_THRESHOLD, limit) and mallopt(_M_TRIM_THRESHOLD, trim)):
        log.debug("mallopt refused an mmap threshold of %d bytes", limit)
        return False
    _applied = limit
    return True
