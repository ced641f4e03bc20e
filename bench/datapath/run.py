"""The sections asked for, in order (SeaweedFS started for the network ones unless --endpoint names a server), the
results file and the tables."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..harness.common import BUCKET, MiB
from ..harness.recording import Results
from ..harness.server import SeaweedFS, s3_client
from ..harness.venvs import ensure_bench_tools
from .local import DISK_MODES, checksum_table, disk_write
from .network import GET_MODES, READ_MODES, ensure_object, read_paths, small_gets, upload_small


def print_checksums(rows: list[dict[str, Any]]) -> None:
    print("| checksum code | GiB per CPU-second | CPU-s per GiB |\n|---|---|---|")
    for row in rows:
        print(f"| {row['impl']} | {row['gib_per_cpu_s']} | {row['cpu_s_per_gib']} |")


def print_read_paths(s: dict[str, Any], reps: int) -> None:
    print("| body read path | median wall s | user CPU-s/GiB | sys CPU-s/GiB | CPU-s/GiB | minor faults |")
    print("|---|---|---|---|---|---|")
    for mode in READ_MODES:
        m = s[mode]
        print(
            f"| {mode} | {m['wall_s']} | {m['user_per_gib']} | {m['sys_per_gib']} | {m['cpu_per_gib']} | "
            f"{int(m['minflt'])} |"
        )
    print(f"\nrest ÷ boto3, CPU per GiB (median of {reps} pairs): {s['cpu_ratio_rest_over_boto3']}")


def print_small_gets(r: dict[str, Any], reps: int) -> None:
    s = r["summary"]
    kib = r["object_bytes"] // 1024
    print(f"{r['objects']} objects of {kib} KiB, each into a new file, CRC32-checked; one thread; medians of {reps}")
    print("\n| GET path | user CPU ms/GET | sys CPU ms/GET | CPU ms/GET | wall ms/GET |\n|---|---|---|---|---|")
    for mode, label in GET_MODES.items():
        m = s[mode]
        print(f"| {label} | {m['user_ms']} | {m['sys_ms']} | {m['cpu_ms']} | {m['wall_ms']} |")
    print(
        f"\nCPU per GET ÷ boto3's (median of {reps} rounds): rest {s['cpu_ratio_rest_over_boto3']}, "
        f"crt {s['cpu_ratio_crt_over_boto3']}"
    )


def print_disk_write(r: dict[str, Any], reps: int) -> None:
    if "skipped" in r:
        print(f"disk write path: skipped, {r['directory']} ({r['filesystem']}): {r['skipped']}")
        return
    s = r["summary"]
    print(f"{r['bytes'] // MiB} MiB into {r['directory']} ({r['filesystem']}), medians of {reps} runs")
    print(
        "\n| write path | wall s/GiB | MiB/s | user CPU-s/GiB | sys CPU-s/GiB | CPU-s/GiB | machine CPU-s/GiB |"
        "\n|---|---|---|---|---|---|---|"
    )
    for mode, label in DISK_MODES.items():
        m = s[mode]
        print(
            f"| {label} | {m['wall_per_gib']} | {m['mib_per_s']} | {m['user_per_gib']} | {m['sys_per_gib']} | "
            f"{m['cpu_per_gib']} | {m['machine_cpu_per_gib']} |"
        )
    print(
        f"\nO_DIRECT ÷ page cache (median of {reps} pairs): CPU per GiB {s['cpu_ratio_direct_over_pagecache']}, "
        f"wall {s['wall_ratio_direct_over_pagecache']}"
    )
    print("(machine CPU: every core's busy time meanwhile, kernel writeback threads and anything else included)")


def network_sections(args: argparse.Namespace, sections: list[str], result: dict[str, Any]) -> None:
    """Sections 2 and 3, against --endpoint or a SeaweedFS started here with a throw-away store."""
    with tempfile.TemporaryDirectory(prefix="datapath-") as scratch:
        server = None
        endpoint = args.endpoint
        if endpoint is None:
            ensure_bench_tools()
            server = SeaweedFS(Path(scratch) / "store", Path(scratch))
            server.start()
            endpoint = server.endpoint
        try:
            client = s3_client(endpoint)
            with contextlib.suppress(Exception):  # already there on a reused server
                client.create_bucket(Bucket=BUCKET)
            if "reads" in sections:
                ensure_object(client, Path(scratch), args.size_mib)
                result["read_paths"] = read_paths(endpoint, args.size_mib * MiB, args.reps)
            if "gets" in sections:
                upload_small(client, args.small_count)
                result["small_gets"] = small_gets(endpoint, args.small_count, args.reps)
        finally:
            if server is not None:
                server.stop()


def run(args: argparse.Namespace, sections: list[str]) -> int:

    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
        "size_bytes": args.size_mib * MiB,
        "sections": sections,
        "reps": args.reps,
    }
    if "checksums" in sections:
        result["checksums"] = checksum_table(args.reps)
    if "reads" in sections or "gets" in sections:
        network_sections(args, sections, result)
    if "disk" in sections:
        result["disk_write"] = disk_write(args.disk_mib, args.reps)
    results = Results(Path(args.results_dir), "datapath-", utc=True)
    results.save(result)
    printers: list[tuple[str, Callable[[], None]]] = [
        ("checksums", lambda: print_checksums(result["checksums"])),
        ("read_paths", lambda: print_read_paths(result["read_paths"]["summary"], args.reps)),
        ("small_gets", lambda: print_small_gets(result["small_gets"], args.reps)),
        ("disk_write", lambda: print_disk_write(result["disk_write"], args.reps)),
    ]
    first = True
    for key, show in printers:
        if key in result:
            if not first:
                print()
            show()
            first = False
    print(f"\nraw numbers: {results.path}")
    return 0
