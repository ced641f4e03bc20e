"""Where the server runs: on loopback, or in a network namespace behind an emulated link (``--netns``)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import netem, physlimits
from .common import log
from .procs import free_port
from .server import SeaweedFS, s3_client


class Environment:
    """SeaweedFS on loopback (``loopback``) or behind the emulated link (``netns``), started on demand."""

    def __init__(self, args: argparse.Namespace, scratch: Path, record: dict[str, Any], save: Callable[[], None]):
        self.args = args
        self.scratch = scratch
        self.record = record
        self.save = save
        self.server: SeaweedFS | None = None
        self.net: netem.NetEmu | None = None
        self.name: str | None = None  # "loopback" or "netns" while a server runs
        self.admin_endpoint = ""  # SeaweedFS's own S3 port: uploads and checks by the harness
        self.tool_endpoint = ""  # what the tools get: the same, or the relay in the netns mode

    def stop(self) -> None:
        """Stop relay, SeaweedFS and remove the namespace (each step also after a partial start)."""
        try:
            if self.net is not None:
                self.net.stop_relay()
                if self.record and self.net.relay_stats:
                    self.record.setdefault("netem", {})["relay_counters"] = self.net.relay_stats
            if self.server is not None:
                self.server.stop()
                self.server = None
        finally:
            if self.net is not None:
                self.net.teardown()
                self.net = None
            self.name = None

    def use(self, name: str) -> None:
        """Have SeaweedFS running on loopback (``loopback``) or behind the emulated link (``netns``)."""
        if self.name == name:
            return
        self.stop()
        a = self.args
        store = self.scratch / "store" if a.fresh_store else Path(a.store_dir)
        if name == "netns":
            self.net = netem.NetEmu(a.latency_ms, a.conn_mbps, a.aggregate_gbps, a.queue_ms, log=log)
            self.net.setup()
        self.server = SeaweedFS(store, self.scratch, self.net)
        self.server.start()
        self.name = name
        self.admin_endpoint = self.tool_endpoint = self.server.endpoint
        if self.net is not None:
            self.tool_endpoint = self.net.start_relay(self.net.server_ip, self.server.ports["s3"], self.scratch)
            log(f"relay (latency + per-connection cap) at {self.tool_endpoint}; checking the emulated link ...")
            self.record["netem"] = {**self.net.describe(), "relay_endpoint": self.tool_endpoint}
            self.record["netem"]["checks"] = self.check_link()
        self.record.setdefault("server", {})[name] = {
            "endpoint": self.admin_endpoint,
            "tool_endpoint": self.tool_endpoint,
            "rss_mib_after_setup": self.server.rss_mib(),
        }
        self.save()

    def check_link(self) -> dict[str, Any]:
        """What the emulated link really gives: goodput of 1 and many paced connections, request latency."""
        net = self.net
        assert net is not None
        a = self.args
        many = max([16, *a.sweep_conns_list])
        tcp = physlimits.tcp_throughput(
            net.server_ip,
            free_port(),
            [1, many],
            a.limits_seconds,
            prefix=net.prefix,
            rate=net.conn_bytes_per_s if net.conn_mbps > 0 else 0,
        )

        def request_ms(endpoint: str) -> float:
            c = s3_client(endpoint)
            c.list_buckets()  # connect first
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                c.list_buckets()
                ts.append(time.perf_counter() - t0)
            return 1000 * statistics.median(ts)

        out = {
            "tcp_goodput": tcp,
            "one_conn_mb_per_s": tcp["runs"][0]["mb_per_s"],
            "many_conns_mb_per_s": tcp["runs"][1]["mb_per_s"],
            "small_request_ms_direct": request_ms(self.admin_endpoint),
            "small_request_ms_via_relay": request_ms(self.tool_endpoint),
        }
        log(
            "emulated link: 1 connection {:.0f} MB/s (cap {:.0f}), {} connections {:.0f} MB/s (aggregate {:.0f}); "
            "small request {:.1f} ms direct, {:.1f} ms via relay".format(
                out["one_conn_mb_per_s"],
                net.conn_mb_per_s,
                many,
                out["many_conns_mb_per_s"],
                net.aggregate_mb_per_s,
                out["small_request_ms_direct"],
                out["small_request_ms_via_relay"],
            )
        )
        return out

    # ------------------------------------------------------------------------ counters for one run

    def server_cpu(self) -> float | None:
        return self.server.cpu_seconds() if self.server else None

    def relay_cpu(self) -> float | None:
        return self.net.relay_cpu_seconds() if self.net else None

    def relay_counters(self) -> dict[str, Any] | None:
        return self.net.relay_counters() if self.net else None
