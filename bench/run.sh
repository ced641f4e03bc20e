#!/usr/bin/env bash
# Thin wrapper: installs the bench tools (idempotent) and runs the benchmark (bench/run_bench.py -> bench/harness).
#   bench/run.sh                      # the large model (4 x ~1 GiB shards), 5 reps, all tools, loopback; every tool
#                                     #   at its defaults and at 16 GETs in flight; three end points: download only,
#                                     #   durable (then sync), weights in memory (then the weights reader)
#   bench/run.sh --small-files        # 10,000 x 256 KiB files (--small-files-count, --small-file-kib, --small-reps)
#   bench/run.sh --mem-limited        # each tool with and without a 512 MiB memory cgroup (--mem-limit-mib)
#   bench/run.sh --noop               # no-op re-run of aibrix-download on a complete 1,000-file model vs a listing
#   bench/run.sh --netns              # the connections x range-size sweep behind an emulated network (root)
#   bench/run.sh --all                # everything above, then the sweep and no-op in the netns
#   bench/run.sh --shard-mib 64 --reps 1 --warmup 0   # quick smoke run
#   bench/run.sh --summarize bench/results/<ts>.json  # re-print the tables of results files
# Results: bench/results/<timestamp>.{json,md,png}. bench/run.sh --help lists every option.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    echo
fi
exec python3 "$here/run_bench.py" "$@"
