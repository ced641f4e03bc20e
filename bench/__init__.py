"""The benchmarks, as one package: ``bench.harness`` is the part they share, and each benchmark is a subpackage
of it; the scripts in bench/ are the documented commands and only start them (see BENCHMARKS.md).

- ``bench/run.sh``, ``bench/run_bench.py`` -> ``bench.harness.cli``: aibrix-download against s5cmd, boto3 and
  AIBrix 0.8.0 on SeaweedFS (large model, small files, memory-limited runs, no-op re-run, emulated network);
- ``bench/bench_sidecar.py`` -> ``bench.probes``: what 200 probes per second cost the sidecar's download;
- ``bench/bench_gcs.py`` -> ``bench.gcs``: aibrix-download (gs://) against google-cloud-storage's
  transfer_manager on fake-gcs-server;
- ``bench/bench_hf.py`` -> ``bench.hf``: aibrix-download against huggingface_hub's snapshot_download on the
  test suite's fake hub;
- ``bench/bench_ceiling.py`` -> ``bench.ceiling``: GIL-held and CPU-seconds per GiB of each data path, sampled,
  and the rate one process can reach from them;
- ``bench/bench_datapath.py`` -> ``bench.datapath``: checksum code, body read paths, per-GET cost and disk
  write path, each measured in-process;
- ``bench/physlimits.py``: loopback TCP and disk write limits; ``bench/netem.py`` + ``bench/netrelay.py``: the
  emulated network; ``bench/plot.py``: the plot of a results file; ``bench/boto3_download.py``: the boto3 peer.

The shared harness (``bench.harness``): paths, constants and logging (common), process and machine counters
from /proc (procs), SeaweedFS and server processes (server), synthetic models (model), timing a whole process
under ``/usr/bin/time -v`` and verifying what it wrote (measure), medians, percentiles and their intervals
(numbers), markdown table cells (tables), results files and a clean stop on signals (recording), and the
virtual environments (venvs). Only the standard library is imported at module level, except in the modules of
``bench.datapath`` that measure the project's downloader; the SDKs are imported where they are used, once the
right virtual environment runs.
"""
