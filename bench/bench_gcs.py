#!/usr/bin/env python3
"""GCS download benchmark: aibrix-download (gs://) vs. google-cloud-storage's own transfer_manager.

    .venv/bin/python bench/bench_gcs.py            # defaults: 2 x 512 MiB shards, 3 repetitions, 16 workers

Writes bench/results/gcs-<timestamp>.json and prints the table; --help lists every option. The benchmark is
``bench.gcs`` (bench/gcs/, described there); this script only starts it.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository: bench/ is a package
    from bench.gcs.cli import main

    sys.exit(main(sys.argv[1:], Path(__file__)))
