"""The sections that stay on this machine: the checksum code (1) and the disk write path (4)."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from downloader.state import open_direct, start_writeback

from ..harness.common import DEFAULT_WORK, GiB, MiB
from ..harness.measure import Stopwatch
from ..harness.procs import machine_busy_seconds

WRITEBACK_STEP = 64 * MiB  # start_writeback after every this many bytes on the page-cache path
DISK_BUFFER = 8 * MiB
DISK_MODES = {"pagecache": "page cache", "direct": "O_DIRECT (chosen)"}


def medians(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Per mode, the median of each figure of its runs, to 3 decimals."""
    return {mode: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]} for mode, rs in runs.items()}


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
        m0 = machine_busy_seconds(steal=False)
        clock = Stopwatch()
        for i in range(size // MiB):
            offset = i * MiB
            slot = i % slots
            if os.pwrite(out, view[slot * MiB : (slot + 1) * MiB], offset) != MiB:
                raise RuntimeError(f"short write at {offset}")
            end = offset + MiB
            if dfd is None and end % WRITEBACK_STEP == 0:
                start_writeback(fd, end - WRITEBACK_STEP, WRITEBACK_STEP)
        os.fdatasync(fd)
        used = clock.stop()
        m1 = machine_busy_seconds(steal=False)
    finally:
        if dfd is not None:
            os.close(dfd)
        os.close(fd)
        path.unlink(missing_ok=True)
    gib = size / GiB
    user, sys_ = used.user_s / gib, used.sys_s / gib
    return {
        "wall_per_gib": used.wall_s / gib,
        "user_per_gib": user,
        "sys_per_gib": sys_,
        "cpu_per_gib": user + sys_,
        "machine_cpu_per_gib": (m1 - m0) / gib,
        "mib_per_s": size / MiB / used.wall_s,
    }


def disk_write(total_mib: int, reps: int) -> dict[str, Any]:
    work = DEFAULT_WORK
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
    summary = medians(runs)
    pairs = list(zip(runs["direct"], runs["pagecache"], strict=True))
    summary["cpu_ratio_direct_over_pagecache"] = round(
        statistics.median(d["cpu_per_gib"] / max(1e-9, p["cpu_per_gib"]) for d, p in pairs), 3
    )
    summary["wall_ratio_direct_over_pagecache"] = round(
        statistics.median(d["wall_per_gib"] / p["wall_per_gib"] for d, p in pairs), 3
    )
    return {**info, "runs": runs, "summary": summary}
