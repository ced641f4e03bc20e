#!/usr/bin/env python3
"""Which byte path and which checksum code should the downloader use? Measured, not guessed.

    .venv/bin/python bench/bench_datapath.py [--only checksums,reads,gets,disk] [--reps 7] [--size-mib 1024]
        [--small-count 1000] [--disk-mib 1024] [--endpoint URL]

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
3. Per-GET cost, small objects: --small-count objects of 256 KiB under s3://bench/datapath/small/ (uploaded
   when missing), each fetched whole into a new file under a scratch directory of bench/.work/ and checked
   with CRC32 (ISA-L), one after another on one thread, through a real downloader.sources.s3.S3Source.
   Three GET paths,
     botocore   S3Source with _direct and _crt = None: open_range through the data client's get_object,
                readinto a reused 1 MiB buffer (CRC32 as it streams), one write
     direct     the same with GETs signed by botocore's SigV4 signer, sent on the client's HTTP session
     crt        S3Source.fetch_whole: the AWS CRT's S3 client, the body handed over into the same buffer
   rotated A B C, B C A, C A B, ... for --reps rounds; process CPU (user, sys from getrusage, the CRT's
   native threads included) and wall milliseconds per GET, and the medians of the per-round CPU ratios
   against botocore.
4. Disk write path: --disk-mib MiB of random data (one 8 MiB page-aligned buffer, reused) written into a new
   file under bench/.work/ (the filesystem the benchmark downloads into), preallocated with posix_fallocate,
   in 1 MiB pwrite calls, then fdatasync, with
     pagecache  buffered descriptor, downloader.state.start_writeback after every 64 MiB
     direct     a second descriptor from downloader.state.open_direct (O_DIRECT), fdatasync on the first
   after an os.sync() before each run, interleaved A B, B A, ... for --reps pairs; wall, user and sys
   CPU seconds per GiB from getrusage of the process, plus the whole machine's busy CPU time from
   /proc/stat (which also counts the kernel's writeback threads, invisible to getrusage).

Writes bench/results/datapath-<timestamp>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import mmap
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import run_bench  # noqa: E402  (SeaweedFS, credentials, client helper)

from downloader.config import S3Settings, Secret  # noqa: E402
from downloader.sources.base import RemoteFile, direct_body  # noqa: E402
from downloader.sources.s3 import S3Source  # noqa: E402
from downloader.state import open_direct, start_writeback  # noqa: E402
from downloader.uri import parse_model_uri  # noqa: E402
from downloader.verify import new_hasher  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
KEY = "datapath/object.bin"
SMALL_PREFIX = "datapath/small/"
SMALL_SIZE = 256 * 1024
WRITEBACK_STEP = 64 * MiB  # start_writeback after every this many bytes on the page-cache path
DISK_BUFFER = 8 * MiB
SECTIONS = ("checksums", "reads", "gets", "disk")
GET_MODES = {
    "botocore": "botocore `get_object`",
    "direct": "signed by botocore's SigV4 signer, sent on the client's HTTP session (larger files)",
    "crt": "the AWS CRT's S3 client, body handed over into the buffer (files that fit in it, chosen)",
}
DISK_MODES = {"pagecache": "page cache", "direct": "O_DIRECT (chosen)"}


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


def small_key(i: int) -> str:
    return f"{SMALL_PREFIX}{i:05d}.bin"


def upload_small(client: Any, count: int) -> None:
    """Put the objects of section 3 that are not there yet (a reused server may hold them already)."""
    have = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=run_bench.BUCKET, Prefix=SMALL_PREFIX):
        have.update(o["Key"] for o in page.get("Contents", ()) if o["Size"] == SMALL_SIZE)
    missing = [k for k in map(small_key, range(count)) if k not in have]

    def put(key: str) -> None:
        client.put_object(Bucket=run_bench.BUCKET, Key=key, Body=os.urandom(SMALL_SIZE))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, missing))


def small_source(endpoint: str, mode: str) -> S3Source:
    source = S3Source(
        parse_model_uri(f"s3://{run_bench.BUCKET}/{SMALL_PREFIX}"),
        S3Settings(
            endpoint_url=endpoint,
            access_key=Secret(run_bench.ACCESS_KEY),
            secret_key=Secret(run_bench.SECRET_KEY),
        ),
        connections=4,
        stall_timeout=60,
    )
    if mode != "crt":
        source._crt = None
    if mode == "botocore":
        source._direct = None
    if mode != "botocore":
        assert source._direct is not None, "S3Source did not set up its direct GET path against this server"
    if mode == "crt":
        assert source._crt is not None, "S3Source did not set up the CRT's client (is awscrt installed?)"
    return source


def crc32(data: memoryview) -> None:
    new_hasher("crc32", len(data)).update(data)  # the engine's CRC32 (ISA-L where installed)


def fetch_small(source: S3Source, files: list[RemoteFile], view: memoryview, scratch: Path) -> None:
    halt = threading.Event()
    for i, f in enumerate(files):
        path = str(scratch / f"{i:05d}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if source._crt is not None:
                fetched = source.fetch_whole(f, view, halt)
                if fetched is None:
                    raise RuntimeError(f"{f.key}: the CRT declined the GET")
                fill = fetched[1]
                crc32(view[:fill])
            else:
                reader = source.open_range(f, None, 0, f.size - 1)
                try:
                    fill = 0
                    while fill < f.size:
                        n = reader.readinto(view[fill:])
                        if not n:
                            raise RuntimeError(f"{f.key}: body ended with {f.size - fill} bytes to go")
                        crc32(view[fill : fill + n])
                        fill += n
                finally:
                    reader.close()
            os.pwrite(fd, view[:fill], 0)
        finally:
            os.close(fd)
        os.unlink(path)


def small_gets(endpoint: str, count: int, reps: int) -> dict[str, Any]:
    sources = {mode: small_source(endpoint, mode) for mode in GET_MODES}
    wanted = set(map(small_key, range(count)))
    files = sorted((f for f in sources["direct"].list(threading.Event()) if f.key in wanted), key=lambda f: f.key)
    if len(files) != count or any(f.size != SMALL_SIZE for f in files):
        raise RuntimeError(f"listed {len(files)} of the {count} small objects")
    view = memoryview(bytearray(MiB))
    modes = list(GET_MODES)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in GET_MODES}
    run_bench.DEFAULT_WORK.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="datapath-gets-", dir=run_bench.DEFAULT_WORK) as tmp:
            scratch = Path(tmp)
            for source in sources.values():  # warm: connections, lazily loaded botocore parts, server cache
                fetch_small(source, files, view, scratch)
            for i in range(reps):
                for mode in modes[i % len(modes) :] + modes[: i % len(modes)]:
                    r0 = resource.getrusage(resource.RUSAGE_SELF)
                    t0 = time.perf_counter()
                    fetch_small(sources[mode], files, view, scratch)
                    wall = time.perf_counter() - t0
                    r1 = resource.getrusage(resource.RUSAGE_SELF)
                    user, sys_ = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
                    runs[mode].append(
                        {
                            "user_ms": 1000 * user / count,
                            "sys_ms": 1000 * sys_ / count,
                            "cpu_ms": 1000 * (user + sys_) / count,
                            "wall_ms": 1000 * wall / count,
                        }
                    )
        # a refused GET would have switched the source to another path for good, and measured that instead
        assert sources["direct"]._direct is not None, "the direct source fell back to get_object during the runs"
        assert sources["crt"]._crt is not None, "the CRT source fell back to botocore's transport during the runs"
    finally:
        for source in sources.values():
            source.close()
    summary: dict[str, Any] = {
        mode: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]} for mode, rs in runs.items()
    }
    for mode in ("direct", "crt"):
        ratios = [m["cpu_ms"] / max(1e-9, b["cpu_ms"]) for m, b in zip(runs[mode], runs["botocore"], strict=True)]
        summary[f"cpu_ratio_{mode}_over_botocore"] = round(statistics.median(ratios), 3)
    return {"objects": count, "object_bytes": SMALL_SIZE, "runs": runs, "summary": summary}


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def filesystem_of(path: Path) -> str:
    best, fstype = "", "?"
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            _dev, mount, kind = line.split()[:3]
            if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, fstype = mount, kind
    return fstype


def write_file(path: Path, size: int, view: memoryview, mode: str) -> dict[str, float]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    dfd: int | None = None
    try:
        os.posix_fallocate(fd, 0, size)
        if mode == "direct":
            dfd = open_direct(fd)
            if dfd is None:
                raise RuntimeError(f"{path.parent}: the filesystem refuses O_DIRECT")
        out = fd if dfd is None else dfd
        slots = len(view) // MiB
        os.sync()  # the previous run's writes (and this file's allocation) are on disk before the clock starts
        m0 = machine_busy_s()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for i in range(size // MiB):
            offset = i * MiB
            slot = i % slots
            if os.pwrite(out, view[slot * MiB : (slot + 1) * MiB], offset) != MiB:
                raise RuntimeError(f"short write at {offset}")
            end = offset + MiB
            if dfd is None and end % WRITEBACK_STEP == 0:
                start_writeback(fd, end - WRITEBACK_STEP, WRITEBACK_STEP)
        os.fdatasync(fd)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        m1 = machine_busy_s()
    finally:
        if dfd is not None:
            os.close(dfd)
        os.close(fd)
        path.unlink(missing_ok=True)
    gib = size / GiB
    user, sys_ = (r1.ru_utime - r0.ru_utime) / gib, (r1.ru_stime - r0.ru_stime) / gib
    return {
        "wall_per_gib": wall / gib,
        "user_per_gib": user,
        "sys_per_gib": sys_,
        "cpu_per_gib": user + sys_,
        "machine_cpu_per_gib": (m1 - m0) / gib,
        "mib_per_s": size / MiB / wall,
    }


def disk_write(total_mib: int, reps: int) -> dict[str, Any]:
    work = Path(run_bench.DEFAULT_WORK)
    work.mkdir(parents=True, exist_ok=True)
    size = total_mib * MiB
    info: dict[str, Any] = {"bytes": size, "directory": str(work), "filesystem": filesystem_of(work)}
    with tempfile.NamedTemporaryFile(dir=work, prefix="datapath-probe-") as probe:
        dfd = open_direct(probe.fileno())
        if dfd is None:
            return {**info, "skipped": "the filesystem refuses O_DIRECT"}
        os.close(dfd)
    buf = mmap.mmap(-1, DISK_BUFFER)  # page-aligned, as O_DIRECT writes need (and as the engine's buffer is)
    buf.write(os.urandom(DISK_BUFFER))
    view = memoryview(buf)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in DISK_MODES}
    try:
        with tempfile.TemporaryDirectory(prefix="datapath-disk-", dir=work) as scratch:
            path = Path(scratch) / "file.bin"
            for i in range(reps):
                order = ("pagecache", "direct") if i % 2 == 0 else ("direct", "pagecache")
                for mode in order:
                    runs[mode].append(write_file(path, size, view, mode))
    finally:
        view.release()
        buf.close()
    summary: dict[str, Any] = {
        mode: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]} for mode, rs in runs.items()
    }
    pairs = list(zip(runs["direct"], runs["pagecache"], strict=True))
    summary["cpu_ratio_direct_over_pagecache"] = round(
        statistics.median(d["cpu_per_gib"] / max(1e-9, p["cpu_per_gib"]) for d, p in pairs), 3
    )
    summary["wall_ratio_direct_over_pagecache"] = round(
        statistics.median(d["wall_per_gib"] / p["wall_per_gib"] for d, p in pairs), 3
    )
    return {**info, "runs": runs, "summary": summary}


def print_checksums(rows: list[dict[str, Any]]) -> None:
    print("| checksum code | GiB per CPU-second | CPU-s per GiB |\n|---|---|---|")
    for row in rows:
        print(f"| {row['impl']} | {row['gib_per_cpu_s']} | {row['cpu_s_per_gib']} |")


def print_read_paths(s: dict[str, Any], reps: int) -> None:
    print("| body read path | median wall s | user CPU-s/GiB | sys CPU-s/GiB | CPU-s/GiB | minor faults |")
    print("|---|---|---|---|---|---|")
    for mode in ("botocore", "direct"):
        m = s[mode]
        print(
            f"| {mode} | {m['wall_s']} | {m['user_per_gib']} | {m['sys_per_gib']} | {m['cpu_per_gib']} | "
            f"{int(m['minflt'])} |"
        )
    print(f"\ndirect ÷ botocore, CPU per GiB (median of {reps} pairs): {s['cpu_ratio_direct_over_botocore']}")


def print_small_gets(r: dict[str, Any], reps: int) -> None:
    s = r["summary"]
    kib = r["object_bytes"] // 1024
    print(f"{r['objects']} objects of {kib} KiB, each into a new file, CRC32-checked; one thread; medians of {reps}")
    print("\n| GET path | user CPU ms/GET | sys CPU ms/GET | CPU ms/GET | wall ms/GET |\n|---|---|---|---|---|")
    for mode, label in GET_MODES.items():
        m = s[mode]
        print(f"| {label} | {m['user_ms']} | {m['sys_ms']} | {m['cpu_ms']} | {m['wall_ms']} |")
    print(
        f"\nCPU per GET ÷ botocore's (median of {reps} rounds): direct {s['cpu_ratio_direct_over_botocore']}, "
        f"crt {s['cpu_ratio_crt_over_botocore']}"
    )


def print_disk_write(r: dict[str, Any], reps: int) -> None:
    if "skipped" in r:
        print(f"disk write path: skipped, {r['directory']} ({r['filesystem']}): {r['skipped']}")
        return
    s = r["summary"]
    print(f"{r['bytes'] // MiB} MiB into {r['directory']} ({r['filesystem']}), medians of {reps} runs")
    print(
        "\n| write path | wall s/GiB | MiB/s | user CPU-s/GiB | sys CPU-s/GiB | CPU-s/GiB | machine CPU-s/GiB |"
        "\n|---|---|---|---|---|---|---|"
    )
    for mode, label in DISK_MODES.items():
        m = s[mode]
        print(
            f"| {label} | {m['wall_per_gib']} | {m['mib_per_s']} | {m['user_per_gib']} | {m['sys_per_gib']} | "
            f"{m['cpu_per_gib']} | {m['machine_cpu_per_gib']} |"
        )
    print(
        f"\nO_DIRECT ÷ page cache (median of {reps} pairs): CPU per GiB {s['cpu_ratio_direct_over_pagecache']}, "
        f"wall {s['wall_ratio_direct_over_pagecache']}"
    )
    print("(machine CPU: every core's busy time meanwhile, kernel writeback threads and anything else included)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections to run (default: {','.join(SECTIONS)})"
    )
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--size-mib", type=int, default=1024, help="size of the object of section 2 (reads)")
    p.add_argument("--small-count", type=int, default=1000, help="objects of 256 KiB in section 3 (gets)")
    p.add_argument("--disk-mib", type=int, default=1024, help="MiB written per run in section 4 (disk)")
    p.add_argument("--endpoint", help=f"a running S3 server (s3://bench/{KEY} and {SMALL_PREFIX} uploaded if missing)")
    p.add_argument("--results-dir", default=str(BENCH_DIR / "results"))
    args = p.parse_args()
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        p.error(f"--only takes a comma-separated subset of {','.join(SECTIONS)}; unknown: {','.join(unknown)}")
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]
    os.environ.update(
        AWS_ACCESS_KEY_ID=run_bench.ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=run_bench.SECRET_KEY,
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    size = args.size_mib * MiB
    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
        "size_bytes": size,
        "sections": sections,
        "reps": args.reps,
    }
    if "checksums" in sections:
        result["checksums"] = checksum_table(args.reps)
    if "reads" in sections or "gets" in sections:
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
                if "reads" in sections:
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
                if "gets" in sections:
                    upload_small(client, args.small_count)
                    result["small_gets"] = small_gets(endpoint, args.small_count, args.reps)
            finally:
                if server is not None:
                    server.stop()
    if "disk" in sections:
        result["disk_write"] = disk_write(args.disk_mib, args.reps)
    out = Path(args.results_dir) / f"datapath-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    printers: list[tuple[str, Callable[[], None]]] = [
        ("checksums", lambda: print_checksums(result["checksums"])),
        ("read_paths", lambda: print_read_paths(result["read_paths"]["summary"], args.reps)),
        ("small_gets", lambda: print_small_gets(result["small_gets"], args.reps)),
        ("disk_write", lambda: print_disk_write(result["disk_write"], args.reps)),
    ]
    first = True
    for key, show in printers:
        if key in result:
            if not first:
                print()
            show()
            first = False
    print(f"\nraw numbers: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
