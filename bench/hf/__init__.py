"""Hugging Face download benchmark: aibrix-download vs. huggingface_hub.snapshot_download (``bench/bench_hf.py``;
BENCHMARKS.md, "Other sources").

1. generates a synthetic model (valid safetensors shards + small json/py files) under bench/.work/ (``model``);
2. starts tests/fakehub.py on 127.0.0.1: a Hub API port that redirects LFS files (302) to a second port
   acting as the CDN, both serving bytes with sendfile(2), with a required token;
3. runs each tool in round-robin order under ``/usr/bin/time -v``, each into a fresh directory:
   ``aibrix-download --model-uri org/name`` and ``snapshot_download(repo, local_dir=..., max_workers=...)``
   (HF_ENDPOINT pointing at the fake hub, Xet, telemetry and progress bars off);
4. verifies every byte (size + sha256 of each file) and deletes the directory;
5. prints a markdown table and writes bench/results/hf-<timestamp>.json (+ .md).

Server CPU-seconds are those of this process (the fake hub's threads) during each run: when they approach
wall time x cores, the server, not the client, is the bottleneck.
"""
