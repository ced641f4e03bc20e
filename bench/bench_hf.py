#!/usr/bin/env python3
"""Hugging Face download benchmark: aibrix-download vs. huggingface_hub.snapshot_download.

One command (from the repository root, with the project's venv):

    .venv/bin/python bench/bench_hf.py                 # 2 x 512 MiB LFS shards, 5 reps + 1 warm-up

1. generates a synthetic model (safetensors shards + small json/py files) under bench/.work/;
2. starts tests/fakehub.py on 127.0.0.1: a Hub API port that redirects LFS files (302) to a second port
   acting as the CDN, both serving bytes with sendfile(2), with a required token;
3. runs each tool in round-robin order under ``/usr/bin/time -v``, each into a fresh directory:
   ``aibrix-download --model-uri org/name`` and ``snapshot_download(repo, local_dir=..., max_workers=...)``
   (HF_ENDPOINT pointing at the fake hub, Xet, telemetry and progress bars off);
4. verifies every byte (size + sha256 of each file) and deletes the directory;
5. prints a markdown table and writes bench/results/hf-<timestamp>.json (+ .md).

Server CPU-seconds are those of this process (the fake hub's threads) during each run: when they approach
wall time x cores, the server, not the client, is the bottleneck.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR))

from tests.fakehub import FakeHub  # noqa: E402

PYTHON = REPO_DIR / ".venv" / "bin" / "python"
AIBRIX = REPO_DIR / ".venv" / "bin" / "aibrix-download"
TIME_BIN = "/usr/bin/time"
MiB = 1024 * 1024
GiB = 1024 * MiB
REPO = "bench-org/synth-model"
TOKEN = "hf_benchtoken_localonly"
REFERENCE = "aibrix-download"

SNAPSHOT = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], local_dir=sys.argv[2], max_workers=int(sys.argv[3]))
"""


def log(msg: str) -> None:
    print(f"[bench-hf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_shard(path: Path, name: str, nbytes: int, seed: int) -> None:
    """A valid safetensors file (one float32 tensor) of about nbytes, written in 1 MiB blocks."""
    count = max(1, nbytes // 4)
    header = {name: {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]}, "__metadata__": {}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    block = random.Random(seed).randbytes(MiB)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        left, i = count * 4, 0
        while left:
            chunk = (i.to_bytes(8, "little") + block[8:])[:left]
            fh.write(chunk)
            left -= len(chunk)
            i += 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


def generate(work: Path, shards: int, shard_mib: int) -> dict[str, bytes | Path]:
    src = work / "model"
    src.mkdir(parents=True)
    files: dict[str, bytes | Path] = {}
    weight_map = {}
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        write_shard(src / name, f"layers.{i}.weight", shard_mib * MiB, seed=i)
        files[name] = src / name
        weight_map[f"layers.{i}.weight"] = name
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    files["config.json"] = json.dumps({"architectures": ["DemoForCausalLM"], "hidden_size": 4096}).encode()
    files["generation_config.json"] = b'{"do_sample": false}'
    vocab = {f"t{i}": i for i in range(5000)}
    files["tokenizer.json"] = json.dumps({"model": {"type": "BPE", "vocab": vocab}}).encode()
    files["tokenizer_config.json"] = b'{"chat_template": "{{ messages }}"}'
    files["modeling_demo.py"] = b"class DemoForCausalLM: ...\n"
    return files


def parse_time_v(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", text)
    if m:
        out["wall_s"] = int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    for key, label in (("user_s", "User time (seconds)"), ("sys_s", "System time (seconds)")):
        m = re.search(re.escape(label) + r": ([\d.]+)", text)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["rss_mib"] = int(m.group(1)) / 1024
    return out


def run_tool(tool: str, hub: FakeHub, dest: Path, concurrency: int, hf_home: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    for k in [k for k in env if k.startswith(("DOWNLOADER_", "HF_", "HUGGING"))]:
        env.pop(k)
    env.update(
        HF_ENDPOINT=hub.url,
        HF_TOKEN=TOKEN,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    if tool == "aibrix-download":
        cmd = [str(AIBRIX), "--model-uri", REPO, "--local-dir", str(dest), "--num-threads", str(concurrency)]
        cmd += ["--progress", "none"]
    else:
        cmd = [str(PYTHON), "-c", SNAPSHOT, REPO, str(dest / REPO), str(concurrency)]
    return cmd, env


def verify(root: Path, expected: dict[str, tuple[int, str]]) -> str | None:
    for rel, (size, sha) in expected.items():
        path = root / rel
        if not path.is_file():
            return f"{rel} missing"
        if path.stat().st_size != size:
            return f"{rel}: size {path.stat().st_size} != {size}"
        if sha256_file(path) != sha:
            return f"{rel}: sha256 mismatch"
    return None


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--shard-mib", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per tool (round-robin)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--concurrency", type=int, default=8, help="--num-threads / max_workers")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    args = ap.parse_args()
    tools = ["aibrix-download", "snapshot_download"]

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    work = BENCH_DIR / ".work" / f"hf-{stamp}"
    work.mkdir(parents=True)
    runs: list[dict[str, Any]] = []
    try:
        log(f"generating {args.shards} x {args.shard_mib} MiB shards in {work}")
        files = generate(work, args.shards, args.shard_mib)
        expected: dict[str, tuple[int, str]] = {}
        for rel, data in files.items():
            if isinstance(data, Path):
                expected[rel] = (data.stat().st_size, sha256_file(data))
            else:
                expected[rel] = (len(data), hashlib.sha256(data).hexdigest())
        total = sum(size for size, _ in expected.values())
        with FakeHub(token=TOKEN, redirect_lfs=True) as hub:
            hub.create_repo(REPO, files)
            log(f"fake hub {hub.url} (CDN {hub.cdn_url}); model {total / GiB:.2f} GiB in {len(files)} files")
            order = [(r, t) for r in range(args.warmup + args.reps) for t in tools]
            for rep, tool in order:
                warm = rep < args.warmup
                dest = work / f"{tool}-{rep}"
                dest.mkdir()
                cmd, env = run_tool(tool, hub, dest, args.concurrency, work / "hf-home")
                hub.reset_log()
                cpu0 = cpu_self()
                p = subprocess.run([TIME_BIN, "-v", *cmd], env=env, capture_output=True, text=True)
                server_cpu = cpu_self() - cpu0
                stats = parse_time_v(p.stderr)
                error = None if p.returncode == 0 else f"exit {p.returncode}: {p.stderr[-400:]}"
                error = error or verify(dest / REPO, expected)
                cdn_auth = {r.authorization for r in hub.requests("cdn")}
                if cdn_auth - {None}:
                    error = error or "the CDN received an Authorization header"
                if TOKEN in p.stderr or TOKEN in p.stdout:
                    error = error or "the token appeared in the output"
                wall = stats.get("wall_s", float("nan"))
                cpu = stats.get("user_s", 0.0) + stats.get("sys_s", 0.0)
                rec = {
                    "tool": tool,
                    "rep": rep,
                    "warmup": warm,
                    "ok": error is None,
                    "error": error,
                    "wall_s": wall,
                    "user_s": stats.get("user_s"),
                    "sys_s": stats.get("sys_s"),
                    "client_cpu_s_per_gib": cpu / (total / GiB),
                    "peak_rss_mib": stats.get("rss_mib"),
                    "server_cpu_s": server_cpu,
                    "mb_per_s": total / 1e6 / wall if wall else None,
                    "cdn_gets": sum(1 for r in hub.requests("cdn") if r.method == "GET"),
                }
                runs.append(rec)
                log(
                    f"{'warm-up ' if warm else ''}{tool} rep {rep}: {'ok' if error is None else 'FAILED ' + error} "
                    f"wall {wall:.2f}s cpu {cpu:.2f}s rss {rec['peak_rss_mib'] or 0:.0f} MiB "
                    f"server cpu {server_cpu:.2f}s, {rec['cdn_gets']} CDN GETs"
                )
                shutil.rmtree(dest, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = summarize(runs, tools)
    md = render(stamp, summary, total, len(expected), args)
    print(md)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"hf-{stamp}.json"
    doc = {
        "timestamp": stamp,
        "machine": machine(),
        "model": {"repo": REPO, "bytes": total, "files": len(expected), "shards": args.shards},
        "config": {"concurrency": args.concurrency, "reps": args.reps, "warmup": args.warmup},
        "runs": runs,
        "summary": summary,
    }
    out.write_text(json.dumps(doc, indent=2))
    (args.results / f"hf-{stamp}.md").write_text(md)
    log(f"raw numbers: {out}")
    return 0 if all(r["ok"] for r in runs) else 1


def summarize(runs: list[dict[str, Any]], tools: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for tool in tools:
        timed = [r for r in runs if r["tool"] == tool and not r["warmup"]]
        ok = [r for r in timed if r["ok"]]

        def med(key: str, rows: list[dict[str, Any]] = ok) -> float | None:
            vals = [r[key] for r in rows if r[key] is not None]
            return statistics.median(vals) if vals else None

        walls = [r["wall_s"] for r in ok]
        out[tool] = {
            "ok": len(ok),
            "runs": len(timed),
            "wall_s": med("wall_s"),
            "wall_min": min(walls) if walls else None,
            "wall_max": max(walls) if walls else None,
            "mb_per_s": med("mb_per_s"),
            "client_cpu_s_per_gib": med("client_cpu_s_per_gib"),
            "peak_rss_mib": med("peak_rss_mib"),
            "server_cpu_s": med("server_cpu_s"),
        }
    return out


def render(stamp: str, summary: dict[str, dict[str, Any]], total: int, nfiles: int, args: argparse.Namespace) -> str:
    m = machine()
    ref = summary[REFERENCE]["wall_s"]
    lines = [
        f"### Hugging Face download benchmark {stamp}",
        "",
        f"Model: `{REPO}` on tests/fakehub.py (LFS shards 302-redirected to a second port as CDN) — "
        f"{total / GiB:.2f} GiB in {nfiles} files ({args.shards} x {args.shard_mib} MiB shards). "
        f"Machine: {m['cpus']} CPUs, Python {m['python']}, kernel {m['kernel']}.",
        f"{args.reps} timed reps (+{args.warmup} warm-up round), round-robin, concurrency {args.concurrency}, "
        "page cache warm, client and server on one host.",
        "",
        "| tool | ok/runs | median wall s (min-max) | median MB/s | median client CPU-s/GiB "
        "| median peak RSS MiB | median server CPU-s | wall ÷ aibrix-download |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tool, s in summary.items():
        if not s["ok"]:
            lines.append(f"| {tool} | 0/{s['runs']} | - | - | - | - | - | - |")
            continue
        ratio = f"{s['wall_s'] / ref:.2f}" if ref else "-"
        lines.append(
            f"| {tool} | {s['ok']}/{s['runs']} | {s['wall_s']:.2f} ({s['wall_min']:.2f}-{s['wall_max']:.2f}) "
            f"| {s['mb_per_s']:.0f} | {s['client_cpu_s_per_gib']:.2f} | {s['peak_rss_mib']:.0f} "
            f"| {s['server_cpu_s']:.2f} | {ratio} |"
        )
    lines += [
        "",
        f"- `aibrix-download`: --num-threads {args.concurrency}, default 64 MiB ranges (8 per shard), "
        "sha256 of each shard verified (second read from the page cache)",
        f"- `snapshot_download`: huggingface_hub, max_workers={args.concurrency} (one stream per file), "
        "HF_HUB_DISABLE_XET=1, no checksum verification of the bytes",
        "",
    ]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


if __name__ == "__main__":
    sys.exit(main())
