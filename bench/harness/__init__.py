"""The download benchmark's harness: one package shared by bench/run_bench.py (the CLI) and the other bench
scripts (bench_sidecar.py, bench_datapath.py import it through run_bench).

Modules: common (paths, constants, logging, machine facts), venvs (the tools' virtual environments), server
(SeaweedFS), model (the synthetic models), tools (how each tool is invoked, per setting, and what that means in
requests in flight), cgroup (the memory-limited runs), reader (the weights reader, run as its own process),
measure (timing, verification, machine counters), endpoints (the three end points and which run measures which),
runner (one run: tool, then sync or the reader), env (loopback or the emulated network), phases (interleaved
repetitions), stats (medians and ratios), report (markdown), results (re-reading results files), options (the
command line), cli (main).

Only the standard library is imported at module level; boto3 is imported where it is used, after the bench venv
is in place.
"""
