"""The C allocator's setting for a process that fetches: glibc's `mallopt`, called once in each entry point.

Why: every GET the AWS CRT answers grows a body buffer on one of its event-loop threads and frees it when the
request ends. At glibc's defaults a freed chunk at the top of a thread's heap is given back to the kernel as soon as
128 KiB are free there (`madvise`/`munmap`), and buffers past the adaptive mmap threshold are mapped and unmapped
one by one, so the next GET faults the same memory in again, page by page. On 3,000 files of 256 KiB that was a
sixth of the process's CPU (page faults in the CRT's copy into its buffer, `munmap`, `madvise`; BENCHMARKS.md).
Keeping chunks below MMAP_THRESHOLD in the heaps and up to TRIM_THRESHOLD of free memory per heap costs a few MiB
of resident memory and removes that work. Whoever sets glibc's own malloc variables keeps them (config.py reads
the environment and says whether to tune).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

MMAP_THRESHOLD = 4 * 1024 * 1024  # chunks below this come from a heap, not from mmap each time
TRIM_THRESHOLD = 16 * 1024 * 1024  # free memory a heap keeps at its top before it gives any back

# glibc's <malloc.h>: the parameter numbers of mallopt
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# The environment through which a user sets glibc's allocator themselves (glibc reads it at process start)
USER_ALLOCATOR_ENV = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_ARENA_MAX",
)


def user_sets_allocator(env: Mapping[str, str]) -> bool:
    """Whether the environment configures glibc's allocator (its MALLOC_* variables or a glibc.malloc tunable)."""
    return any(name in env for name in USER_ALLOCATOR_ENV) or "glibc.malloc." in env.get("GLIBC_TUNABLES", "")


def tune_allocator() -> bool:
    """Set glibc's thresholds (above) for this process; False where the C library is not glibc or refuses."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (ValueError, OSError):  # not glibc: the name is unknown to this C library
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
