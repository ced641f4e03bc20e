#!/usr/bin/env python3
"""Hugging Face download benchmark: aibrix-download vs. huggingface_hub.snapshot_download.

    .venv/bin/python bench/bench_hf.py                 # 2 x 512 MiB LFS shards, 5 reps + 1 warm-up

Writes bench/results/hf-<timestamp>.json (+ .md) and prints the table; --help lists every option. The benchmark
is ``bench.hf`` (bench/hf/, described there); this script only starts it.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository: bench/ is a package
    from bench.hf.cli import main

    sys.exit(main(sys.argv[1:], Path(__file__)))
