#!/usr/bin/env python3
"""The interpreter's ceiling per data path: GIL-held seconds and CPU-seconds per GiB of a download, sampled.

    .venv/bin/python bench/bench_ceiling.py                    # every path, 3 rounds, py-spy at 250 Hz
    .venv/bin/python bench/bench_ceiling.py --paths s3-ranges  # one path

Writes bench/results/ceiling-<timestamp>.{json,md}; BENCHMARKS.md ("The ceiling") describes the method. The
benchmark is ``bench.ceiling`` (bench/ceiling/); this script only starts it.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository: bench/ is a package
    from bench.ceiling.cli import main

    sys.exit(main(sys.argv[1:], Path(__file__)))
