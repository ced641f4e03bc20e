"""Paths, constants, logging and machine facts every benchmark shares."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent
PROJECT_VENV = REPO_DIR / ".venv"  # the project's own: aibrix-download, aibrix-sidecar and the SDKs
VENV = BENCH_DIR / ".venv"
VENV_AIBRIX = BENCH_DIR / ".venv-aibrix"
REQS = BENCH_DIR / "requirements.txt"
REQS_AIBRIX = BENCH_DIR / "requirements-aibrix.txt"
DEFAULT_STORE = BENCH_DIR / ".cache" / "seaweedfs"
DEFAULT_WORK = BENCH_DIR / ".work"
DEFAULT_RESULTS = BENCH_DIR / "results"
DEFAULT_AIBRIX_DOWNLOAD = PROJECT_VENV / "bin" / "aibrix-download"
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


def logger(tag: str) -> Callable[[str], None]:
    """A log function whose lines (on stderr) start with ``[<tag> HH:MM:SS]``."""

    def log(msg: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return log


log = logger("bench")


def tool_env(drop: tuple[str, ...], **extra: str) -> dict[str, str]:
    """The environment for a tool the benchmark runs: this process's, without the variables whose names start
    with one of ``drop`` (credentials, endpoints and settings that would change what the tool does), plus
    ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | extra


def cmd_out(argv: list[str], timeout: float = 60) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    return (r.stdout or r.stderr).strip()


def git_short() -> str:
    """The checkout's commit, as ``git rev-parse --short HEAD`` prints it."""
    return cmd_out(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])


def git_status(*paths: str) -> str:
    """``git status --porcelain`` of ``paths``: empty when they are as committed."""
    return cmd_out(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", *paths])


def git_rev() -> str:
    """The commit, ``+dirty`` if downloader/ has changes (the code the download benchmark measures)."""
    rev = git_short()
    if not re.fullmatch(r"[0-9a-f]{4,40}", rev):
        rev = "no-commit"
    return rev + ("+dirty" if git_status("downloader") else "")


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
