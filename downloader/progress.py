"""Live counters of a download, and the reporter that turns them into progress.json and stderr output."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections import deque
from typing import TextIO

from .state import Phase, Progress, StateDir


class Stats:
    """Thread-safe counters updated by the transfer engine."""

    def __init__(self, source: str, model_dir: str) -> None:
        self._lock = threading.Lock()
        self.phase = Phase.PENDING
        self.source = source
        self.model_dir = model_dir
        self.started_at = time.time()
        self.phase_started: dict[str, float] = {}
        self.bytes_total = 0
        self.bytes_done = 0
        self.bytes_fetched = 0
        self.files_total = 0
        self.files_done = 0
        self.retries = 0
        self.errors_by_kind: dict[str, int] = {}
        self.object_changes = 0
        self.last_error: str | None = None
        self.active: dict[str, list[int]] = {}
        self._samples: deque[tuple[float, int]] = deque(maxlen=64)

    def set_phase(self, phase: Phase) -> None:
        with self._lock:
            self.phase = phase
            self.phase_started.setdefault(phase.value, time.time())

    def set_totals(self, bytes_total: int, files_total: int, bytes_done: int, files_done: int) -> None:
        with self._lock:
            self.bytes_total = bytes_total
            self.files_total = files_total
            self.bytes_done = bytes_done
            self.files_done = files_done

    def file_started(self, rel_path: str, size: int, already: int) -> None:
        with self._lock:
            self.active[rel_path] = [size, already]
            self.bytes_done += already

    def add_bytes(self, rel_path: str, n: int) -> None:
        with self._lock:
            self.bytes_done += n
            self.bytes_fetched += n
            entry = self.active.get(rel_path)
            if entry is not None:
                entry[1] += n

    def file_reset(self, rel_path: str) -> None:
        """The file starts over (object changed, or a checksum failed): its bytes no longer count."""
        with self._lock:
            entry = self.active.get(rel_path)
            if entry is not None:
                self.bytes_done -= entry[1]
                entry[1] = 0

    def file_done(self, rel_path: str) -> None:
        with self._lock:
            self.active.pop(rel_path, None)
            self.files_done += 1

    def retry(self, kind: str, message: str) -> None:
        with self._lock:
            self.retries += 1
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
            self.last_error = message

    def object_changed(self, message: str) -> None:
        with self._lock:
            self.object_changes += 1
            self.errors_by_kind["object-changed"] = self.errors_by_kind.get("object-changed", 0) + 1
            self.last_error = message

    def failed(self, message: str) -> None:
        with self._lock:
            self.phase = Phase.FAILED
            self.phase_started.setdefault(Phase.FAILED.value, time.time())
            self.last_error = message

    def snapshot(self) -> Progress:
        now = time.time()
        with self._lock:
            self._samples.append((now, self.bytes_fetched))
            rate = 0.0
            # rate over roughly the last 10 seconds
            old = next((s for s in self._samples if now - s[0] <= 10.0), self._samples[0])
            if now - old[0] > 0.2:
                rate = (self.bytes_fetched - old[1]) / (now - old[0])
            remaining = max(0, self.bytes_total - self.bytes_done)
            eta = remaining / rate if rate > 0 else None
            return Progress(
                phase=self.phase.value,
                source=self.source,
                model_dir=self.model_dir,
                pid=os.getpid(),
                host=socket.gethostname(),
                started_at=self.started_at,
                updated_at=now,
                bytes_total=self.bytes_total,
                bytes_done=self.bytes_done,
                bytes_fetched=self.bytes_fetched,
                files_total=self.files_total,
                files_done=self.files_done,
                rate_bps=rate,
                eta_seconds=eta,
                retries=self.retries,
                errors_by_kind=dict(self.errors_by_kind),
                object_changes=self.object_changes,
                last_error=self.last_error,
                active_files={k: {"size": v[0], "done": v[1]} for k, v in self.active.items()},
                phase_started=dict(self.phase_started),
            )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_line(p: Progress) -> str:
    pct = 100.0 * p.bytes_done / p.bytes_total if p.bytes_total else 100.0
    return (
        f"{p.phase}: {pct:5.1f}% {human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)} "
        f"files {p.files_done}/{p.files_total} {human_bytes(p.rate_bps)}/s ETA {human_seconds(p.eta_seconds)}"
        + (f" retries {p.retries}" if p.retries else "")
    )


class Reporter:
    """Writes progress.json about once a second and progress to stderr (a bar on a TTY, lines otherwise)."""

    def __init__(self, stats: Stats, mode: str, interval: float, stream: TextIO | None = None) -> None:
        self.stats = stats
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        self.mode = mode
        self.interval = interval
        self.state: StateDir | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_line = 0.0

    def attach(self, state: StateDir) -> None:
        self.state = state

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.tick()

    def tick(self, final: bool = False) -> None:
        p = self.stats.snapshot()
        if self.state is not None:
            self.state.write_progress(p)
        now = time.monotonic()
        if p.phase not in ("downloading", "verifying") and not final:
            return
        if self.mode == "bar":
            width = 30
            frac = p.bytes_done / p.bytes_total if p.bytes_total else 1.0
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            with contextlib.suppress(OSError, ValueError):
                self.stream.write(f"\r[{bar}] {progress_line(p)}\x1b[K" + ("\n" if final else ""))
                self.stream.flush()
        elif self.mode == "lines" and (final or now - self._last_line >= self.interval):
            self._last_line = now
            with contextlib.suppress(OSError, ValueError):
                self.stream.write(progress_line(p) + "\n")
                self.stream.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.tick(final=self.mode != "none" and self.stats.phase in ("downloading", "verifying", "ready"))
