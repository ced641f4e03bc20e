#!/usr/bin/env python3
"""Download benchmark: aibrix-download vs. s5cmd, boto3 and AIBrix 0.8.0 (see BENCHMARKS.md).

    python3 bench/run_bench.py            # or: bench/run.sh ; --help lists every option

1. installs the benchmark's own tools into bench/.venv (and AIBrix 0.8.0 into bench/.venv-aibrix) if they are
   missing, then re-executes itself there;
2. starts SeaweedFS (``weed mini``) on 127.0.0.1 with a small static S3 identity;
3. generates a synthetic model (default 4 x ~1 GiB safetensors shards plus small json/py files, or many small
   files), uploads it once and keeps it in the store (bench/.cache/seaweedfs);
4. runs every tool at its own defaults and at a matched number of GETs in flight, each run into a fresh
   directory and followed by either a timed ``sync`` (download only, durable) or the weights reader (weights in
   memory), interleaved round-robin; verifies every byte (size + sha256) and deletes the directory again;
5. writes bench/results/<timestamp>.json (+ .md, + .png plot) and prints the tables;
6. stops SeaweedFS and removes scratch directories and cgroups (also on Ctrl-C / SIGTERM).

Phases, in one invocation: ``--compare`` (the large model, the default), ``--small-files``, ``--mem-limited``
(each tool with and without a memory cgroup), ``--noop`` (a no-op re-run), ``--sweep`` / ``--netns``
(connections x range sizes behind an emulated network), ``--all``. Physical limits (loopback TCP, disk write)
are measured at the start of every run. ``--summarize FILE...`` re-prints the tables of results files.

The benchmark is ``bench.harness`` (bench/harness/); this script only starts it.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository: bench/ is a package
    from bench.harness.cli import main

    sys.exit(main(sys.argv[1:], Path(__file__)))
