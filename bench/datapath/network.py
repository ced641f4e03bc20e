"""The sections against an S3 server: the body read paths (2) and the per-GET cost of small objects (3)."""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from downloader.config import S3Settings, Secret, VerifyMode
from downloader.sources.base import RemoteFile, Span
from downloader.sources.s3 import S3Source
from downloader.uri import parse_model_uri
from downloader.verify import new_hasher

from ..harness.common import ACCESS_KEY, BUCKET, DEFAULT_WORK, SECRET_KEY, GiB, MiB
from ..harness.measure import Stopwatch
from .cli import KEY, SMALL_PREFIX
from .local import medians

SMALL_SIZE = 256 * 1024
GET_MODES = {
    "boto3": "boto3's client, `get_object` (--fast-paths off)",
    "rest": "the REST transport: signed here with SigV4, sent over http.client (--no-s3-crt)",
    "crt": "the AWS CRT's S3 client, body handed over into the buffer (files that fit in it; the default)",
}
READ_MODES = ("boto3", "rest")


def read_object(source: S3Source, f: RemoteFile, threads: int = 4, range_mib: int = 64) -> None:
    step = range_mib * MiB
    ranges = [(s, min(f.size, s + step) - 1) for s in range(0, f.size, step)]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        view = memoryview(bytearray(MiB))
        while True:
            with lock:
                if not ranges:
                    return
                start, end = ranges.pop()
            body = source.open(f, None, Span(start, end), None)
            left = end - start + 1
            try:
                while left:
                    n = body.readinto(view[: min(MiB, left)])
                    if not n:
                        raise RuntimeError(f"body ended with {left} bytes to go")
                    left -= n
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
    sources = {mode: make_source(endpoint, KEY, mode) for mode in READ_MODES}
    (f,) = [o for o in sources["rest"].list(threading.Event()) if o.key == KEY]
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in READ_MODES}
    try:
        read_object(sources["rest"], f)  # warm: connections, server cache
        for i in range(reps):
            for mode in READ_MODES if i % 2 == 0 else READ_MODES[::-1]:
                clock = Stopwatch()
                read_object(sources[mode], f)
                used = clock.stop()
                gib = size / GiB
                runs[mode].append(
                    {
                        "wall_s": used.wall_s,
                        "user_per_gib": used.user_s / gib,
                        "sys_per_gib": used.sys_s / gib,
                        "minflt": used.minflt,
                    }
                )
    finally:
        for source in sources.values():
            source.close()
    summary = medians(runs)
    for mode in runs:
        summary[mode]["cpu_per_gib"] = round(summary[mode]["user_per_gib"] + summary[mode]["sys_per_gib"], 3)
    ours = [d["user_per_gib"] + d["sys_per_gib"] for d in runs["rest"]]
    base = [b["user_per_gib"] + b["sys_per_gib"] for b in runs["boto3"]]
    summary["cpu_ratio_rest_over_boto3"] = round(statistics.median([d / b for d, b in zip(ours, base, strict=True)]), 3)
    return {"runs": runs, "summary": summary}


def small_key(i: int) -> str:
    return f"{SMALL_PREFIX}{i:05d}.bin"


def upload_small(client: Any, count: int) -> None:
    """Put the objects of section 3 that are not there yet (a reused server may hold them already)."""
    have: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=SMALL_PREFIX):
        have.update(o["Key"] for o in page.get("Contents", ()) if o["Size"] == SMALL_SIZE)
    missing = [k for k in map(small_key, range(count)) if k not in have]

    def put(key: str) -> None:
        client.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(SMALL_SIZE))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, missing))


def make_source(endpoint: str, prefix: str, mode: str) -> S3Source:
    """The downloader's S3 backend with one transport: boto3's, the REST one, or the REST one with the CRT."""
    return S3Source(
        parse_model_uri(f"s3://{BUCKET}/{prefix}"),
        S3Settings(
            endpoint_url=endpoint,
            access_key=Secret(ACCESS_KEY),
            secret_key=Secret(SECRET_KEY),
            crt=mode == "crt",
        ),
        connections=4,
        stall_timeout=60,
        max_attempts=1,
        verify=VerifyMode.STRICT,
        fast_paths=mode != "boto3",
        cancel=threading.Event(),
    )


def crc32(data: memoryview) -> None:
    new_hasher("crc32", len(data)).update(data)  # the engine's CRC32 (ISA-L where installed)


def fetch_small(source: S3Source, files: list[RemoteFile], view: memoryview, scratch: Path) -> None:
    for i, f in enumerate(files):
        path = str(scratch / f"{i:05d}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            body = source.open(f, None, None, view)  # one object: through the CRT when the source has it
            try:
                fill = 0
                while fill < f.size:
                    n = body.readinto(view[fill:])
                    if not n:
                        raise RuntimeError(f"{f.key}: body ended with {f.size - fill} bytes to go")
                    fill += n
                crc32(view[:fill])
            finally:
                body.close()
            os.pwrite(fd, view[:fill], 0)
        finally:
            os.close(fd)
        os.unlink(path)


def small_gets(endpoint: str, count: int, reps: int) -> dict[str, Any]:
    sources = {mode: make_source(endpoint, SMALL_PREFIX, mode) for mode in GET_MODES}
    wanted = set(map(small_key, range(count)))
    files = sorted((f for f in sources["rest"].list(threading.Event()) if f.key in wanted), key=lambda f: f.key)
    if len(files) != count or any(f.size != SMALL_SIZE for f in files):
        raise RuntimeError(f"listed {len(files)} of the {count} small objects")
    view = memoryview(bytearray(MiB))
    modes = list(GET_MODES)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in GET_MODES}
    DEFAULT_WORK.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="datapath-gets-", dir=DEFAULT_WORK) as tmp:
            scratch = Path(tmp)
            for source in sources.values():  # warm: connections, lazily loaded botocore parts, server cache
                fetch_small(source, files, view, scratch)
            for i in range(reps):
                for mode in modes[i % len(modes) :] + modes[: i % len(modes)]:
                    clock = Stopwatch()
                    fetch_small(sources[mode], files, view, scratch)
                    used = clock.stop()
                    runs[mode].append(
                        {
                            "user_ms": 1000 * used.user_s / count,
                            "sys_ms": 1000 * used.sys_s / count,
                            "cpu_ms": 1000 * (used.user_s + used.sys_s) / count,
                            "wall_ms": 1000 * used.wall_s / count,
                        }
                    )
        assert sources["crt"].open_ahead > 1, "the CRT source fell back to the REST transport during the runs"
    finally:
        for source in sources.values():
            source.close()
    summary = medians(runs)
    for mode in ("rest", "crt"):
        ratios = [m["cpu_ms"] / max(1e-9, b["cpu_ms"]) for m, b in zip(runs[mode], runs["boto3"], strict=True)]
        summary[f"cpu_ratio_{mode}_over_boto3"] = round(statistics.median(ratios), 3)
    return {"objects": count, "object_bytes": SMALL_SIZE, "runs": runs, "summary": summary}


def ensure_object(client: Any, scratch: Path, size_mib: int) -> None:
    """s3://bench/<KEY> of ``size_mib`` MiB of random bytes, uploaded unless a reused server holds it already."""
    head = None
    try:
        head = client.head_object(Bucket=BUCKET, Key=KEY)
    except Exception:  # not uploaded yet
        head = None
    if head is None or head["ContentLength"] != size_mib * MiB:
        src = scratch / "object.bin"
        with open(src, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(MiB))
        client.upload_file(str(src), BUCKET, KEY)
        src.unlink()
