"""One download under a GIL sampler: wall time, the process's CPU (user + sys, from wait4) and the seconds some
thread of it held the GIL (py-spy's --gil samples x the sampling interval), with the frames that held it most.

py-spy attaches to the running process (--pid) and reads, without pausing it (--nonblocking: a paused process would
take longer and change what is measured), whether the GIL is locked and which thread state last took it (CPython
3.11's _PyRuntime.ceval.gil). --gil keeps only the samples of that thread; --idle keeps them also when the holder
is not on a CPU (a thread blocked while holding the GIL holds up every other thread all the same). Each kept sample
counts one interval.

Errors: sampling (a count of n samples is off by about sqrt(n)); a holder the kernel has preempted still counts, so
on a busy machine the count is high, not low: the download runs at a real-time priority (TARGET_FIFO), above the
machine's other processes, and py-spy above it, so that its samples come on time. ``calibrate`` measures the whole
method against a known GIL-held time (a thread's own CPU clock) on the same machine at the same time.

py-spy's --rate takes whole samples per second: a fractional rate is refused (exit code 2, a usage error), which
an earlier version of this module passed and then read as "no samples"."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..harness.common import VENV

PY_SPY = VENV / "bin" / "py-spy"
# Real-time priorities (SCHED_FIFO): a thread holding the GIL is not preempted by the machine's other processes (the
# server, other tenants), so a sample that finds it holding the GIL finds it on a CPU; py-spy, one level higher,
# takes its samples on time whatever the download does.
TARGET_FIFO = ["chrt", "--fifo", "10"]
SAMPLER_FIFO = ["chrt", "--fifo", "20"]
# --subprocesses: a download with --workers is a coordinator and its worker processes, each with a GIL of its own;
# a raw stack then starts with the process (`process PID:"command line";`), so each process's samples are counted
# apart (Sample.gil_by_role).
SPY_FLAGS = ["--gil", "--idle", "--nonblocking"]
DOWNLOAD_FLAGS = [*SPY_FLAGS, "--subprocesses"]
_COUNT = re.compile(r"\s(\d+)$")
_PROCESS = re.compile(r'process (\d+):"((?:[^"\\]|\\.)*)";?')
_IMPORTING = "(<frozen importlib._bootstrap"  # a frame of the import machinery
# The coordinator's work per second rather than per byte: progress.json twice a second, the workers' counters four
# times a second each. It costs per GiB what it costs per second times the seconds a GiB takes, many more on this
# machine than at the rates the ceiling is about, so it is counted apart (Sample.coordinator_periodic_gil_s).
_PERIODIC = ("Reporter._run (", "Stats.absorb (")
_PROCESSES = re.compile(r'((?:process \d+:"(?:[^"\\]|\\.)*";?)*)')
_FRAME = re.compile(r"^(.*?) \(([^:()]*)(?::\d+)?\)$")


@dataclass
class Sample:
    argv: list[str]
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    rate_hz: float
    gil_samples: int
    top_frames: list[tuple[str, int]] = field(default_factory=list)  # innermost Python frame -> samples
    stderr_tail: str = ""
    model_bytes: int = 0
    # samples per role, imports left out: "coordinator" (the process started; "coordinator-periodic" its work per
    # second), "worker" (its fetching processes, summed), "other"
    gil_by_role: dict[str, int] = field(default_factory=dict)
    gil_by_worker: dict[int, int] = field(default_factory=dict)  # samples of each worker process (by pid)

    @property
    def workers_seen(self) -> int:
        """Worker processes that held their GIL in some sample."""
        return len(self.gil_by_worker)

    @property
    def busiest_worker_gil_s(self) -> float:
        """The GIL-held seconds of the worker that held its GIL longest: the shares are of equal bytes, so this
        worker bounds the rate (and a worker the sampler missed cannot make the bound look better than it is)."""
        return max(self.gil_by_worker.values(), default=0) / self.rate_hz

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def gil_s(self) -> float:
        return self.gil_samples / self.rate_hz

    @property
    def coordinator_gil_s(self) -> float:
        return self.gil_by_role.get("coordinator", 0) / self.rate_hz

    @property
    def coordinator_periodic_gil_s(self) -> float:
        return self.gil_by_role.get("coordinator-periodic", 0) / self.rate_hz

    @property
    def workers_gil_s(self) -> float:
        return self.gil_by_role.get("worker", 0) / self.rate_hz


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-1500:] if path.exists() else f"({path} not written)"


def _split(stack: str) -> tuple[list[tuple[int, str]], str]:
    """A raw py-spy stack's processes ((pid, command line), outermost first; --subprocesses) and its frames. A
    command line is quoted and may hold ';', '(' and ':' (a spawned worker's `-c "...; spawn_main(...)"`)."""
    m = _PROCESSES.match(stack)
    assert m is not None  # the pattern matches any text, with no processes at the least
    found = [(int(pid), command) for pid, command in _PROCESS.findall(m.group(1))]
    return found, stack[m.end() :]


def _leaf(frames_text: str) -> str:
    """The innermost Python function of a raw stack's frames ("thread;outer (file:line);...;inner (file:line)")."""
    frames = [f for f in frames_text.split(";") if "(" in f and not f.startswith("thread ")]
    if not frames:
        return "?"
    m = _FRAME.match(frames[-1].strip())
    return f"{m.group(1)} ({Path(m.group(2)).name})" if m else frames[-1]


def _role(processes: list[tuple[int, str]], root_pid: int) -> str:
    """The role of the process a stack was sampled in (the innermost of its processes)."""
    if not processes or processes[-1][0] == root_pid:
        return "coordinator"  # (parse_raw tells its periodic work apart)
    # Any other process but multiprocessing's resource tracker is a worker: py-spy may have read a worker's command
    # line between its fork and its exec, when it was still the coordinator's.
    return "other" if "resource_tracker" in processes[-1][1] else "worker"


def parse_raw(text: str, root_pid: int = 0) -> tuple[int, list[tuple[str, int]], dict[str, int], dict[int, int]]:
    """(samples, the 12 innermost frames with the most samples, samples per role, samples per worker process) of
    py-spy's raw (collapsed stacks) output."""
    total = 0
    leaves: collections.Counter[str] = collections.Counter()
    roles: collections.Counter[str] = collections.Counter()
    workers: collections.Counter[int] = collections.Counter()
    for line in text.splitlines():
        m = _COUNT.search(line)
        if not m:
            continue
        n = int(m.group(1))
        total += n
        processes, frames = _split(line[: m.start()])
        leaves[_leaf(frames)] += n
        if _IMPORTING in frames:
            # A process's start, not its work per GiB: each worker imports its modules (~0.3 s of GIL, which on
            # a 2-core machine shared by five processes varies by more than a GiB's work). Counted in the total,
            # left out of the roles: their slopes between the two sizes are then not at the mercy of it.
            continue
        role = _role(processes, root_pid)
        if role == "coordinator" and any(f in frames for f in _PERIODIC):
            role = "coordinator-periodic"
        roles[role] += n
        if role == "worker":
            workers[processes[-1][0]] += n
    return total, leaves.most_common(12), dict(roles), dict(workers)


def attach(
    proc: subprocess.Popen[bytes], rate_hz: float, raw: Path, flags: list[str] = SPY_FLAGS
) -> subprocess.Popen[bytes]:
    """py-spy recording `proc`'s GIL holder into `raw`; tried again until the interpreter is far enough into its
    start for py-spy to find it (a few tens of milliseconds)."""
    while True:
        rate = str(round(rate_hz))
        spy = subprocess.Popen(
            [
                *SAMPLER_FIFO,
                str(PY_SPY),
                "record",
                "--pid",
                str(proc.pid),
                *flags,
                "--rate",
                rate,
                "-f",
                "raw",
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(raw.with_suffix(".log"), "ab"),  # noqa: SIM115 - the child holds it
        )
        try:
            code = spy.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
            return spy  # sampling
        if code == 2:  # a usage error (clap's exit code): trying again will not help
            raise SystemExit(f"py-spy refused its arguments: {_tail(raw.with_suffix('.log'))}")
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:  # it has ended
            return spy
        time.sleep(0.02)


def run_sampled(argv: list[str], env: dict[str, str], rate_hz: float, scratch: Path, *, idle: bool = True) -> Sample:
    """Run `argv` to its end with py-spy sampling its GIL holder `rate_hz` times a second. `idle=False` keeps only
    the samples whose holder was on a CPU: where more processes than cores take turns (workers on a small machine),
    a holder the kernel preempted is not doing the GIL's work, and --idle would count it all the same."""
    raw = scratch / "pyspy.txt"
    raw.unlink(missing_ok=True)
    err_path = scratch / "stderr.txt"
    with open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*TARGET_FIFO, *argv], env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
        spy = attach(proc, rate_hz, raw, DOWNLOAD_FLAGS if idle else [f for f in DOWNLOAD_FLAGS if f != "--idle"])
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        spy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    text = raw.read_text(errors="replace") if raw.exists() else ""
    samples, top, roles, workers = parse_raw(text, proc.pid)
    return Sample(
        argv,
        proc.returncode,
        wall,
        usage.ru_utime,
        usage.ru_stime,
        rate_hz,
        samples,
        top,
        err_path.read_text(errors="replace")[-1500:],
        gil_by_role=roles,
        gil_by_worker=workers,
    )


# A known GIL-held time: one thread alternates BUSY_MS of pure Python (holding the GIL) with sleeps (not holding
# it) and reports its own CPU time; another thread hashes in C with the GIL released, as a download's socket reads
# and writes do. py-spy's estimate of the first against the thread's own CPU clock is the method's error.
_CALIBRATION = """
import hashlib, sys, threading, time
seconds, busy_ms = float(sys.argv[1]), float(sys.argv[2])
stop = threading.Event()
def free():
    data = bytes(8 << 20)
    while not stop.is_set():
        hashlib.sha256(data).digest()
threading.Thread(target=free, daemon=True).start()
time.sleep(0.5)  # py-spy attaches
t0 = time.thread_time()
end = time.monotonic() + seconds
while time.monotonic() < end:
    until = time.thread_time() + busy_ms / 1000
    while time.thread_time() < until:
        pass
    time.sleep(busy_ms / 1000)
print(time.thread_time() - t0, flush=True)
stop.set()
"""


def calibrate(rate_hz: float, scratch: Path, seconds: float = 6.0, busy_ms: float = 2.0) -> dict[str, float]:
    """py-spy's GIL-held estimate against a thread's own CPU time, with a GIL-free thread beside it."""
    out = scratch / "calibration.out"
    with open(out, "wb") as fh:
        argv = [*TARGET_FIFO, sys.executable, "-c", _CALIBRATION, str(seconds), str(busy_ms)]
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.DEVNULL)
        raw = scratch / "calibration.txt"
        spy = attach(proc, rate_hz, raw)
        proc.wait()
        spy.wait(timeout=30)
    true_s = float(out.read_text().split()[0])
    samples = parse_raw(raw.read_text(errors="replace"))[0] if raw.exists() else 0
    if samples == 0:
        raise SystemExit(f"py-spy sampled no GIL holder in the calibration: {_tail(raw.with_suffix('.log'))}")
    # The busy thread's sampled share; the 0.5 s before it starts holds the GIL only for a few imports.
    estimate = samples / rate_hz
    return {"true_gil_s": true_s, "sampled_gil_s": estimate, "error": estimate / true_s - 1, "samples": samples}
