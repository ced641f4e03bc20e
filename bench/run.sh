#!/usr/bin/env bash
# Thin wrapper: installs the bench tools (idempotent) and runs the benchmark.
#   bench/run.sh                      # full run: 4 x ~1 GiB shards, 5 reps, all tools
#   bench/run.sh --shard-mib 50 --reps 1 --tools boto3,s5cmd   # quick smoke run
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/run_bench.py" "$@"
