"""glibc's allocator setting (downloader/allocator.py): what it changes, measured in a fresh process, and when the
user's own setting wins."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

from downloader.allocator import MMAP_THRESHOLD
from downloader.config import load_settings

GLIBC = bool(os.confstr("CS_GNU_LIBC_VERSION")) if "CS_GNU_LIBC_VERSION" in os.confstr_names else False
MALLINFO2 = GLIBC and hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc 2.33 and later

# A fresh interpreter (nothing of the allocator's state leaks into the test process) mallocs and frees a chunk of
# 1 MiB and reports glibc's count of mmapped chunks while it is held (mallinfo2's hblks).
# At glibc's defaults the first chunk of 1 MiB is mapped.
_PROBE = """
import ctypes, json, sys
from downloader.allocator import tune_allocator
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
tuned = tune_allocator() if sys.argv[1] == "tune" else None
before = libc.mallinfo2().hblks
p = libc.malloc(1 << 20)
held = libc.mallinfo2().hblks
libc.free(p)
print(json.dumps({"tuned": tuned, "mapped": held - before}))
"""


def _probe(mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True).stdout
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.skipif(not MALLINFO2, reason="glibc 2.33 or later (mallopt, mallinfo2)")
def test_tuned_process_takes_a_mib_from_its_heap_not_from_mmap() -> None:
    assert MMAP_THRESHOLD > 1 << 20
    assert _probe("default") == {"tuned": None, "mapped": 1}
    assert _probe("tune") == {"tuned": True, "mapped": 0}


def test_the_user_s_own_allocator_setting_wins() -> None:
    argv = ["--model-uri", "s3://bucket/models/llama/"]
    assert load_settings(argv, {}).tune_allocator
    for env in (
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_ARENA_MAX": "2"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
    ):
        assert not load_settings(argv, env).tune_allocator, env
    assert load_settings(argv, {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}).tune_allocator
