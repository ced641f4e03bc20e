"""The connection gate (downloader/concurrency.py): how many requests it lets into flight.

The gate is driven here on a clock of the test's own against paths described by a formula (a per-connection cap,
an aggregate cap, a store that throttles above a number of requests), so each test states what the gate does on
such a path, whatever the machine's speed. The same gate in a real download behind a throttling server is tested
in tests/test_faults_s3.py."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from downloader.concurrency import START, ConnectionGate, ConnectionsMode

TICK = 0.25  # seconds of the test's clock between two observations (the engine observes every 0.2 s)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def demand(gate: ConnectionGate) -> None:
    """Every permit taken and one more request waiting for the gate (the limit binds), then all released."""
    go, stopped = threading.Event(), threading.Event()
    stopped.set()
    held = 0
    while held < gate.limit:
        assert gate.acquire(go)
        held += 1
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
) -> tuple[list[int], int]:
    """Run the gate for `seconds` on a path whose rate (bytes/s) at `limit` requests is rate_of(limit), with a few
    per cent of noise; (the limit at each tick, how many ticks were throttled)."""
    rng = random.Random(7)
    received = 0.0
    limits: list[int] = []
    throttled = 0
    gate.observe(0)
    for _ in range(int(seconds / TICK)):
        demand(gate)
        clock.now += TICK
        received += rate_of(gate.limit) * TICK * (1 + rng.uniform(-noise, noise))
        if throttles_above is not None and gate.limit > throttles_above:
            gate.throttled()
            throttled += 1
        gate.observe(int(received))
        limits.append(gate.limit)
    return limits, throttled


def capped(per_connection: float, aggregate: float) -> Callable[[int], float]:
    return lambda n: min(n * per_connection, aggregate)


MB = 1e6


def test_per_connection_caps_raise_the_count_to_the_aggregate_cap() -> None:
    # 10 MB/s per connection, 600 MB/s in all: 60 connections fill the link; a fixed 32 would reach 320 MB/s
    clock = Clock()
    gate = ConnectionGate(256, ConnectionsMode.AUTO, clock=clock)
    limits, _ = drive(gate, clock, capped(10 * MB, 600 * MB), 60)
    settled = limits[len(limits) // 2 :]
    assert min(settled) * 10 * MB >= 0.9 * 600 * MB * 0.8  # probes down dip by one step at most
    assert sum(min(n * 10 * MB, 600 * MB) for n in settled) / len(settled) >= 0.9 * 600 * MB
    assert max(settled) <= 128  # and not the cap: more stopped helping
    assert gate.changes and gate.changes[0].reason == "gain"


def test_a_fast_path_needs_few_and_gets_few() -> None:
    # 500 MB/s per connection, 600 MB/s in all: two connections are enough
    clock = Clock()
    gate = ConnectionGate(64, ConnectionsMode.AUTO, clock=clock)
    limits, _ = drive(gate, clock, capped(500 * MB, 600 * MB), 90)
    assert max(limits[len(limits) // 2 :]) <= START
    assert limits[-1] <= 3


def test_throttling_lowers_the_count_and_it_stays_near_what_the_store_takes() -> None:
    clock = Clock()
    gate = ConnectionGate(128, ConnectionsMode.AUTO, clock=clock)
    limits, throttled = drive(gate, clock, capped(10 * MB, 10_000 * MB), 90, throttles_above=20)
    assert any(c.reason == "throttled" for c in gate.changes)
    settled = limits[len(limits) // 2 :]
    assert max(settled) <= 20 * 1.25 + 1  # at most one probe above what the store takes
    assert sum(1 for n in settled if n > 20) <= len(settled) // 4
    # a fixed 128 would have been throttled on every tick
    assert throttled < len(limits) // 4


def test_the_cap_bounds_the_count() -> None:
    clock = Clock()
    gate = ConnectionGate(12, ConnectionsMode.AUTO, clock=clock)
    limits, _ = drive(gate, clock, capped(10 * MB, 10_000 * MB), 30)
    assert max(limits) == 12


def test_fixed_mode_is_the_cap_always() -> None:
    clock = Clock()
    gate = ConnectionGate(32, ConnectionsMode.FIXED, clock=clock)
    limits, _ = drive(gate, clock, capped(500 * MB, 600 * MB), 20, throttles_above=4)
    assert set(limits) == {32}
    assert gate.changes == []


def test_a_window_where_the_gate_did_not_bind_decides_nothing() -> None:
    # Near the end of a download fewer requests remain than the limit: the rate then says nothing of the limit.
    clock = Clock()
    gate = ConnectionGate(64, ConnectionsMode.AUTO, clock=clock)
    gate.observe(0)
    received = 0
    for _ in range(40):
        clock.now += TICK
        received += int(100 * MB * TICK)
        gate.observe(received)
    assert gate.limit == START and gate.changes == []


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
