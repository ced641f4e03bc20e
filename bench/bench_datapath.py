#!/usr/bin/env python3
"""Which byte path and which checksum code should the downloader use? Measured, not guessed.

    .venv/bin/python bench/bench_datapath.py [--reps 7] [--size-mib 1024] [--endpoint URL]

1. Checksums: single-thread throughput of every CRC/hash implementation importable here, on a 1 MiB buffer
   (the engine's buffer size): zlib.crc32 (the system zlib), ISA-L's crc32 (`isal`), google-crc32c (which
   needs a read-only buffer, so the engine must copy each chunk), the AWS CRT's CRCs when installed, and MD5.
2. Body read paths: one object fetched from SeaweedFS (started here on 127.0.0.1 with a throw-away store,
   unless --endpoint names a running one holding s3://bench/<key>) as 64 MiB ranged GETs on 4 threads into
   a reused 1 MiB buffer, no disk, with
     botocore   StreamingBody.readinto (urllib3 reads a fresh bytes object per chunk and copies it out)
     direct     downloader.sources.base.direct_body: the stdlib response under urllib3, readinto our buffer
   interleaved A B, B A, ... for --reps pairs; client CPU seconds per GiB (user, sys) from getrusage of the
   process, which does nothing else meanwhile.

Writes bench/results/datapath-<timestamp>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import run_bench  # noqa: E402  (SeaweedFS, credentials, client helper)

from downloader.sources.base import direct_body  # noqa: E402

MiB = 1 << 20
KEY = "datapath/object.bin"


def checksum_table(reps: int) -> list[dict[str, Any]]:
    data = bytearray(os.urandom(MiB))
    view = memoryview(data)
    impls: list[tuple[str, Callable[[], object]]] = [("zlib.crc32", lambda: zlib.crc32(view))]
    try:
        from isal import isal_zlib

        impls.append(("isal crc32 (ISA-L)", lambda: isal_zlib.crc32(view)))
    except ImportError:
        pass
    try:
        import google_crc32c

        impls.append(("google-crc32c (+ bytes copy)", lambda: google_crc32c.value(bytes(view))))
    except ImportError:
        pass
    try:
        from awscrt import checksums

        impls += [
            ("awscrt crc32", lambda: checksums.crc32(view)),
            ("awscrt crc32c", lambda: checksums.crc32c(view)),
            ("awscrt crc64nvme", lambda: checksums.crc64nvme(view)),
        ]
    except ImportError:
        pass
    impls.append(("hashlib md5", lambda: hashlib.md5(view).digest()))
    rows = []
    for name, fn in impls:
        rates = []
        for _ in range(reps):
            t0 = time.process_time()
            for _ in range(256):
                fn()
            rates.append(0.25 / max(1e-9, time.process_time() - t0))  # GiB per CPU-second
        med = statistics.median(rates)
        rows.append({"impl": name, "gib_per_cpu_s": round(med, 2), "cpu_s_per_gib": round(1 / med, 3)})
    return rows


def read_object(client: Any, size: int, mode: str, threads: int = 4, range_mib: int = 64) -> None:
    step = range_mib * MiB
    ranges = [(s, min(size, s + step) - 1) for s in range(0, size, step)]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        view = memoryview(bytearray(MiB))
        while True:
            with lock:
                if not ranges:
                    return
                start, end = ranges.pop()
            body = client.get_object(Bucket=run_bench.BUCKET, Key=KEY, Range=f"bytes={start}-{end}")["Body"]
            raw = body._raw_stream  # the urllib3 response under botocore's StreamingBody
            fp = direct_body(raw) if mode == "direct" else None
            left = end - start + 1
            try:
                while left:
                    chunk = view[: min(MiB, left)]
                    n = fp.readinto(chunk) if fp is not None else body.readinto(chunk)
                    if not n:
                        raise RuntimeError(f"body ended with {left} bytes to go")
                    left -= n
                if fp is not None:
                    raw.release_conn()
            except BaseException as exc:  # reported after the threads join
                errors.append(exc)
                return
            finally:
                body.close()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]


def read_paths(endpoint: str, size: int, reps: int) -> dict[str, Any]:
    client = run_bench.s3_client(endpoint, pool=8)
    runs: dict[str, list[dict[str, float]]] = {"botocore": [], "direct": []}
    read_object(client, size, "direct")  # warm: connections, server cache
    for i in range(reps):
        order = ("botocore", "direct") if i % 2 == 0 else ("direct", "botocore")
        for mode in order:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            read_object(client, size, mode)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            gib = size / (1 << 30)
            runs[mode].append(
                {
                    "wall_s": wall,
                    "user_per_gib": (r1.ru_utime - r0.ru_utime) / gib,
                    "sys_per_gib": (r1.ru_stime - r0.ru_stime) / gib,
                    "minflt": r1.ru_minflt - r0.ru_minflt,
                }
            )
    summary = {}
    for mode, rs in runs.items():
        summary[mode] = {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
        summary[mode]["cpu_per_gib"] = round(summary[mode]["user_per_gib"] + summary[mode]["sys_per_gib"], 3)
    pairs = [d["user_per_gib"] + d["sys_per_gib"] for d in runs["direct"]]
    base = [b["user_per_gib"] + b["sys_per_gib"] for b in runs["botocore"]]
    ratios = [d / b for d, b in zip(pairs, base, strict=True)]
    summary["cpu_ratio_direct_over_botocore"] = round(statistics.median(ratios), 3)
    return {"runs": runs, "summary": summary}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--endpoint", help="a running S3 server holding s3://bench/" + KEY)
    p.add_argument("--results-dir", default=str(BENCH_DIR / "results"))
    args = p.parse_args()
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]
    os.environ.update(
        AWS_ACCESS_KEY_ID=run_bench.ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=run_bench.SECRET_KEY,
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    size = args.size_mib * MiB
    result: dict[str, Any] = {"started": dt.datetime.now(dt.timezone.utc).isoformat(), "size_bytes": size}
    result["checksums"] = checksum_table(args.reps)
    with tempfile.TemporaryDirectory(prefix="datapath-") as scratch:
        server = None
        endpoint = args.endpoint
        if endpoint is None:
            server = run_bench.SeaweedFS(Path(scratch) / "store", Path(scratch))
            server.start()
            endpoint = server.endpoint
        try:
            client = run_bench.s3_client(endpoint)
            with contextlib.suppress(Exception):  # already there on a reused server
                client.create_bucket(Bucket=run_bench.BUCKET)
            head = None
            try:
                head = client.head_object(Bucket=run_bench.BUCKET, Key=KEY)
            except Exception:  # not uploaded yet
                head = None
            if head is None or head["ContentLength"] != size:
                src = Path(scratch) / "object.bin"
                with open(src, "wb") as f:
                    for _ in range(args.size_mib):
                        f.write(os.urandom(MiB))
                client.upload_file(str(src), run_bench.BUCKET, KEY)
                src.unlink()
            result["read_paths"] = read_paths(endpoint, size, args.reps)
        finally:
            if server is not None:
                server.stop()
    out = Path(args.results_dir) / f"datapath-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("| checksum code | GiB per CPU-second | CPU-s per GiB |\n|---|---|---|")
    for row in result["checksums"]:
        print(f"| {row['impl']} | {row['gib_per_cpu_s']} | {row['cpu_s_per_gib']} |")
    s = result["read_paths"]["summary"]
    print("\n| body read path | median wall s | user CPU-s/GiB | sys CPU-s/GiB | CPU-s/GiB | minor faults |")
    print("|---|---|---|---|---|---|")
    for mode in ("botocore", "direct"):
        m = s[mode]
        print(
            f"| {mode} | {m['wall_s']} | {m['user_per_gib']} | {m['sys_per_gib']} | {m['cpu_per_gib']} | "
            f"{int(m['minflt'])} |"
        )
    print(f"\ndirect ÷ botocore, CPU per GiB (median of {args.reps} pairs): {s['cpu_ratio_direct_over_botocore']}")
    print(f"raw numbers: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
