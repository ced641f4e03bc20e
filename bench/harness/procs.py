"""Counters of one process and of the whole machine, read from /proc; free ports; stopping the process groups
the benchmarks start (always their own: every server, tool and helper runs in a session of its own)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (field 3 onwards), or None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` itself so far."""
    f = _stat_fields(pid)
    return None if f is None else (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> dict[str, float] | None:
    """utime + stime of ``pid`` itself, and cutime + cstime of its reaped children, in seconds."""
    f = _stat_fields(pid)
    if f is None:
        return None
    tck = os.sysconf("SC_CLK_TCK")
    return {"self_s": (int(f[11]) + int(f[12])) / tck, "children_s": (int(f[13]) + int(f[14])) / tck}


def threads_cpu_ns(pid: int) -> int | None:
    """Summed on-CPU time of all live threads of pid, in ns (/proc/<pid>/task/*/schedstat; finer than ticks)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def memory_mib(pid: int, field: str = "VmRSS") -> float | None:
    """A memory field of /proc/<pid>/status in MiB: ``VmRSS`` now, ``VmHWM`` the peak so far."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_ticks() -> list[int]:
    """The machine's CPU time so far, per kind (/proc/stat's first line: user nice system idle iowait irq
    softirq steal ...), in clock ticks."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def machine_busy_seconds(steal: bool = True) -> float:
    """Machine-wide non-idle CPU seconds so far: user, nice, system, irq, softirq, and (``steal``) steal; never
    idle, iowait or guest (counted inside user)."""
    user, nice, system, _idle, _iowait, irq, softirq, stolen = machine_ticks()[:8]
    return (user + nice + system + irq + softirq + (stolen if steal else 0)) / os.sysconf("SC_CLK_TCK")


def machine_share(before: list[int], after: list[int]) -> dict[str, float]:
    """Between two ``machine_ticks``: busy cores (steal not counted as busy), and the steal and iowait shares."""
    d = [y - x for x, y in zip(before, after, strict=False)]
    total = sum(d[:8]) or 1  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = d[3] + d[4]
    steal = d[7] if len(d) > 7 else 0
    ncpu = os.cpu_count() or 1
    return {
        "busy_cores": (total - idle - steal) / total * ncpu,
        "steal_frac": steal / total,
        "iowait_frac": d[4] / total,
    }


def busy_processes(n: int = 8) -> list[str]:
    """The top CPU users right now (ps), to show what else shared the machine."""
    try:
        r = subprocess.run(
            ["ps", "-eo", "pid,etime,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [ln[:160] for ln in r.stdout.splitlines()[1 : n + 1]]


def wait_reap(pid: int, timeout: float) -> tuple[int | None, Any]:
    """wait4() with a deadline; returns (wait status, rusage) or (None, None) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            return status, ru
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.02)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the process group ``proc`` leads (one we started with start_new_session) and reap ``proc``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop_group(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM the process group ``proc`` leads, give it ``grace`` seconds, then SIGKILL it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        kill_group(proc)
