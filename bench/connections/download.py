"""One download of the connections benchmark: ``aibrix-download`` in one mode, sampled every interval until it ends
(bytes the server side sent, connections open), its CPU and peak RSS from ``/usr/bin/time -v``, and the count of
requests in flight over time from its own log ("requests in flight: N (reason)", downloader/concurrency.py)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..harness.common import DEFAULT_AIBRIX_DOWNLOAD, TIME_BIN
from ..harness.measure import parse_time_v

# the modes compared: the default (auto, up to --num-threads 128 within its buffer budget) and fixed counts
MODES = {
    "auto": [],
    "fixed-32": ["--connections", "fixed", "--num-threads", "32"],
    "fixed-128": ["--connections", "fixed", "--num-threads", "128"],
}
_CHANGE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ requests in flight: (\d+) \(([^;)]*)")


@dataclass
class Counters:
    """What one sample reads: bytes the server side has sent so far, and connections open (or the most open since
    the last sample, where that is what the source counts)."""

    bytes: int
    open: int


Sampler = Callable[[], Counters | None]


def changes(stderr: str, started: float) -> list[dict[str, Any]]:
    """The downloader's count over time (its log lines), seconds since `started` (epoch seconds)."""
    out = []
    for line in stderr.splitlines():
        m = _CHANGE.match(line)
        if m:
            at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append({"t": round(at - started, 3), "limit": int(m.group(2)), "reason": m.group(3)})
    return out


def rates(points: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(seconds, MB/s) between consecutive samples."""
    return [
        (b["t"], (b["bytes"] - a["bytes"]) / (b["t"] - a["t"]) / 1e6)
        for a, b in itertools.pairwise(points)
        if b["t"] > a["t"]
    ]


def run(
    mode: str,
    flags: list[str],
    uri: str,
    env: dict[str, str],
    sampler: Sampler,
    work: Path,
    interval: float,
    model_bytes: int,
) -> dict[str, Any]:
    """Download `uri` (`model_bytes`) into a fresh directory in `mode`; the run's figures and timeline (bytes from
    the sampler, relative to its first sample; where the sampler counts none, the model's)."""
    dest = work / "dest"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    argv = [str(DEFAULT_AIBRIX_DOWNLOAD), "--model-uri", uri, "--local-dir", str(dest), "--model-name", "m"]
    argv += ["--progress", "none", *flags, *MODES[mode]]
    # Peak RSS and CPU from /usr/bin/time's report: wait4's ru_maxrss of a child this (large) process spawned
    # counts this process's pages, which the child shared until its exec.
    report = work / f"{mode}.time"
    report.unlink(missing_ok=True)
    first = sampler()
    base = first.bytes if first else 0
    err_path = work / f"{mode}.stderr"
    points: list[dict[str, Any]] = []
    with open(err_path, "wb") as err:
        started, t0 = time.time(), time.monotonic()
        timed = [TIME_BIN, "-v", "-o", str(report), *argv]
        proc = subprocess.Popen(timed, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            while proc.poll() is None:
                c = sampler()
                if c is not None:
                    points.append({"t": round(time.monotonic() - t0, 3), "bytes": c.bytes - base, "open": c.open})
                time.sleep(interval)
        except BaseException:  # interrupted: the download (time and its child) goes too
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        wall = time.monotonic() - t0
    code = proc.returncode
    usage = parse_time_v(report.read_text(errors="replace")) if report.exists() else {}
    last = sampler()
    moved = (last.bytes - base if last else 0) or model_bytes
    stderr = err_path.read_text(errors="replace")
    shutil.rmtree(dest, ignore_errors=True)
    os.sync()  # the next run does not pay for this one's writeback
    r = rates(points)
    middle = [mb for t, mb in r if wall * 0.25 <= t <= wall * 0.75]
    opened = [p["open"] for p in points if wall * 0.25 <= p["t"] <= wall * 0.75]
    return {
        "mode": mode,
        "argv": argv[1:],
        "returncode": code,
        "wall_s": wall,
        "bytes": moved,
        "mb_s": moved / wall / 1e6,
        "mb_s_middle": statistics.mean(middle) if middle else None,
        "open_middle": statistics.median(opened) if opened else None,
        "most_open": max((p["open"] for p in points), default=0),
        "cpu_s": usage.get("user_s", 0.0) + usage.get("sys_s", 0.0),
        "maxrss_mib": usage.get("max_rss_kb", 0.0) / 1024,
        "load": os.getloadavg(),
        "timeline": points,
        "changes": changes(stderr, started),
        "stderr_tail": stderr[-1500:] if code else "",
    }


def established(port: int) -> int:
    """TCP connections established to `port` in this network namespace, counted on the client's side."""
    r = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( dport = :{port} )"], capture_output=True, text=True, check=False
    )
    return sum(1 for line in r.stdout.splitlines() if line.strip())
