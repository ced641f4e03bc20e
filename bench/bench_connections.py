#!/usr/bin/env python3
"""Requests in flight and throughput over time, --connections auto against fixed counts, interleaved: behind the
emulated network (root: a network namespace), in front of a store that answers 503 SlowDown above a number of GETs
at once, and on plain loopback.

    bench/.venv/bin/python bench/bench_connections.py                        # every scenario, 3 rounds
    bench/.venv/bin/python bench/bench_connections.py --scenarios emulated --conn-mbps 32 --aggregate-gbps 2.5

Writes bench/results/connections-<timestamp>.{json,md,png}. The benchmark is ``bench.connections``
(bench/connections/); this script only starts it.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository: bench/ is a package
    from bench.connections.cli import main

    sys.exit(main(sys.argv[1:], Path(__file__)))
