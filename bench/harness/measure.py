"""What a run is measured with: a whole process under ``/usr/bin/time -v`` and its report, or a stretch of this
process's own work (``Stopwatch``); timed ``sync``, waiting for a quiet machine, and verifying every downloaded
byte."""

from __future__ import annotations

import hashlib
import os
import re
import resource
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import TIME_BIN, MiB, log
from .procs import machine_busy_seconds

_TIME_FIELDS = {
    "user_s": r"User time \(seconds\): ([\d.]+)",
    "sys_s": r"System time \(seconds\): ([\d.]+)",
    "max_rss_kb": r"Maximum resident set size \(kbytes\): (\d+)",
    "elapsed": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)",
    "exit_status": r"Exit status: (\d+)",
    "terminated_by_signal": r"Command terminated by signal (\d+)",
    "fs_inputs": r"File system inputs: (\d+)",
    "fs_outputs": r"File system outputs: (\d+)",
    "major_faults": r"Major \(requiring I/O\) page faults: (\d+)",
    "minor_faults": r"Minor \(reclaiming a frame\) page faults: (\d+)",
    "vol_ctx": r"Voluntary context switches: (\d+)",
    "invol_ctx": r"Involuntary context switches: (\d+)",
}


def parse_time_v(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, rx in _TIME_FIELDS.items():
        m = re.search(rx, text)
        if not m:
            continue
        if k == "elapsed":
            secs = 0.0
            for part in m.group(1).split(":"):
                secs = secs * 60 + float(part)
            out["time_wall_s"] = secs
        else:
            out[k] = float(m.group(1))
    return out


@dataclass
class Timed:
    """One process run to its end under ``/usr/bin/time -v``."""

    returncode: int
    wall_s: float  # this process's clock around it (``time_wall_s`` in ``usage`` is time's own, in 10 ms)
    stdout: str
    stderr: str  # the process's own (time's report went to a file)
    usage: dict[str, float]  # parse_time_v of the report: user_s, sys_s, max_rss_kb, time_wall_s, ...

    @property
    def cpu_s(self) -> float:
        return self.usage.get("user_s", 0.0) + self.usage.get("sys_s", 0.0)

    @property
    def max_rss_mib(self) -> float | None:
        kb = self.usage.get("max_rss_kb")
        return None if kb is None else kb / 1024


@dataclass
class Usage:
    """This process's wall clock and CPU over a stretch of its own work (``Stopwatch``)."""

    wall_s: float
    user_s: float
    sys_s: float
    minflt: int


class Stopwatch:
    """Wall clock and this process's CPU (getrusage: every thread, native ones included) from its creation to
    ``stop``: for work done in-process, while the process does nothing else."""

    def __init__(self) -> None:
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)
        self.t0 = time.perf_counter()

    def stop(self) -> Usage:
        wall = time.perf_counter() - self.t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return Usage(
            wall, r1.ru_utime - self.r0.ru_utime, r1.ru_stime - self.r0.ru_stime, r1.ru_minflt - self.r0.ru_minflt
        )


def run_timed(argv: list[str], env: dict[str, str], timeout: float | None = None) -> Timed:
    """Run ``argv`` under ``/usr/bin/time -v`` to its end (subprocess.TimeoutExpired after ``timeout``)."""
    with tempfile.NamedTemporaryFile(prefix="bench-time-") as report:
        t0 = time.perf_counter()
        r = subprocess.run(
            [TIME_BIN, "-v", "-o", report.name, *argv], env=env, capture_output=True, text=True, timeout=timeout
        )
        wall = time.perf_counter() - t0
        usage = parse_time_v(Path(report.name).read_text(errors="replace"))
    return Timed(r.returncode, wall, r.stdout, r.stderr, usage)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def verify_tree(root: Path, files: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Compare ``root`` with the manifest. Returns (problems, ignored extra files)."""
    problems: list[str] = []
    if not root.is_dir():
        return [f"landing dir {root} does not exist"], []
    found: dict[str, Path] = {}
    ignored: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            if rel in files:
                found[rel] = p
            elif any(part.startswith(".") for part in Path(rel).parts):
                ignored.append(rel)  # tool metadata such as .cache/**, not model bytes
            else:
                problems.append(f"unexpected file {rel} ({p.stat().st_size} bytes)")
    for rel in sorted(set(files) - set(found)):
        problems.append(f"missing {rel}")
    to_hash = []
    for rel, p in sorted(found.items()):
        size = p.stat().st_size
        if size != files[rel]["size"]:
            problems.append(f"size mismatch {rel}: {size} != {files[rel]['size']}")
        else:
            to_hash.append(rel)
    with ThreadPoolExecutor(max_workers=2) as ex:  # hashlib releases the GIL
        digests = dict(zip(to_hash, ex.map(lambda r: sha256_file(found[r]), to_hash), strict=True))
    for rel, d in digests.items():
        if d != files[rel]["sha256"]:
            problems.append(f"sha256 mismatch {rel}")
    return problems, ignored


def drop_page_cache() -> str:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "dropped"
    except OSError as e:
        return f"not permitted ({e.strerror})"


def timed_sync() -> float:
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


def tail(path: Path, chars: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-chars:].decode(errors="replace")


def wait_for_quiet(threshold_cores: float, max_wait_s: float) -> tuple[float, float]:
    """Wait (up to ``max_wait_s``) until the machine is nearly idle: machine-wide busy CPU over 1 s windows at most
    ``threshold_cores``. Returns (seconds waited, busy cores in the last window). Other workloads on a 2-core
    machine distort timings."""
    t0 = time.monotonic()
    while True:
        b0, w0 = machine_busy_seconds(), time.monotonic()
        time.sleep(1.0)
        busy = (machine_busy_seconds() - b0) / (time.monotonic() - w0)
        waited = time.monotonic() - t0
        if busy <= threshold_cores or waited >= max_wait_s:
            if busy > threshold_cores:
                log(f"machine still busy ({busy:.2f} cores) after {waited:.0f}s; running anyway")
            return waited, busy
