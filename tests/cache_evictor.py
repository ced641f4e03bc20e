"""A child process for the eviction kill trials (tests/test_cache.py): evicts one model from a cache root the way
an admission does (under the root's lock, step by step) and kills itself with SIGKILL right after step K, so that a
trial can end the eviction after any of its filesystem operations, not only where a timer happens to land.

    python -m tests.cache_evictor ROOT NAME K      K = 0: evict to the end and exit 0
"""

from __future__ import annotations

import os
import signal
import sys

from downloader.cache import CacheRoot
from downloader.inventory import read_model


def main(argv: list[str]) -> int:
    root_dir, name, kill_after = argv[0], argv[1], int(argv[2])
    root = CacheRoot(root_dir)
    steps = 0
    with root.locked():
        for _ in root.eviction(read_model(root.root, name), "kill trial"):
            steps += 1
            if steps == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    print(steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
