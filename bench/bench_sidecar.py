#!/usr/bin/env python3
"""Does probing the sidecar slow the download it runs? (BENCHMARKS.md, "Sidecar")

    .venv/bin/python bench/bench_sidecar.py [--reps N] [--size-gib X]    # A/B pairs: without and with probes
    .venv/bin/python bench/bench_sidecar.py --probe-cost                # the sidecar's CPU per probe alone

Writes bench/results/sidecar-<timestamp>.json and prints the tables; --help lists every option. The benchmark is
``bench.probes`` (bench/probes/, described there); this script only starts it.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository: bench/ is a package
    from bench.probes.cli import main

    sys.exit(main(sys.argv[1:], Path(__file__)))
