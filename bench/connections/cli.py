"""``bench/bench_connections.py``: options; for each scenario (bench/connections/scenarios.py) the modes run
interleaved (auto, fixed 32, fixed 128, auto, ...) --reps times on the same model; the tables, the plot and the
results file (bench/results/connections-<timestamp>.{json,md,png})."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

# the auto mode's first count (the downloader's own constant: bench/ is run from the repository)
from downloader.concurrency import START

from ..harness.common import DEFAULT_RESULTS, DEFAULT_STORE, DEFAULT_WORK, logger, machine_info
from ..harness.recording import Results
from ..harness.venvs import bootstrap
from . import download, report
from .scenarios import SCENARIOS, Setting, open_setting

log = logger("bench-connections")
DEFAULT_MODES = {
    "emulated": "auto,fixed-32,fixed-128",
    "throttled": "auto,fixed-32,fixed-128",
    "loopback": "auto,fixed-32",
}


def options(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {','.join(SCENARIOS)}")
    p.add_argument("--modes", default="", help=f"comma list of {','.join(download.MODES)} (default: per scenario)")
    p.add_argument("--reps", type=int, default=3, help="rounds; each runs every mode once, in turn")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between two samples")
    e = p.add_argument_group("emulated")
    e.add_argument("--latency-ms", type=float, default=150.0, help="first-byte latency of every request")
    e.add_argument("--conn-mbps", type=float, default=24.0, help="per-connection cap, Mbit/s (24 = 3 MB/s)")
    e.add_argument("--aggregate-gbps", type=float, default=1.5, help="aggregate cap, Gbit/s")
    e.add_argument("--chunk-mib", type=int, default=8, help="range size (emulated, throttled)")
    e.add_argument("--shards", type=int, default=12, help="shards of 512 MiB in the model")
    t = p.add_argument_group("throttled")
    t.add_argument("--store-capacity", type=int, default=16, help="GETs the store serves at once; 503 above")
    t.add_argument("--get-mib-s", type=float, default=4.0, help="pace of each GET body, MiB/s")
    t.add_argument("--throttled-shards", type=int, default=2)
    lo = p.add_argument_group("loopback")
    lo.add_argument("--loopback-shards", type=int, default=6)
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    args = p.parse_args(argv)
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if set(args.scenario_list) - set(SCENARIOS):
        p.error(f"--scenarios takes {','.join(SCENARIOS)}")
    if args.modes and set(args.modes.split(",")) - set(download.MODES):
        p.error(f"--modes takes {','.join(download.MODES)}")
    return args


def title(s: Setting, args: argparse.Namespace) -> str:
    if s.name == "emulated":
        return (
            f"emulated: {args.latency_ms:g} ms first byte, {s.per_connection_mb_s:g} MB/s per connection, "
            f"{args.aggregate_gbps:g} Gbit/s in all ({s.cap_mb_s:.0f} MB/s payload)"
        )
    if s.name == "throttled":
        return (
            f"throttled: 503 SlowDown above {args.store_capacity} GETs at once, {args.get_mib_s:g} MiB/s per GET, "
            f"{args.chunk_mib} MiB ranges"
        )
    return "loopback"


def run_scenario(name: str, args: argparse.Namespace, work: Path, save: Any) -> dict[str, Any]:
    modes = (args.modes or DEFAULT_MODES[name]).split(",")
    with open_setting(name, args, work) as s:
        sc: dict[str, Any] = {
            "name": name,
            "title": title(s, args),
            "model": s.model,
            "uri": s.uri,
            "flags": s.flags,
            "emulation": s.describe,
            "cap_mb_s": s.cap_mb_s,
            "per_connection_mb_s": s.per_connection_mb_s,
            "start": START,
            "modes": modes,
            "runs": [],
        }
        save(sc)
        for rep in range(args.reps):
            for mode in modes:
                if s.throttles is not None:
                    s.throttles.reset_counters()
                r = download.run(mode, s.flags, s.uri, s.env, s.sampler, work, args.interval, s.model["bytes"])
                r["rep"] = rep
                if s.throttles is not None:
                    got = [x for x in s.throttles.log if x.method == "GET" and x.range]
                    r["gets"] = len(got)
                    r["answers_503"] = sum(1 for x in got if x.status == 503)
                sc["runs"].append(r)
                log(
                    f"{name} rep {rep} {mode}: exit {r['returncode']}, {r['wall_s']:.1f}s, {r['mb_s']:.0f} MB/s "
                    f"(middle half {r['mb_s_middle'] or 0:.0f}), cpu {r['cpu_s']:.1f}s, rss {r['maxrss_mib']:.0f} MiB, "
                    f"most open {r['most_open']}, {len(r['changes'])} changes"
                    + (f", 503s {r['answers_503']} of {r['gets']} GETs" if "gets" in r else "")
                    + (f"\n{r['stderr_tail']}" if r["returncode"] else "")
                )
                save(sc)
    return sc


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str], script: Path) -> int:
    bootstrap([], script)
    args = options(argv)
    # SIGTERM and SIGHUP too (and SIGINT, which a shell may ignore in background jobs): the scenarios' servers,
    # relay and namespace are removed on the way out
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    results = Results(args.results_dir, "connections-", utc=True)
    DEFAULT_WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="connections-", dir=DEFAULT_WORK))
    settings = {k: v for k, v in vars(args).items() if k != "scenario_list"}
    record: dict[str, Any] = {
        "timestamp": results.stamp,
        "machine": machine_info(),
        "args": settings,
        "scenarios": [],
    }

    def save(sc: dict[str, Any]) -> None:
        if not any(x is sc for x in record["scenarios"]):
            record["scenarios"].append(sc)
        results.save(record)

    try:
        for name in args.scenario_list:
            run_scenario(name, args, work, save)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["load_at_end"] = os.getloadavg()
    md = report.render(record)
    print(md)
    results.save(record)
    results.beside(".md").write_text(md)
    report.plot(record, results.beside(".png"))
    log(f"raw numbers: {results.path}")
    return 0
