#!/usr/bin/env python3
"""Which byte path and which checksum code should the downloader use? Measured, not guessed.

    .venv/bin/python bench/bench_datapath.py [--only checksums,reads,gets,disk] [--reps 7] [--size-mib 1024]
        [--small-count 1000] [--disk-mib 1024] [--endpoint URL]

Writes bench/results/datapath-<timestamp>.json and prints markdown tables. The benchmark is ``bench.datapath``
(bench/datapath/, its sections described there); this script only starts it.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository: bench/ is a package
    from bench.datapath.cli import main

    sys.exit(main(sys.argv[1:], Path(__file__)))
