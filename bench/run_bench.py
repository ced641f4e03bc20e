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

The harness is the package bench/harness/; this script is its entry point, and keeps the names other bench
scripts (bench_sidecar.py, bench_datapath.py) import from it. Only the standard library is imported at module
level; boto3 is imported after the bench venv is in place.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.cli import main, run_interruptible
from harness.common import (
    ACCESS_KEY,
    BUCKET,
    DEFAULT_WORK,
    SECRET_KEY,
    VENV,
    GiB,
    MiB,
    machine_info,
)
from harness.common import cmd_out as _cmd_out
from harness.common import git_rev as _git_rev
from harness.measure import sha256_file, tail, timed_sync
from harness.model import ModelSpec, ensure_model
from harness.server import SeaweedFS, s3_client

__all__ = [
    "ACCESS_KEY",
    "BUCKET",
    "DEFAULT_WORK",
    "SECRET_KEY",
    "VENV",
    "GiB",
    "MiB",
    "ModelSpec",
    "SeaweedFS",
    "_cmd_out",
    "_git_rev",
    "ensure_model",
    "machine_info",
    "run_interruptible",
    "s3_client",
    "sha256_file",
    "tail",
    "timed_sync",
]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], Path(__file__)))
