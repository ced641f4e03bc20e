#!/usr/bin/env python3
"""aibrix-download with one fetching process against several (--workers), interleaved, on this machine.

    .venv/bin/python bench/bench_workers.py --model small --reps 3 --workers 1,2
    .venv/bin/python bench/bench_workers.py --model 8 --reps 3 --workers 1,2      # 8 x 512 MiB shards

SeaweedFS on 127.0.0.1 (the bench's store), the page cache of the host dropped before each run (the server reads
from its disk, as a store would), each run a whole process: wall time to the download's exit, then to weights in
memory (the weight files read after it as bench/harness/reader.py reads them: mmap, every page once), CPU-seconds
of the download's process tree (user + sys of it and its reaped children: the workers) and the peak RSS of its
largest process. Medians and the ratio to the first count.
Writes bench/results/workers-<ts>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository: bench/ is a package

from bench.harness import reader
from bench.harness.common import BUCKET, DEFAULT_AIBRIX_DOWNLOAD, DEFAULT_RESULTS, DEFAULT_WORK
from bench.harness.measure import drop_page_cache
from bench.harness.model import ModelSpec, ensure_model
from bench.harness.server import SeaweedFS, s3_tool_env


def one_run(uri: str, spec: ModelSpec, dest: Path, env: dict[str, str], workers: int) -> dict[str, float]:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    os.sync()
    drop_page_cache()
    t0 = time.perf_counter()
    argv = [str(DEFAULT_AIBRIX_DOWNLOAD), "--model-uri", uri, "--local-dir", str(dest), "--model-name", "m"]
    argv += ["--progress", "none", "--workers", str(workers)]
    with open(dest.parent / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        # wait4: the download's CPU with its reaped children's (the workers), and the peak RSS of the largest of
        # them all (ru_maxrss covers the process and its waited-for descendants: the largest one's)
        _, status, usage = os.wait4(proc.pid, 0)
        download = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"--workers {workers} failed ({status}): {err.read()[-2000:]}")
    # The weights reader in its own process, as the bench's harness runs it: this one stays small, and the RSS that
    # wait4 reports of the next download (whose child starts as a copy of this process) is the download's own.
    subprocess.run([sys.executable, reader.__file__, str(dest / "m"), "--glob", spec.weights_glob], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    in_memory = time.perf_counter() - t0
    return {
        "download_s": download,
        "weights_in_memory_s": in_memory,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "largest_rss_mib": usage.ru_maxrss / 1024,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small", help="'small' (3,000 x 256 KiB) or a number of 512 MiB shards")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", default="1,2", help="comma list of --workers values; the first is the reference")
    p.add_argument("--store", type=Path, default=DEFAULT_WORK.parent / ".cache" / "seaweedfs")
    args = p.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    spec = ModelSpec(files=3000, file_kib=256) if args.model == "small" else ModelSpec(int(args.model), 512)
    DEFAULT_WORK.mkdir(parents=True, exist_ok=True)
    scratch = DEFAULT_WORK / "workers"
    scratch.mkdir(exist_ok=True)
    server = SeaweedFS(args.store, scratch)
    server.start()
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    try:
        ensure_model(server.endpoint, spec, scratch)
        uri = f"s3://{BUCKET}/{spec.prefix}"
        env = s3_tool_env(server.endpoint)
        for rep in range(args.reps):
            for n in counts:
                r = one_run(uri, spec, scratch / "dest", env, n)
                runs[n].append(r)
                print(f"rep {rep} --workers {n}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    finally:
        server.stop()
        shutil.rmtree(scratch / "dest", ignore_errors=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    keys = ("download_s", "weights_in_memory_s", "cpu_s", "largest_rss_mib")
    med = {n: {k: statistics.median(r[k] for r in runs[n]) for k in keys} for n in counts}
    ref = counts[0]
    lines = [
        f"### --workers on this machine ({stamp}, `bench/bench_workers.py --model {args.model} --reps {args.reps} "
        f"--workers {args.workers}`)",
        "",
        f"Model {spec.prefix}; {os.cpu_count()} CPUs; medians of {args.reps} interleaved runs; "
        f"ratio to --workers {ref}.",
        "",
        "| --workers | download s | weights in memory s | CPU s | the largest process's peak RSS, MiB "
        "| ratio (download / in memory / CPU / RSS) |",
        "|---|---|---|---|---|---|",
    ]
    for n in counts:
        m = med[n]
        ratio = " / ".join(f"{m[k] / med[ref][k]:.2f}" for k in keys)
        cells = " | ".join(f"{m[k]:.2f}" for k in keys[:3]) + f" | {m['largest_rss_mib']:.0f}"
        lines.append(f"| {n} | {cells} | {ratio} |")
    md = "\n".join(lines) + "\n"
    print(md)
    DEFAULT_RESULTS.mkdir(parents=True, exist_ok=True)
    base = DEFAULT_RESULTS / f"workers-{stamp}"
    base.with_suffix(".json").write_text(json.dumps({"args": vars(args) | {"store": str(args.store)}, "runs": runs}))
    base.with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
