"""Processes and signals: the small piece that starts children, watches them, and stops them in order. Shared by
the runtime (Ray, vLLM, the download) and the sidecar (the download it runs in native-sidecar mode).

- Every child runs in its own process group (so a terminal's Ctrl-C reaches only the runtime, which then stops
  the children in the right order) and, on Linux, gets SIGTERM if the runtime itself dies.
- `Child.stop` sends SIGTERM to the child, waits up to its grace period, then SIGKILLs the whole group (Ray's
  daemons and vLLM's engine processes live in the group of the command that started them).
- `Signals` records SIGTERM/SIGINT instead of dying; the main loop sees it within one sleep slice. A second
  signal makes every stop that is still waiting skip the rest of its grace period.
- As PID 1 in a container, the runtime also reaps orphaned zombies it did not start itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import IO

from .errors import Interrupted

log = logging.getLogger("runtime")

SLICE = 0.1  # seconds: how quickly a sleep notices a signal


class Signals:
    """SIGTERM/SIGINT, recorded. `sleep` returns early (True) once one has arrived."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.received: list[int] = []
        self._clock = clock

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def hurry(self) -> bool:
        """A second signal: stop without waiting for graceful exits."""
        return len(self.received) > 1

    def interrupted(self) -> Interrupted:
        signum = self.received[0] if self.received else signal.SIGTERM
        return Interrupted(signum, signal.Signals(signum).name)

    def check(self) -> None:
        if self.received:
            raise self.interrupted()

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as a signal has arrived."""
        deadline = self._clock() + seconds
        while not self.received:
            left = deadline - self._clock()
            if left <= 0:
                return False
            time.sleep(min(SLICE, left))
        return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM this child when the runtime dies (prctl PR_SET_PDEATHSIG), so nothing is left behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


class Child:
    """One supervised process (and its process group).

    `env` None: this process's environment. `stdout_to_stderr`: the child's stdout goes to our stderr (stdout
    stays free for what the caller prints). `pipe_stderr`: the child's stderr is a pipe (`stderr`) that the
    caller must read to the end, or the child blocks once it is full.

    Start it from a thread that lives as long as the child should: on Linux the child gets SIGTERM when the
    thread that started it ends (PR_SET_PDEATHSIG)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        stdout_to_stderr: bool = False,
        pipe_stderr: bool = False,
    ):
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.stdout_to_stderr = stdout_to_stderr
        self.pipe_stderr = pipe_stderr
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def stderr(self) -> IO[bytes] | None:
        """The read end of the child's stderr with `pipe_stderr`, else None."""
        return self.proc.stderr if self.proc is not None else None

    def start(self) -> None:
        """Raises OSError (FileNotFoundError, PermissionError) when the program cannot be started."""
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno() if self.stdout_to_stderr else None,
            stderr=subprocess.PIPE if self.pipe_stderr else None,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        log.debug("started %s (pid %d)", self.name, self.proc.pid)

    def wait(self) -> int:
        """Block until the child has exited; its exit code."""
        assert self.proc is not None
        return self.proc.wait()

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def _killpg(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float, signals: Signals | None = None) -> int | None:
        """SIGTERM, up to `grace` seconds (less after a second signal), then SIGKILL of the whole group. Returns the
        exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            log.info("stopping %s (pid %d): SIGTERM, up to %gs before SIGKILL", self.name, self.proc.pid, grace)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.proc.poll() is None and time.monotonic() < deadline:
                if signals is not None and signals.hurry:
                    break
                time.sleep(SLICE)
            if self.proc.poll() is None:
                log.warning("%s did not stop within %gs: SIGKILL to its process group", self.name, grace)
        # Whatever is left of the group (daemons the command started) goes too.
        self._killpg(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process in uninterruptible sleep
            log.error("%s (pid %d) did not die after SIGKILL", self.name, self.proc.pid)
        return self.proc.returncode


def stop_together(children: Sequence[Child], grace: float, signals: Signals | None = None) -> None:
    """After a failure: SIGTERM to every child at once (in the given order), one shared grace period, then SIGKILL
    of whatever is left. Bounded by `grace`, however many children are stuck."""
    running = [c for c in children if c.proc is not None and c.proc.poll() is None]
    for child in running:
        assert child.proc is not None
        log.info("stopping %s (pid %d): SIGTERM", child.name, child.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(c.proc is not None and c.proc.poll() is None for c in running) and time.monotonic() < deadline:
        if signals is not None and signals.hurry:
            break
        time.sleep(SLICE)
    for child in children:
        child.stop(0.0, signals)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def raise_open_files_limit(want: int = 65536) -> None:
    """Ray and vLLM open many sockets and files: lift the soft limit towards the hard one (as KubeRay's
    `ulimit -n 65536` does), never above it."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass


def reap_orphans(own: set[int]) -> None:
    """As PID 1 (a container's init), collect zombies re-parented to us that are not our own children (those are
    Popen's to wait for). Elsewhere the real init does this, and this does nothing."""
    if os.getpid() != 1:
        return
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit() or int(entry) in own:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 2 and fields[0] == "Z" and fields[1] == "1":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)
