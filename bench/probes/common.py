"""What both modes of the sidecar benchmark start: ``aibrix-sidecar`` (and the moment it listens), and the load
generator (``loadgen``, as its own process)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from ..harness.common import BENCH_DIR, PROJECT_VENV, logger
from ..harness.measure import tail

DEFAULT_SIDECAR = PROJECT_VENV / "bin" / "aibrix-sidecar"
ENTRY = BENCH_DIR / "bench_sidecar.py"  # started with --_loadgen, it is the load generator
log = logger("bench-sidecar")
_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


def wait_listening(proc: subprocess.Popen[bytes], errfile: Path, timeout: float, poll: float) -> int:
    """The port the sidecar announced on stderr (``errfile``); RuntimeError if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _LISTENING.search(errfile.read_bytes())
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"sidecar exited {proc.returncode} before listening:\n{tail(errfile)}")
        time.sleep(poll)
    raise RuntimeError(f"sidecar not listening after {timeout}s:\n{tail(errfile)}")


def loadgen_argv(rate: float, max_seconds: float, max_requests: int, conns: int, max_conns: int) -> list[str]:
    """The load generator: ``rate`` probes a second until SIGTERM, ``max_seconds`` or ``max_requests``; it reads
    the port from its stdin."""
    return [
        *(sys.executable, str(ENTRY), "--_loadgen", "--rate", str(rate)),
        *("--max-seconds", str(max_seconds), "--max-requests", str(max_requests)),
        *("--conns", str(conns), "--max-conns", str(max_conns)),
    ]
