#!/usr/bin/env bash
# Thin wrapper: installs the bench tools (idempotent) and runs the benchmark (bench/run_bench.py).
#   bench/run.sh                      # classic comparison: 4 x ~1 GiB shards, 5 reps, all tools, loopback
#   bench/run.sh --all                # everything (~45-60 min): physical limits; compare, 10,000 small files
#                                     #   and the no-op re-run on loopback; the connections x range-size sweep
#                                     #   and the no-op re-run behind an emulated network (root: netns+veth+htb)
#   bench/run.sh --netns              # only the sweep (1,4,16,64 conns x 8,16,64 MiB, 1 GiB model, 2 reps,
#                                     #   ~20 min) behind the emulated network: 100 ms first byte, 680 Mbit/s
#                                     #   per connection, 2.5 Gbit/s aggregate (--latency-ms, --conn-mbps,
#                                     #   --aggregate-gbps)
#   bench/run.sh --small-files        # 10,000 x 256 KiB files (--small-files-count, --small-file-kib)
#   bench/run.sh --noop               # no-op re-run of aibrix-download on a complete 1,000-file model vs a listing
#   bench/run.sh --shard-mib 50 --reps 1 --tools boto3,s5cmd   # quick smoke run
# Results: bench/results/<timestamp>.{json,md,png}.  bench/run.sh --help lists every option.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    echo
fi
exec python3 "$here/run_bench.py" "$@"
