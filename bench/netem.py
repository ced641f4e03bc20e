"""Realistic-network emulation for the download benchmark (``run_bench.py --netns``).

What it builds (root only; every piece is removed again by :meth:`NetEmu.teardown`, which the harness
calls from ``finally`` also on Ctrl-C/SIGTERM, and stale pieces of a killed run are removed at the next
start by :func:`cleanup_stale`)::

    root netns (clients)                          netns aibrixbench-<pid> (server)
    abb<pid>h  198.18.x.1/30  <==== veth ====>  abb<pid>n  198.18.x.2/30
                                                  egress: htb class at --aggregate-gbps, bfifo queue
                                                  netrelay.py on :relay_port  (first-byte latency,
                                                     SO_MAX_PACING_RATE = --conn-mbps per connection)
                                                  SeaweedFS (weed mini) on 198.18.x.2

The addresses come from 198.18.0.0/15, the block reserved for network benchmarks (RFC 2544/5735); they
exist only on this veth pair. The S3 port of SeaweedFS is also reachable directly (no latency, no
per-connection cap, still the aggregate cap): the harness uses it to upload and check the model.

Not emulated (no ``sch_netem`` in this kernel, and by design): packet loss, jitter, reordering, a
round-trip time on every packet (TCP handshakes and ACKs see ~0 RTT, so slow start and congestion
windows behave as on a LAN), TLS, and S3 throttling (503 SlowDown).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .harness.procs import cpu_seconds, free_port

NS_PREFIX = "aibrixbench-"
IF_PREFIX = "abb"
BENCH_NET = ipaddress.IPv4Network("198.18.0.0/15")
RELAY = Path(__file__).resolve().parent / "netrelay.py"
# TCP/IP + Ethernet header share of a full 1500-byte frame: payload / wire bytes
GOODPUT_FACTOR = 1448 / 1514


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, e.g. a harness killed with -9 and not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _ns_pids(ns: str) -> list[int]:
    r = _run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cleanup_stale(log: Any = print) -> list[str]:
    """Remove namespaces/veths left by a benchmark process that no longer exists (e.g. after kill -9)."""
    removed = []
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        m = re.match(rf"{re.escape(NS_PREFIX)}(\d+)\b", line.strip())
        if not m or _pid_alive(int(m.group(1))):
            continue
        ns = f"{NS_PREFIX}{m.group(1)}"
        # only processes inside a namespace this harness made (weed, relay, sender)
        _kill_pids(_ns_pids(ns))
        _run(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    for line in _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        m = re.match(rf"\d+: ({IF_PREFIX}(\d+)h)[@:]", line)
        if m and not _pid_alive(int(m.group(2))):
            _run(["ip", "link", "del", m.group(1)], check=False)
            removed.append(m.group(1))
    if removed:
        log(f"removed stale benchmark network pieces: {removed}")
    return removed


def preflight() -> str | None:
    """None if this machine can run the mode, else why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns, tc)"
    for exe in ("ip", "tc", "nsenter"):
        if _run(["sh", "-c", f"command -v {exe}"], check=False).returncode != 0:
            return f"{exe} not found"
    if not hasattr(os, "splice"):
        return "python has no os.splice (need >= 3.10)"
    return None


class NetEmu:
    """Server network namespace + veth + htb aggregate cap + latency/per-connection relay."""

    def __init__(
        self,
        latency_ms: float,
        conn_mbps: float,
        aggregate_gbps: float,
        queue_ms: float = 20.0,
        log: Any = print,
    ) -> None:
        self.latency_ms = latency_ms
        self.conn_mbps = conn_mbps
        self.aggregate_gbps = aggregate_gbps
        self.queue_ms = queue_ms
        self.log = log
        pid = os.getpid()
        self.ns = f"{NS_PREFIX}{pid}"
        self.host_if = f"{IF_PREFIX}{pid}h"
        self.ns_if = f"{IF_PREFIX}{pid}n"
        block = list(BENCH_NET.subnets(new_prefix=30))[pid % (BENCH_NET.num_addresses // 4)]
        self.host_ip = str(block.network_address + 1)
        self.server_ip = str(block.network_address + 2)
        self.subnet = str(block)
        self.relay_proc: subprocess.Popen[bytes] | None = None
        self.relay_port = 0
        self.relay_log: Path | None = None
        self.relay_stats: dict[str, Any] = {}
        self.commands: list[str] = []
        self.up = False

    # -------------------------------------------------------------- helpers

    @property
    def prefix(self) -> list[str]:
        """argv prefix that runs a command inside the server namespace (network only)."""
        return ["nsenter", f"--net=/run/netns/{self.ns}", "--"]

    @property
    def conn_bytes_per_s(self) -> int:
        return int(self.conn_mbps * 1e6 / 8)

    @property
    def aggregate_mb_per_s(self) -> float:
        """The aggregate cap in MB/s of wire bytes (payload is ~GOODPUT_FACTOR of it)."""
        return self.aggregate_gbps * 1e9 / 8 / 1e6

    @property
    def conn_mb_per_s(self) -> float:
        return self.conn_mbps / 8

    def ceiling_mb_per_s(self, conns: int) -> float:
        """Nominal ceiling for ``conns`` connections: min(conns x per-connection cap, aggregate cap)."""
        agg = self.aggregate_mb_per_s if self.aggregate_gbps > 0 else float("inf")
        per = conns * self.conn_mb_per_s if self.conn_mbps > 0 else float("inf")
        return min(agg, per)

    def ideal_mb_per_s(self, conns: int, chunk_bytes: int, sizes: list[int]) -> float:
        """Latency-aware ideal for a model of ``sizes`` fetched in ``chunk_bytes`` ranges.

        Each connection fetches one range after another; a range costs the first-byte latency plus
        range / per-connection cap. At most one connection per range, and never above the aggregate cap.
        Uses the mean range size (files below the range size are one range each); ignores TCP slow start.
        """
        ranges = sum(max(1, -(-s // chunk_bytes)) for s in sizes)
        mean = sum(sizes) / ranges
        rate = self.conn_bytes_per_s if self.conn_mbps > 0 else float("inf")
        secs = self.latency_ms / 1000 + mean / rate
        per_conn = mean / secs / 1e6 if secs > 0 else float("inf")
        return min(min(conns, ranges) * per_conn, self.ceiling_mb_per_s(conns))

    def _cmd(self, argv: list[str]) -> None:
        self.commands.append(" ".join(argv))
        _run(argv)

    # --------------------------------------------------------------- set up

    def setup(self) -> None:
        why = preflight()
        if why:
            raise SystemExit(f"--netns: {why}")
        cleanup_stale(self.log)
        self.log(
            f"netns {self.ns}: veth {self.host_if}={self.host_ip} <-> {self.ns_if}={self.server_ip}, "
            f"latency {self.latency_ms} ms, {self.conn_mbps} Mbit/s per connection, "
            f"aggregate {self.aggregate_gbps} Gbit/s"
        )
        self.up = True  # from here on teardown() has something to remove
        ns = self.ns
        self._cmd(["ip", "netns", "add", ns])
        self._cmd(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", ns])
        self._cmd(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if])
        self._cmd(["ip", "link", "set", self.host_if, "up"])
        self._cmd(["ip", "-n", ns, "addr", "add", f"{self.server_ip}/30", "dev", self.ns_if])
        self._cmd(["ip", "-n", ns, "link", "set", self.ns_if, "up"])
        self._cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
        if self.aggregate_gbps > 0:
            rate_bps = int(self.aggregate_gbps * 1e9)
            rate_bytes = rate_bps // 8
            burst = max(256 * 1024, rate_bytes // 500)  # 2 ms of traffic
            queue = max(1024 * 1024, int(rate_bytes * self.queue_ms / 1000))
            self._cmd(
                ["tc", "-n", ns, "qdisc", "add", "dev", self.ns_if, "root", "handle", "1:", "htb", "default", "10"]
            )
            self._cmd(
                [
                    "tc", "-n", ns, "class", "add", "dev", self.ns_if, "parent", "1:", "classid", "1:10", "htb",
                    "rate", f"{rate_bps}bit", "ceil", f"{rate_bps}bit", "burst", str(burst), "cburst", str(burst),
                    "quantum", "60000",
                ]
            )  # fmt: skip
            self._cmd(
                ["tc", "-n", ns, "qdisc", "add", "dev", self.ns_if, "parent", "1:10", "bfifo", "limit", str(queue)]
            )

    def start_relay(self, upstream_host: str, upstream_port: int, work: Path) -> str:
        """Start netrelay.py in the namespace in front of upstream_host:upstream_port; return its endpoint.

        The upstream is an address of the namespace itself, so relay -> server traffic stays on the
        namespace's loopback and is neither delayed nor shaped."""
        self.relay_port = free_port()
        self.relay_log = work / "relay.log"
        argv = [
            *self.prefix,
            sys.executable,
            str(RELAY),
            "--listen",
            f"0.0.0.0:{self.relay_port}",
            "--upstream",
            f"{upstream_host}:{upstream_port}",
            "--latency-ms",
            str(self.latency_ms),
            "--conn-bytes-per-s",
            str(self.conn_bytes_per_s if self.conn_mbps > 0 else 0),
        ]
        self.commands.append(" ".join(argv))
        with open(work / "relay.out", "wb") as out, open(self.relay_log, "wb") as err:
            self.relay_proc = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.relay_proc.poll() is not None:
                raise RuntimeError(f"relay exited {self.relay_proc.returncode}: {self.relay_log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection((self.server_ip, self.relay_port), 1):
                return f"http://{self.server_ip}:{self.relay_port}"
            time.sleep(0.1)
        raise RuntimeError("relay did not start listening")

    def relay_counters(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """Ask the relay for its counters (SIGUSR1 -> one JSON line on its stdout)."""
        p = self.relay_proc
        if p is None or p.poll() is not None or self.relay_log is None:
            return None
        out = self.relay_log.parent / "relay.out"
        before = out.stat().st_size if out.exists() else 0
        os.kill(p.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                data = out.read_bytes()[before:]
                if data.endswith(b"\n"):
                    return dict(json.loads(data.splitlines()[-1]))
            time.sleep(0.01)
        return None

    def relay_cpu_seconds(self) -> float | None:
        return None if self.relay_proc is None else cpu_seconds(self.relay_proc.pid)

    def stop_relay(self) -> None:
        p = self.relay_proc
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)  # prints its counters
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        with contextlib.suppress(OSError, ValueError):
            assert self.relay_log is not None
            text = (self.relay_log.parent / "relay.out").read_text().strip().splitlines()
            if text:
                self.relay_stats = json.loads(text[-1])
        self.relay_proc = None

    def qdisc_stats(self) -> str:
        if not self.up:
            return ""
        return _run(["tc", "-n", self.ns, "-s", "qdisc", "show", "dev", self.ns_if], check=False).stdout

    def teardown(self) -> None:
        """Remove everything setup() made; safe to call more than once and after a partial setup."""
        self.stop_relay()
        if not self.up:
            return
        # anything still running in our namespace was started by this harness
        _kill_pids(_ns_pids(self.ns))
        _run(["ip", "link", "del", self.host_if], check=False)  # removes both ends and their qdiscs
        _run(["ip", "netns", "del", self.ns], check=False)
        self.up = False
        self.log(f"removed netns {self.ns} and veth {self.host_if}")

    def describe(self) -> dict[str, Any]:
        return {
            "namespace": self.ns,
            "veth": [self.host_if, self.ns_if],
            "subnet": self.subnet,
            "server_ip": self.server_ip,
            "latency_ms": self.latency_ms,
            "latency_applies_to": "first byte of every HTTP request/response (relay holds each new request)",
            "conn_mbps": self.conn_mbps,
            "conn_mb_per_s": self.conn_mb_per_s,
            "conn_cap_mechanism": "SO_MAX_PACING_RATE on the relay's client socket (TCP internal pacing)",
            "aggregate_gbps": self.aggregate_gbps,
            "aggregate_mb_per_s": self.aggregate_mb_per_s,
            "aggregate_mechanism": "htb class on the server veth egress, bfifo queue",
            "queue_ms": self.queue_ms,
            "goodput_factor": GOODPUT_FACTOR,
            "commands": self.commands,
        }
