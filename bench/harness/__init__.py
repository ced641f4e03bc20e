"""The shared harness of the benchmarks, and the download benchmark (``bench/run.sh``, ``bench/run_bench.py``)
built on it.

Shared by every benchmark: common (paths, constants, logging, a tool's environment, machine facts), procs
(process and machine counters from /proc, free ports, stopping process groups), server (any server process;
SeaweedFS; a boto3 client; an S3 tool's environment), model (the synthetic models), measure (a whole process under
``/usr/bin/time -v``, in-process work, timed ``sync``, waiting for a quiet machine, verifying every byte), numbers
(medians, spreads, percentiles, intervals), tables (markdown cells and rows), recording (results files, a clean
stop on signals), venvs (bench/.venv, bench/.venv-aibrix, the project's .venv).

The download benchmark: tools (how each tool is invoked, per setting, and what that means in requests in
flight), cgroup (the memory-limited runs), reader (the weights reader, run as its own process), endpoints (the
three end points and which run measures which), runner (one run: tool, then sync or the reader), env (loopback or
the emulated network), phases (interleaved repetitions), stats (medians and ratios), report (markdown), results
(re-reading results files), options (the command line), cli (main).

Only the standard library is imported at module level; boto3 is imported where it is used, after the bench venv
is in place.
"""
