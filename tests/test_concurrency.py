"""The connection gate (downloader/concurrency.py): how many requests it lets into flight.

The gate is driven here on a clock of the test's own against paths described by a formula (a per-connection cap,
an aggregate cap, a store that throttles above a number of requests), so each test states what the gate does on
such a path, whatever the machine's speed; then in a real download from a real S3 server behind a proxy that
answers 503 SlowDown above a number of requests at once."""

from __future__ import annotations

import itertools
import os
import random
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from downloader.concurrency import (
    AUTO_BUFFER_BUDGET,
    FIRST_WINDOW_S,
    FIXED_REQUESTS,
    MEASURE_WINDOWS,
    WINDOW_S,
    BufferPool,
    ConnectionGate,
    ConnectionsMode,
    Phase,
    auto_cap,
)
from downloader.resources import CpuMeter, CpuTimes, spare_cpus
from tests.conftest import read_tree, run_cli
from tests.faultproxy import FaultProxy, OverCapacity, Rule, Status, Throttle
from tests.synthetic import MiB, random_bytes, upload

# The dynamics tests start low, to watch slow start climb; the engine starts at FIXED_REQUESTS (concurrency.START).
LOW_START = 8
TICK = 0.25  # seconds of the test's clock between two observations (the engine observes every 0.2 s)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def demand(gate: ConnectionGate, waiting: bool = True) -> None:
    """Every permit taken and (`waiting`) one more request waiting for the gate (the limit binds), then all
    released."""
    go, stopped = threading.Event(), threading.Event()
    stopped.set()
    held = 0
    while held < gate.limit:
        assert gate.acquire(go)
        held += 1
    if waiting:
        assert not gate.acquire(stopped)  # would wait: the gate is the bottleneck
    for _ in range(held):
        gate.release()


def drive(
    gate: ConnectionGate,
    clock: Clock,
    rate_of: Callable[[int], float],
    seconds: float,
    *,
    throttles_above: int | None = None,
    noise: float = 0.03,
    waiting: bool = True,
) -> tuple[list[int], int]:
    """Run the gate for `seconds` on a path whose rate (bytes/s) at `limit` requests is rate_of(limit), with a few
    per cent of noise; (the limit at each tick, how many ticks were throttled)."""
    rng = random.Random(7)
    received = 0.0
    limits: list[int] = []
    throttled = 0
    gate.observe(0)
    for _ in range(int(seconds / TICK)):
        demand(gate, waiting)
        clock.now += TICK
        received += rate_of(gate.limit) * TICK * (1 + rng.uniform(-noise, noise))
        if throttles_above is not None and gate.limit > throttles_above:
            gate.throttled()
            throttled += 1
        gate.observe(int(received))
        limits.append(gate.limit)
    return limits, throttled


class Cpus:
    """The CPU times of a machine on the test's clock: `idle` CPUs sit idle and the process uses `used`, from now
    on (each may be changed during a test)."""

    def __init__(self, clock: Clock, idle: float, used: float, room: int = 2) -> None:
        self.clock, self.idle, self.used, self.room = clock, idle, used, room
        self._at = clock.now
        self._idle_s = self._used_s = 0.0

    def __call__(self) -> CpuTimes:
        elapsed, self._at = self.clock.now - self._at, self.clock.now
        self._idle_s += self.idle * elapsed
        self._used_s += self.used * elapsed
        return CpuTimes(self.clock.now, self._idle_s, self._used_s, self.room)


def capped(per_connection: float, aggregate: float) -> Callable[[int], float]:
    return lambda n: min(n * per_connection, aggregate)


MB = 1e6


def test_per_connection_caps_raise_the_count_to_the_aggregate_cap() -> None:
    # 10 MB/s per connection, 600 MB/s in all: 60 connections fill the link; a fixed 32 would reach 320 MB/s
    clock = Clock()
    gate = ConnectionGate(256, ConnectionsMode.AUTO, start=LOW_START, clock=clock)
    limits, _ = drive(gate, clock, capped(10 * MB, 600 * MB), 60)
    settled = limits[len(limits) // 2 :]
    assert min(settled) * 10 * MB >= 0.9 * 600 * MB * 0.8  # probes down dip by one step at most
    assert sum(min(n * 10 * MB, 600 * MB) for n in settled) / len(settled) >= 0.9 * 600 * MB
    assert max(settled) <= 128  # and not the cap: more stopped helping
    assert gate.changes and gate.changes[0].reason == "gain"


def test_the_first_setting_is_stepped_up_from_after_one_short_window_from_the_first_byte() -> None:
    # Nothing is compared with the first setting: it is measured in one window of FIRST_WINDOW_S that opens at the
    # first byte (here 1.5 s after the start: the GETs' wait for their first bytes says nothing of the rate), where
    # every later step takes the first window after it (skipped) and two more
    clock = Clock()
    gate = ConnectionGate(128, ConnectionsMode.AUTO, clock=clock)
    gate.observe(0)
    for _ in range(int(1.5 / TICK)):
        demand(gate, True)
        clock.now += TICK
        assert gate.observe(0) is None
    drive(gate, clock, capped(3 * MB, 190 * MB), 10)
    first, second = gate.changes[:2]
    assert (first.limit, first.reason) == (2 * FIXED_REQUESTS, "gain")
    assert 1.5 + FIRST_WINDOW_S <= first.at <= 1.5 + TICK + FIRST_WINDOW_S + TICK
    assert second.at - first.at >= (1 + MEASURE_WINDOWS) * WINDOW_S


def test_without_spare_cpu_no_step_up_is_taken_and_with_it_the_same_path_is_climbed() -> None:
    # 3 MB/s per connection, 600 MB/s in all: by the rate alone more connections would pay. With the CPUs busy
    # (0.05 idle, the process using 1) no step up is taken, from the first setting or later: a faster download would
    # need CPU there is not. Once CPUs sit idle, the next probe up is taken and the climb resumes.
    clock = Clock()
    cpus = Cpus(clock, idle=0.05, used=1.0)
    gate = ConnectionGate(128, ConnectionsMode.AUTO, clock=clock, cpu=cpus)
    limits, _ = drive(gate, clock, capped(3 * MB, 600 * MB), 30)
    assert max(limits) == FIXED_REQUESTS
    assert all(c.limit <= FIXED_REQUESTS for c in gate.changes)  # at most probes down, undone
    assert gate.steps_without_cpu >= 2  # the first step and a later probe up
    cpus.idle = 1.0
    limits, _ = drive(gate, clock, capped(3 * MB, 600 * MB), 60)
    assert limits[-1] > FIXED_REQUESTS


def test_spare_cpu_that_covers_the_step_lets_the_first_step_be_taken() -> None:
    # The step from the first setting (x 2) must bring a quarter more rate: with the process using 1 CPU, 0.3 CPUs
    # idle are enough, 0.2 are not.
    for idle, stepped in ((0.3, True), (0.2, False)):
        clock = Clock()
        gate = ConnectionGate(128, ConnectionsMode.AUTO, clock=clock, cpu=Cpus(clock, idle=idle, used=1.0))
        drive(gate, clock, capped(3 * MB, 600 * MB), 2)
        assert (gate.limit == 2 * FIXED_REQUESTS) is stepped, idle
        assert gate.phase is (Phase.SLOW_START if stepped else Phase.HOLD)


def test_spare_cpus_are_idle_cpus_within_the_process_room(tmp_path: Path) -> None:
    # /proc/stat's per-CPU lines: idle and iowait of the CPUs the process may run on count, others do not
    proc = tmp_path / "proc"
    proc.mkdir()
    tick = os.sysconf("SC_CLK_TCK")

    def stat(idle0: int, iowait0: int, idle1: int) -> None:
        (proc / "stat").write_text(
            f"cpu  10 0 10 {idle0 + idle1} {iowait0} 0 0 0 0 0\n"
            f"cpu0 5 0 5 {idle0} {iowait0} 0 0 0 0 0\n"
            f"cpu1 5 0 5 {idle1} 0 0 0 0 0 0\n"
            "intr 1 2 3\nctxt 99\n"
        )

    own = [0.0]
    meter = CpuMeter(str(proc), cpus={0}, room=4, own=lambda: own[0])
    stat(0, 0, 0)
    before = meter()
    stat(tick, tick, 50 * tick)  # cpu0: 1 s idle and 1 s iowait; cpu1 (not ours) 50 s idle
    own[0] = 1.0
    after = meter()
    assert before is not None and after is not None
    assert after.idle - before.idle == pytest.approx(2.0)
    moved = CpuTimes(before.wall + 2.0, after.idle, after.own, after.room)
    assert spare_cpus(before, moved) == pytest.approx((1.0, 0.5))  # 2 idle CPU-s over 2 s; 1 CPU-s used
    # a container's quota bounds the spare: at room 1 with half a CPU used, half a CPU is left
    assert spare_cpus(before, CpuTimes(moved.wall, moved.idle, moved.own, 1)) == pytest.approx((0.5, 0.5))
    (proc / "stat").write_text("intr 1\n")
    assert meter() is None  # no CPU lines of ours: the gate judges on the rate alone


def test_a_store_that_throttles_before_any_byte_is_cut_at_once() -> None:
    clock = Clock()
    gate = ConnectionGate(128, ConnectionsMode.AUTO, clock=clock)
    gate.observe(0)
    gate.throttled()
    clock.now += TICK
    change = gate.observe(0)
    assert change is not None and change.reason == "throttled" and gate.limit < FIXED_REQUESTS


def test_on_a_steady_path_refused_probes_down_come_less_and_less_often() -> None:
    # 3 MB/s per connection, 190 MB/s in all (the bench's emulated link): 64 fill it, and every probe down to fewer
    # costs rate; each one refused doubles the wait before the next
    clock = Clock()
    gate = ConnectionGate(80, ConnectionsMode.AUTO, clock=clock)
    drive(gate, clock, capped(3 * MB, 190 * MB), 240)
    downs = [
        c.at
        for c, after in itertools.pairwise(gate.changes)
        if (c.reason, after.reason) == ("probe", "fewer were slower")
    ]
    assert len(downs) >= 3
    gaps = [b - a for a, b in itertools.pairwise(downs)]
    assert gaps[1] > gaps[0]
    assert all(c.limit >= 51 for c in gate.changes[1:])  # never below one step down from what fills the link


def test_auto_starts_where_fixed_mode_stays_within_the_cap() -> None:
    assert ConnectionGate(128, ConnectionsMode.AUTO).limit == FIXED_REQUESTS
    assert ConnectionGate(12, ConnectionsMode.AUTO).limit == 12


def test_from_the_default_start_a_fast_path_still_comes_down_to_few() -> None:
    # 500 MB/s per connection, 600 MB/s in all: starting at 32, probes down find that two are enough
    clock = Clock()
    gate = ConnectionGate(128, ConnectionsMode.AUTO, clock=clock)
    limits, _ = drive(gate, clock, capped(500 * MB, 600 * MB), 240)
    assert limits[0] == FIXED_REQUESTS
    assert limits[-1] < FIXED_REQUESTS // 2


def test_a_fast_path_needs_few_and_gets_few() -> None:
    # 500 MB/s per connection, 600 MB/s in all: two connections are enough
    clock = Clock()
    gate = ConnectionGate(64, ConnectionsMode.AUTO, start=LOW_START, clock=clock)
    limits, _ = drive(gate, clock, capped(500 * MB, 600 * MB), 90)
    assert max(limits[len(limits) // 2 :]) <= LOW_START
    assert limits[-1] <= 3


def test_throttling_lowers_the_count_and_it_stays_near_what_the_store_takes() -> None:
    clock = Clock()
    gate = ConnectionGate(128, ConnectionsMode.AUTO, start=LOW_START, clock=clock)
    limits, throttled = drive(gate, clock, capped(10 * MB, 10_000 * MB), 90, throttles_above=20)
    assert any(c.reason == "throttled" for c in gate.changes)
    settled = limits[len(limits) // 2 :]
    assert max(settled) <= 20 * 1.25 + 1  # at most one probe above what the store takes
    assert sum(1 for n in settled if n > 20) <= len(settled) // 4
    # a fixed 128 would have been throttled on every tick
    assert throttled < len(limits) // 4


def test_the_cap_bounds_the_count() -> None:
    clock = Clock()
    gate = ConnectionGate(12, ConnectionsMode.AUTO, start=LOW_START, clock=clock)
    limits, _ = drive(gate, clock, capped(10 * MB, 10_000 * MB), 30)
    assert max(limits) == 12


def test_at_the_cap_a_step_that_did_not_pay_is_undone() -> None:
    # There are as many workers as the cap: at it no request waits for the gate, but every permit is taken, and
    # the step up to it is judged like any other. 10 MB/s per connection, 80 MB/s in all: 8 fill the path.
    clock = Clock()
    gate = ConnectionGate(12, ConnectionsMode.AUTO, start=LOW_START, clock=clock)
    limits, _ = drive(gate, clock, capped(10 * MB, 80 * MB), 30, waiting=False)
    assert 12 in limits
    assert any(c.reason == "no gain" and c.limit == LOW_START for c in gate.changes)


def test_fixed_mode_is_the_cap_always() -> None:
    clock = Clock()
    gate = ConnectionGate(32, ConnectionsMode.FIXED, clock=clock)
    limits, _ = drive(gate, clock, capped(500 * MB, 600 * MB), 20, throttles_above=4)
    assert set(limits) == {32}
    assert gate.changes == []


def test_a_window_where_the_gate_did_not_bind_decides_nothing() -> None:
    # Near the end of a download fewer requests remain than the limit: the rate then says nothing of the limit.
    clock = Clock()
    gate = ConnectionGate(64, ConnectionsMode.AUTO, start=LOW_START, clock=clock)
    gate.observe(0)
    received = 0
    for _ in range(40):
        clock.now += TICK
        received += int(100 * MB * TICK)
        gate.observe(received)
    assert gate.limit == LOW_START and gate.changes == []


@pytest.mark.parametrize("mode", list(ConnectionsMode))
def test_a_stopped_download_is_not_kept_waiting(mode: ConnectionsMode) -> None:
    gate = ConnectionGate(2, mode)
    go, stop = threading.Event(), threading.Event()
    assert gate.acquire(go) and gate.acquire(go)
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(gate.acquire(stop)))
    waiter.start()
    stop.set()
    gate.wake()
    waiter.join(timeout=10)
    assert result == [False]
    gate.release()
    gate.release()
    assert gate.in_use == 0


def test_buffers_follow_permits_not_workers() -> None:
    # 32 workers take turns through a gate of 4: no more than 4 buffers are ever made (and so ever touched), where
    # one buffer per worker would have been 32 resident in the end.
    gate = ConnectionGate(32, ConnectionsMode.AUTO, start=4)
    pool = BufferPool(4096)
    go = threading.Event()

    def worker() -> None:
        for i in range(50):
            assert gate.acquire(go)
            buf = pool.take()
            buf[0] = i % 256  # in use: touched
            pool.give(buf)  # back before the permit, so the next holder of a permit finds it
            gate.release()

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert 1 <= pool.made <= 4


def test_auto_mode_keeps_request_buffers_within_the_budget() -> None:
    assert auto_cap(128, MiB) == AUTO_BUFFER_BUDGET // MiB  # the default cap is cut to the budget ...
    assert auto_cap(16, MiB) == 16  # ... a lower one is kept
    assert auto_cap(128, 4 * MiB) == AUTO_BUFFER_BUDGET // (4 * MiB)
    assert auto_cap(128, 2 * AUTO_BUFFER_BUDGET) == 1  # one request at least, whatever its buffer


# ------------------------------------------------------------------------------ a real download, a throttling store


CAPACITY = 4
PACE = 2 * MiB  # bytes per second of each GET the store serves: a 1 MiB range lasts half a second
RANGES = ["--part-threshold", "2MiB", "--part-chunksize", "1MiB", "--num-threads", "16", "--max-attempts", "10"]


def throttled_download(s3: object, bucket: str, s3_server: object, local: Path, *flags: str) -> tuple[int, int, str]:
    """(exit code, 503 answers, stderr) of a download of a 24 MiB shard in 1 MiB ranges from a store that takes
    CAPACITY GETs at once and answers 503 SlowDown to the others."""
    with FaultProxy(s3_server.host, s3_server.port) as proxy:  # type: ignore[attr-defined]
        proxy.add_rule(OverCapacity(Status(503), match_method="GET", only_ranged=True, times=-1, capacity=CAPACITY))
        proxy.add_rule(Rule(Throttle(PACE), match_method="GET", only_ranged=True, times=-1))
        r = run_cli(
            ["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(local), *RANGES, *flags],
            proxy.url,
            timeout=300,
        )
        return r.returncode, sum(1 for rec in proxy.log if rec.status == 503), r.stderr


@pytest.mark.slow
def test_a_throttling_store_gets_fewer_requests_than_a_fixed_count_sends(  # type: ignore[no-untyped-def]
    s3, bucket, s3_server, tmp_path
) -> None:
    files = {"weights.safetensors": random_bytes(24 * MiB, 3), "config.json": b'{"model_type": "demo"}'}
    upload(s3, bucket, "m", files)
    code, auto_503, err = throttled_download(s3, bucket, s3_server, tmp_path / "auto")
    assert code == 0, err
    assert read_tree(str(tmp_path / "auto" / "m")) == files
    limits = [int(n) for n in re.findall(r"requests in flight: (\d+) \(throttled", err)]
    if auto_503:
        assert limits, err  # it lowered the count on SlowDown ...
        assert limits == sorted(limits, reverse=True)  # ... and did not raise it meanwhile
    # the same download with 16 in flight all along: it may fail (a range refused --max-attempts times), or succeed
    _, fixed_503, _ = throttled_download(s3, bucket, s3_server, tmp_path / "fixed", "--connections", "fixed")
    assert fixed_503 > auto_503
