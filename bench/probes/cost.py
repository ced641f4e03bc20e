"""``bench_sidecar.py --probe-cost``: the sidecar's CPU per probe alone, without a download or SeaweedFS.

A real ``aibrix-sidecar`` process watches a model directory whose progress.json a thread here rewrites every 0.5 s
the way the downloader does (``StateDir.write_progress``: phase downloading, a few files in flight), so /status and
/readyz see a download in progress. For each round: the sidecar's utime+stime (and its threads' schedstat, in ns)
over --cost-requests probes sent by the same load generator as condition B (separate process, /readyz and /status
alternately at --rate), then over an idle stretch; CPU per probe = (loaded - idle rate x duration) / requests. The
load generator's own CPU per request is reported beside it. Prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..harness.common import git_short, tool_env
from ..harness.numbers import fmt, median, percentile
from ..harness.procs import cpu_split, threads_cpu_ns
from ..harness.recording import timestamp
from .common import loadgen_argv, log, wait_listening

SHARDS = {f"model-0000{i}-of-00004.safetensors": 512 << 20 for i in range(1, 5)}


class ProgressWriter:
    """A thread that rewrites ``<model_dir>/.aibrix/progress.json`` every 0.5 s, as a download would."""

    def __init__(self, model_dir: Path) -> None:
        from downloader.state import StateDir

        self.model_dir = model_dir
        self.state = StateDir(str(model_dir))
        self.state.ensure()
        self.stop = threading.Event()
        self.t_start = time.time()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from downloader.layout import Progress

        k = 0
        total = sum(SHARDS.values())
        while not self.stop.is_set():
            k += 1
            done = min(total - 1, k * (40 << 20))
            active = {
                name: {"size": size, "done": min(size, max(0, done - i * size))}
                for i, (name, size) in enumerate(SHARDS.items())
            }
            self.state.write_progress(
                Progress(
                    phase="downloading",
                    source="s3://bench/models/probe-cost/",
                    model_dir=str(self.model_dir),
                    pid=os.getpid(),
                    host="bench",
                    started_at=self.t_start,
                    updated_at=time.time(),
                    bytes_total=total + 30000,
                    bytes_done=done,
                    bytes_fetched=done,
                    files_total=len(SHARDS) + 3,
                    files_done=3,
                    rate_bps=80e6,
                    eta_seconds=20.0,
                    active_files={k: v for k, v in active.items() if 0 < v["done"] < v["size"]},
                )
            )
            self.stop.wait(0.5)


def _load(a: argparse.Namespace, port: int, n: int) -> dict[str, Any]:
    """``n`` probes at --rate by the load generator; its report."""
    argv = loadgen_argv(a.rate, 10 + 2 * n / a.rate, n, a.probe_conns, a.probe_max_conns)
    lg = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = lg.communicate(f"{port}\n".encode(), timeout=60 + 4 * n / a.rate)
    res: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    if "error" in res:
        raise SystemExit(f"load generator: {res['error']}")
    return res


def _rounds(a: argparse.Namespace, proc: subprocess.Popen[bytes], port: int) -> list[dict[str, Any]]:
    tck = os.sysconf("SC_CLK_TCK")

    def cpu() -> tuple[float, int]:
        c = cpu_split(proc.pid)
        return (c["self_s"] if c else math.nan), threads_cpu_ns(proc.pid) or 0

    _load(a, port, max(200, a.cost_requests // 10))  # warm-up: imports, first connections, caches
    rounds = []
    for r in range(a.cost_rounds):
        c0, n0, w0 = *cpu(), time.monotonic()
        lg = _load(a, port, a.cost_requests)
        c1, n1, w1 = *cpu(), time.monotonic()
        time.sleep(min(w1 - w0, a.cost_idle_seconds))  # idle: the poll thread, the event loop's timers
        c2, n2, w2 = *cpu(), time.monotonic()
        idle_rate_ns = (n2 - n1) / (w2 - w1)
        done = lg["completed"]
        row = {
            "round": r,
            "requests": done,
            "achieved_rps": lg["achieved_rps"],
            "statuses": lg["statuses"],
            "errors": lg["errors"],
            "lat_p50_ms": 1e3 * (percentile([x for v in lg["latency_s"].values() for x in v], 50) or 0),
            "sidecar_cpu_s_ticks": c1 - c0,
            "sidecar_cpu_s_sched": (n1 - n0) / 1e9,
            "sidecar_idle_cpu_s_per_s": idle_rate_ns / 1e9,
            "sidecar_idle_cpu_s_ticks": c2 - c1,
            "sidecar_ms_per_probe_ticks": 1e3 * ((c1 - c0) - (c2 - c1) * (w1 - w0) / (w2 - w1)) / done,
            "sidecar_ms_per_probe": 1e3 * ((n1 - n0) - idle_rate_ns * (w1 - w0)) / 1e9 / done,
            "loadgen_cpu_s": lg["cpu_s"],
            "loadgen_user_ms_per_request": 1e3 * lg["cpu_user_s"] / done,
            "loadgen_sys_ms_per_request": 1e3 * lg["cpu_sys_s"] / done,
            "loadgen_ms_per_request": 1e3 * lg["cpu_s"] / done,
            "tick_s": 1 / tck,
        }
        rounds.append(row)
        log(
            f"round {r}: {done} probes @ {lg['achieved_rps']:.0f} rps: sidecar "
            f"{row['sidecar_ms_per_probe']:.3f} ms/probe (ticks: {row['sidecar_ms_per_probe_ticks']:.3f}), "
            f"idle {1e3 * row['sidecar_idle_cpu_s_per_s']:.2f} ms/s; load generator "
            f"{row['loadgen_ms_per_request']:.3f} ms/request; p50 {row['lat_p50_ms']:.2f} ms; {lg['statuses']}"
        )
    return rounds


def main(a: argparse.Namespace) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="aibrix-probe-cost-"))
    writer = ProgressWriter(scratch / "m")
    writer.thread.start()
    errfile = scratch / "sidecar.err"
    argv = [str(a.sidecar_bin), "--host", "127.0.0.1", "--port", "0", "--model-dir", str(writer.model_dir)]
    env = tool_env(("SIDECAR_",), PYTHONUNBUFFERED="1")
    with open(errfile, "wb") as ef:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=ef, stdin=subprocess.DEVNULL, env=env)
    try:
        rounds = _rounds(a, proc, wait_listening(proc, errfile, 60, 0.01))
    finally:
        writer.stop.set()
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        writer.thread.join(timeout=5)
        shutil.rmtree(scratch, ignore_errors=True)
    per = [r["sidecar_ms_per_probe"] for r in rounds]
    lgs = [r["loadgen_ms_per_request"] for r in rounds]
    summary = {
        "benchmark": "sidecar CPU per probe",
        "timestamp": timestamp(),
        "rate": a.rate,
        "requests_per_round": a.cost_requests,
        "git": git_short(),
        "loadavg_at_end": os.getloadavg(),
        "rounds": rounds,
        "sidecar_ms_per_probe_median": median(per),
        "sidecar_ms_per_probe_min": min(per) if per else None,
        "loadgen_ms_per_request_median": median(lgs),
    }
    print(json.dumps(summary, indent=1))
    log(
        f"sidecar CPU per probe: median {fmt(summary['sidecar_ms_per_probe_median'], '.3f')} ms "
        f"(min {fmt(summary['sidecar_ms_per_probe_min'], '.3f')}) over {len(per)} rounds of {a.cost_requests} "
        f"at {a.rate:g} rps; load generator {fmt(summary['loadgen_ms_per_request_median'], '.3f')} ms/request"
    )
    return 0
