"""``bench/bench_hf.py``: the options, the interleaved runs of both tools against the fake hub, the table and the
results file."""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import shutil
from pathlib import Path
from typing import Any

from ..harness.common import DEFAULT_AIBRIX_DOWNLOAD, DEFAULT_RESULTS, DEFAULT_WORK, PROJECT_VENV, GiB, logger, tool_env
from ..harness.measure import run_timed, verify_tree
from ..harness.numbers import median_of
from ..harness.recording import Results
from ..harness.tables import header, row, spread_cell
from .model import generate, manifest

REPO = "bench-org/synth-model"
TOKEN = "hf_benchtoken_localonly"
REFERENCE = "aibrix-download"
TOOLS = ["aibrix-download", "snapshot_download"]
SNAPSHOT = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], local_dir=sys.argv[2], max_workers=int(sys.argv[3]))
"""
COLUMNS = [
    *("tool", "ok/runs", "median wall s (min-max)", "median MB/s", "median client CPU-s/GiB"),
    *("median peak RSS MiB", "median server CPU-s", "wall ÷ aibrix-download"),
]

log = logger("bench-hf")


def tool_command(
    tool: str, hub_url: str, dest: Path, concurrency: int, hf_home: Path
) -> tuple[list[str], dict[str, str]]:
    env = tool_env(
        ("DOWNLOADER_", "HF_", "HUGGING"),
        HF_ENDPOINT=hub_url,
        HF_TOKEN=TOKEN,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    if tool == "aibrix-download":
        cmd = [str(DEFAULT_AIBRIX_DOWNLOAD), "--model-uri", REPO, "--local-dir", str(dest)]
        cmd += ["--num-threads", str(concurrency), "--progress", "none"]
    else:
        cmd = [str(PROJECT_VENV / "bin" / "python"), "-c", SNAPSHOT, REPO, str(dest / REPO), str(concurrency)]
    return cmd, env


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_once(
    tool: str, rep: int, warm: bool, hub: Any, work: Path, expected: dict[str, Any], a: argparse.Namespace
) -> dict[str, Any]:
    total = sum(v["size"] for v in expected.values())
    dest = work / f"{tool}-{rep}"
    dest.mkdir()
    cmd, env = tool_command(tool, hub.url, dest, a.concurrency, work / "hf-home")
    hub.reset_log()
    cpu0 = cpu_self()
    t = run_timed(cmd, env)
    server_cpu = cpu_self() - cpu0
    error = None if t.returncode == 0 else f"exit {t.returncode}: {t.stderr[-400:]}"
    if error is None:
        problems, _ = verify_tree(dest / REPO, expected)
        error = "; ".join(problems[:5]) or None
    cdn_auth = {r.authorization for r in hub.requests("cdn")}
    if cdn_auth - {None}:
        error = error or "the CDN received an Authorization header"
    if TOKEN in t.stderr or TOKEN in t.stdout:
        error = error or "the token appeared in the output"
    wall = t.usage.get("time_wall_s", math.nan)
    rec = {
        "tool": tool,
        "rep": rep,
        "warmup": warm,
        "ok": error is None,
        "error": error,
        "wall_s": wall,
        "user_s": t.usage.get("user_s"),
        "sys_s": t.usage.get("sys_s"),
        "client_cpu_s_per_gib": t.cpu_s / (total / GiB),
        "peak_rss_mib": t.max_rss_mib,
        "server_cpu_s": server_cpu,
        "mb_per_s": total / 1e6 / wall if wall else None,
        "cdn_gets": sum(1 for r in hub.requests("cdn") if r.method == "GET"),
    }
    log(
        f"{'warm-up ' if warm else ''}{tool} rep {rep}: {'ok' if error is None else 'FAILED ' + error} "
        f"wall {wall:.2f}s cpu {t.cpu_s:.2f}s rss {rec['peak_rss_mib'] or 0:.0f} MiB "
        f"server cpu {server_cpu:.2f}s, {rec['cdn_gets']} CDN GETs"
    )
    shutil.rmtree(dest, ignore_errors=True)
    return rec


def summarize(runs: list[dict[str, Any]], tools: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for tool in tools:
        timed = [r for r in runs if r["tool"] == tool and not r["warmup"]]
        ok = [r for r in timed if r["ok"]]
        walls = [r["wall_s"] for r in ok]
        out[tool] = {
            "ok": len(ok),
            "runs": len(timed),
            "wall_s": median_of(ok, "wall_s"),
            "wall_min": min(walls) if walls else None,
            "wall_max": max(walls) if walls else None,
            **{k: median_of(ok, k) for k in ("mb_per_s", "client_cpu_s_per_gib", "peak_rss_mib", "server_cpu_s")},
        }
    return out


def render(stamp: str, summary: dict[str, dict[str, Any]], total: int, nfiles: int, a: argparse.Namespace) -> str:
    m = machine()
    ref = summary[REFERENCE]["wall_s"]
    lines = [
        f"### Hugging Face download benchmark {stamp}",
        "",
        f"Model: `{REPO}` on tests/fakehub.py (LFS shards 302-redirected to a second port as CDN) — "
        f"{total / GiB:.2f} GiB in {nfiles} files ({a.shards} x {a.shard_mib} MiB shards). "
        f"Machine: {m['cpus']} CPUs, Python {m['python']}, kernel {m['kernel']}.",
        f"{a.reps} timed reps (+{a.warmup} warm-up round), round-robin, concurrency {a.concurrency}, "
        "page cache warm, client and server on one host.",
        "",
        *header(COLUMNS),
    ]
    for tool, s in summary.items():
        if not s["ok"]:
            lines.append(f"| {tool} | 0/{s['runs']} | - | - | - | - | - | - |")
            continue
        ratio = f"{s['wall_s'] / ref:.2f}" if ref else "-"
        cells = [tool, f"{s['ok']}/{s['runs']}", spread_cell(s["wall_s"], s["wall_min"], s["wall_max"])]
        cells += [f"{s['mb_per_s']:.0f}", f"{s['client_cpu_s_per_gib']:.2f}", f"{s['peak_rss_mib']:.0f}"]
        lines.append(row([*cells, f"{s['server_cpu_s']:.2f}", ratio]))
    lines += [
        "",
        f"- `aibrix-download`: --num-threads {a.concurrency}, default 64 MiB ranges (8 per shard), "
        "sha256 of each shard verified (second read from the page cache)",
        f"- `snapshot_download`: huggingface_hub, max_workers={a.concurrency} (one stream per file), "
        "HF_HUB_DISABLE_XET=1, no checksum verification of the bytes",
        "",
    ]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def main(argv: list[str], script: Path) -> int:
    from ..harness.venvs import use_project_venv

    use_project_venv(script)
    from tests.fakehub import FakeHub

    from . import __doc__ as description

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--shard-mib", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per tool (round-robin)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--concurrency", type=int, default=8, help="--num-threads / max_workers")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    args = ap.parse_args(argv)

    results = Results(args.results, "hf-", utc=True)
    work = DEFAULT_WORK / f"hf-{results.stamp}"
    work.mkdir(parents=True)
    runs: list[dict[str, Any]] = []
    try:
        log(f"generating {args.shards} x {args.shard_mib} MiB shards in {work}")
        files = generate(work, args.shards, args.shard_mib)
        expected = manifest(files)
        total = sum(v["size"] for v in expected.values())
        with FakeHub(token=TOKEN, redirect_lfs=True) as hub:
            hub.create_repo(REPO, files)
            log(f"fake hub {hub.url} (CDN {hub.cdn_url}); model {total / GiB:.2f} GiB in {len(files)} files")
            for rep in range(args.warmup + args.reps):
                for tool in TOOLS:
                    runs.append(run_once(tool, rep, rep < args.warmup, hub, work, expected, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = summarize(runs, TOOLS)
    md = render(results.stamp, summary, total, len(expected), args)
    print(md)
    results.save(
        {
            "timestamp": results.stamp,
            "machine": machine(),
            "model": {"repo": REPO, "bytes": total, "files": len(expected), "shards": args.shards},
            "config": {"concurrency": args.concurrency, "reps": args.reps, "warmup": args.warmup},
            "runs": runs,
            "summary": summary,
        }
    )
    results.beside(".md").write_text(md)
    log(f"raw numbers: {results.path}")
    return 0 if all(r["ok"] for r in runs) else 1
