"""Paths, constants, logging and machine facts every part of the harness shares."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent
VENV = BENCH_DIR / ".venv"
VENV_AIBRIX = BENCH_DIR / ".venv-aibrix"
REQS = BENCH_DIR / "requirements.txt"
REQS_AIBRIX = BENCH_DIR / "requirements-aibrix.txt"
DEFAULT_STORE = BENCH_DIR / ".cache" / "seaweedfs"
DEFAULT_WORK = BENCH_DIR / ".work"
DEFAULT_RESULTS = BENCH_DIR / "results"
DEFAULT_AIBRIX_DOWNLOAD = REPO_DIR / ".venv" / "bin" / "aibrix-download"
TIME_BIN = "/usr/bin/time"

BUCKET = "bench"
ACCESS_KEY = "benchaccesskey"  # static, local-only SeaweedFS identity
SECRET_KEY = "benchsecretkey"
REGION = "us-east-1"
MiB = 1024 * 1024
GiB = 1024 * MiB

ALL_TOOLS = ["aibrix-download", "aibrix-0.8.0", "boto3", "s5cmd"]
OURS = "aibrix-download"
# every ratio in the tables is a tool's figure divided by this tool's, in the same setting
BASELINE = "s5cmd"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cmd_out(argv: list[str], timeout: float = 60) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    return (r.stdout or r.stderr).strip()


def git_rev() -> str:
    rev = cmd_out(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    if not re.fullmatch(r"[0-9a-f]{4,40}", rev):
        rev = "no-commit"
    dirty = cmd_out(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "downloader"])
    return rev + ("+dirty" if dirty else "")


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "hostname": socket.gethostname(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_gib": round(mem_kb / 1024 / 1024, 2),
        "kernel": platform.release(),
        "os": cmd_out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "filesystem": cmd_out(["findmnt", "-no", "SOURCE,FSTYPE,OPTIONS", "-T", str(BENCH_DIR)]),
    }
