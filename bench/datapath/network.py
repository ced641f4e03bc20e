"""The sections against an S3 server: the body read paths (2) and the per-GET cost of small objects (3)."""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from downloader.config import S3Settings, Secret
from downloader.sources.base import RemoteFile, direct_body
from downloader.sources.s3 import S3Source
from downloader.uri import parse_model_uri
from downloader.verify import new_hasher

from ..harness.common import ACCESS_KEY, BUCKET, DEFAULT_WORK, SECRET_KEY, GiB, MiB
from ..harness.measure import Stopwatch
from ..harness.server import s3_client
from .cli import KEY, SMALL_PREFIX
from .local import medians

SMALL_SIZE = 256 * 1024
GET_MODES = {
    "botocore": "botocore `get_object`",
    "direct": "signed by botocore's SigV4 signer, sent on the client's HTTP session (larger files)",
    "crt": "the AWS CRT's S3 client, body handed over into the buffer (files that fit in it, chosen)",
}


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
            body = client.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={start}-{end}")["Body"]
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
    client = s3_client(endpoint, pool=8)
    runs: dict[str, list[dict[str, float]]] = {"botocore": [], "direct": []}
    read_object(client, size, "direct")  # warm: connections, server cache
    for i in range(reps):
        order = ("botocore", "direct") if i % 2 == 0 else ("direct", "botocore")
        for mode in order:
            clock = Stopwatch()
            read_object(client, size, mode)
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
    summary = medians(runs)
    for mode in runs:
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
    have: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=SMALL_PREFIX):
        have.update(o["Key"] for o in page.get("Contents", ()) if o["Size"] == SMALL_SIZE)
    missing = [k for k in map(small_key, range(count)) if k not in have]

    def put(key: str) -> None:
        client.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(SMALL_SIZE))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, missing))


def small_source(endpoint: str, mode: str) -> S3Source:
    source = S3Source(
        parse_model_uri(f"s3://{BUCKET}/{SMALL_PREFIX}"),
        S3Settings(
            endpoint_url=endpoint,
            access_key=Secret(ACCESS_KEY),
            secret_key=Secret(SECRET_KEY),
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
                # one object per call, as the engine's batch of one: a GET, answered into ``view``
                (fetched,) = source.fetch_whole([(f, view)], halt)
                if fetched is None:
                    raise RuntimeError(f"{f.key}: the CRT declined the GET")
                if isinstance(fetched, Exception):
                    raise fetched
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
        # a refused GET would have switched the source to another path for good, and measured that instead
        assert sources["direct"]._direct is not None, "the direct source fell back to get_object during the runs"
        assert sources["crt"]._crt is not None, "the CRT source fell back to botocore's transport during the runs"
    finally:
        for source in sources.values():
            source.close()
    summary = medians(runs)
    for mode in ("direct", "crt"):
        ratios = [m["cpu_ms"] / max(1e-9, b["cpu_ms"]) for m, b in zip(runs[mode], runs["botocore"], strict=True)]
        summary[f"cpu_ratio_{mode}_over_botocore"] = round(statistics.median(ratios), 3)
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
