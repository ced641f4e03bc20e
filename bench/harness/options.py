"""The benchmark's options (``bench/run.sh --help``), parsed once, strictly."""

from __future__ import annotations

import argparse
import os

from .common import ALL_TOOLS, DEFAULT_AIBRIX_DOWNLOAD, DEFAULT_RESULTS, DEFAULT_STORE, DEFAULT_WORK
from .endpoints import EndPoint
from .tools import Setting


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark aibrix-download against s5cmd, boto3 and aibrix 0.8.0 on local SeaweedFS.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per tool")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (all tools) before the reps")
    p.add_argument("--tools", default=",".join(ALL_TOOLS), help=f"comma list from {ALL_TOOLS}")
    p.add_argument(
        "--settings",
        default="defaults,matched",
        help="comma list: defaults (each tool's own) and/or matched (--concurrency GETs in flight for every tool)",
    )
    p.add_argument(
        "--end-points",
        default=",".join(ep.value for ep in EndPoint),
        help="comma list of download, durable (then sync), in-memory (then the weights reader); "
        "durable and in-memory need a run each per tool and repetition",
    )
    p.add_argument("--concurrency", type=int, default=16, help="matched: the most GETs in flight, for every tool")
    p.add_argument("--chunk-mib", type=int, default=64, help="matched: ranged GET / multipart part size")
    p.add_argument(
        "--s5cmd-workers",
        type=int,
        default=4,
        help="matched, a model with multi-part objects: s5cmd --numworkers, with -c concurrency/workers (the "
        "product is the cap); on a model of one-part objects s5cmd gets --numworkers concurrency -c 1",
    )
    p.add_argument(
        "--reader",
        choices=["mmap", "read"],
        default="mmap",
        help="how the weights reader reads: mmap + copy out (as safetensors) or read() (see harness/reader.py)",
    )
    p.add_argument("--reader-block-mib", type=int, default=16, help="the reader's copy / read size")
    p.add_argument("--shards", type=int, default=4, help="number of large safetensors shards")
    p.add_argument("--shard-mib", type=int, default=1024, help="approximate size of each shard")
    p.add_argument("--drop-caches", action="store_true", help="sync + echo 1 > drop_caches before each run")
    p.add_argument("--timeout", type=float, default=1200, help="per-run timeout, seconds")
    p.add_argument(
        "--max-other-cores",
        type=float,
        default=0.5,
        help="a run during which other processes used more than this many cores on average is redone",
    )
    p.add_argument("--retries", type=int, default=2, help="max redos per run for --max-other-cores")
    p.add_argument(
        "--idle-threshold",
        type=float,
        default=0.3,
        help="before each run wait until machine-wide busy CPU (cores) is at most this",
    )
    p.add_argument(
        "--max-idle-wait", type=float, default=90, help="max seconds to wait for quiet per run (0: never wait)"
    )
    p.add_argument("--store-dir", default=str(DEFAULT_STORE), help="SeaweedFS data dir (model cache)")
    p.add_argument(
        "--fresh-store",
        action="store_true",
        help="use a throw-away store in the scratch dir (no model cache)",
    )
    p.add_argument("--work-dir", default=str(DEFAULT_WORK), help="where scratch/download dirs are made")
    p.add_argument(
        "--dest-fs",
        choices=["loop", "work-dir"],
        default="loop" if os.geteuid() == 0 else "work-dir",
        help="where the tools write: 'loop', a journaled ext4 on a loop device made in --work-dir (as a node's "
        "model directory; needs root; the default as root), or 'work-dir' itself (bench/harness/destfs.py)",
    )
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    p.add_argument("--aibrix-download-bin", default=str(DEFAULT_AIBRIX_DOWNLOAD))
    p.add_argument(
        "--baseline-bin",
        help="another build's aibrix-download (e.g. <checkout of an earlier commit>/.venv/bin/aibrix-download), run "
        "as the tool aibrix-download-baseline: add it to --tools for an interleaved before/after comparison",
    )
    g = p.add_argument_group(
        "phases",
        "Without a phase flag a run is the classic comparison (--compare) on loopback, or the sweep with --netns. "
        "Physical limits (loopback TCP, disk write) are measured at the start of every run.",
    )
    g.add_argument(
        "--all",
        action="store_true",
        help="everything: limits; compare, small files, memory-limited and no-op on loopback; then sweep and "
        "no-op in the netns",
    )
    g.add_argument(
        "--compare", action="store_true", help="the classic table: --shards x --shard-mib model, --reps reps"
    )
    g.add_argument("--sweep", action="store_true", help="every tool at --sweep-conns x --sweep-chunks-mib")
    g.add_argument(
        "--small-files", action="store_true", help="many small files: --small-files-count x --small-file-kib"
    )
    g.add_argument(
        "--noop", action="store_true", help="no-op re-run of aibrix-download on a complete --noop-files model"
    )
    g.add_argument(
        "--mem-limited",
        action="store_true",
        help="each tool with and without a memory cgroup of --mem-limit-mib (the tool only), interleaved",
    )
    g.add_argument("--mem-limit-mib", type=int, default=512, help="the memory cgroup's limit")
    g.add_argument("--mem-settings", default="defaults", help="settings run in the memory-limited phase")
    g.add_argument("--mem-model", choices=["large", "small"], default="large", help="model of the memory-limited phase")
    g.add_argument("--mem-reps", type=int, default=3, help="repetitions of the memory-limited phase")
    g.add_argument("--skip-limits", action="store_true", help="do not measure loopback/disk limits")
    g.add_argument("--limits-disk-mib", type=int, default=1024, help="bytes written by each disk-limit test")
    g.add_argument("--limits-seconds", type=float, default=3.0, help="duration of each TCP throughput point")
    g.add_argument("--sweep-conns", default="1,4,16,64", help="connection counts of the sweep")
    g.add_argument("--sweep-chunks-mib", default="8,16,64", help="range sizes (MiB) of the sweep")
    g.add_argument("--sweep-reps", type=int, default=2, help="repetitions of the whole sweep (each ~10 min)")
    g.add_argument("--sweep-shards", type=int, default=4, help="shards of the sweep's model")
    g.add_argument("--sweep-shard-mib", type=int, default=256, help="shard size of the sweep's model (4 x 256 = 1 GiB)")
    g.add_argument(
        "--sweep-part-mib",
        type=int,
        default=8,
        help="multipart part size the sweep's model is uploaded with (8 = the AWS CLI's default); "
        "aibrix-download's ranges are whole parts, so this must be <= the smallest swept range size",
    )
    g.add_argument("--small-files-count", type=int, default=10000, help="files in the small-files model")
    g.add_argument("--small-file-kib", type=int, default=256, help="size of each small file")
    g.add_argument("--small-reps", type=int, default=3, help="repetitions of the small-files phase")
    g.add_argument("--noop-files", type=int, default=1000, help="files in the no-op model")
    g.add_argument("--noop-file-kib", type=int, default=256, help="size of each file of the no-op model")
    g.add_argument("--noop-reps", type=int, default=5, help="no-op re-runs (each with its own listing timings)")
    n = p.add_argument_group(
        "realistic network (--netns)",
        "The server runs in a network namespace behind a veth pair (made and removed by the harness; root only). "
        "A relay in the namespace adds first-byte latency per request and caps each connection "
        "(SO_MAX_PACING_RATE); an htb qdisc caps the aggregate. No packet loss, jitter or per-packet RTT.",
    )
    n.add_argument("--netns", action="store_true", help="run the selected phases against the emulated network")
    n.add_argument("--latency-ms", type=float, default=100.0, help="first-byte latency added to every request")
    n.add_argument("--conn-mbps", type=float, default=680.0, help="per-connection cap, Mbit/s (680 = 85 MB/s; 0: none)")
    n.add_argument("--aggregate-gbps", type=float, default=2.5, help="aggregate cap of the link, Gbit/s (0: none)")
    n.add_argument("--queue-ms", type=float, default=20.0, help="bottleneck queue length in ms of the aggregate rate")
    p.add_argument(
        "--summarize",
        metavar="JSON",
        nargs="+",
        help="only re-print the table of existing results file(s), pooled if several (no server, no runs)",
    )
    p.add_argument(
        "--quiet-only",
        type=float,
        metavar="CORES",
        help="with --summarize: use every timed run (redone ones too) with other load <= CORES, and only those",
    )
    args = p.parse_args(argv)
    try:
        args.sweep_conns_list = [int(x) for x in args.sweep_conns.split(",") if x.strip()]
        args.sweep_chunks_list = [int(x) for x in args.sweep_chunks_mib.split(",") if x.strip()]
    except ValueError:
        p.error("--sweep-conns and --sweep-chunks-mib take comma lists of integers")
    try:
        args.settings_list = [Setting(x.strip()) for x in args.settings.split(",") if x.strip()]
        args.mem_settings_list = [Setting(x.strip()) for x in args.mem_settings.split(",") if x.strip()]
        args.end_points_list = [EndPoint(x.strip()) for x in args.end_points.split(",") if x.strip()]
    except ValueError as e:
        p.error(f"{e}: --settings and --mem-settings take defaults/matched, --end-points download/durable/in-memory")
    if not args.settings_list or not args.end_points_list:
        p.error("--settings and --end-points need at least one value")
    return args
