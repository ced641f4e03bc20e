#!/usr/bin/env python3
"""Physical limits measured in the same benchmark run: TCP throughput and disk write throughput.

- ``tcp_throughput``: ``serve`` (a plain socket sender: ``send`` of a 1 MiB buffer in a loop, so one
  user->kernel copy, optionally paced with ``SO_MAX_PACING_RATE``) runs as its own process; the receiver
  (``recv_into``, one kernel->user copy, like an HTTP client reading a body) runs here with one thread per
  connection. Over loopback this is the "network" ceiling of this box; across the benchmark's veth it checks
  that the emulated per-connection and aggregate caps really give the configured rates.
- ``disk_write``: writes N MiB of incompressible data in 8 MiB writes into the download filesystem, then
  ``fdatasync`` (buffered), or with ``O_DIRECT`` from an aligned buffer; the time includes the sync.

Standard library only. ``python3 bench/physlimits.py`` prints the loopback and disk figures as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script (the sender, or `python3 bench/physlimits.py`): bench/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
from bench.harness.procs import cpu_seconds, free_port, kill_group

MiB = 1024 * 1024
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)


# ------------------------------------------------------------------------ TCP sender


def serve(host: str, port: int, rate: int) -> None:
    """Send zeros to every client until it closes; ``rate`` > 0 paces each connection (bytes/s)."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(256)
    buf = bytes(MiB)

    def one(c: socket.socket) -> None:
        with contextlib.suppress(OSError), c:
            if rate > 0:
                c.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, struct.pack("Q", rate))
            while True:
                c.sendall(buf)

    print(f"listening {host}:{port}", flush=True)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def start_sender(prefix: list[str], host: str, port: int, rate: int = 0) -> subprocess.Popen[bytes]:
    """Start ``serve`` (optionally under ``prefix``, e.g. nsenter) and wait until it listens."""
    argv = [*prefix, sys.executable, str(Path(__file__).resolve()), "serve", "--host", host, "--port", str(port)]
    argv += ["--rate", str(rate)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(b"listening"):
        kill_group(proc)
        raise RuntimeError(f"sender did not start: {line!r}")
    return proc


def receive(host: str, port: int, conns: int, seconds: float) -> dict[str, Any]:
    """Open ``conns`` connections, read for ``seconds``; return aggregate and per-connection MB/s."""
    got = [0] * conns
    stop_at = [0.0]
    ready = threading.Barrier(conns + 1, timeout=60)

    def reader(i: int) -> None:
        s = socket.create_connection((host, port), timeout=30)
        b = bytearray(MiB)
        try:
            ready.wait()
            while time.perf_counter() < stop_at[0]:
                n = s.recv_into(b)
                if not n:
                    break
                got[i] += n
        finally:
            s.close()

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    ready.wait()
    for t in threads:
        t.join(seconds + 30)
    dt = time.perf_counter() - t0
    return {
        "conns": conns,
        "seconds": round(dt, 3),
        "mb_per_s": sum(got) / dt / 1e6,
        "per_conn_mb_per_s": [round(g / dt / 1e6, 1) for g in got],
    }


def tcp_throughput(
    host: str, port: int, conn_counts: list[int], seconds: float, prefix: list[str] | None = None, rate: int = 0
) -> dict[str, Any]:
    """Sender in its own process (under ``prefix``), receivers here; one measurement per connection count."""
    proc = start_sender(prefix or [], host, port, rate)
    try:
        out = []
        for n in conn_counts:
            c0 = cpu_seconds(proc.pid) or 0.0
            r = receive(host, port, n, seconds)
            r["sender_cpu_s"] = round((cpu_seconds(proc.pid) or 0.0) - c0, 2)
            out.append(r)
    finally:
        kill_group(proc)
    return {"host": host, "pacing_bytes_per_s": rate, "runs": out, "best_mb_per_s": max(r["mb_per_s"] for r in out)}


# ------------------------------------------------------------------------------ disk


def disk_write(directory: Path, mib: int, direct: bool) -> dict[str, Any]:
    """Write ``mib`` MiB in 8 MiB writes, then fdatasync (buffered) / fsync (O_DIRECT). Time includes sync."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".physlimits-{os.getpid()}-{'direct' if direct else 'buffered'}.bin"
    chunk = 8 * MiB
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(chunk))
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if direct:
        flags |= getattr(os, "O_DIRECT", 0)
    os.sync()
    try:
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            return {"mode": "O_DIRECT" if direct else "buffered+fdatasync", "error": str(e)}
        try:
            t0 = time.perf_counter()
            for i in range(mib // 8):
                # vary the first bytes so no two blocks are alike
                buf[:8] = struct.pack("<Q", i)
                os.write(fd, buf)
            os.fdatasync(fd)
            dt = time.perf_counter() - t0
        except OSError as e:
            return {"mode": "O_DIRECT" if direct else "buffered+fdatasync", "error": str(e)}
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        buf.close()
        os.sync()
    written = (mib // 8) * chunk
    return {
        "mode": "O_DIRECT" if direct else "buffered+fdatasync",
        "bytes": written,
        "seconds": round(dt, 3),
        "mb_per_s": written / dt / 1e6,
    }


def measure(directory: Path, disk_mib: int, seconds: float, conn_counts: list[int]) -> dict[str, Any]:
    """Loopback TCP and disk write; ``limit_mb_per_s`` = min(loopback best, buffered disk)."""
    lo = tcp_throughput("127.0.0.1", free_port(), conn_counts, seconds)
    buffered = disk_write(directory, disk_mib, direct=False)
    direct = disk_write(directory, disk_mib, direct=True)
    # the disk's limit: the faster of the two ways to get bytes durably onto it
    disk_best = max(buffered.get("mb_per_s") or 0, direct.get("mb_per_s") or 0) or float("inf")
    return {
        "loopback_tcp": lo,
        "disk_write_buffered": buffered,
        "disk_write_direct": direct,
        "loopback_mb_per_s": lo["best_mb_per_s"],
        "disk_mb_per_s": disk_best,
        "limit_mb_per_s": min(lo["best_mb_per_s"], disk_best),
        "limit_is": "loopback TCP" if lo["best_mb_per_s"] <= disk_best else "disk write",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve", help="TCP sender (used by the benchmark)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--rate", type=int, default=0, help="SO_MAX_PACING_RATE per connection, bytes/s")
    m = sub.add_parser("measure", help="loopback + disk, printed as JSON (the default)")
    m.add_argument("--dir", default=str(Path(__file__).resolve().parent / ".work"))
    m.add_argument("--disk-mib", type=int, default=1024)
    m.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args()
    if a.cmd == "serve":
        serve(a.host, a.port, a.rate)
        return 0
    d = Path(getattr(a, "dir", Path(__file__).resolve().parent / ".work"))
    print(json.dumps(measure(d, getattr(a, "disk_mib", 1024), getattr(a, "seconds", 3.0), [1, 4]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
