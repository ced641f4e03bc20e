"""The settings the connections benchmark compares the modes in, each a server with a model and a way to sample it:

- ``emulated``: SeaweedFS in a network namespace behind bench/netem.py's link: an htb aggregate cap on the server's
  veth, and bench/netrelay.py in front of the S3 port holding every request's first byte for --latency-ms and pacing
  each connection at --conn-mbps (SO_MAX_PACING_RATE). Samples: the relay's bytes sent and most connections open.
- ``throttled``: SeaweedFS on 127.0.0.1 behind tests/faultproxy.FaultProxy, which answers 503 SlowDown to a ranged
  GET that arrives while --store-capacity others are being served and paces the others at --get-mib-s each (a store
  that throttles above a request rate). Samples: the proxy's body bytes, connections established to it.
- ``loopback``: SeaweedFS on 127.0.0.1, nothing in between (the plain case: does the default cost anything?).
  Samples: connections established to the S3 port (no bytes: the model's size over the wall time is the rate).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import netem
from ..harness.common import BUCKET, GiB, MiB, logger
from ..harness.model import ModelSpec, ensure_model
from ..harness.server import SeaweedFS, s3_tool_env
from .download import Counters, Sampler, established

log = logger("bench-connections")
SCENARIOS = ("emulated", "throttled", "loopback")


@dataclass
class Setting:
    """One scenario, ready: the model's URI, the tool's environment and flags, how to sample, what it emulates."""

    name: str
    uri: str
    env: dict[str, str]
    flags: list[str]
    sampler: Sampler
    model: dict[str, Any]
    describe: dict[str, Any] = field(default_factory=dict)
    cap_mb_s: float | None = None  # payload MB/s the path allows in all (emulated)
    per_connection_mb_s: float | None = None
    throttles: Any = None  # the FaultProxy (throttled): its log counts the 503 answers


def _model(endpoint: str, shards: int, work: Path, part_mib: int = 64) -> tuple[str, dict[str, Any]]:
    """`shards` of 512 MiB uploaded in `part_mib` parts: aibrix-download aligns its ranges to whole parts (it
    verifies each part's MD5), so the parts are the ranges."""
    spec = ModelSpec(shards, 512, part_mib=part_mib)
    files = ensure_model(endpoint, spec, work)["files"]
    total = sum(v["size"] for v in files.values())
    return f"s3://{BUCKET}/{spec.prefix}", {"gib": total / GiB, "bytes": total, "files": len(files)}


@contextlib.contextmanager
def emulated(args: argparse.Namespace, work: Path) -> Iterator[Setting]:
    why = netem.preflight()
    if why:
        raise SystemExit(f"the emulated network: {why}")
    net = netem.NetEmu(args.latency_ms, args.conn_mbps, args.aggregate_gbps, log=log)
    server = None
    try:
        net.setup()
        server = SeaweedFS(args.store, work, net)
        server.start()
        uri, model = _model(server.endpoint, args.shards, work, args.chunk_mib)
        endpoint = net.start_relay(net.server_ip, server.ports["s3"], work)

        def sample() -> Counters | None:
            c = net.relay_counters()
            return None if c is None else Counters(int(c["response_bytes"]), int(c["max_active"]))

        yield Setting(
            "emulated",
            uri,
            s3_tool_env(endpoint),
            ["--page-cache", "bypass", "--part-chunksize", f"{args.chunk_mib}MiB"],
            sample,
            model,
            net.describe(),
            cap_mb_s=net.aggregate_mb_per_s * netem.GOODPUT_FACTOR,
            per_connection_mb_s=net.conn_mb_per_s,
        )
    finally:
        if server is not None:
            server.stop()
        net.teardown()


@contextlib.contextmanager
def _local_store(args: argparse.Namespace, work: Path) -> Iterator[SeaweedFS]:
    """SeaweedFS on 127.0.0.1, started and stopped."""
    server = SeaweedFS(args.store, work)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def throttled(args: argparse.Namespace, work: Path) -> Iterator[Setting]:
    from tests.faultproxy import FaultProxy, OverCapacity, Rule, Status, Throttle

    with _local_store(args, work) as server:
        uri, model = _model(server.endpoint, args.throttled_shards, work, args.chunk_mib)
        seconds_each = args.chunk_mib / args.get_mib_s
        with FaultProxy("127.0.0.1", server.ports["s3"]) as proxy:
            capacity = args.store_capacity
            limit = OverCapacity(
                Status(503), "GET", only_ranged=True, times=-1, capacity=capacity, seconds_each=seconds_each
            )
            proxy.add_rule(limit)
            proxy.add_rule(Rule(Throttle(args.get_mib_s * MiB), match_method="GET", only_ranged=True, times=-1))

            def sample() -> Counters:
                return Counters(proxy.body_bytes_sent, established(proxy.port))

            yield Setting(
                "throttled",
                uri,
                s3_tool_env(proxy.url),
                ["--page-cache", "bypass", "--part-chunksize", f"{args.chunk_mib}MiB"],
                sample,
                model,
                {
                    "store": "SeaweedFS on 127.0.0.1 behind tests/faultproxy.FaultProxy",
                    "throttle": f"503 SlowDown to a ranged GET arriving while {args.store_capacity} others arrived "
                    f"within {seconds_each:g} s (the time one takes), i.e. above "
                    f"{args.store_capacity / seconds_each:g} GET/s",
                    "pace": f"{args.get_mib_s:g} MiB/s per GET body (Throttle)",
                    "capacity_mib_s": args.store_capacity * args.get_mib_s,
                },
                per_connection_mb_s=args.get_mib_s * MiB / 1e6,
                throttles=proxy,
            )


@contextlib.contextmanager
def loopback(args: argparse.Namespace, work: Path) -> Iterator[Setting]:
    with _local_store(args, work) as server:
        uri, model = _model(server.endpoint, args.loopback_shards, work)
        port = server.ports["s3"]

        def sample() -> Counters:
            return Counters(0, established(port))

        yield Setting(
            "loopback",
            uri,
            s3_tool_env(server.endpoint),
            [],
            sample,
            model,
            {"store": "SeaweedFS (weed mini) on 127.0.0.1, no emulation; default flags besides the mode"},
        )


def open_setting(name: str, args: argparse.Namespace, work: Path) -> contextlib.AbstractContextManager[Setting]:
    return {"emulated": emulated, "throttled": throttled, "loopback": loopback}[name](args, work)
