"""How many GETs the engine keeps in flight: a fixed count, or (the default) as many as the path rewards.

An object store gives each connection a rate of its own (85-90 MB/s on S3) after 100-200 ms to the first byte, so
a node's line rate needs as many GETs in flight as the line rate divided by that; a fixed count is too few on a
fast node and too many on a slow path or a store that throttles (503 SlowDown, 429), where every extra GET is a
buffer of memory and a retry. In `auto` mode the engine's workers pass a gate (`ConnectionGate`) before each
request, and the gate's limit follows the aggregate rate measured over windows of WINDOW_S:

- it doubles while each step raises the rate by a fair share of what the step could give (slow start), then
  holds the last setting that helped;
- every HOLD_WINDOWS it tries a step up (x PROBE_UP), later a step down (x PROBE_DOWN), and keeps the step when the
  rate rose (up) or did not fall (down): the count follows a path that changes, and comes down when more
  connections stopped helping; a step down that was refused doubles the wait before the next (MAX_DOWN_BACKOFF);
- a throttled answer cuts it (x THROTTLE_CUT) at once, at most once a window, and holds it there longer;
- no step up is taken while the CPUs the process may use had less spare time in the window than the step would need
  (SPARE_CPU): a faster download costs the process CPU in proportion to its rate, so with the CPUs busy (on a store
  over loopback, the store's work shares them) more requests cannot raise the rate a step is judged on, and cost CPU
  of their own. The step is then counted as one that did not pay.

A window counts only when the limit bound in it (every permit was taken, or a worker had a request waiting for
the gate; at the cap no worker waits, as there are no more workers than permits): near the end of a download, or
on a model of few ranges, the rate says nothing about the limit. The first window after a change is not measured
(the new GETs are still waiting for their first bytes), and a step is judged on the mean of the next
MEASURE_WINDOWS (on a busy 2-core machine one window's rate varied by more than a step could change it); the first
setting, stepped up from whatever it measures, takes one window of FIRST_WINDOW_S from the first byte.
`--num-threads` caps the limit, and in auto mode so does AUTO_BUFFER_BUDGET, through the worker count (one buffer
per request in flight). Buffers go with permits (`BufferPool`): a worker takes one after its permit and gives it back
before the permit, so no more buffers are ever touched than requests were in flight at once; were each worker to own
one, the waiting workers would take turns through the gate and touch every buffer in time. In `fixed` mode the gate
never binds: the worker count is the number in flight, as before.
"""

from __future__ import annotations

import enum
import logging
import math
import mmap
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .resources import CpuTimes, spare_cpus

log = logging.getLogger(__name__)

# --num-threads when not given: the most requests in flight in auto mode (128 x the 1 MiB buffer: 128 MiB at most,
# used only where the path rewards that many; 11 GB/s at S3's ~85 MB/s per connection needs ~130), and the count in
# fixed mode (what it has always been).
AUTO_MAX_REQUESTS = 128
FIXED_REQUESTS = 32
# Requests in flight before anything is measured: what fixed mode keeps, so that auto starts where AIBrix's default
# does and moves only on a measured gain (or a throttled answer). Starting at 8 cost a small-file download on
# loopback ~5 % of its wall time (the seconds of slow start are a large share of a short download) and a 6 GiB
# download behind an emulated network a fifth of its rate over the whole run (BENCHMARKS.md, "Connections").
START = FIXED_REQUESTS
# In auto mode the request buffers in flight stay within this many bytes, whatever --num-threads: 80 at the default
# 1 MiB --buffer-size, which with the ~44 MiB the process needs besides keeps its peak RSS within 128 MiB. A fixed
# count is the user's choice and is not cut.
AUTO_BUFFER_BUDGET = 80 * 1024 * 1024
# Processes that fetch (--workers, downloader/workers.py). One interpreter holds its GIL for part of every GiB it
# takes in (BENCHMARKS.md, "The ceiling"), so one process tops out at a few GB/s however many cores the node has.
# auto: one worker per CPUS_PER_WORKER CPUs the process may use (a worker near its ceiling keeps about that many
# busy: its GIL-holding thread, the client's native threads, the kernel's copies), at most AUTO_WORKERS_MAX, and one
# process below AUTO_WORKERS_MIN_BYTES to fetch (a worker's start, a fresh interpreter and its clients, is worth
# it only where the download takes seconds at a node's rate).
MAX_WORKERS = 64
CPUS_PER_WORKER = 4
AUTO_WORKERS_MAX = 8
AUTO_WORKERS_MIN_BYTES = 4 * 1024**3
WINDOW_S = 1.0
# The first setting's window: it opens at the first byte (before it the GETs wait for their first bytes, 100-200 ms
# on an object store, which says nothing of the rate) and is shorter, since the first setting is stepped up from
# whatever it measures and its rate is only the mark the step is judged against: behind the emulated link a second
# at 32 where 64 were needed was the largest part of the whole run's shortfall (BENCHMARKS.md, "Connections").
FIRST_WINDOW_S = 0.5
MEASURE_WINDOWS = 2  # a step is judged on the mean of this many windows: one window's rate is noisy on a busy node
SLOW_START_FACTOR = 2.0
PROBE_UP = 1.25
PROBE_DOWN = 0.8
THROTTLE_CUT = 0.7
HOLD_WINDOWS = 6  # windows at a setting before the next probe
# A probe down that was refused (fewer were slower) costs a dip in the rate each time; where the path is steady it is
# refused again and again: the wait before the next probe down doubles with each refusal, up to this many doublings
# (probes up keep their pace: they cost nothing where more do not help, and find capacity that comes back).
MAX_DOWN_BACKOFF = 3
THROTTLE_HOLD_WINDOWS = 12
# A step up is kept when the rate rose by at least this share of the proportional gain (doubling the connections
# can at most double the rate), and by at least MIN_GAIN; a step down is kept when the rate fell by less than
# MIN_GAIN. Below MIN_GAIN a window's rate is noise (other processes, the disk's writeback).
GAIN_SHARE = 0.25
MIN_GAIN = 0.05
# A step up is taken only when the windows that decide it left at least this share of the process's own CPU use
# times the gain the step must bring (GAIN_SHARE, MIN_GAIN) idle on the CPUs it may use: 1.0 is the CPU the higher
# rate would cost at the CPU per byte measured. On a 2-core VM with the store on loopback, 0-0.1 CPUs sat idle
# while the process used ~1 at 32 requests in flight, and the step to 64 cost 16 % more CPU per GiB for no gain
# (BENCHMARKS.md, "Connections" 2.3).
SPARE_CPU = 1.0


class ConnectionsMode(str, enum.Enum):
    """--connections: how many GETs are in flight."""

    AUTO = "auto"  # as many as raise the aggregate rate, up to --num-threads; fewer on throttling
    FIXED = "fixed"  # --num-threads, always


class Phase(str, enum.Enum):
    SLOW_START = "slow start"
    HOLD = "hold"
    PROBE_UP = "probe up"
    PROBE_DOWN = "probe down"


@dataclass(frozen=True)
class Change:
    """One change of the limit: when (seconds since the gate started), to what, the rate that decided, why."""

    at: float
    limit: int
    rate: float  # bytes per second in the window that decided
    reason: str


class ConnectionGate:
    """Permits for requests in flight; in auto mode their number follows the measured aggregate rate."""

    def __init__(
        self,
        cap: int,
        mode: ConnectionsMode,
        *,
        start: int = START,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], CpuTimes | None] | None = None,
    ) -> None:
        """`cpu` reads the CPU times (resources.CpuMeter) that a step up needs spare; without it, steps up are judged
        on the rate alone."""
        self.cap = max(1, cap)
        self.mode = mode
        self._clock = clock
        self._cpu = cpu
        self._cpu0: CpuTimes | None = None  # the CPU times when the current window opened
        # (spare CPUs, CPUs the process used) in the last windows measured at this setting
        self._cpu_use: deque[tuple[float, float]] = deque(maxlen=MEASURE_WINDOWS)
        self.steps_without_cpu = 0  # steps up not taken for want of spare CPU
        self._cv = threading.Condition()
        self._in_use = 0
        self._bound = False  # a request waited for a permit in this window
        self._throttled = False
        self.limit = self.cap if mode is ConnectionsMode.FIXED else min(self.cap, max(1, start))
        self.changes: list[Change] = []
        self.phase = Phase.SLOW_START
        self._t0: float | None = None  # the current window's start; None until the first byte
        self._origin = clock()
        self._bytes0 = 0  # bytes received when the current window opened
        self._skip = 0  # windows not to measure (the first after a change)
        self._rates: list[float] = []  # rates of the windows measured since the last decision
        self._held = 0  # windows measured at this setting in HOLD
        self._held_rate = 0.0  # their mean rate
        self._before: tuple[int, float] = (self.limit, 0.0)  # (limit, rate) before the step being measured
        self._next_probe = Phase.PROBE_UP
        self._downs_refused = 0  # probes down refused in a row (MAX_DOWN_BACKOFF)
        self._last_cut = -math.inf

    # ------------------------------------------------------------------------------------------ permits
    def acquire(self, stop: threading.Event) -> bool:
        """Wait for a permit; False when `stop` is set first."""
        with self._cv:
            while self._in_use >= self.limit:
                self._bound = True
                if stop.is_set():
                    return False
                self._cv.wait(0.2)
            if stop.is_set():
                return False
            self._in_use += 1
            if self._in_use >= self.limit:
                self._bound = True  # every permit taken: at the cap no one waits, yet the limit is what binds
            return True

    def release(self) -> None:
        with self._cv:
            self._in_use -= 1
            self._cv.notify()

    def wake(self) -> None:
        """Let every waiter look at its stop event now."""
        with self._cv:
            self._cv.notify_all()

    @property
    def in_use(self) -> int:
        with self._cv:
            return self._in_use

    # ----------------------------------------------------------------------------------------- feedback
    def throttled(self) -> None:
        """The store answered 503 SlowDown or 429: fewer requests, at the next observation."""
        if self.mode is ConnectionsMode.AUTO:
            with self._cv:
                self._throttled = True

    def observe(self, received: int) -> Change | None:
        """Called often (a few times a second) with the bytes received so far; the change it made, if any."""
        if self.mode is ConnectionsMode.FIXED:
            return None
        now = self._clock()
        with self._cv:
            throttled, self._throttled = self._throttled, False
        if throttled and now - self._last_cut >= WINDOW_S:
            # (throttled answers within a window of the last cut answer requests sent before it)
            self._last_cut = now
            self._open(now, received)
            self._bound = False
            return self._throttle(now)
        if self._t0 is None:
            if received > self._bytes0:  # the first bytes: the first window opens
                self._open(now, received)
            return None
        first = self.phase is Phase.SLOW_START and not self.changes
        if now - self._t0 < (FIRST_WINDOW_S if first else WINDOW_S):
            return None
        rate = (received - self._bytes0) / (now - self._t0)
        with self._cv:
            bound, self._bound = self._bound, False
        cpu0 = self._cpu0
        self._open(now, received)
        if self._skip:
            self._skip -= 1
            return None
        if not bound:
            return None
        self._rates.append(rate)
        if cpu0 is not None and self._cpu0 is not None:
            self._cpu_use.append(spare_cpus(cpu0, self._cpu0))
        # The first setting has nothing to be compared with and is always stepped up from: one window measures it.
        if self.phase is not Phase.HOLD and len(self._rates) < (1 if first else MEASURE_WINDOWS):
            return None
        rate = sum(self._rates) / len(self._rates)
        self._rates.clear()
        return self._decide(now, rate)

    def _open(self, now: float, received: int) -> None:
        """A window opens: what it is measured from."""
        self._t0, self._bytes0 = now, received
        if self._cpu is not None:
            self._cpu0 = self._cpu()

    def _cpu_allows(self, limit: int) -> bool:
        """Whether the windows just measured left the CPU a step up to `limit` needs (SPARE_CPU); counted and logged
        when not."""
        if not self._cpu_use:
            return True
        spare = sum(s for s, _ in self._cpu_use) / len(self._cpu_use)
        used = sum(u for _, u in self._cpu_use) / len(self._cpu_use)
        needed = SPARE_CPU * used * max(MIN_GAIN, GAIN_SHARE * (limit / self.limit - 1))
        if spare >= needed:
            return True
        self.steps_without_cpu += 1
        log.log(
            logging.INFO if self.steps_without_cpu == 1 else logging.DEBUG,
            "requests in flight stay at %d: %.2f CPUs idle, a step to %d needs %.2f (the process uses %.2f)",
            self.limit,
            spare,
            limit,
            needed,
            used,
        )
        return False

    def _throttle(self, now: float) -> Change | None:
        new = max(1, math.floor(self.limit * THROTTLE_CUT))
        self.phase, self._held, self._held_rate = Phase.HOLD, -THROTTLE_HOLD_WINDOWS, 0.0
        self._next_probe = Phase.PROBE_UP
        self._downs_refused = 0
        return self._set(now, new, 0.0, "throttled")

    def _decide(self, now: float, rate: float) -> Change | None:
        before_limit, before_rate = self._before
        if self.phase is Phase.SLOW_START or self.phase is Phase.PROBE_UP:
            if self.limit > before_limit and not self._rose(before_limit, before_rate, rate):
                # The last step up did not pay: back to where it was, and hold.
                self.phase, self._held, self._held_rate = Phase.HOLD, 0, 0.0
                self._next_probe = Phase.PROBE_DOWN
                return self._set(now, before_limit, rate, "no gain")
            if self.limit >= self.cap:
                self.phase, self._held, self._held_rate = Phase.HOLD, 0, 0.0
                return None
            factor = SLOW_START_FACTOR if self.phase is Phase.SLOW_START else PROBE_UP
            if self.limit > before_limit:
                self._downs_refused = 0  # more helped: the path changed, and fewer may do again later
            new = self._up(factor)
            if not self._cpu_allows(new):
                # As a step that did not pay: hold here, and try fewer first.
                self.phase, self._held, self._held_rate = Phase.HOLD, 0, 0.0
                self._next_probe = Phase.PROBE_DOWN
                return None
            self._before = (self.limit, rate)
            return self._set(now, new, rate, "gain")
        if self.phase is Phase.PROBE_DOWN:
            self.phase, self._held, self._held_rate = Phase.HOLD, 0, 0.0
            self._next_probe = Phase.PROBE_UP
            if rate < before_rate * (1 - MIN_GAIN):
                self._downs_refused += 1
                return self._set(now, before_limit, rate, "fewer were slower")
            self._downs_refused = 0
            return None  # as fast with fewer: keep them
        # HOLD: measure this setting, then probe
        self._held += 1
        if self._held <= 0:  # after throttling: only wait
            return None
        self._held_rate += (rate - self._held_rate) / self._held
        wait = HOLD_WINDOWS
        if self._next_probe is Phase.PROBE_DOWN:
            wait <<= min(self._downs_refused, MAX_DOWN_BACKOFF)
        if self._held < wait:
            return None
        self.phase = self._next_probe
        self._before = (self.limit, self._held_rate)
        if self.phase is Phase.PROBE_UP:
            new = self._up(PROBE_UP)
            if self.limit >= self.cap or not self._cpu_allows(new):
                self.phase, self._held, self._held_rate = Phase.HOLD, 0, 0.0
                self._next_probe = Phase.PROBE_DOWN
                return None
            return self._set(now, new, rate, "probe")
        if self.limit <= 1:
            self.phase, self._held, self._held_rate = Phase.HOLD, 0, 0.0
            self._next_probe = Phase.PROBE_UP
            return None
        return self._set(now, max(1, math.floor(self.limit * PROBE_DOWN)), rate, "probe")

    def _up(self, factor: float) -> int:
        """The limit one step up by `factor`: at least one more, at most the cap."""
        return min(self.cap, max(self.limit + 1, math.ceil(self.limit * factor)))

    def _rose(self, before_limit: int, before_rate: float, rate: float) -> bool:
        possible = self.limit / before_limit - 1
        return rate >= before_rate * (1 + max(MIN_GAIN, GAIN_SHARE * possible))

    def _set(self, now: float, limit: int, rate: float, reason: str) -> Change | None:
        if limit == self.limit:
            return None
        self.limit = limit
        self._skip = 1
        self._rates.clear()
        self._cpu_use.clear()
        change = Change(now - self._origin, limit, rate, reason)
        self.changes.append(change)
        log.info("requests in flight: %d (%s%s)", limit, reason, f"; {rate / 1e6:.0f} MB/s" if rate else "")
        with self._cv:
            self._cv.notify_all()
        return change


def auto_workers(cpus: int, files: int, fetch_bytes: int) -> int:
    """--workers auto: how many processes fetch `files` files of `fetch_bytes` bytes with `cpus` CPUs to use."""
    if fetch_bytes < AUTO_WORKERS_MIN_BYTES:
        return 1
    return max(1, min(AUTO_WORKERS_MAX, cpus // CPUS_PER_WORKER, files))


def auto_cap(workers: int, buffer_bytes: int) -> int:
    """The most requests in flight in auto mode: `workers` (--num-threads, or fewer where the model has fewer
    requests), within AUTO_BUFFER_BUDGET at `buffer_bytes` per request."""
    return max(1, min(workers, AUTO_BUFFER_BUDGET // max(1, buffer_bytes)))


class BufferPool:
    """Page-aligned buffers (mmap: as O_DIRECT writes need) of one size for the requests in flight, handed out last
    in, first out: a buffer is made only when every one made so far is in use, so the pool never holds more than
    the most requests that were in flight at once, and the buffers reused are those already resident."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self.made = 0

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
            self.made += 1
        return mmap.mmap(-1, self.size)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buf)
