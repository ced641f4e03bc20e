"""Live counters of a download, and the reporter that turns them into progress.json and stderr output."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .layout import Phase, Progress
from .state import StateDir

# The rate, and so the ETA, is measured over about the last RATE_WINDOW seconds of bytes arriving, and not given
# before bytes have been arriving for RATE_MIN_SPAN seconds: the first GETs' latency is not a rate (an ETA of
# 29544h at the start was its only effect).
RATE_WINDOW = 10.0
RATE_MIN_SPAN = 2.0
# Where the terminal's width cannot be read (the stream is not a terminal any more, a pipe in a test).
DEFAULT_COLUMNS = 80


@dataclass(frozen=True)
class Counters:
    """What one process's transfer engine has counted so far (a worker's share, sent to the coordinator that
    reports the whole download: Stats.counters, Stats.absorb)."""

    bytes_done: int = 0
    bytes_fetched: int = 0
    files_done: int = 0
    retries: int = 0
    object_changes: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    active: dict[str, tuple[int, int]] = field(default_factory=dict)  # rel_path -> (size, bytes done)


class Stats:
    """Thread-safe counters updated by the transfer engine. `clock` gives the seconds rates are measured in."""

    def __init__(self, source: str, model_dir: str, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.phase = Phase.PENDING
        self.source = source
        self.model_dir = model_dir
        self.started_at = clock()
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
        self.cooperation: Callable[[], dict[str, Any]] | None = None  # a cooperative download's report
        self._absorbed: dict[int, Counters] = {}  # each worker process's counters as last absorbed

    def set_phase(self, phase: Phase) -> None:
        with self._lock:
            self.phase = phase
            self.phase_started.setdefault(phase.value, self._clock())

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
            self.phase_started.setdefault(Phase.FAILED.value, self._clock())
            self.last_error = message

    def counters(self) -> Counters:
        """This process's counters, for the coordinator of a download in several processes."""
        with self._lock:
            return Counters(
                self.bytes_done,
                self.bytes_fetched,
                self.files_done,
                self.retries,
                self.object_changes,
                dict(self.errors_by_kind),
                self.last_error,
                {k: (v[0], v[1]) for k, v in self.active.items()},
            )

    def absorb(self, worker: int, now: Counters) -> None:
        """A worker process's counters (cumulative, from its own Stats.counters): what changed since the last ones
        it sent is added here, so that progress.json and the rate cover every process."""
        with self._lock:
            was = self._absorbed.get(worker, Counters())
            self._absorbed[worker] = now
            self.bytes_done += now.bytes_done - was.bytes_done
            self.bytes_fetched += now.bytes_fetched - was.bytes_fetched
            self.files_done += now.files_done - was.files_done
            self.retries += now.retries - was.retries
            self.object_changes += now.object_changes - was.object_changes
            for kind, n in now.errors_by_kind.items():
                self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + n - was.errors_by_kind.get(kind, 0)
            if now.last_error is not None and now.last_error != was.last_error:
                self.last_error = now.last_error
            for rel_path in was.active:
                self.active.pop(rel_path, None)
            for rel_path, (size, done) in now.active.items():
                self.active[rel_path] = [size, done]

    def snapshot(self) -> Progress:
        now = self._clock()
        with self._lock:
            # Samples start with the first byte: the time before it (listing, HEADs, the first GETs' latency) would
            # make the first rates tiny and the first ETAs absurd.
            if self.bytes_fetched > 0 or self._samples:
                self._samples.append((now, self.bytes_fetched))
            rate = 0.0
            eta = None
            if self._samples and now - self._samples[0][0] >= RATE_MIN_SPAN:
                old = next((s for s in self._samples if now - s[0] <= RATE_WINDOW), self._samples[-1])
                if now - old[0] >= RATE_MIN_SPAN / 2:
                    rate = (self.bytes_fetched - old[1]) / (now - old[0])
                if rate > 0:
                    eta = max(0, self.bytes_total - self.bytes_done) / rate
            # A file counts as done once all its bytes are in and the engine has not started it over: small files
            # get their names in batches a moment later, and "100 %, files 0/10" was the result.
            received = sum(1 for size, done in self.active.values() if done >= size)
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
                files_done=min(self.files_total, self.files_done + received),
                rate_bps=rate,
                eta_seconds=eta,
                retries=self.retries,
                errors_by_kind=dict(self.errors_by_kind),
                object_changes=self.object_changes,
                last_error=self.last_error,
                active_files={k: {"size": v[0], "done": v[1]} for k, v in self.active.items()},
                phase_started=dict(self.phase_started),
                cooperation=self.cooperation() if self.cooperation is not None else None,
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
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _fields(p: Progress) -> list[str]:
    """What a progress report says, most important first: a narrow terminal drops fields from the end."""
    pct = 100.0 * p.bytes_done / p.bytes_total if p.bytes_total else 100.0
    fields = [f"{pct:5.1f}%", f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)}"]
    fields.append(f"files {p.files_done}/{p.files_total}")
    if p.eta_seconds is not None:
        fields += [f"{human_bytes(p.rate_bps)}/s", f"ETA {human_seconds(p.eta_seconds)}"]
    if p.retries:
        fields.append(f"retries {p.retries}")
    return fields


def progress_line(p: Progress) -> str:
    """One line of the non-terminal report (logs): every field."""
    return f"{p.phase}: " + " ".join(_fields(p))


def bar_line(p: Progress, columns: int) -> str:
    """The terminal report: a bar and as many fields as fit in `columns` - 1 characters, so that the line never
    wraps (a wrapped line cannot be redrawn in place: each redraw would leave the previous one behind)."""
    room = max(1, columns - 1)
    fields = _fields(p)
    while True:
        text = " ".join(fields)
        width = min(30, room - len(text) - 3)  # "[" + bar + "] "
        if width >= 10 or len(fields) == 1:
            break
        fields.pop()
    if width < 10:
        return text[:room]
    frac = p.bytes_done / p.bytes_total if p.bytes_total else 1.0
    filled = min(width, int(frac * width))
    return f"[{'#' * filled}{'-' * (width - filled)}] {text}"[:room]


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
        self._drawn = False  # a bar is on the terminal's current line
        self._draw_lock = threading.Lock()
        self._log_guard: _ClearBarFirst | None = None

    def attach(self, state: StateDir) -> None:
        self.state = state

    def start(self) -> None:
        if self.mode == "bar":
            # A log line written while the bar is drawn would be appended to it; clear the bar first.
            self._log_guard = _ClearBarFirst(self)
            for handler in logging.getLogger().handlers:
                handler.addFilter(self._log_guard)
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    def clear_bar(self) -> None:
        with self._draw_lock:
            if self._drawn:
                with contextlib.suppress(OSError, ValueError):
                    self.stream.write("\r\x1b[K")
                    self.stream.flush()
                self._drawn = False

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or DEFAULT_COLUMNS
        except (OSError, ValueError, AttributeError):
            return DEFAULT_COLUMNS

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
            line = bar_line(p, self._columns())
            with self._draw_lock, contextlib.suppress(OSError, ValueError):
                # Back to the start of the line, the bar, then erase whatever a longer previous line left after it.
                self.stream.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
                self.stream.flush()
                self._drawn = not final
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
        self.clear_bar()
        if self._log_guard is not None:
            for handler in logging.getLogger().handlers:
                handler.removeFilter(self._log_guard)
            self._log_guard = None


class _ClearBarFirst(logging.Filter):
    """Lets every record through, clearing the progress bar off the terminal line first."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__()
        self._reporter = reporter

    def filter(self, record: logging.LogRecord) -> bool:
        self._reporter.clear_bar()
        return True
